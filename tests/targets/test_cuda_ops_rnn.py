"""LSTM/GRU/RNN converted to torch (a ``scan`` over time), against ONNX Runtime: directions,
biases, initial states, peepholes, clip, layouts; and an export with a symbolic length."""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx.helper as oh
import onnx_ir as ir
import pytest

torch = pytest.importorskip("torch")

from onnx_op_cases import assert_matches, const, model, run_both, vi  # noqa: E402

from ai_vmm.targets.cuda_convert import node_support, to_torch  # noqa: E402

RNG = np.random.default_rng(11)
SEQ, BATCH, INPUT, HIDDEN = 6, 3, 5, 4
GATES = {"LSTM": 4, "GRU": 3, "RNN": 1}


def _weights(op: str, dirs: int, rng: np.random.Generator = RNG) -> dict[str, np.ndarray]:
    g = GATES[op] * HIDDEN
    return {
        "W": rng.standard_normal((dirs, g, INPUT)).astype(np.float32) * 0.5,
        "R": rng.standard_normal((dirs, g, HIDDEN)).astype(np.float32) * 0.5,
        "B": rng.standard_normal((dirs, 2 * g)).astype(np.float32) * 0.5,
        "P": rng.standard_normal((dirs, 3 * HIDDEN)).astype(np.float32) * 0.5,
    }


def _state(rng: np.random.Generator, dirs: int, layout: int) -> np.ndarray:
    state = rng.standard_normal((dirs, BATCH, HIDDEN)).astype(np.float32)
    return state.transpose(1, 0, 2).copy() if layout else state


def _case(
    op: str,
    direction: str = "forward",
    bias: bool = True,
    initial: bool = False,
    peepholes: bool = False,
    layout: int = 0,
    seed: int | None = None,
    **attrs: Any,
) -> tuple[Any, dict[str, np.ndarray]]:
    dirs = 2 if direction == "bidirectional" else 1
    rng = RNG if seed is None else np.random.default_rng(seed)
    w = _weights(op, dirs, rng)
    inits = [const("W", w["W"], np.float32), const("R", w["R"], np.float32)]
    names = ["x", "W", "R", "B" if bias else ""]
    if bias:
        inits.append(const("B", w["B"], np.float32))
    names.append("")  # sequence_lens
    state_shape = [BATCH, dirs, HIDDEN] if layout else [dirs, BATCH, HIDDEN]
    inputs = [vi("x", [BATCH, "S", INPUT] if layout else ["S", BATCH, INPUT])]
    x = rng.standard_normal((SEQ, BATCH, INPUT)).astype(np.float32)
    feeds = {"x": x.transpose(1, 0, 2).copy() if layout else x}
    if initial:
        names.append("h0")
        inputs.append(vi("h0", state_shape))
        feeds["h0"] = _state(rng, dirs, layout)
        if op == "LSTM":
            names.append("c0")
            inputs.append(vi("c0", state_shape))
            feeds["c0"] = _state(rng, dirs, layout)
    if peepholes:
        names += [""] * (7 - len(names)) + ["P"]
        inits.append(const("P", w["P"], np.float32))
    outputs = ["y", "y_h", "y_c"] if op == "LSTM" else ["y", "y_h"]
    node = oh.make_node(
        op, names, outputs, hidden_size=HIDDEN, direction=direction, layout=layout, **attrs
    )
    proto = model([node], inputs, [vi(o, None) for o in outputs], inits, opset=14)
    return proto, feeds


@pytest.mark.parametrize("op", ["LSTM", "GRU", "RNN"])
@pytest.mark.parametrize("direction", ["forward", "reverse", "bidirectional"])
@pytest.mark.parametrize("initial", [False, True])
def test_directions_and_initial_states(op: str, direction: str, initial: bool) -> None:
    assert_matches(*_case(op, direction, initial=initial), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("op", ["LSTM", "GRU", "RNN"])
def test_batch_first_layout_without_bias(op: str) -> None:
    """ONNX Runtime refuses ``layout=1``: the batch-first conversion is checked against the
    same weights and data at ``layout=0`` there (states and outputs transposed)."""
    seq_first, feeds0 = _case(op, "bidirectional", bias=False, initial=True, seed=1)
    batch_first, feeds1 = _case(op, "bidirectional", bias=False, initial=True, layout=1, seed=1)
    expected, _ = run_both(seq_first, feeds0)
    module = to_torch(ir.serde.deserialize_model(batch_first)).eval()
    with torch.no_grad():
        got = module(*[torch.from_numpy(feeds1[n]) for n in module.input_names])
    np.testing.assert_allclose(
        got[0].numpy(), expected[0].transpose(2, 0, 1, 3), rtol=1e-4, atol=1e-5
    )
    for have, want in zip(got[1:], expected[1:], strict=True):
        np.testing.assert_allclose(have.numpy(), want.transpose(1, 0, 2), rtol=1e-4, atol=1e-5)


def test_lstm_peepholes_clip_and_coupled_gates() -> None:
    assert_matches(*_case("LSTM", "bidirectional", peepholes=True, clip=0.7))
    assert_matches(*_case("LSTM", "forward", peepholes=True, input_forget=1))


@pytest.mark.parametrize("linear_before_reset", [0, 1])
def test_gru_linear_before_reset(linear_before_reset: int) -> None:
    assert_matches(*_case("GRU", "forward", linear_before_reset=linear_before_reset, clip=2.0))


def test_custom_activations() -> None:
    acts = ["Sigmoid", "Relu", "Softsign", "Sigmoid", "Tanh", "Tanh"]
    assert_matches(*_case("LSTM", "bidirectional", activations=acts))


def test_export_keeps_the_sequence_length_symbolic() -> None:
    """``nn.LSTM`` under ``torch.export`` unrolls and fixes the length; the scan does not."""
    proto, _ = _case("LSTM", "bidirectional", initial=False)
    module = to_torch(ir.serde.deserialize_model(proto)).eval()
    seq = torch.export.Dim("seq", min=2, max=256)
    program = torch.export.export(
        module, (torch.zeros(7, BATCH, INPUT),), dynamic_shapes={"x": {0: seq}}, strict=False
    )
    x = torch.randn(19, BATCH, INPUT)
    with torch.no_grad():
        want = module(x)
    for have, ref in zip(program.module()(x), want, strict=True):
        np.testing.assert_allclose(have.numpy(), ref.numpy(), rtol=1e-5, atol=1e-6)


def test_unsupported_recurrent_features_say_why() -> None:
    w = _weights("LSTM", 1)
    lens = oh.make_node("LSTM", ["x", "W", "R", "", "lens"], ["y"], hidden_size=HIDDEN)
    act = oh.make_node(
        "LSTM",
        ["x", "W", "R"],
        ["z"],
        hidden_size=HIDDEN,
        activations=["HardSigmoid", "Tanh", "Tanh"],
    )
    proto = model(
        [lens, act],
        [vi("x", [SEQ, BATCH, INPUT]), vi("lens", [BATCH], 6)],
        [vi("y", None), vi("z", None)],
        [const("W", w["W"], np.float32), const("R", w["R"], np.float32)],
        opset=14,
    )
    reasons = [node_support(n, 14) for n in ir.serde.deserialize_model(proto).graph]
    assert reasons[0] is not None and "sequence_lens" in reasons[0]
    assert reasons[1] is not None and "HardSigmoid" in reasons[1]
