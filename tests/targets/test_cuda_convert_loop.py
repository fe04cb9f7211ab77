"""ONNX ``Loop`` converted to torch: a counted loop (trip count from shapes, as TF's ``while``
over a sequence exports) runs as a ``scan``, against ONNX Runtime; its trip count stays
symbolic in ``torch.export``; a loop whose condition would stop it early fails at run time
instead of returning a longer result; loops on data are refused up front."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest

torch = pytest.importorskip("torch")

from onnx_op_cases import assert_matches, running_sum_loop  # noqa: E402

from ai_vmm.targets.cuda_convert import node_support, to_torch  # noqa: E402

RNG = np.random.default_rng(5)


@pytest.mark.parametrize("steps", [1, 2, 7])
def test_counted_loop_matches_onnxruntime(steps: int) -> None:
    x = RNG.standard_normal((steps, 3, 4)).astype(np.float32)
    state = RNG.standard_normal((3, 4)).astype(np.float32)
    assert_matches(running_sum_loop(), {"x": x, "state0": state})


def test_counted_loop_exports_with_a_symbolic_trip_count() -> None:
    module = to_torch(ir.serde.deserialize_model(running_sum_loop())).eval()
    steps = torch.export.Dim("T", min=1, max=64)
    program = torch.export.export(
        module,
        (torch.randn(5, 3, 4), torch.randn(3, 4)),
        dynamic_shapes=({0: steps}, None),
        strict=False,
    )
    for length in (1, 2, 9):
        x, state = torch.randn(length, 3, 4), torch.randn(3, 4)
        with torch.no_grad():
            for have, want in zip(program.module()(x, state), module(x, state), strict=True):
                assert have.shape[0] == want.shape[0]
                torch.testing.assert_close(have, want)


def test_a_loop_that_would_stop_early_fails_instead_of_running_on() -> None:
    """ONNX stops after step 1 here (its outputs have 2 steps); a scan cannot stop, so the run
    must fail rather than return 5."""
    module = to_torch(ir.serde.deserialize_model(running_sum_loop(stop_at=1))).eval()
    with pytest.raises(RuntimeError, match="before its trip count"):
        module(torch.randn(5, 3, 4), torch.randn(3, 4))
    module(
        torch.randn(2, 3, 4), torch.randn(3, 4)
    )  # condition false at the last step only: what ONNX does too


def test_a_loop_counted_by_data_is_refused_with_a_reason() -> None:
    graph = ir.serde.deserialize_model(running_sum_loop(trip_from_data=True)).graph
    reason = node_support(graph.node(len(graph) - 1), 17)
    assert reason is not None and "trip count is computed from tensor data" in reason
    assert node_support(ir.serde.deserialize_model(running_sum_loop()).graph.node(2), 17) is None


def test_a_body_op_that_does_not_convert_is_named() -> None:
    proto = running_sum_loop()
    body = proto.graph.node[-1].attribute[0].g
    body.node[-2].op_type = "Hardmax"  # Tanh -> an op outside the mapping
    loop = ir.serde.deserialize_model(proto).graph.node(2)
    reason = node_support(loop, 17)
    assert reason is not None and reason.startswith("Loop body: Hardmax")
