"""The partitioned compile: capability per device, cost model, plan, outline, codegen per part.

Used when one device cannot (or should not) run the whole model: a ``--target`` priority list,
``--target auto`` when no single device runs every node, or ``--hardware PROFILE`` planning for
a described machine. Each partition is an ONNX subgraph compiled by its own target; the
manifest routes tensors between them.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx_ir as ir

from ai_vmm import registry
from ai_vmm.cost import DeviceFigures, device_figures, node_seconds, value_bytes
from ai_vmm.fusion_stage import one_line
from ai_vmm.hardware_profile import HardwareProfile
from ai_vmm.outline import outline
from ai_vmm.planner import Link, Plan, PlanGraph, PlanningError, PlanNode, PlanTensor, plan
from ai_vmm.runtime.artifact import PartitionSpec, sha256_file
from ai_vmm.runtime.devices import Device
from ai_vmm.runtime.errors import CompileError, UnsupportedModelError
from ai_vmm.runtime.executors import Executor, create_executor
from ai_vmm.targets.base import NodeSupport, Payload, TargetOptions, axis_symbol, save_onnx

Say = Callable[[str], None]


@dataclass
class PartitionedBuild:
    """What the driver needs to write a multi-partition artifact and its report."""

    partitions: list[PartitionSpec]
    payload_dirs: dict[str, Path]
    plan: Plan
    report: dict[str, Any]
    executors: dict[str, Executor] = field(default_factory=dict)
    models: list[ir.Model] = field(default_factory=list)
    """Each partition's outlined graph, in partition order (the quantize stage reads them)."""

    def run(self, feed: dict[str, Any]) -> dict[str, Any]:
        """Run the partitions in order on ``feed`` (every device must be present)."""
        values = dict(feed)
        for part in self.partitions:
            values.update(self.executors[part.id].run({n: values[n] for n in part.inputs}))
        return values


def capabilities(
    model: ir.Model, devices: list[Device], profile: HardwareProfile | None, present: set[str]
) -> tuple[dict[str, dict[str, NodeSupport]], dict[str, str]]:
    """Per device, per node: can it run there and why not. Absent devices use a proxy."""
    result: dict[str, dict[str, NodeSupport]] = {}
    notes: dict[str, str] = {}
    for device in devices:
        target = registry.get_target(device.target)
        if device.key in present:
            support = target.capability(model, device)
        else:
            proxy = next(
                (d for d in devices if d.target == device.target and d.key in present), None
            )
            anywhere = target.capability_anywhere(model) if proxy is None else None
            if proxy is not None:
                support = target.capability(model, proxy)
                notes[device.key] = f"capability of {proxy.key} used as a proxy (not present)"
            elif anywhere is not None:
                support = anywhere
                notes[device.key] = "not present: the target's capability needs no device"
            else:
                support = {n.name or "": NodeSupport(True) for n in model.graph}
                notes[device.key] = "not present: every node assumed supported"
        blocked = profile.unsupported_ops.get(device.key, frozenset()) if profile else frozenset()
        if blocked:
            for node in model.graph:
                if node.op_type in blocked:
                    support[node.name or ""] = NodeSupport(
                        False, f"{node.op_type} is listed unsupported in the hardware profile"
                    )
        result[device.key] = support
    return result, notes


def plan_graph(
    model: ir.Model,
    devices: list[Device],
    support: dict[str, dict[str, NodeSupport]],
    figures: dict[str, DeviceFigures],
    links: dict[tuple[str, str], Any],
    dims: dict[str, int],
    precision: str,
) -> PlanGraph:
    """The planner's view of ``model``: node costs per capable device, tensors with sizes."""
    nodes = []
    for node in model.graph:
        name = node.name or ""
        times = {
            d.key: node_seconds(node, figures[d.key], dims, precision)
            for d in devices
            if support[d.key].get(name, NodeSupport(True)).supported
        }
        unsupported = {
            d.key: support[d.key][name].reason
            for d in devices
            if name in support[d.key] and not support[d.key][name].supported
        }
        nodes.append(PlanNode(name, node.op_type, times, unsupported))
    outputs = {v.name for v in model.graph.outputs}
    node_names = {node.name or "" for node in model.graph}
    tensors = []
    values = [*model.graph.inputs, *(o for n in model.graph for o in n.outputs)]
    for value in values:
        # Only this graph's nodes: a value can also list users in subgraphs or in rewrite
        # candidates that never joined the graph.
        consumers = tuple(
            sorted({user.name or "" for user, _ in value.uses() if user.name in node_names})
        )
        producer = value.producer()
        tensors.append(
            PlanTensor(
                value.name or "",
                value_bytes(value, dims),
                producer.name if producer is not None else None,
                consumers,
                is_output=value.name in outputs,
            )
        )
    keys = [d.key for d in devices]
    host = next((d.key for d in devices if d.kind == "cpu"), keys[0])
    overhead = {k: figures[k].overhead_us * 1e-6 for k in keys}
    return PlanGraph(nodes, tensors, keys, overhead, links, host=host)


def observe_missing_shapes(model: ir.Model, sample: dict[str, np.ndarray] | None) -> list[str]:
    """Give values without a known rank (or type) the rank and type they have in a real run.

    Shape inference leaves some values untyped or of unknown rank (ops it cannot see through,
    e.g. MaxUnpool's output shape input); an outlined partition with such a boundary input has
    a dynamic-rank input, which OpenVINO refuses. One ONNX Runtime run on the sample tells the
    rank; every axis stays dynamic.
    """
    values = {
        v.name: v
        for node in model.graph
        for v in node.outputs
        if v.name and (v.type is None or v.shape is None)
    }
    if not values or not sample:
        return []
    probe = model.clone()
    by_name = {v.name: v for node in probe.graph for v in node.outputs if v.name in values}
    probe.graph.outputs.extend(by_name[name] for name in sorted(by_name))
    with tempfile.TemporaryDirectory(prefix="ai-vmm-probe-") as tmp:
        path = Path(tmp) / "probe.onnx"
        try:
            save_onnx(probe, path)
            names = tuple(v.name or "" for v in probe.graph.outputs)
            runner = create_executor(
                "onnxruntime", path, "CPU", {"graph_optimization_level": "disable"}, names
            )
            got = runner.run(dict(sample))
        except Exception:  # the probe is a nicety: outlining reports what stays untyped
            return []
    typed = []
    for name, value in values.items():
        array = got.get(name)
        if not isinstance(array, np.ndarray):
            continue
        if value.type is None:
            value.type = ir.TensorType(ir.DataType.from_numpy(array.dtype))
        if value.shape is None:
            value.shape = ir.Shape([ir.SymbolicDim(None) for _ in array.shape])
        typed.append(name)
    return typed


def sample_dims(model: ir.Model, sample: dict[str, np.ndarray] | None) -> dict[str, int]:
    """Sizes of symbolic dimensions in the representative inputs.

    Keyed by ``axis_symbol``: a named dimension by its name, an anonymous one (``?``, -1) by
    ``INPUT_AXIS``. Without the anonymous ones, the cuda target exported PP-OCR's classifier
    (``[-1, 3, ?, ?]``) at 2x2 pixels, where its pooling has no output (H200, 2026-12-05).
    """
    dims: dict[str, int] = {}
    if not sample:
        return dims
    for value in model.graph.inputs:
        array = sample.get(value.name or "")
        if array is None or value.shape is None:
            continue
        for axis, (dim, size) in enumerate(zip(value.shape, array.shape, strict=False)):
            if isinstance(dim, ir.SymbolicDim):
                dims[axis_symbol(value, axis, dim)] = int(size)
    return dims


def sample_sizes(model: ir.Model, samples: list[dict[str, np.ndarray]]) -> dict[str, list[int]]:
    """Every size each symbolic dimension takes across the samples, ascending."""
    sizes: dict[str, set[int]] = {}
    for sample in samples:
        for symbol, size in sample_dims(model, sample).items():
            sizes.setdefault(symbol, set()).add(size)
    return {symbol: sorted(values) for symbol, values in sizes.items()}


def build_partitioned(
    model: ir.Model,
    devices: list[Device],
    *,
    priority: bool,
    profile: HardwareProfile | None,
    present: set[str],
    target_options: TargetOptions,
    sample: dict[str, np.ndarray] | None,
    work: Path,
    say: Say,
    objective: str = "latency",
) -> PartitionedBuild:
    """Plan, outline and build every partition; load executors where devices are present.

    A partition whose codegen or load fails is not fatal: its device loses those nodes (the
    reason is recorded) and the planner tries again, up to ``MAX_REPLANS`` times.
    """
    observed = observe_missing_shapes(model, sample)
    if observed:
        say(f"typed {len(observed)} value(s) shape inference left without a rank, by a run")
    say(f"checking capability on {', '.join(d.key for d in devices)}")
    support, notes = capabilities(model, devices, profile, present)
    figures: dict[str, DeviceFigures] = {}
    for device in devices:
        if profile is not None and device.key in profile.figures:
            figures[device.key] = profile.figures[device.key]
        else:
            say(f"measuring {device.key} for the cost model (cached per machine)")
            figures[device.key] = device_figures(device)
    links = profile.links if profile is not None else measured_links(devices, figures)
    dims = sample_dims(model, sample)
    replanned: list[dict[str, str]] = []
    for _ in range(MAX_REPLANS + 1):
        graph = plan_graph(model, devices, support, figures, links, dims, target_options.precision)
        try:
            result = plan(
                graph,
                priority=[d.key for d in devices] if priority else None,
                objective=objective,
            )
        except PlanningError as exc:
            detail = f" (after re-planning around {len(replanned)} failed partition(s))"
            raise UnsupportedModelError(str(exc) + (detail if replanned else "")) from exc
        say(
            f"plan: {len(result.groups)} partition(s) "
            f"({', '.join(result.group_devices())}), est. {result.cost * 1000:.3f} ms"
        )
        try:
            build = build_plan(model, result, devices, present, target_options, work, say)
            break
        except PartitionFailed as failed:
            # Not fatal: that device loses those nodes, and the planner tries again.
            say(f"[{failed.device}] partition failed ({failed.reason}): re-planning without it")
            replanned.append(
                {"device": failed.device, "nodes": str(len(failed.nodes)), "reason": failed.reason}
            )
            for name in failed.nodes:
                support[failed.device][name] = NodeSupport(
                    False, f"its partition failed to build here: {failed.reason}"
                )
            _clear(work)
    else:
        raise CompileError(
            f"no buildable plan after {MAX_REPLANS} re-plans: "
            + "; ".join(f"{r['device']}: {r['reason']}" for r in replanned)
        )
    build.report.update(
        {
            "rule": "--target priority list" if priority else "cost model",
            "objective": objective,
            "figures": {k: f.to_json() for k, f in figures.items()},
            "capability_notes": notes,
            "replanned": replanned,
            "edges": sorted(
                {(t.producer, c) for t in graph.tensors if t.producer for c in t.consumers}
            ),
        }
    )
    return build


HOST_LINK_LATENCY_US = 10.0
"""Latency of one host <-> accelerator copy (a synchronous copy call and its launch)."""


def measured_links(
    devices: list[Device], figures: dict[str, DeviceFigures]
) -> dict[tuple[str, str], Any]:
    """Links between present accelerators with their own memory and the host's devices.

    An accelerator whose micro-benchmark measured a host copy bandwidth (``link_gbps``: the
    cuda target's pageable host -> GPU copy) gets a link to every CPU device; devices that share
    host memory (CPU targets) need none.
    """
    links: dict[tuple[str, str], Any] = {}
    for device in devices:
        bandwidth = figures[device.key].link_gbps if device.key in figures else None
        if not bandwidth:
            continue
        for other in devices:
            if other.kind == "cpu":
                links[(device.key, other.key)] = Link(bandwidth, HOST_LINK_LATENCY_US)
    return links


def build_plan(
    model: ir.Model,
    result: Plan,
    devices: list[Device],
    present: set[str],
    target_options: TargetOptions,
    work: Path,
    say: Say,
) -> PartitionedBuild:
    """Outline the plan's groups and build each on its device (executors where present)."""
    pieces = outline(model, result.groups)
    by_key = {d.key: d for d in devices}
    op_types = {node.name or "": node.op_type for node in model.graph}
    partitions, payload_dirs, executors, models = [], {}, {}, []
    readers: dict[str, set[str]] = {}  # tensor -> devices of the partitions that read it
    for group, piece in zip(result.groups, pieces, strict=True):
        for name in piece.inputs:
            readers.setdefault(name, set()).add(result.assignment[group[0]])
    graph_outputs = {v.name for v in model.graph.outputs}
    for index, (group, piece) in enumerate(zip(result.groups, pieces, strict=True)):
        part_id = f"p{index}"
        device = by_key[result.assignment[group[0]]]
        target = registry.get_target(device.target)
        out_dir = work / part_id
        out_dir.mkdir()
        say(f"[{part_id} {device.key}] generating code for {len(group)} nodes")
        sub = ir.serde.deserialize_model(piece.model)
        if device.key not in present and target.builds_on_device_only:
            payload = _deferred_payload(sub, device, out_dir)
            say(f"[{part_id} {device.key}] deferred: {payload.config['deferred']}")
        else:
            try:
                payload = target.codegen(
                    target.prepare(sub, target_options), device, target_options, out_dir
                )
            except Exception as exc:
                raise PartitionFailed(device.key, group, one_line(exc)) from exc
        config = dict(payload.config)
        if target.keeps_outputs_on_device:
            # Tensors read only by partitions on the same device stay there (device tensors).
            stay = [
                name
                for name in piece.outputs
                if name not in graph_outputs and readers.get(name) == {device.key}
            ]
            if stay:
                config["device_outputs"] = stay
        spec = PartitionSpec(
            id=part_id,
            target=device.target,
            device=device.name,
            entry=f"{part_id}/{payload.entry}",
            files={f"{part_id}/{n}": sha256_file(out_dir / n) for n in payload.files},
            inputs=piece.inputs,
            outputs=piece.outputs,
            config=config,
        )
        partitions.append(spec)
        payload_dirs[part_id] = out_dir
        models.append(sub)
        if device.key in present:
            try:
                executors[part_id] = create_executor(
                    device.target, out_dir / payload.entry, device.name, config, piece.outputs
                )
            except Exception as exc:
                raise PartitionFailed(device.key, group, one_line(exc)) from exc
    group_of = {name: i for i, group in enumerate(result.groups) for name in group}
    report: dict[str, Any] = {
        "estimate": result.to_json(),
        "nodes": [
            {
                "node": name,
                "op": op_types.get(name, ""),
                "device": result.assignment[name],
                "partition": f"p{group_of[name]}",
                "why": result.explanation.get(name, ""),
            }
            for name in (node.name or "" for node in model.graph)
        ],
    }
    return PartitionedBuild(partitions, payload_dirs, result, report, executors, models)


class PartitionFailed(Exception):
    """A partition's codegen or load failed on its device: re-plan without that device there."""

    def __init__(self, device: str, nodes: list[str], reason: str) -> None:
        super().__init__(reason)
        self.device, self.nodes, self.reason = device, list(nodes), reason


MAX_REPLANS = 4


def _clear(work: Path) -> None:
    """Empty ``work`` for the next attempt (partition directories are named p0, p1, ...)."""
    for path in work.iterdir():
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)


def _deferred_payload(sub: ir.Model, device: Device, out_dir: Path) -> Payload:
    """The ONNX subgraph of a partition whose payload can only be built on its device.

    The artifact records the plan and the subgraph; loading it names the partition and says to
    build it on the device (the runtime refuses to run a deferred partition).
    """
    save_onnx(sub, out_dir / "model.onnx")
    reason = (
        f"{device.target} payloads can only be built on a machine with {device.key} "
        f"({device.full_name or device.name}); this compile planned for it without it: "
        f"run the compile on that machine to build this partition"
    )
    files = tuple(sorted(p.name for p in out_dir.iterdir()))
    return Payload(entry="model.onnx", files=files, config={"deferred": reason})
