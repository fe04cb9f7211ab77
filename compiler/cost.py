"""The cost model: estimated time per node and device, and per tensor crossing a device boundary.

    node time  = max(FLOPs / peak FLOP/s, bytes touched / memory bandwidth)      (a roofline)
    transfer   = bytes / link bandwidth + link latency
    partition  = the device's per-call overhead, once per partition

Device figures (peak FLOP/s per precision, bandwidth, per-call overhead) are measured by a short
micro-benchmark through the target's own runtime when the device is present (cached per machine
in ``~/.cache/ai-vmm/device-figures.json``), and come from a hardware profile's documented spec
values otherwise (``--hardware PROFILE.json``).

Shapes: symbolic dimensions take the sizes of the representative inputs (batch 1, other
dimensions 16 unless ``--input`` says otherwise); a dimension still unknown counts as 1.
"""

from __future__ import annotations

import json
import math
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnx.helper as oh
import onnx_ir as ir

from ai_vmm import registry
from ai_vmm.passes.analyze import node_flops as classed_node_flops
from ai_vmm.runtime.devices import Device
from ai_vmm.runtime.executors import create_executor

FIGURES_CACHE = Path.home() / ".cache" / "ai-vmm" / "device-figures.json"


@dataclass(frozen=True)
class DeviceFigures:
    """What the cost model knows about one device."""

    peak_gflops: dict[str, float]
    """Per precision (``fp32``, ``fp16``, ``bf16``, ``int8``)."""
    bandwidth_gbps: float
    overhead_us: float
    source: str
    """``measured on <cpu>`` or ``spec: <where the numbers come from>``."""
    link_gbps: float | None = None
    """Host <-> device copy bandwidth, for an accelerator with its own memory (measured)."""

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> DeviceFigures:
        return cls(
            peak_gflops={str(k): float(v) for k, v in data["peak_gflops"].items()},
            bandwidth_gbps=float(data["bandwidth_gbps"]),
            overhead_us=float(data["overhead_us"]),
            source=str(data.get("source", "profile")),
            link_gbps=float(data["link_gbps"]) if data.get("link_gbps") else None,
        )


def _shape(value: ir.Value | None, dims: dict[str, int]) -> list[int] | None:
    if value is None or value.shape is None:
        return None
    out = []
    for dim in value.shape:
        if isinstance(dim, int):
            out.append(dim)
        else:
            out.append(dims.get(dim.value or "", 1))
    return out


def _numel(shape: list[int] | None) -> int:
    return int(math.prod(shape)) if shape is not None else 1


def _itemsize(value: ir.Value | None) -> int:
    if value is None or value.dtype is None:
        return 4
    try:
        return int(value.dtype.itemsize)
    except (AttributeError, TypeError, ValueError):  # strings: no fixed width
        return 4


def node_flops(node: ir.Node, dims: dict[str, int]) -> float:
    """Floating-point operations of one node: the architecture analysis's count (one formula
    for FLOPs in the whole project, ``ai_vmm.passes.analyze.node_flops``)."""
    return float(classed_node_flops(node, dims)[1])


def node_bytes(node: ir.Node, dims: dict[str, int]) -> float:
    """Bytes a node reads and writes (inputs, weights included, and outputs)."""
    total = 0
    for value in [*node.inputs, *node.outputs]:
        if value is not None:
            total += _numel(_shape(value, dims)) * _itemsize(value)
    return float(total)


def value_bytes(value: ir.Value, dims: dict[str, int]) -> int:
    return _numel(_shape(value, dims)) * _itemsize(value)


def node_seconds(
    node: ir.Node, figures: DeviceFigures, dims: dict[str, int], precision: str = "fp32"
) -> float:
    """Roofline estimate of one node on one device."""
    peak = figures.peak_gflops.get(precision) or figures.peak_gflops["fp32"]
    compute = node_flops(node, dims) / (peak * 1e9)
    memory = node_bytes(node, dims) / (figures.bandwidth_gbps * 1e9)
    return max(compute, memory)


# onnx's default IR version runs ahead of ONNX Runtime's (the GPU machine's onnx 1.23.1 wrote
# IR 14, its ONNX Runtime 1.30 reads up to 13): opset 17 needs IR 8.
IR_VERSION = 8


def _micro_models(tmp: Path) -> tuple[Path, Path, Path]:
    """A 512^3 MatMul (compute), a 16 M-element Add (bandwidth), an Identity (overhead)."""
    n = 512
    rng = np.random.default_rng(0)
    weight = onnx.numpy_helper.from_array(rng.standard_normal((n, n)).astype(np.float32), "w")
    f32 = onnx.TensorProto.FLOAT
    mm = oh.make_model(
        oh.make_graph(
            [oh.make_node("MatMul", ["x", "w"], ["y"])],
            "mm",
            [oh.make_tensor_value_info("x", f32, [n, n])],
            [oh.make_tensor_value_info("y", f32, [n, n])],
            [weight],
        ),
        opset_imports=[oh.make_opsetid("", 17)],
        ir_version=IR_VERSION,
    )
    m = 1 << 22
    add = oh.make_model(
        oh.make_graph(
            [oh.make_node("Add", ["a", "b"], ["c"])],
            "add",
            [oh.make_tensor_value_info("a", f32, [m]), oh.make_tensor_value_info("b", f32, [m])],
            [oh.make_tensor_value_info("c", f32, [m])],
        ),
        opset_imports=[oh.make_opsetid("", 17)],
        ir_version=IR_VERSION,
    )
    ident = oh.make_model(
        oh.make_graph(
            [oh.make_node("Identity", ["a"], ["b"])],
            "id",
            [oh.make_tensor_value_info("a", f32, [4])],
            [oh.make_tensor_value_info("b", f32, [4])],
        ),
        opset_imports=[oh.make_opsetid("", 17)],
        ir_version=IR_VERSION,
    )
    paths = (tmp / "mm.onnx", tmp / "add.onnx", tmp / "id.onnx")
    for model, path in zip((mm, add, ident), paths, strict=True):
        onnx.save(model, path)
    return paths


def _median_seconds(run: Any, repeats: int) -> float:
    run()
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        samples.append(time.perf_counter() - start)
    return float(np.median(samples))


def measure_figures(device: Device) -> DeviceFigures:
    """Micro-benchmark ``device`` through its target's runtime (about a second).

    A target with its own micro-benchmark (``measure_figures(device) -> dict``, the cuda target:
    its payloads take a compiler run to build) measures itself.
    """
    target = registry.get_target(device.target)
    data = target.measure_figures(device)
    if data is not None:
        return DeviceFigures(
            peak_gflops=dict(data["peak_gflops"]),
            bandwidth_gbps=float(data["bandwidth_gbps"]),
            overhead_us=float(data["overhead_us"]),
            source=str(data.get("source", "measured")),
            link_gbps=float(data["link_gbps"]) if data.get("link_gbps") else None,
        )
    with tempfile.TemporaryDirectory(prefix="ai-vmm-figures-") as tmp:
        mm, add, ident = _micro_models(Path(tmp))
        n, m = 512, 1 << 22
        rng = np.random.default_rng(1)

        def executor(path: Path, outputs: tuple[str, ...]) -> Any:
            # The model runs as it is: no offline optimization needed for one op.
            return create_executor(device.target, path, device.name, target.raw_config, outputs)

        x = {"x": rng.standard_normal((n, n)).astype(np.float32)}
        matmul = executor(mm, ("y",))
        seconds = _median_seconds(lambda: matmul.run(x), 10)
        gflops = 2.0 * n**3 / seconds / 1e9
        ab = {k: rng.standard_normal(m).astype(np.float32) for k in ("a", "b")}
        adder = executor(add, ("c",))
        seconds = _median_seconds(lambda: adder.run(ab), 10)
        bandwidth = 3 * 4 * m / seconds / 1e9
        tiny = {"a": np.zeros(4, np.float32)}
        identity = executor(ident, ("b",))
        overhead = _median_seconds(lambda: identity.run(tiny), 50) * 1e6
    return DeviceFigures(
        peak_gflops={"fp32": round(gflops, 2)},
        bandwidth_gbps=round(bandwidth, 2),
        overhead_us=round(overhead, 2),
        source=f"measured on {device.full_name or device.name}",
    )


def device_figures(
    device: Device, cache: Path | None = FIGURES_CACHE, refresh: bool = False
) -> DeviceFigures:
    """Figures of a present device: cached per machine, measured once."""
    key = f"{device.key}|{device.full_name}|{device.properties.get('version', '')}"
    stored: dict[str, Any] = {}
    if cache is not None and cache.is_file():
        try:
            stored = json.loads(cache.read_text())
        except (OSError, json.JSONDecodeError):
            stored = {}
    if key in stored and not refresh:
        return DeviceFigures.from_json(stored[key])
    figures = measure_figures(device)
    if cache is not None:
        stored[key] = figures.to_json()
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_name(f".{cache.name}.{time.time_ns()}")
        tmp.write_text(json.dumps(stored, indent=2, sort_keys=True))
        tmp.replace(cache)
    return figures
