"""Candidates: every compile compares plans, and a single-device build is a one-partition plan.

    single device:  fuse for its target -> capability -> prepare -> codegen -> load
    partitioned:    fuse for every target -> capability -> cost model -> plan -> outline ->
                    codegen per partition (a partition that fails is re-planned without that
                    device for its nodes) -> load

Both give a ``Candidate``: partitions in dependency order, each a ``BuiltPartition`` with its
payload and executor. From there every candidate takes the same road (``ai_vmm.gates``:
verification against the reference, then the precision / quantization gates per partition;
``ai_vmm.choice``: timing per shape bucket and the choice).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx_ir as ir

from ai_vmm import hardware, registry
from ai_vmm.fusion_stage import fuse, fuse_for_all, one_line
from ai_vmm.hardware_profile import HardwareProfile
from ai_vmm.options import CompileOptions
from ai_vmm.partition import build_partitioned
from ai_vmm.runtime.artifact import PartitionSpec, sha256_file
from ai_vmm.runtime.devices import Device
from ai_vmm.runtime.errors import VmmError
from ai_vmm.runtime.executors import Executor, create_executor
from ai_vmm.targets.base import NodeSupport, TargetOptions

Progress = Callable[[str], None]


@dataclass
class BuiltPartition:
    """One partition of a candidate: its payload on disk and its loaded executor.

    It has the attributes the quantize stage reads (``ai_vmm.quantize.BuiltCandidate``).
    """

    id: str
    device: Device
    model: ir.Model
    """What the quantize stage compresses: the partition's (outlined) graph; for a one-partition
    candidate the canonical model, before fusion, as a single-device build always did."""
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    work_dir: Path | None = None
    entry: str = ""
    files: tuple[str, ...] = ()
    config: dict[str, Any] = field(default_factory=dict)
    executor: Executor | None = None
    verification: dict[str, Any] | None = None
    quantization: dict[str, Any] | None = None

    @property
    def output_names(self) -> tuple[str, ...]:
        return self.outputs

    def spec(self, part_id: str, root: str, config: dict[str, Any] | None = None) -> PartitionSpec:
        """The manifest entry, payload files under ``root/`` in the artifact."""
        assert self.work_dir is not None
        return PartitionSpec(
            id=part_id,
            target=self.device.target,
            device=self.device.name,
            entry=f"{root}/{self.entry}",
            files={f"{root}/{n}": sha256_file(self.work_dir / n) for n in self.files},
            inputs=self.inputs,
            outputs=self.outputs,
            config=self.config if config is None else config,
        )


@dataclass
class Candidate:
    """One plan: a device (one partition) or a partitioned build across devices."""

    name: str
    devices: list[Device]
    partitioned: bool = False
    status: str = "pending"
    reason: str = ""
    partitions: list[BuiltPartition] = field(default_factory=list)
    unsupported: dict[str, str] = field(default_factory=dict)
    recipe: dict[str, Any] | None = None
    """The fusion recipe's report for this candidate's target(s)."""
    plan: dict[str, Any] | None = None
    """A partitioned candidate's plan: where every node went and why, re-plans."""
    verification: dict[str, Any] | None = None
    quantization: dict[str, Any] | None = None
    latency: dict[str, Any] | None = None
    """Measured per shape bucket (``ai_vmm.choice``)."""
    build_s: float = 0.0

    @property
    def device(self) -> Device:
        return self.devices[0]

    @property
    def deferred(self) -> bool:
        """Some partition has no executor (built for a device that is not here)."""
        return any(p.executor is None for p in self.partitions)

    def run(
        self, feed: dict[str, Any], executors: dict[str, Executor] | None = None
    ) -> dict[str, Any]:
        """Run the partitions in order (``executors`` overrides some, by partition id)."""
        values = dict(feed)
        for part in self.partitions:
            executor = (executors or {}).get(part.id) or part.executor
            assert executor is not None, f"partition {part.id} has no executor"
            values.update(executor.run({n: values[n] for n in part.inputs}))
        return values

    def to_json(self, clocks: bool = True) -> dict[str, Any]:
        """The report entry; ``clocks=False`` leaves out wall-clock readings (``--no-tune``
        artifacts reproduce byte for byte)."""
        out: dict[str, Any] = {"device": self.name, "status": self.status}
        if self.partitioned:
            out["partitions"] = [
                {"id": p.id, "device": p.device.key, "config": p.config} for p in self.partitions
            ]
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
        if self.build_s and clocks:
            out["build_s"] = round(self.build_s, 3)
        return out


def build_single(
    model: ir.Model,
    recipe: str,
    device: Device,
    index: int,
    target_options: TargetOptions,
    options: CompileOptions,
    work: Path,
    say: Progress,
) -> Candidate:
    """The one-partition plan on ``device``: fuse, capability, prepare, codegen, load."""
    candidate = Candidate(device.key, [device])
    clock = time.perf_counter()
    target = registry.get_target(device.target)
    say(f"[{device.key}] fusing ({recipe} recipe)")
    # Fusions are target-aware, so each candidate gets its own copy (tensors are shared).
    fused, candidate.recipe = fuse(model, recipe, options, device.target, target.supports_op)
    say(f"[{device.key}] checking capability")
    support: dict[str, NodeSupport] = target.capability(fused, device)
    candidate.unsupported = {n: s.reason for n, s in support.items() if not s.supported}
    if candidate.unsupported:
        candidate.status = "unsupported"
        candidate.reason = f"{len(candidate.unsupported)} nodes it cannot run"
        return candidate
    say(f"[{device.key}] generating code")
    out_dir = work / f"c{index}"
    out_dir.mkdir()
    inputs = tuple(v.name or "" for v in fused.graph.inputs)
    outputs = tuple(v.name or "" for v in fused.graph.outputs)
    try:
        prepared = target.prepare(fused, target_options)
        payload = target.codegen(prepared, device, target_options, out_dir)
        executor = create_executor(
            device.target, out_dir / payload.entry, device.name, payload.config, outputs
        )
    except VmmError as exc:
        candidate.status, candidate.reason = "failed", str(exc)
        return candidate
    except Exception as exc:  # a backend's own exception: keep its message, one line
        candidate.status, candidate.reason = "failed", one_line(exc)
        return candidate
    candidate.partitions = [
        BuiltPartition(
            "p0",
            device,
            model,
            inputs,
            outputs,
            out_dir,
            payload.entry,
            payload.files,
            dict(payload.config),
            executor,
        )
    ]
    candidate.status = "built"
    candidate.build_s = time.perf_counter() - clock
    return candidate


def build_split(
    model: ir.Model,
    recipe: str,
    devices: list[Device],
    *,
    priority: bool,
    profile: HardwareProfile | None,
    present: set[str],
    target_options: TargetOptions,
    options: CompileOptions,
    sample: dict[str, np.ndarray] | None,
    work: Path,
    say: Progress,
) -> Candidate:
    """The partitioned plan across ``devices`` (cost model, or ``priority`` order)."""
    name = "+".join(d.key for d in devices)
    candidate = Candidate(name, list(devices), partitioned=True)
    clock = time.perf_counter()
    fused, candidate.recipe = fuse_for_all(model, recipe, devices, options)
    split_dir = work / "split"
    split_dir.mkdir(exist_ok=True)
    try:
        build = build_partitioned(
            fused,
            devices,
            priority=priority,
            profile=profile,
            present=present,
            target_options=target_options,
            sample=sample,
            work=split_dir,
            say=say,
            objective=options.objective,
        )
    except VmmError as exc:
        candidate.status, candidate.reason = "failed", str(exc)
        return candidate
    by_key = {d.key: d for d in devices}
    for spec, sub in zip(build.partitions, build.models, strict=True):
        device = next(d for d in devices if d.target == spec.target and d.name == spec.device)
        root = f"{spec.id}/"
        candidate.partitions.append(
            BuiltPartition(
                spec.id,
                by_key.get(device.key, device),
                sub,
                spec.inputs,
                spec.outputs,
                build.payload_dirs[spec.id],
                spec.entry.removeprefix(root),
                tuple(name.removeprefix(root) for name in spec.files),
                dict(spec.config),
                build.executors.get(spec.id),
            )
        )
    candidate.plan = build.report
    candidate.status = "built"
    candidate.build_s = time.perf_counter() - clock
    return candidate


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
