"""The driver: runs the compile stages in order and writes the artifact.

    load -> input shapes -> canonicalize -> choose devices -> per candidate: capability, prepare,
    codegen, verify against the reference, time -> choose -> write artifact (+ cache)

Every decision lands in ``report.json``; the manifest holds only what the runtime needs and is
byte-for-byte reproducible.
"""

from __future__ import annotations

import importlib.metadata
import platform
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import onnx_ir as ir
from onnx_ir.passes.common import NameFixPass

from ai_vmm import hardware, registry
from ai_vmm.cache import CompileCache, cache_key, cache_root
from ai_vmm.frontends import LoadedModel, load_model, source_digest
from ai_vmm.hardware_profile import HardwareProfile, load_profile
from ai_vmm.inputs import Tolerance, compare, index_bounds, synthetic_inputs
from ai_vmm.partition import PartitionedBuild, build_partitioned, sample_dims
from ai_vmm.passes.analyze import analyze
from ai_vmm.passes.canonicalize import STEP_NAMES, canonicalize
from ai_vmm.passes.recipes import RECIPES, apply_recipe, choose_recipe
from ai_vmm.passes.recipes import STEP_NAMES as RECIPE_STEPS
from ai_vmm.quantize import QuantizationOptions, quantize_candidates, validate_quantization
from ai_vmm.runtime.artifact import (
    MANIFEST,
    Manifest,
    PartitionSpec,
    read_report,
    sha256_file,
    staged_directory,
    write_artifact,
    write_zip,
)
from ai_vmm.runtime.devices import Device, Inventory
from ai_vmm.runtime.errors import CompileError, DeviceError, UnsupportedModelError, VmmError
from ai_vmm.runtime.executors import Executor, create_executor
from ai_vmm.signature import (
    apply_input_shapes,
    bounded_signature,
    model_signature,
    parse_input_specs,
)
from ai_vmm.targets.base import NodeSupport, TargetOptions, save_onnx
from ai_vmm.tuning import measure

Progress = Callable[[str], None]

# Ops whose outputs are random by definition: comparing them with a reference proves nothing.
NONDETERMINISTIC_OPS = frozenset(
    {
        "RandomNormal",
        "RandomUniform",
        "RandomNormalLike",
        "RandomUniformLike",
        "Multinomial",
        "Bernoulli",
    }
)
PRECISIONS = ("fp32", "fp16", "bf16")
TUNE_ROUNDS = 3


@dataclass(frozen=True)
class CompileOptions:
    """What the user asked for. ``to_json`` is what the manifest and the cache key record."""

    target: str = "auto"
    input_shapes: tuple[str, ...] = ()
    tune: bool = True
    verify: bool = True
    tolerance: Tolerance = field(default_factory=Tolerance)
    precision: str = "fp32"
    disabled_passes: tuple[str, ...] = ()
    tune_budget_s: float = 1.0
    hardware: str | None = None
    """A hardware profile (shipped name or JSON path): plan for that machine, not this one."""
    recipe: str | None = None
    """A fusion recipe by name; ``None``: chosen from the architecture profile."""
    trace_rules: bool = False
    """Record fusion near misses (pattern matched, check declined) in the report."""
    quantization: QuantizationOptions = field(default_factory=QuantizationOptions)
    """INT8 / weight-only / reduced precision, behind the gates of ``ai_vmm.quantize``."""

    def to_json(self) -> dict[str, Any]:
        quantization = (
            {"quantization": self.quantization.to_json()}
            if self.quantization.active(self.precision)
            else {}
        )
        return quantization | {
            "target": self.target,
            "input_shapes": list(self.input_shapes),
            "tune": self.tune,
            "verify": self.verify,
            "tolerance": self.tolerance.to_json(),
            "precision": self.precision,
            "disabled_passes": sorted(self.disabled_passes),
            "tune_seconds": self.tune_budget_s,
            "hardware": self.hardware,
            "recipe": self.recipe,
            "trace_rules": self.trace_rules,
        }


@dataclass
class CompileResult:
    """Where the artifact went, and what the compile decided."""

    path: Path
    manifest: dict[str, Any]
    report: dict[str, Any]
    cache_hit: bool = False


@dataclass
class _Machine:
    """Where the artifact will run: this machine, or one a hardware profile describes."""

    inventory: Inventory
    profile: HardwareProfile | None
    present: set[str]
    """Device keys present here (none when planning for a profile)."""


@dataclass
class _Candidate:
    device: Device
    status: str = "pending"
    reason: str = ""
    work_dir: Path | None = None
    entry: str = ""
    files: tuple[str, ...] = ()
    config: dict[str, Any] = field(default_factory=dict)
    latency: dict[str, Any] | None = None
    verification: dict[str, Any] | None = None
    unsupported: dict[str, str] = field(default_factory=dict)
    recipe: dict[str, Any] | None = None
    """The fusion recipe's report for this candidate's target."""
    executor: Executor | None = None
    output_names: tuple[str, ...] = ()
    quantization: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"device": self.device.key, "status": self.status}
        if self.quantization:
            out["quantization"] = self.quantization
        if self.reason:
            out["reason"] = self.reason
        if self.latency:
            out["latency"] = self.latency
        if self.verification:
            out["verification"] = self.verification
        if self.unsupported:
            out["unsupported_nodes"] = dict(sorted(self.unsupported.items())[:50])
        if self.recipe:
            out["recipe"] = self.recipe
        return out


def compile_model(
    source: Any,
    output: str | Path | None = None,
    options: CompileOptions | None = None,
    *,
    cache_dir: str | Path | None = None,
    progress: Progress | None = None,
    frontend_options: dict[str, Any] | None = None,
) -> CompileResult:
    """Compile a model (ONNX path or ``ModelProto``, or what a frontend takes) into an artifact.

    Raises:
        VmmError: a subclass saying what was wrong (model, options, targets, verification).
    """
    options = options or CompileOptions()
    say = progress or (lambda message: None)
    _validate_options(options)
    out_path = _output_path(source, output)
    started = time.perf_counter()

    if options.hardware:
        say(f"planning for hardware profile {options.hardware}")
        profile: HardwareProfile | None = load_profile(options.hardware)
        inventory = profile.inventory  # type: ignore[union-attr]
    else:
        say("discovering devices")
        profile = None
        inventory = hardware.discover(registry.discoverers())
    candidates = resolve_targets(options.target, inventory)
    candidates = [d for d in candidates if d.target in registry.TARGETS]
    present = set() if profile is not None else {d.key for d in inventory.devices}
    machine = _Machine(inventory, profile, present)

    label = source if isinstance(source, str | Path) else type(source).__name__
    cache = _open_cache(cache_dir)
    if cache is None:
        say(f"loading {label}")
        loaded = load_model(source, frontend_options)
        return _compile_uncached(loaded, out_path, options, machine, candidates, say, started)
    # The cache key needs only the source's hash: a hit never parses the model.
    digest = source_digest(source)
    loaded_first: LoadedModel | None = None
    if digest is None:
        say(f"loading {label}")
        loaded_first = load_model(source, frontend_options)
        digest = loaded_first.sha256
    key = cache_key(
        {
            "source": digest,
            "options": options.to_json(),
            "toolchain": toolchain(),
            "devices": [c.key for c in candidates],
            "format": 1,
        }
    )
    with cache.locked(key):
        hit = cache.lookup(key)
        if hit is not None:
            _copy_artifact(hit, out_path)
            say(f"cache hit {key[:12]} in {time.perf_counter() - started:.2f} s")
            return CompileResult(
                out_path,
                _read_json(out_path, MANIFEST),
                read_report(out_path if out_path.is_dir() else hit),
                cache_hit=True,
            )
        if loaded_first is None:
            say(f"loading {label}")
        loaded = loaded_first or load_model(source, frontend_options)
        result = _compile_uncached(loaded, out_path, options, machine, candidates, say, started)
        if out_path.is_dir():
            cache.store(key, out_path)
        return result


def _compile_uncached(
    loaded: LoadedModel,
    out_path: Path,
    options: CompileOptions,
    machine: _Machine,
    candidates: list[Device],
    say: Progress,
    started: float,
) -> CompileResult:
    timings: dict[str, float] = {}
    clock = time.perf_counter()
    model = loaded.model
    bounds = apply_input_shapes(model, parse_input_specs(options.input_shapes))
    with tempfile.TemporaryDirectory(prefix="ai-vmm-build-") as tmp:
        work = Path(tmp)
        # The reference is the model as given (shapes applied), saved before any pass runs.
        reference = work / "reference.onnx"
        save_onnx(model, reference)
        return _compile_stages(
            loaded,
            reference,
            bounds,
            work,
            out_path,
            options,
            machine,
            candidates,
            say,
            started,
            timings,
            clock,
        )


def _compile_stages(
    loaded: LoadedModel,
    reference: Path,
    bounds: dict[str, list[Any]],
    work: Path,
    out_path: Path,
    options: CompileOptions,
    machine: _Machine,
    candidates: list[Device],
    say: Progress,
    started: float,
    timings: dict[str, float],
    clock: float,
) -> CompileResult:
    model = loaded.model
    opset = model.opset_imports.get("", 0)
    timings["load"] = time.perf_counter() - clock

    say("canonicalizing")
    clock = time.perf_counter()
    canon = canonicalize(model, frozenset(options.disabled_passes))
    timings["canonicalize"] = time.perf_counter() - clock
    inputs, outputs = model_signature(model)
    inputs = bounded_signature(inputs, bounds)
    say("analysing the architecture")
    clock = time.perf_counter()
    profile = _analyze_or_none(model)
    recipe = options.recipe or (choose_recipe(profile) if profile is not None else "default")
    timings["analyze"] = time.perf_counter() - clock
    label = profile.primary_label if profile is not None else None
    say(f"architecture: {label or 'unclassified'}; recipe: {recipe}")

    sample = synthetic_inputs(inputs, index_bounds(model))
    verification_note, expected = _reference_outputs(model, reference, sample, options, say)

    target_extra: dict[str, Any] = {
        "input_bounds": bounds,
        "sample_dims": sample_dims(model, sample),
    }
    if loaded.torch_program is not None:
        # The cuda target compiles the frontend's own torch program when it gets the whole model.
        target_extra["torch_program"] = loaded.torch_program
        target_extra["torch_program_io"] = (
            [v.name for v in model.graph.inputs],
            [v.name for v in model.graph.outputs],
        )
    target_options = TargetOptions(precision=options.precision, extra=target_extra)
    explicit_list = options.target.strip() not in ("", "auto") and len(candidates) > 1
    hetero = machine.profile is not None or explicit_list
    built: list[_Candidate] = []
    if not hetero:
        built = _build_candidates(
            model,
            recipe,
            candidates,
            target_options,
            options,
            work,
            sample,
            expected,
            say,
            timings,
        )
        try:
            chosen, rule = _choose(built, options)
        except UnsupportedModelError:
            nowhere = set.intersection(*(set(c.unsupported) for c in built))
            if len(candidates) < 2 or nowhere:
                raise  # some node runs nowhere: splitting cannot help
            say("no single device runs every node: planning partitions")
            hetero = True
    extra: dict[str, Any]
    if hetero:
        if options.quantization.active(options.precision):
            say("note: --quantize and --weights are not applied to partitioned builds yet")
        model, fusion = _fuse_for_all(model, recipe, candidates, options)
        build = build_partitioned(
            model,
            candidates,
            priority=explicit_list,
            profile=machine.profile,
            present=machine.present,
            target_options=target_options,
            sample=sample,
            work=work,
            say=say,
        )
        verification = _verify_partitioned(build, sample, expected, options.tolerance, say)
        partitions = tuple(build.partitions)
        payloads = build.payload_dirs
        devices = ",".join(sorted({f"{p.target}:{p.device}" for p in partitions}))
        extra = {
            "fusion": fusion,
            "chosen": {"device": devices, "rule": build.report["rule"]},
            "plan": build.report,
            "verification": verification
            or {
                "status": "skipped",
                "reason": verification_note or "planned for devices that are not present",
            },
        }
    else:
        say(f"chose {chosen.device.key} ({rule})")
        assert chosen.work_dir is not None
        partitions = (
            PartitionSpec(
                id="p0",
                target=chosen.device.target,
                device=chosen.device.name,
                entry=f"p0/{chosen.entry}",
                files={f"p0/{n}": sha256_file(chosen.work_dir / n) for n in chosen.files},
                inputs=tuple(spec.name for spec in inputs),
                outputs=tuple(spec.name for spec in outputs),
                config=chosen.config,
            ),
        )
        payloads = {"p0": chosen.work_dir}
        extra = {
            "chosen": {"device": chosen.device.key, "rule": rule},
            **({"quantization": chosen.quantization} if chosen.quantization else {}),
            "verification": chosen.verification
            or {"status": "skipped", "reason": verification_note},
        }
    timings["total"] = time.perf_counter() - started
    manifest = Manifest(
        inputs=inputs,
        outputs=outputs,
        partitions=partitions,
        compile_options=options.to_json(),
        toolchain=toolchain(*sorted({p.target for p in partitions})),
        source={"format": "onnx", "sha256": loaded.sha256, "opset": opset},
    )
    report: dict[str, Any] = {
        "source": {"path": loaded.source, "sha256": loaded.sha256, "notes": loaded.notes},
        "stages": {"canonicalize": canon.to_json()},
        "profile": profile.to_json() if profile is not None else None,
        "recipe": recipe,
        "candidates": [c.to_json() for c in built],
        **extra,
        "host": {
            "cpu": machine.inventory.cpu.model,
            "isa": list(machine.inventory.cpu.isa),
            "libraries": machine.inventory.libraries,
            **({"profile": machine.profile.name} if machine.profile else {}),
        },
    }
    if options.tune:
        # Tuned compiles carry their measurements; --no-tune artifacts must reproduce byte
        # for byte, so they carry no clock readings at all.
        report["timings_s"] = {k: round(v, 4) for k, v in timings.items()}
        report["compiled_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    say(f"writing {out_path}")
    write_artifact(out_path, manifest, report, payloads)
    return CompileResult(out_path, manifest.to_json(), report)


def _fuse_for_all(
    model: ir.Model, recipe: str, devices: list[Device], options: CompileOptions
) -> tuple[ir.Model, dict[str, Any]]:
    """Fuse a copy of ``model`` with only the ops every candidate's target runs."""
    targets = [registry.get_target(t) for t in sorted({d.target for d in devices})]
    return _fuse(
        model,
        recipe,
        options,
        "+".join(t.name for t in targets),
        lambda domain, op: all(t.supports_op(domain, op) for t in targets),
    )


def _fuse(
    model: ir.Model,
    recipe: str,
    options: CompileOptions,
    target: str,
    supported_ops: Callable[[str, str], bool],
) -> tuple[ir.Model, dict[str, Any]]:
    """A fused copy of ``model``; if a fusion breaks, the unfused model and the reason.

    Fusion is an optimization: it must never be why a compile fails.
    """
    fused = model.clone()
    try:
        report = apply_recipe(
            fused,
            recipe,
            target=target,
            supported_ops=supported_ops,
            disabled=frozenset(options.disabled_passes),
            trace=options.trace_rules,
        )
    except Exception as exc:
        return model.clone(), {"recipe": recipe, "target": target, "error": _one_line(exc)}
    # Rewrites create nodes without names; capability and partition plans key nodes by name.
    NameFixPass()(fused)
    return fused, report.to_json()


def _analyze_or_none(model: ir.Model) -> Any:
    """The architecture profile, or ``None`` when analysis fails on an unusual graph."""
    try:
        return analyze(model)
    except Exception:
        return None


def _verify_partitioned(
    build: PartitionedBuild,
    sample: dict[str, np.ndarray] | None,
    expected: dict[str, Any] | None,
    tolerance: Tolerance,
    say: Progress,
) -> dict[str, Any] | None:
    """Run the partitions in order against the reference; ``None`` when that is not possible."""
    if sample is None or expected is None or len(build.executors) < len(build.partitions):
        return None
    say("verifying the partitioned model against the reference")

    class _Chain:
        def run(self, inputs: dict[str, Any]) -> dict[str, Any]:
            return build.run(inputs)

    verification = _verify(_Chain(), sample, expected, tolerance)
    if not verification["passed"]:
        failed = [n for n, r in verification["outputs"].items() if not r["passed"]]
        raise CompileError(
            f"the partitioned model differs from the reference on {', '.join(failed)} "
            f"(use --no-verify to accept unverified outputs)"
        )
    return verification


def _validate_options(options: CompileOptions) -> None:
    if options.precision not in PRECISIONS:
        raise CompileError(
            f"unknown precision '{options.precision}' (choose from {', '.join(PRECISIONS)})"
        )
    validate_quantization(options.quantization)
    passes = (*STEP_NAMES, *RECIPE_STEPS)
    unknown = sorted(set(options.disabled_passes) - set(passes))
    if unknown:
        raise CompileError(
            f"unknown pass {', '.join(unknown)} for --disable-pass (passes: {', '.join(passes)})"
        )
    if options.recipe is not None and options.recipe not in RECIPES:
        raise CompileError(
            f"unknown recipe '{options.recipe}' (recipes: {', '.join(sorted(RECIPES))})"
        )
    if options.tune_budget_s <= 0:
        raise CompileError("the tuning budget must be positive")
    if options.tolerance.rtol < 0 or options.tolerance.atol < 0:
        raise CompileError("tolerances must not be negative")


def _output_path(source: Any, output: str | Path | None) -> Path:
    if output is not None:
        return Path(output)
    stem = Path(source).stem if isinstance(source, str | Path) else "model"
    return Path(f"{stem}.vmm")


def _open_cache(cache_dir: str | Path | None) -> CompileCache | None:
    root = cache_root(cache_dir)
    if root is None:
        return None
    try:
        return CompileCache(root)
    except OSError as exc:
        raise CompileError(f"cannot use cache directory {root}: {exc}") from exc


def resolve_targets(spec: str, inventory: Inventory) -> list[Device]:
    """``auto`` -> every device of every target; ``a:B,c:D`` -> those, in that priority order."""
    if spec.strip() in ("", "auto"):
        devices = [d for d in inventory.devices if d.target in registry.TARGETS]
        if not devices:
            raise DeviceError("no target is available here: " + "; ".join(inventory.notes))
        return devices
    chosen: list[Device] = []
    for item in (part.strip() for part in spec.split(",")):
        target, _, name = item.partition(":")
        registry.get_target(target)  # an unknown target name is a clear error
        device = inventory.find(target, name or None)
        if device is None:
            available = ", ".join(d.key for d in inventory.devices) or "none"
            raise DeviceError(f"--target {item}: no such device here (available: {available})")
        chosen.append(device)
    return chosen


def _reference_outputs(
    model: ir.Model,
    reference: Path,
    sample: dict[str, np.ndarray] | None,
    options: CompileOptions,
    say: Progress,
) -> tuple[str, dict[str, Any] | None]:
    """Run ONNX Runtime on the original model: the numbers every candidate must reproduce."""
    if not options.verify:
        return "disabled by --no-verify", None
    if sample is None:
        return "the model has non-tensor inputs: no synthetic sample", None
    random_ops = sorted(
        {n.op_type for n in ir.traversal.RecursiveGraphIterator(model.graph)} & NONDETERMINISTIC_OPS
    )
    if random_ops:
        return f"the model draws random numbers ({', '.join(random_ops)})", None
    say("running the reference (ONNX Runtime on the original model)")
    try:
        names = tuple(v.name or "" for v in model.graph.outputs)
        executor = create_executor(
            "onnxruntime", reference, "CPU", {"graph_optimization_level": "disable"}, names
        )
        return "", executor.run(sample)
    except VmmError as exc:
        return f"ONNX Runtime cannot run the original model: {exc}", None


def _build_candidates(
    model: ir.Model,
    recipe: str,
    devices: list[Device],
    target_options: TargetOptions,
    options: CompileOptions,
    work: Path,
    sample: dict[str, np.ndarray] | None,
    expected: dict[str, Any] | None,
    say: Progress,
    timings: dict[str, float],
) -> list[_Candidate]:
    quantizing = options.quantization.active(options.precision)
    if quantizing:
        # Lower precision is the quantize stage's job, behind its gates: build float first.
        target_options = replace(target_options, precision="fp32")
    ordered = devices if options.tune else static_order(devices)
    built: list[_Candidate] = []
    for index, device in enumerate(ordered):
        candidate = _Candidate(device)
        built.append(candidate)
        if not options.tune and any(c.status == "ok" for c in built):
            candidate.status, candidate.reason = "not built", "--no-tune: static rule chose earlier"
            continue
        clock = time.perf_counter()
        target = registry.get_target(device.target)
        say(f"[{device.key}] fusing ({recipe} recipe)")
        # Fusions are target-aware, so each candidate gets its own copy (tensors are shared).
        fused, candidate.recipe = _fuse(model, recipe, options, device.target, target.supports_op)
        say(f"[{device.key}] checking capability")
        support: dict[str, NodeSupport] = target.capability(fused, device)
        candidate.unsupported = {n: s.reason for n, s in support.items() if not s.supported}
        if candidate.unsupported:
            candidate.status = "unsupported"
            candidate.reason = f"{len(candidate.unsupported)} nodes it cannot run"
            continue
        say(f"[{device.key}] generating code")
        candidate.work_dir = work / f"c{index}"
        candidate.work_dir.mkdir()
        try:
            prepared = target.prepare(fused, target_options)
            payload = target.codegen(prepared, device, target_options, candidate.work_dir)
            candidate.output_names = tuple(v.name or "" for v in fused.graph.outputs)
            executor = create_executor(
                device.target,
                candidate.work_dir / payload.entry,
                device.name,
                payload.config,
                candidate.output_names,
            )
        except VmmError as exc:
            candidate.status, candidate.reason = "failed", str(exc)
            continue
        except Exception as exc:  # a backend's own exception: keep its message, one line
            candidate.status, candidate.reason = "failed", _one_line(exc)
            continue
        candidate.entry, candidate.files, candidate.config = (
            payload.entry,
            payload.files,
            payload.config,
        )
        timings[f"build {device.key}"] = time.perf_counter() - clock
        if sample is not None and expected is not None:
            say(f"[{device.key}] verifying against the reference")
            candidate.verification = _verify(executor, sample, expected, options.tolerance)
            if not candidate.verification["passed"]:
                candidate.status = "mismatch"
                candidate.reason = "outputs differ from the reference: " + ", ".join(
                    f"{name} max abs error {r.get('max_abs_error', r.get('reason', '?'))}"
                    for name, r in candidate.verification["outputs"].items()
                    if not r["passed"]
                )
                continue
        candidate.status = "ok"
        candidate.executor = executor
    if quantizing:
        clock = time.perf_counter()
        quantize_candidates(
            model,
            [c for c in built if c.status == "ok"],
            options.quantization,
            precision=options.precision,
            target_options=target_options,
            work=work,
            host_isa=hardware.detect_cpu().isa,
            measure_speed=options.tune,
            speed_budget_s=options.tune_budget_s,
            say=say,
        )
        timings["quantize"] = time.perf_counter() - clock
    if options.tune and sample is not None:
        _tune([c for c in built if c.status == "ok"], sample, options, say)
    return built


def _tune(
    candidates: list[_Candidate],
    sample: dict[str, np.ndarray],
    options: CompileOptions,
    say: Progress,
) -> None:
    """Time every candidate and each of its target's runtime variants; keep each one's best.

    Contenders are timed in interleaved rounds (every contender once per round) and ranked by
    the median of their round medians, so a noisy neighbour on the machine hits all alike.
    """
    contenders: list[tuple[_Candidate, dict[str, Any], Executor]] = []
    for candidate in candidates:
        assert candidate.executor is not None and candidate.work_dir is not None
        contenders.append((candidate, {}, candidate.executor))
        target = registry.get_target(candidate.device.target)
        for override in target.tuning_space(candidate.device):
            config = {**candidate.config, **override}
            try:
                executor = create_executor(
                    candidate.device.target,
                    candidate.work_dir / candidate.entry,
                    candidate.device.name,
                    config,
                    candidate.output_names,
                )
            except VmmError:
                continue
            contenders.append((candidate, override, executor))
    say(f"timing {len(contenders)} contenders in {TUNE_ROUNDS} interleaved rounds")
    rounds: list[list[float]] = [[] for _ in contenders]
    budget = options.tune_budget_s / TUNE_ROUNDS
    for _ in range(TUNE_ROUNDS):
        for index, (candidate, _, executor) in enumerate(contenders):
            try:
                rounds[index].append(measure(_runner(executor, sample), budget_s=budget).median_ms)
            except VmmError as exc:
                candidate.status, candidate.reason = "failed", str(exc)
                rounds[index].append(float("inf"))
    for candidate in candidates:
        variants = [
            (statistics.median(rounds[i]), override)
            for i, (owner, override, _) in enumerate(contenders)
            if owner is candidate
        ]
        best_ms, best_override = min(variants, key=lambda item: item[0])
        candidate.config = {**candidate.config, **best_override}
        candidate.latency = {
            "median_ms": round(best_ms, 4),
            "variants": [
                {"config": override, "median_ms": round(ms, 4)} for ms, override in variants
            ],
        }


def _runner(executor: Executor, feed: dict[str, np.ndarray]) -> Callable[[], Any]:
    return lambda: executor.run(feed)


def static_order(devices: list[Device]) -> list[Device]:
    """The documented ``--no-tune`` order (see ``registry.STATIC_PRIORITY_*``)."""
    cpu = hardware.detect_cpu()
    priority = (
        registry.STATIC_PRIORITY_INTEL
        if "intel" in cpu.vendor.lower()
        else registry.STATIC_PRIORITY_OTHER
    )

    def rank(device: Device) -> tuple[int, str]:
        base = f"{device.target}:{device.name.split('.')[0]}"
        return (priority.index(base) if base in priority else len(priority), device.key)

    return sorted(devices, key=rank)


def _verify(
    executor: Executor,
    sample: dict[str, np.ndarray],
    expected: dict[str, Any],
    tolerance: Tolerance,
) -> dict[str, Any]:
    try:
        got = executor.run(sample)
    except VmmError as exc:
        return {"passed": False, "outputs": {"*": {"passed": False, "reason": str(exc)}}}
    results = {}
    for name, ref in expected.items():
        if name not in got:
            results[name] = {"passed": False, "reason": "output missing"}
        elif isinstance(ref, list | dict) or ref is None:
            results[name] = {"passed": True, "note": "non-tensor output not compared"}
        else:
            results[name] = compare(got[name], ref, tolerance)
    return {
        "passed": all(r["passed"] for r in results.values()),
        "tolerance": tolerance.to_json(),
        "inputs": "synthetic (seed 0)",
        "outputs": results,
    }


def _choose(built: list[_Candidate], options: CompileOptions) -> tuple[_Candidate, str]:
    ok = [c for c in built if c.status == "ok"]
    if not ok:
        unsupported = [c for c in built if c.status == "unsupported"]
        if unsupported and len(unsupported) == len(built):
            # A node counts when no candidate can run it; say why, per target.
            blocking = sorted(set.intersection(*(set(c.unsupported) for c in unsupported)))
            blocking = blocking or sorted({n for c in unsupported for n in c.unsupported})
            details = [
                f"{name} ("
                + "; ".join(
                    f"{c.device.key}: {c.unsupported[name]}"
                    for c in unsupported
                    if name in c.unsupported
                )
                + ")"
                for name in blocking[:5]
            ]
            raise UnsupportedModelError(
                f"no available target can run {len(blocking)} node(s): {', '.join(details)}"
                + (" ..." if len(blocking) > 5 else "")
            )
        raise CompileError(
            "no target produced a verified payload: "
            + "; ".join(f"{c.device.key}: {c.status} ({c.reason})" for c in built)
            + (
                " (use --no-verify to accept unverified outputs)"
                if any(c.status == "mismatch" for c in built)
                else ""
            )
        )
    if options.tune and all(c.latency for c in ok) and len(ok) > 1:
        best = min(ok, key=lambda c: c.latency["median_ms"] if c.latency else float("inf"))
        return best, "fastest measured on this machine"
    if len(ok) == 1 and len(built) > 1 and options.tune:
        return ok[0], "the only candidate that built and verified"
    return ok[0], (
        "first in the static priority order" if not options.tune else "the only candidate"
    )


def _copy_artifact(source: Path, out_path: Path) -> None:
    if out_path.suffix == ".zip":
        write_zip(source, out_path)
        return
    with staged_directory(out_path) as stage:
        shutil.rmtree(stage)
        shutil.copytree(source, stage)


def _read_json(path: Path, name: str) -> dict[str, Any]:
    import json
    import zipfile

    if path.is_dir():
        data: dict[str, Any] = json.loads((path / name).read_text())
        return data
    with zipfile.ZipFile(path) as archive:
        loaded: dict[str, Any] = json.loads(archive.read(name))
        return loaded


_TOOLCHAIN_PACKAGES = ("onnx", "onnx-ir", "onnxscript")
_TARGET_PACKAGES = {
    "openvino": "openvino",
    "onnxruntime": "onnxruntime",
    "cuda": "torch",
    "tensorrt": "tensorrt",
}


def toolchain(*targets: str) -> dict[str, str]:
    """Versions of ai-vmm and the libraries that shaped a payload (all targets if none given)."""
    names = ["ai-vmm", *_TOOLCHAIN_PACKAGES]
    names += [_TARGET_PACKAGES[t] for t in targets] if targets else list(_TARGET_PACKAGES.values())
    names = list(dict.fromkeys(names))
    versions = {}
    for name in names:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "absent"
    versions["python"] = platform.python_version().rsplit(".", 1)[0]
    return versions


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{exc.__class__.__name__}: {text[:300]}" if text else exc.__class__.__name__
