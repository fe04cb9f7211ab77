"""Models, artifacts and simulated devices for the parallelism tests (issue 17).

Real artifacts come from ``ai_vmm.compile`` and the compiler's own partitioned build on the
devices this machine has (openvino:CPU, onnxruntime:CPU). Simulated devices stand in for
hardware that cannot exist here (a GPU, an NPU): they sleep for a service time taken from a
hardware profile's figures, which releases the GIL as a real device call does.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnx.helper as oh
from onnx import numpy_helper


def make_chain_model(layers: int = 6, width: int = 64, seed: int = 5) -> onnx.ModelProto:
    """x[batch, width] -> (MatMul -> Relu) x layers -> y[batch, width]."""
    rng = np.random.default_rng(seed)
    nodes, inits = [], []
    source = "x"
    for i in range(layers):
        weight = (rng.standard_normal((width, width)) / np.sqrt(width)).astype(np.float32)
        inits.append(numpy_helper.from_array(weight, f"w{i}"))
        target = "y" if i == layers - 1 else f"r{i}"
        nodes.append(oh.make_node("MatMul", [source, f"w{i}"], [f"m{i}"], name=f"matmul{i}"))
        nodes.append(oh.make_node("Relu", [f"m{i}"], [target], name=f"relu{i}"))
        source = target
    graph = oh.make_graph(
        nodes,
        "chain",
        [oh.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["batch", width])],
        [oh.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["batch", width])],
        inits,
    )
    return oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17)], ir_version=10)


def chain_reference(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    """The chain computed with numpy."""
    weights = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    for index in range(len(weights)):
        x = np.maximum(x @ weights[f"w{index}"], 0)
    return x


def split_artifact(source: Path, devices: list[str], out: Path) -> Path:
    """``source`` (a chain) cut into ``len(devices)`` partitions of equal node counts, the k-th
    on ``devices[k]`` (``target:NAME``), built by the compiler's partitioned build."""
    import tempfile

    import onnx_ir as ir

    from ai_vmm import hardware, registry
    from ai_vmm.partition import build_plan
    from ai_vmm.planner import Plan
    from ai_vmm.runtime.artifact import Manifest, write_artifact
    from ai_vmm.signature import model_signature
    from ai_vmm.targets.base import TargetOptions

    inventory = hardware.discover(registry.discoverers())
    found = []
    for key in dict.fromkeys(devices):
        target, _, name = key.partition(":")
        device = inventory.find(target, name)
        assert device is not None, f"{key} is not present"
        found.append(device)
    # Outlining needs every crossing tensor typed: infer shapes first, as the compiler does.
    model = ir.serde.deserialize_model(onnx.shape_inference.infer_shapes(onnx.load(source)))
    names = [node.name or "" for node in model.graph]
    size = -(-len(names) // len(devices))
    groups = [names[i : i + size] for i in range(0, len(names), size)]
    assignment = {n: devices[k] for k, group in enumerate(groups) for n in group}
    result = Plan(assignment, groups, 0.0, {}, {})
    with tempfile.TemporaryDirectory(prefix="ai-vmm-test-split-") as tmp:
        build = build_plan(
            model,
            result,
            found,
            {d.key for d in found},
            TargetOptions(extra={"input_bounds": {}, "sample_dims": {"batch": 4}}),
            Path(tmp),
            lambda message: None,
        )
        inputs, outputs = model_signature(model)
        manifest = Manifest(inputs, outputs, tuple(build.partitions), {}, {}, {})
        write_artifact(out, manifest, {}, build.payload_dirs)
    return out


class SimulatedDevice:
    """A device that is not here: each call sleeps ``seconds`` and doubles ``x``.

    Records every call's (start, end) interval; ``fail_after`` makes call number N and later
    raise ``RuntimeError`` (a lost device); ``gate`` makes calls wait for an event.
    """

    def __init__(
        self,
        seconds: float,
        *,
        fail_after: int | None = None,
        gate: threading.Event | None = None,
        outputs: tuple[str, ...] = ("y",),
        source: str = "x",
    ) -> None:
        self.seconds = seconds
        self.fail_after = fail_after
        self.gate = gate
        self.outputs = outputs
        self.source = source
        self.calls = 0
        self.intervals: list[tuple[float, float]] = []
        self._lock = threading.Lock()

    def run(self, inputs: dict[str, Any]) -> dict[str, Any]:
        with self._lock:
            self.calls += 1
            number = self.calls
        start = time.perf_counter()
        if self.gate is not None:
            self.gate.wait(10)
        if self.fail_after is not None and number >= self.fail_after:
            raise RuntimeError("device lost (simulated)")
        time.sleep(self.seconds)
        with self._lock:
            self.intervals.append((start, time.perf_counter()))
        value = np.asarray(inputs[self.source]) * 2
        return dict.fromkeys(self.outputs, value)


def overlapping(a: list[tuple[float, float]], b: list[tuple[float, float]]) -> int:
    """How many pairs of intervals, one from each list, overlap in time."""
    return sum(1 for s1, e1 in a for s2, e2 in b if s1 < e2 and s2 < e1)
