"""The OpenVINO LM target's graph rewrites on tiny graphs: what fired, and the same numbers."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

ov = pytest.importorskip("openvino")

from openvino import opset13 as ops  # noqa: E402

from ai_vmm.targets import openvino_lm  # noqa: E402


def _tied_model() -> Any:
    """``x @ W`` on an ``[in, out]`` constant, then a head on ``Transpose(embedding)`` (tied)."""
    rng = np.random.default_rng(0)
    x = ops.parameter([-1, -1, 8], np.float32, name="x")
    hidden = ops.matmul(
        x, ops.constant(rng.standard_normal((8, 8)).astype(np.float32)), False, False
    )
    table = ops.constant(rng.standard_normal((16, 8)).astype(np.float32))
    head = ops.matmul(hidden, ops.transpose(table, ops.constant(np.array([1, 0]))), False, False)
    lookup = ops.gather(table, ops.constant(np.array([3, 5])), ops.constant(np.int64(0)))
    return ov.Model([head, lookup], [x])


def _run(model: Any, x: np.ndarray) -> list[np.ndarray]:
    compiled = ov.Core().compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    result = compiled(x)
    return [np.asarray(result[out]) for out in compiled.outputs]


def test_weights_output_major_fires_and_keeps_numbers() -> None:
    model = _tied_model()
    x = np.random.default_rng(1).standard_normal((1, 3, 8)).astype(np.float32)
    before = _run(model, x)
    openvino_lm._weights_output_major(model)
    matmuls = [op for op in model.get_ordered_ops() if op.get_type_name() == "MatMul"]
    assert [op.get_attributes()["transpose_b"] for op in matmuls] == [True, True]
    assert not [op for op in model.get_ordered_ops() if op.get_type_name() == "Transpose"]
    constants = [op for op in model.get_ordered_ops() if op.get_type_name() == "Constant"]
    assert sum(1 for c in constants if list(c.get_output_shape(0)) == [16, 8]) == 1  # still tied
    for a, b in zip(before, _run(model, x), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_layer_precisions_names_the_storage_type() -> None:
    pytest.importorskip("nncf")
    model = _tied_model()
    openvino_lm._weights_output_major(model)
    compressed = openvino_lm.compress(model, openvino_lm.WeightCompression("int8"))
    found = openvino_lm.layer_precisions(compressed)
    assert found and set(found.values()) == {"i8"}


def test_int4_is_asymmetric_and_keeps_the_tied_table_int8() -> None:
    """INT4 stores unsigned 4-bit weights with a zero point per group (asymmetric: on SmolLM2
    it kept the gate's answers with twice the share of INT4 layers that symmetric INT4 did);
    the embedding table, which the tied LM head reads too, stays INT8."""
    pytest.importorskip("nncf")
    model = _tied_model()
    openvino_lm._weights_output_major(model)
    compression = openvino_lm.WeightCompression("int4", group_size=8)
    assert "asymmetric" in compression.describe()
    found = openvino_lm.layer_precisions(openvino_lm.compress(model, compression))
    assert sorted(found.values()) == ["i8", "i8", "u4"]  # the head, the lookup; the layer


def test_constant_reshapes_use_the_inputs_shared_dimensions() -> None:
    """``view(batch, seq, -1, 4)`` with ``batch`` read off another input (as the exporter writes
    it) gets the constant ``[0, 0, 2, 4]`` (``0`` copies the input's axis), and the same numbers."""
    ids = ops.parameter([-1, -1], np.int64, name="input_ids")
    beam = ops.parameter([-1], np.int32, name="beam_idx")
    table = ops.constant(np.random.default_rng(0).standard_normal((16, 8)).astype(np.float32))
    hidden = ops.gather(table, ids, ops.constant(np.int64(0)))
    batch = ops.shape_of(beam, output_type="i64")
    seq = ops.gather(ops.shape_of(ids, output_type="i64"), ops.constant([1]), ops.constant(0))
    shape = ops.concat([batch, seq, ops.constant([-1]), ops.constant([4])], 0)
    model = ov.Model([ops.reshape(hidden, shape, special_zero=False)], [ids, beam])
    feed = {"input_ids": np.array([[1, 2, 3]] * 2), "beam_idx": np.array([0, 1], np.int32)}
    before = ov.Core().compile_model(model, "CPU")(feed)[0]
    assert openvino_lm._constant_reshapes(model) == 1
    [reshape] = [op for op in model.get_ordered_ops() if op.get_type_name() == "Reshape"]
    assert list(reshape.input_value(1).get_node().get_data()) == [0, 0, 2, 4]
    assert not any(p.get_partial_shape()[0].has_symbol() for p in model.get_parameters())
    np.testing.assert_array_equal(before, ov.Core().compile_model(model, "CPU")(feed)[0])


def test_tiny_llama_decoder_compiles_to_the_fused_ops() -> None:
    """The compiled graph of a random-weight Llama (2 layers) has OpenVINO's fused ops, as
    optimum-intel's export of it does: one ``RMS`` a norm, one ``RoPE`` for queries and keys,
    attention that owns its cache, two ``Transpose`` a layer, no reshape hanging on values."""
    pytest.importorskip("transformers")
    pytest.importorskip("torch")
    from collections import Counter

    from lm_support import tiny_artifact

    layers = 2
    model = ov.Core().read_model(
        str(tiny_artifact("llama", "openvino:CPU") / "decoder" / "decoder.xml")
    )
    shapes = [
        op.input_value(1).get_node()
        for op in model.get_ordered_ops()
        if op.get_type_name() == "Reshape"
    ]
    assert shapes and all(node.get_type_name() == "Constant" for node in shapes)
    for precision in ("f32", "bf16"):
        if precision == "bf16" and "BF16" not in openvino_lm.capabilities("CPU"):
            continue
        compiled = ov.Core().compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": precision})
        kinds = Counter(
            str(op.get_rt_info()["layerType"].astype(str))
            for op in compiled.get_runtime_model().get_ordered_ops()
        )
        assert kinds["RMS"] == 2 * layers + 1, kinds
        assert kinds["RoPE"] == 2 * layers, kinds
        assert kinds["Transpose"] <= 2 * layers + 2, kinds
        assert not kinds["MVN"] and not kinds["Reduce"] and not kinds["Power"], kinds
        assert openvino_lm.fused_attention(compiled) == {
            "attention": layers,
            "attention_with_cache": layers,
        }
