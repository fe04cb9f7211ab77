"""Recipes: per zoo model, the fused model matches the unfused one in ONNX Runtime, transformer
models end with one Attention op per attention block, and OpenVINO runs the openvino recipe's
output. Target awareness, disabled steps and the report are checked on tiny graphs.

Tolerances (fused vs unfused, both run by ONNX Runtime 1.32 CPU, float32): rtol 1e-4,
atol 1e-5. OpenVINO vs the unfused model in ONNX Runtime: rtol 1e-3, atol 1e-4 (another
runtime's kernels, inference precision pinned to f32).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import numpy as np
import onnx
import onnx.helper as oh
import onnx_ir as ir
import onnxruntime as ort
import pytest
from onnx import numpy_helper

from ai_vmm.passes.analyze import analyze
from ai_vmm.passes.canonicalize import canonicalize
from ai_vmm.passes.recipes import (
    RECIPE_FOR_LABEL,
    RECIPES,
    STEP_NAMES,
    apply_recipe,
    choose_recipe,
)

RTOL, ATOL = 1e-4, 1e-5
OV_RTOL, OV_ATOL = 1e-3, 1e-4
FAST_ZOO = ["small_cnn", "lstm", "gru", "ocr_crnn", "dlrm", "mlp"]
SLOW_ZOO = ["transformer_encoder", "resnet", "mobilenet", "vit", "gpt2", "llama", "t5"]
ZOO_CASES = [*FAST_ZOO, *(pytest.param(n, marks=pytest.mark.slow) for n in SLOW_ZOO)]
TRANSFORMERS = {"transformer_encoder", "vit", "gpt2", "llama", "t5"}


def _run_ort(model: ir.Model, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    data = ir.serde.serialize_model(model).SerializeToString()
    session = ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])
    return list(session.run(None, feeds))


def _ops(model: ir.Model) -> Counter[str]:
    return Counter(n.op_type for n in ir.traversal.RecursiveGraphIterator(model.graph))


def _attention_blocks(zoo: ModuleType, name: str) -> int:
    """Self-attention per layer, plus cross-attention per decoder layer, from the config."""
    config = zoo.build_module(name).model.config
    if getattr(config, "is_encoder_decoder", False):
        return int(config.num_layers + 2 * config.num_decoder_layers)
    return int(config.num_hidden_layers)


def _load(path: Path) -> ir.Model:
    model = ir.load(path)
    canonicalize(model)
    return model


@pytest.mark.parametrize("name", ZOO_CASES)
def test_zoo_fused_matches_unfused_on_onnxruntime(
    name: str, zoo: ModuleType, zoo_model: Callable[[str], Path]
) -> None:
    model = _load(zoo_model(name))
    feeds = zoo.example_inputs(name, batch=2)
    expected = _run_ort(model, feeds)
    recipe = choose_recipe(analyze(model))
    assert recipe == RECIPE_FOR_LABEL[zoo.ZOO[name].architecture]
    report = apply_recipe(model, recipe, target="onnxruntime")
    assert report.node_counts[-1][1] <= report.nodes_before
    for want, got in zip(expected, _run_ort(model, feeds), strict=True):
        np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL)
    ops = _ops(model)
    if name in TRANSFORMERS:
        assert ops["Attention"] == _attention_blocks(zoo, name)
        assert "Softmax" not in ops
        assert report.opset_after == 23
        assert analyze(model).primary_label == zoo.ZOO[name].architecture
    json.dumps(report.to_json())


@pytest.mark.parametrize("name", ZOO_CASES)
def test_zoo_openvino_runs_the_openvino_recipe(
    name: str, zoo: ModuleType, zoo_model: Callable[[str], Path], tmp_path: Path
) -> None:
    ov = pytest.importorskip("openvino")
    model = _load(zoo_model(name))
    feeds = zoo.example_inputs(name, batch=2)
    expected = _run_ort(model, feeds)
    report = apply_recipe(model, choose_recipe(analyze(model)), target="openvino")
    assert not any(n.domain == "com.microsoft" for n in model.graph)
    expected_skips = ("only for onnxruntime", "measured slower")  # contrib ops; eager attention
    assert all(r.startswith(expected_skips) for r in report.skipped.values()), report.skipped
    path = tmp_path / f"{name}.onnx"
    ir.save(model, path)
    compiled = ov.Core().compile_model(str(path), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    result = compiled(feeds)
    for want, port in zip(expected, compiled.outputs, strict=True):
        np.testing.assert_allclose(result[port], want, rtol=OV_RTOL, atol=OV_ATOL)
    if name == "t5":  # eager attention: avoided on OpenVINO, where it was measured slower
        assert "Attention" not in _ops(model)
        step = next(s for s in report.steps if s.name == "attention_unguarded")
        assert step.would_fire == _attention_blocks(zoo, name)
    elif name in TRANSFORMERS:
        assert _ops(model)["Attention"] == _attention_blocks(zoo, name)


# ------------------------------------------------------------------------------------------
# Tiny graphs: target awareness, options, the report
# ------------------------------------------------------------------------------------------

B, H, S, D = 2, 2, 5, 4


def _tiny_attention() -> ir.Model:
    """softmax(q k^T / sqrt(D)) v followed by a Conv-free MLP head; opset 18."""
    nodes = [
        oh.make_node("Transpose", ["k"], ["kt"], perm=[0, 1, 3, 2]),
        oh.make_node("MatMul", ["q", "kt"], ["s"]),
        oh.make_node("Div", ["s", "sqrt_d"], ["ss"]),
        oh.make_node("Softmax", ["ss"], ["w"], axis=-1),
        oh.make_node("MatMul", ["w", "v"], ["y"]),
    ]
    graph = oh.make_graph(
        nodes,
        "attn",
        [
            oh.make_tensor_value_info(n, onnx.TensorProto.FLOAT, ["b", H, "s", D])
            for n in ("q", "k", "v")
        ],
        [oh.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)],
        [numpy_helper.from_array(np.array(D**0.5, np.float32), "sqrt_d")],
    )
    model = ir.serde.deserialize_model(
        oh.make_model(graph, opset_imports=[oh.make_opsetid("", 18)])
    )
    canonicalize(model)
    return model


def _tiny_feeds() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {n: rng.standard_normal((B, H, S, D)).astype(np.float32) for n in ("q", "k", "v")}


def test_unsupported_fused_op_is_not_produced() -> None:
    model = _tiny_attention()
    expected = _run_ort(model, _tiny_feeds())

    def no_attention(domain: str, op_type: str) -> bool:
        return not (domain == "" and op_type == "Attention")

    report = apply_recipe(model, "transformer", target="npu", supported_ops=no_attention)
    step = next(s for s in report.steps if s.name == "attention_unguarded")
    assert step.status == "skipped"
    assert step.reason == "target npu cannot run ai.onnx::Attention"
    assert step.would_fire == 1
    assert report.skipped["attention_unguarded"] == step.reason
    assert report.opset_after == 18  # nothing needed opset 23
    assert _ops(model)["Softmax"] == 1 and "Attention" not in _ops(model)
    np.testing.assert_allclose(_run_ort(model, _tiny_feeds())[0], expected[0], rtol=0, atol=0)


def test_supported_fused_op_is_produced_and_counted() -> None:
    model = _tiny_attention()
    expected = _run_ort(model, _tiny_feeds())
    report = apply_recipe(model, "transformer", target="onnxruntime", supported_ops=None)
    assert report.fusion_counts == {"attention_unguarded": 1}
    assert report.rule_counts == {"attention_unguarded/EagerToAttention": 1}
    assert (report.opset_before, report.opset_after) == (18, 23)
    counts = dict(report.node_counts)
    assert counts["input"] == 5 and counts["attention_unguarded"] == 1
    np.testing.assert_allclose(_run_ort(model, _tiny_feeds())[0], expected[0], RTOL, ATOL)


def test_target_opset_limit_is_respected() -> None:
    model = _tiny_attention()
    report = apply_recipe(model, "transformer", target="old", max_opset=21)
    assert report.skipped["attention_unguarded"] == "needs opset 23; target old reads opset <= 21"
    assert report.opset_after == 18


def test_old_opset_is_raised_through_onnx_converter() -> None:
    """Below opset 18 onnxscript hands the conversion to onnx's C-API converter."""
    model = _tiny_attention()
    ir.passes.common.ShapeInferencePass()(model)
    proto = ir.serde.serialize_model(model)
    proto.opset_import[0].version = 13  # the tiny graph means the same at opset 13
    model = ir.serde.deserialize_model(proto)
    expected = _run_ort(model, _tiny_feeds())
    report = apply_recipe(model, "transformer", target="onnxruntime")
    assert (report.opset_before, report.opset_after) == (13, 23)
    assert report.fusion_counts == {"attention_unguarded": 1}
    np.testing.assert_allclose(_run_ort(model, _tiny_feeds())[0], expected[0], RTOL, ATOL)


def test_contrib_fusions_are_skipped_for_other_targets() -> None:
    model = _tiny_attention()
    report = apply_recipe(model, "transformer", target="openvino")
    for name in ("skip_layer_norm", "bias_gelu", "fused_matmul"):
        step = next(s for s in report.steps if s.name == name)
        assert step.status in ("skipped", "no match")
        if step.status == "skipped":
            assert step.reason == "only for onnxruntime (target is openvino)"


def test_disabled_steps_do_not_run() -> None:
    model = _tiny_attention()
    disabled = frozenset({"attention", "attention_unguarded", "constant_folding"})
    report = apply_recipe(model, "transformer", target="onnxruntime", disabled=disabled)
    assert report.skipped["attention_unguarded"] == "disabled by option"
    assert "constant_folding" not in report.skipped  # a canonicalization step: not ours
    assert "Attention" not in _ops(model)
    with pytest.raises(ValueError, match="unknown pass nope"):
        apply_recipe(model, "transformer", target="onnxruntime", disabled=frozenset({"nope"}))
    with pytest.raises(ValueError, match="unknown recipe 'nope'"):
        apply_recipe(model, "nope", target="onnxruntime")


def test_trace_records_near_misses_in_the_report() -> None:
    """A 2-D MatMul + [2, 3, 4] "bias" is declined by matmul_add_to_gemm's bias check."""
    mlp = ir.serde.deserialize_model(
        oh.make_model(
            oh.make_graph(
                [
                    oh.make_node("MatMul", ["x", "w"], ["m"]),
                    oh.make_node("Add", ["m", "c"], ["y"]),
                ],
                "g",
                [oh.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [3, 4])],
                [oh.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)],
                [
                    numpy_helper.from_array(np.ones((4, 4), np.float32), "w"),
                    numpy_helper.from_array(np.ones((2, 3, 4), np.float32), "c"),
                ],
            ),
            opset_imports=[oh.make_opsetid("", 18)],
        )
    )
    canonicalize(mlp)
    report = apply_recipe(mlp, "mlp", target="onnxruntime", trace=True)
    [miss] = report.near_misses
    assert miss.rule == "MatMulAddToGemm"
    assert miss.reason == "bias is not a scalar, vector or [1, N] row"
    step = json.loads(json.dumps(report.to_json()))["steps"][0]
    assert step["near_misses"][0]["reason"] == miss.reason


def test_recipes_are_flat_lists_of_known_steps() -> None:
    for name, steps in RECIPES.items():
        assert steps and all(isinstance(s, str) for s in steps), name
        assert set(steps) <= set(STEP_NAMES), name
        assert len(steps) == len(set(steps)), name
    assert set(RECIPE_FOR_LABEL.values()) <= set(RECIPES)


def test_choose_recipe_follows_the_primary_label() -> None:
    class Profile:
        def __init__(self, label: str | None) -> None:
            self.primary_label = label

    assert choose_recipe(Profile("causal-decoder")) == "decoder"
    assert choose_recipe(Profile("cnn-rnn")) == "cnn-rnn"
    assert choose_recipe(Profile(None)) == "default"
    assert choose_recipe(Profile("something-new")) == "default"
