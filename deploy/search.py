"""The constraint search: compile the candidates, measure them on the samples, choose one.

    model (ONNX, or exported once to ONNX; an artifact; an OpenVINO IR)
      -> fp32 build per device of every present hardware class         (builds.py)
      -> samples checked against the model's inputs (or synthesised)   (samples.py)
      -> low-precision builds where max_accuracy_drop permits them
      -> accuracy of each build on the held-out samples vs the reference
      -> variants: thread counts (CPU) x batch sizes (when throughput or power is constrained)
      -> measured in interleaved rounds: latency, throughput, memory, power  (measure.py)
      -> judged and chosen                                              (choose.py)

The result carries every build and variant with its figures, checks and status: the
explanation a ``Deployment`` shows.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ai_vmm.deploy.builds import (
    OPEN_GATE,
    Build,
    BuildSpec,
    build_one,
    held_out,
    measure_accuracy,
    plan_builds,
    reference_outputs,
)
from ai_vmm.deploy.choose import Variant, choose, preference_rank
from ai_vmm.deploy.constraints import Constraints
from ai_vmm.deploy.export import raw_examples
from ai_vmm.deploy.hardware import Hardware
from ai_vmm.deploy.measure import Contender, Figures, measure_contenders
from ai_vmm.deploy.samples import Samples, batch_axis_ok, digest_of, load_samples
from ai_vmm.deploy.store import derive_variant
from ai_vmm.deploy.telemetry import Telemetry
from ai_vmm.runtime.artifact import TensorSpec, read_manifest
from ai_vmm.runtime.devices import Device, Inventory
from ai_vmm.runtime.errors import CompileError, UnsupportedModelError

Say = Callable[[str], None]
COMPILABLE_TARGETS = ("openvino", "onnxruntime", "cuda", "tensorrt")


@dataclass
class SearchInput:
    """What the search works on."""

    onnx: Path | None
    """The ONNX model to compile (``None`` for an artifact or IR source)."""
    fixed_builds: list[Build] = field(default_factory=list)
    """Builds that exist already (an artifact, a wrapped IR): no compile."""
    samples: Any = None
    made_samples: list[dict[str, Any]] | None = None


@dataclass
class SearchResult:
    chosen: Variant
    rule: str
    meets: bool
    builds: list[Build]
    variants: list[Variant]
    samples: Samples
    notes: list[str]
    reference: str
    seconds: float


def candidate_devices(
    hardware: Sequence[Hardware], targets: Sequence[str] = COMPILABLE_TARGETS
) -> list[tuple[Device, str]]:
    """Every device of every present class that a compile target drives, with its class."""
    found = []
    for entry in hardware:
        if not entry.present:
            continue
        for device in entry.devices:
            if device.target in targets:
                found.append((device, entry.name))
    return found


def thread_options(cores: int) -> list[int]:
    """1, half the cores (from 4 cores on), all cores."""
    options = {1, max(1, cores)}
    if cores >= 4:
        options.add(cores // 2)
    return sorted(options)


def batch_options(max_batch: int) -> list[int]:
    """1, then powers of four, then ``max_batch`` itself."""
    options = {1, max_batch}
    size = 4
    while size < max_batch:
        options.add(size)
        size *= 4
    return sorted(options)


def run_search(
    source: SearchInput,
    *,
    hardware: Sequence[Hardware],
    inventory: Inventory,
    constraints: Constraints,
    telemetry: Telemetry,
    builds_dir: Path,
    variants_dir: Path,
    host_cpu: str,
    measure_seconds: float,
    strict: bool,
    say: Say,
    restore_accuracy: bool = False,
) -> SearchResult:
    """Build, measure and choose (see the module docstring).

    Raises:
        CompileError / UnsupportedModelError: no device could compile the model at all.
        ConstraintError: nothing meets the constraints (``strict``).
        InputError: samples that do not fit the model.
    """
    from ai_vmm.hardware import cpu_precisions

    started = time.perf_counter()
    notes: list[str] = []
    builds_dir.mkdir(parents=True, exist_ok=True)
    devices = candidate_devices(hardware)
    # Most preferred classes first: their builds are compiled (and reported) first.
    devices.sort(
        key=lambda item: preference_rank(item[1], constraints.preferred_hardware, host_cpu)
    )
    builds: list[Build] = list(source.fixed_builds)
    given = source.made_samples or source.samples
    raw: dict[str, Any] = {}
    if given is not None:
        raw = {"raw_samples": given, "raw_digest": digest_of(raw_examples(given))}
    if source.onnx is not None:
        if not devices:
            raise CompileError(
                "no device here can run a compiled model: " + "; ".join(inventory.notes)
            )
        for device, name in devices:
            spec = BuildSpec(device, name, "fp32")
            builds.append(build_one(spec, source.onnx, builds_dir, None, {}, say, **raw))
        if len(devices) > 1 and any(b.status == "failed" for b in builds):
            # A device that cannot take the whole model may still take part of it.
            lead, lead_class = devices[0]
            plan = BuildSpec(lead, lead_class, "fp32", tuple(d.key for d, _ in devices))
            builds.append(build_one(plan, source.onnx, builds_dir, None, {}, say, **raw))
    usable = [b for b in builds if b.usable]
    if not usable:
        reasons = "; ".join(f"{b.spec.id}: {b.reason}" for b in builds)
        error = UnsupportedModelError if "cannot run" in reasons else CompileError
        raise error(f"no device could compile the model: {reasons}"[:900])
    first = read_manifest(usable[0].path)  # type: ignore[arg-type]
    samples = load_samples(given, first.inputs)
    if source.made_samples:
        samples = replace(samples, synthetic=True, description="synthetic samples (none given)")
    if source.onnx is not None:
        specs, plan_notes = plan_builds(
            devices,
            inventory.cpu,
            low_precision=constraints.permits_low_precision,
            real_samples=not samples.synthetic and len(samples) >= 2,
            cpu_precisions=cpu_precisions(inventory.cpu),
        )
        notes += plan_notes
        for spec in specs:
            if spec.precision != "fp32":
                builds.append(
                    build_one(
                        spec,
                        source.onnx,
                        builds_dir,
                        samples,
                        dict(constraints.max_accuracy_drop) if restore_accuracy else OPEN_GATE,
                        say,
                        **raw,
                    )
                )
    feeds = held_out(samples)
    output_names = tuple(spec.name for spec in first.outputs)
    reference, against = reference_outputs(source.onnx, output_names, feeds)
    if reference is None:
        fp32 = next(b for b in builds if b.usable)
        reference = _outputs_of(fp32.path, feeds)  # type: ignore[arg-type]
        against = f"the {fp32.spec.id} build as compiled ({against})"
    reference_note = f"on the {len(feeds)} held-out samples (the last quarter), against {against}"
    usable_count = sum(b.usable for b in builds)
    say(f"measuring accuracy of {usable_count} builds on {len(feeds)} held-out samples")
    for build in builds:
        if build.usable:
            build.accuracy = measure_accuracy(build, reference, feeds)
    variants = _variants(builds, first.inputs, samples, constraints, inventory, variants_dir, notes)
    say(f"measuring {len(variants)} candidates on {len(samples)} samples")
    _measure(variants, samples, telemetry, inventory, measure_seconds, say)
    chosen, rule, meets = choose(variants, constraints, host_cpu, strict=strict)
    return SearchResult(
        chosen,
        rule,
        meets,
        builds,
        variants,
        samples,
        notes,
        reference_note,
        time.perf_counter() - started,
    )


def _outputs_of(path: Path, feeds: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    from ai_vmm.runtime import load

    with load(path) as model:
        return [model.run(feed) for feed in feeds]


def _variants(
    builds: Sequence[Build],
    inputs: tuple[TensorSpec, ...],
    samples: Samples,
    constraints: Constraints,
    inventory: Inventory,
    variants_dir: Path,
    notes: list[str],
) -> list[Variant]:
    wants_batching = constraints.max_batch > 1 and (
        constraints.min_throughput is not None
        or constraints.power_budget_watts is not None
        or constraints.objective == "throughput"
    )
    batches = [1]
    if wants_batching:
        why = batch_axis_ok(inputs, samples, constraints.max_batch)
        if why is None:
            batches = batch_options(constraints.max_batch)
        else:
            notes.append(f"batching not tried: {why}")
    cores = inventory.cpu.physical_cores
    variants: list[Variant] = []
    for build in builds:
        if not build.usable:
            continue
        assert build.path is not None
        on_cpu = build.spec.device.kind == "cpu" and build.path.is_dir()
        threads: list[int | None] = list(thread_options(cores)) if on_cpu else [None]
        for count in threads:
            path = build.path
            if count is not None:
                path = thread_variant(build.path, variants_dir, count)
            for batch in batches:
                # Batches (a throughput setting) are tried with every core only: a batch of 64
                # on one core of a big model takes seconds a call to measure, and rarely wins.
                if batch > 1 and count is not None and count != threads[-1]:
                    continue
                variants.append(Variant(build, count, batch, path))
    return variants


def thread_variant(build_path: Path, variants_dir: Path, threads: int) -> Path:
    """The CPU build at ``build_path`` run with ``threads`` threads
    (``variants_dir/<build>-t<N>.vmm``, derived once and reused)."""
    name = f"{build_path.stem}-t{threads}.vmm"
    return derive_variant(build_path, variants_dir / name, {"threads": threads})


def _measure(
    variants: Sequence[Variant],
    samples: Samples,
    telemetry: Telemetry,
    inventory: Inventory,
    seconds: float,
    say: Say,
) -> None:
    from ai_vmm.runtime import load

    batched = {b: samples.batched(b) for b in sorted({v.batch for v in variants})}
    limits = {g.index: g.power_limit_w for g in inventory.gpus}
    contenders = []
    for variant in variants:
        device = variant.build.spec.device
        gpu_index = int(device.name) if device.name.isdigit() else 0
        path = variant.path
        assert path is not None

        def loader(path: Path = path) -> Any:
            return load(path)

        contenders.append(
            Contender(
                key=variant.key,
                load=loader,
                load_key=str(path),
                family=device.key,
                feeds=batched[variant.batch],
                batch=variant.batch,
                device_kind=device.kind if device.kind in ("cpu", "gpu") else "other",
                gpu_index=gpu_index,
                gpu_power_limit_w=limits.get(gpu_index),
            )
        )
    results = measure_contenders(
        contenders, telemetry, seconds=seconds, cores=inventory.cpu.logical_cores, say=say
    )
    for variant in variants:
        result = results.get(variant.key)
        if isinstance(result, Figures):
            variant.figures = result
        else:
            variant.error = result or "not measured"
