"""Helpers for the per-rule fusion tests: tiny graph -> fuse -> compare ONNX Runtime outputs."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np
import onnx
import onnx.helper as oh
import onnx_ir as ir
import onnx_ir.passes.common as common
import onnxruntime as ort
import pytest

from ai_vmm.passes.fusion import FUSIONS, FusionResult, apply_fusion
from ai_vmm.passes.recipes import raise_opset

FLOAT = onnx.TensorProto.FLOAT


def make_model(
    nodes: list[onnx.NodeProto],
    inputs: list[tuple[str, list[int | str]]],
    outputs: list[str],
    initializers: dict[str, np.ndarray] | None = None,
    opset: int = 18,
    extra_opsets: dict[str, int] | None = None,
) -> ir.Model:
    """A float32 model from nodes, with ONNX shape inference run (the checks read shapes)."""
    graph = oh.make_graph(
        nodes,
        "tiny",
        [oh.make_tensor_value_info(name, FLOAT, shape) for name, shape in inputs],
        [oh.make_tensor_value_info(name, FLOAT, None) for name in outputs],
        [onnx.numpy_helper.from_array(v, k) for k, v in (initializers or {}).items()],
    )
    opsets = [oh.make_opsetid("", opset)]
    opsets += [oh.make_opsetid(d, v) for d, v in (extra_opsets or {}).items()]
    model = ir.serde.deserialize_model(oh.make_model(graph, opset_imports=opsets))
    common.ShapeInferencePass()(model)
    return model


def run_ort(model: ir.Model, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    """Run ``model`` in ONNX Runtime with its graph optimisations off (the model as written)."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    proto = ir.serde.serialize_model(model)
    session = ort.InferenceSession(
        proto.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )
    return list(session.run(None, feeds))


def op_counts(model: ir.Model) -> Counter[str]:
    return Counter(node.op_type for node in ir.traversal.RecursiveGraphIterator(model.graph))


@dataclass
class Fused:
    """Outputs before and after, the fusion result, and the model after."""

    before: list[np.ndarray]
    after: list[np.ndarray]
    result: FusionResult
    model: ir.Model

    def assert_close(self, rtol: float, atol: float) -> None:
        assert len(self.before) == len(self.after)
        for want, got in zip(self.before, self.after, strict=True):
            assert got.shape == want.shape
            np.testing.assert_allclose(got, want, rtol=rtol, atol=atol)


def fuse_and_compare(
    model: ir.Model, steps: list[str], feeds: dict[str, np.ndarray], *, trace: bool = False
) -> Fused:
    """Run ORT, apply the named fusion steps (raising the opset as a recipe would), run again.

    The returned result is the last step's; earlier steps must each fire at least once.
    """
    before = run_ort(model, feeds)
    result = FusionResult()
    for index, name in enumerate(steps):
        fusion = FUSIONS[name]
        assert raise_opset(model, fusion.min_opset) is None
        result = apply_fusion(model, fusion, trace=trace)
        if index < len(steps) - 1:
            assert result.count, f"{name} did not fire"
    onnx.checker.check_model(ir.serde.serialize_model(model), full_check=True)
    return Fused(before, run_ort(model, feeds), result, model)


class FusionKit:
    """The helpers above, handed to tests as the ``kit`` fixture (test modules cannot import
    a conftest by name: tests/conftest.py has the same module name)."""

    make_model = staticmethod(make_model)
    run_ort = staticmethod(run_ort)
    op_counts = staticmethod(op_counts)
    fuse_and_compare = staticmethod(fuse_and_compare)
    rng: np.random.Generator

    def __init__(self) -> None:
        self.rng = np.random.default_rng(0)

    def randn(self, *shape: int) -> np.ndarray:
        """Seeded standard-normal float32 data."""
        return self.rng.standard_normal(shape).astype(np.float32)


@pytest.fixture
def kit() -> FusionKit:
    return FusionKit()
