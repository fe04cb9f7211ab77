"""The driver: runs the compile stages in order and writes the artifact.

    load -> input shapes -> canonicalize -> choose devices -> per candidate: capability, prepare,
    codegen, verify against the reference, time -> choose -> write artifact (+ cache)

Every decision lands in ``report.json``; the manifest holds only what the runtime needs and is
byte-for-byte reproducible.
"""

from __future__ import annotations

import importlib.metadata
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx_ir as ir

from ai_vmm import hardware, registry
from ai_vmm.cache import CompileCache, cache_key, cache_root
from ai_vmm.candidates import Candidate, build_candidates, choose, verify
from ai_vmm.frontends import LoadedModel, load_model, source_digest
from ai_vmm.fusion_stage import fuse_for_all
from ai_vmm.hardware_profile import HardwareProfile, load_profile
from ai_vmm.inputs import Tolerance, index_bounds, synthetic_inputs
from ai_vmm.partition import PartitionedBuild, build_partitioned, sample_dims
from ai_vmm.passes.analyze import analyze
from ai_vmm.passes.canonicalize import STEP_NAMES, canonicalize
from ai_vmm.passes.recipes import RECIPES, choose_recipe
from ai_vmm.passes.recipes import STEP_NAMES as RECIPE_STEPS
from ai_vmm.quantize import QuantizationOptions, validate_quantization
from ai_vmm.runtime.artifact import (
    MANIFEST,
    Manifest,
    PartitionSpec,
    check_output_path,
    copy_artifact,
    read_report,
    sha256_file,
    write_artifact,
)
from ai_vmm.runtime.devices import Device, Inventory
from ai_vmm.runtime.errors import CompileError, DeviceError, UnsupportedModelError, VmmError
from ai_vmm.runtime.executors import create_executor
from ai_vmm.runtime.staging import build_directory
from ai_vmm.signature import (
    apply_input_shapes,
    bounded_signature,
    model_signature,
    parse_input_specs,
)
from ai_vmm.targets.base import TargetOptions, save_onnx

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


def compile_model(
    source: Any,
    output: str | Path | None = None,
    options: CompileOptions | None = None,
    *,
    cache_dir: str | Path | None = None,
    progress: Progress | None = None,
    frontend_options: dict[str, Any] | None = None,
    force: bool = False,
) -> CompileResult:
    """Compile a model (ONNX path or ``ModelProto``, or what a frontend takes) into an artifact.

    ``force``: replace whatever is at ``output`` even when it is not an ai-vmm artifact.

    Raises:
        VmmError: a subclass saying what was wrong (model, options, targets, verification).
    """
    options = options or CompileOptions()
    say = progress or (lambda message: None)
    _validate_options(options)
    # Before any compile work: never destroy what the user has at the output path.
    out_path = check_output_path(_output_path(source, output), force=force)
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
    # Locked while it lives, so a later compile sweeps it if this one is killed.
    with build_directory() as work:
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
    built: list[Candidate] = []
    if not hetero:
        built = build_candidates(
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
            chosen, rule = choose(built, options)
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
        model, fusion = fuse_for_all(model, recipe, candidates, options)
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

    verification = verify(_Chain(), sample, expected, tolerance)
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


def _copy_artifact(source: Path, out_path: Path) -> None:
    copy_artifact(source, out_path)


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
