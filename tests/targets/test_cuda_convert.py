"""ONNX -> torch conversion (the cuda target's source for ONNX subgraphs), checked on the CPU
against ONNX Runtime: single ops on tiny graphs, and the zoo models whole."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import onnx
import onnx.helper as oh
import onnx_ir as ir
import onnxruntime as ort
import pytest
from onnx import numpy_helper

torch = pytest.importorskip("torch")

from onnx_op_cases import F32, I64, assert_matches  # noqa: E402
from onnx_op_cases import const as _const  # noqa: E402
from onnx_op_cases import model as _model  # noqa: E402
from onnx_op_cases import vi as _vi  # noqa: E402

from ai_vmm.passes.analyze import analyze  # noqa: E402
from ai_vmm.passes.canonicalize import canonicalize  # noqa: E402
from ai_vmm.passes.recipes import apply_recipe, choose_recipe  # noqa: E402
from ai_vmm.targets.cuda import CudaTarget  # noqa: E402
from ai_vmm.targets.cuda_convert import ConversionError, node_support, to_torch  # noqa: E402

RNG = np.random.default_rng(0)
X = RNG.standard_normal((2, 4, 6, 6)).astype(np.float32)

# (id, nodes, inputs, outputs, initializers, feeds)
CASES: list[tuple[str, Any, Any, Any, Any, dict[str, np.ndarray]]] = [
    (
        "conv-asymmetric-pads-groups",
        [oh.make_node("Conv", ["x", "w"], ["y"], pads=[0, 1, 1, 0], strides=[2, 1], group=2)],
        [_vi("x", ["N", 4, 6, 6])],
        [_vi("y", None)],
        [numpy_helper.from_array(RNG.standard_normal((6, 2, 3, 3)).astype(np.float32), "w")],
        {"x": X},
    ),
    (
        "conv-same-upper",
        [oh.make_node("Conv", ["x", "w"], ["y"], auto_pad="SAME_UPPER", strides=[2, 2])],
        [_vi("x", ["N", 4, 6, 6])],
        [_vi("y", None)],
        [numpy_helper.from_array(RNG.standard_normal((3, 4, 2, 2)).astype(np.float32), "w")],
        {"x": X},
    ),
    (
        "maxpool-ceil-pads",
        [
            oh.make_node(
                "MaxPool",
                ["x"],
                ["y"],
                kernel_shape=[3, 3],
                strides=[2, 2],
                pads=[1, 1, 1, 1],
                ceil_mode=1,
            )
        ],
        [_vi("x", ["N", 4, 6, 6])],
        [_vi("y", None)],
        [],
        {"x": X},
    ),
    (
        "avgpool-exclude-pad",
        [oh.make_node("AveragePool", ["x"], ["y"], kernel_shape=[3, 3], pads=[1, 1, 1, 1])],
        [_vi("x", ["N", 4, 6, 6])],
        [_vi("y", None)],
        [],
        {"x": X},
    ),
    (
        "gemm-trans-alpha-beta",
        [oh.make_node("Gemm", ["a", "b", "c"], ["y"], transA=1, transB=1, alpha=0.5, beta=2.0)],
        [_vi("a", [5, 3]), _vi("b", [4, 5]), _vi("c", [3, 4])],
        [_vi("y", None)],
        [],
        {
            "a": RNG.standard_normal((5, 3)).astype(np.float32),
            "b": RNG.standard_normal((4, 5)).astype(np.float32),
            "c": RNG.standard_normal((3, 4)).astype(np.float32),
        },
    ),
    (
        "shape-arithmetic-reshape",
        [
            oh.make_node("Shape", ["x"], ["s"]),
            oh.make_node("Gather", ["s", "zero"], ["n"], axis=0),
            oh.make_node("Unsqueeze", ["n", "zero1"], ["n1"]),
            oh.make_node("Concat", ["n1", "minus1"], ["shape"], axis=0),
            oh.make_node("Reshape", ["x", "shape"], ["y"]),
        ],
        [_vi("x", ["N", 4, 6, 6])],
        [_vi("y", None)],
        [_const("zero", 0), _const("zero1", [0]), _const("minus1", [-1])],
        {"x": X},
    ),
    (
        "slice-steps-negative-ends",
        [oh.make_node("Slice", ["x", "st", "en", "ax", "sp"], ["y"])],
        [_vi("x", ["N", 4, 6, 6])],
        [_vi("y", None)],
        [_const("st", [1, 0]), _const("en", [-1, 99]), _const("ax", [1, 3]), _const("sp", [1, 2])],
        {"x": X},
    ),
    (
        "split-num-outputs-uneven",
        [oh.make_node("Split", ["x"], ["a", "b", "c"], axis=3, num_outputs=3)],
        [_vi("x", [2, 4, 6, 7])],
        [_vi("a", None), _vi("b", None), _vi("c", None)],
        [],
        {"x": RNG.standard_normal((2, 4, 6, 7)).astype(np.float32)},
    ),
    (
        "cumsum-exclusive-reverse",
        [oh.make_node("CumSum", ["x", "axis"], ["y"], exclusive=1, reverse=1)],
        [_vi("x", [3, 5])],
        [_vi("y", None)],
        [_const("axis", 1)],
        {"x": RNG.standard_normal((3, 5)).astype(np.float32)},
    ),
    (
        "pad-reflect-and-where-expand",
        [
            oh.make_node("Pad", ["x", "pads"], ["p"], mode="reflect"),
            oh.make_node("Expand", ["b", "shape"], ["e"]),
            oh.make_node("Neg", ["p"], ["p2"]),
            oh.make_node("Where", ["e", "p", "p2"], ["y"]),
        ],
        [_vi("x", [2, 4, 6, 6]), _vi("b", [1, 1, 1, 8], onnx.TensorProto.BOOL)],
        [_vi("y", None)],
        [_const("pads", [0, 0, 1, 1, 0, 0, 1, 1]), _const("shape", [2, 4, 8, 1])],
        {"x": X, "b": RNG.integers(0, 2, (1, 1, 1, 8)).astype(bool)},
    ),
    (
        "attention-3d-gqa-causal",
        [
            oh.make_node(
                "Attention", ["q", "k", "v"], ["y"], q_num_heads=4, kv_num_heads=2, is_causal=1
            )
        ],
        [_vi("q", [2, 5, 32]), _vi("k", [2, 5, 16]), _vi("v", [2, 5, 16])],
        [_vi("y", None)],
        [],
        {
            "q": RNG.standard_normal((2, 5, 32)).astype(np.float32),
            "k": RNG.standard_normal((2, 5, 16)).astype(np.float32),
            "v": RNG.standard_normal((2, 5, 16)).astype(np.float32),
        },
    ),
    (
        "attention-4d-bool-mask-scale",
        [oh.make_node("Attention", ["q", "k", "v", "m"], ["y"], scale=0.3)],
        [
            _vi("q", [2, 2, 5, 8]),
            _vi("k", [2, 2, 7, 8]),
            _vi("v", [2, 2, 7, 8]),
            _vi("m", [5, 7], onnx.TensorProto.BOOL),
        ],
        [_vi("y", None)],
        [],
        {
            "q": RNG.standard_normal((2, 2, 5, 8)).astype(np.float32),
            "k": RNG.standard_normal((2, 2, 7, 8)).astype(np.float32),
            "v": RNG.standard_normal((2, 2, 7, 8)).astype(np.float32),
            "m": np.tril(np.ones((5, 7), bool), 2),
        },
    ),
    (
        "rotary-interleaved-position-ids",
        [
            oh.make_node(
                "RotaryEmbedding", ["x", "cos", "sin", "pos"], ["y"], interleaved=1, num_heads=2
            )
        ],
        [_vi("x", [2, 3, 16]), _vi("pos", [2, 3], I64)],
        [_vi("y", None)],
        [
            numpy_helper.from_array(RNG.standard_normal((10, 4)).astype(np.float32), "cos"),
            numpy_helper.from_array(RNG.standard_normal((10, 4)).astype(np.float32), "sin"),
        ],
        {
            "x": RNG.standard_normal((2, 3, 16)).astype(np.float32),
            "pos": np.array([[0, 1, 2], [5, 6, 7]], dtype=np.int64),
        },
    ),
    (
        "layernorm-rmsnorm-gelu-tanh",
        [
            oh.make_node("LayerNormalization", ["x", "g", "b"], ["l"], axis=-1, epsilon=1e-5),
            oh.make_node("RMSNormalization", ["l", "g"], ["r"], axis=-1, epsilon=1e-6),
            oh.make_node("Gelu", ["r"], ["y"], approximate="tanh"),
        ],
        [_vi("x", ["N", 3, 8])],
        [_vi("y", None)],
        [
            numpy_helper.from_array(RNG.standard_normal(8).astype(np.float32), "g"),
            numpy_helper.from_array(RNG.standard_normal(8).astype(np.float32), "b"),
        ],
        {"x": RNG.standard_normal((2, 3, 8)).astype(np.float32)},
    ),
    (
        "reduce-axes-input-and-topk",
        [
            oh.make_node("ReduceMean", ["x", "axes"], ["m"], keepdims=0),
            oh.make_node("TopK", ["m", "k"], ["vals", "idx"], axis=-1),
        ],
        [_vi("x", [2, 4, 6, 6])],
        [_vi("vals", None), _vi("idx", None, I64)],
        [_const("axes", [1, 2]), _const("k", [3])],
        {"x": X},
    ),
    # Fixes found by scripts/conformance_cuda.py (ONNX node tests):
    (
        "pow-int-base-float-exponent",  # the result has the base's type
        [oh.make_node("Pow", ["a", "b"], ["y"])],
        [_vi("a", [2, 3], onnx.TensorProto.INT32), _vi("b", [3])],
        [_vi("y", None, onnx.TensorProto.INT32)],
        [],
        {
            "a": np.array([[1, 2, 3], [4, 5, 6]], dtype=np.int32),
            "b": np.array([2.0, 0.5, 3.0], dtype=np.float32),
        },
    ),
    (
        "clip-without-bounds",
        [oh.make_node("Clip", ["x"], ["y"])],
        [_vi("x", [2, 4, 6, 6])],
        [_vi("y", None)],
        [],
        {"x": X},
    ),
    (
        "attention-causal-mask-kv-longer-than-q",  # causal is top-left aligned without a past
        [oh.make_node("Attention", ["q", "k", "v", "m"], ["y"], is_causal=1)],
        [
            _vi("q", [2, 2, 3, 8]),
            _vi("k", [2, 2, 5, 8]),
            _vi("v", [2, 2, 5, 8]),
            _vi("m", [3, 5]),
        ],
        [_vi("y", None)],
        [],
        {
            "q": RNG.standard_normal((2, 2, 3, 8)).astype(np.float32),
            "k": RNG.standard_normal((2, 2, 5, 8)).astype(np.float32),
            "v": RNG.standard_normal((2, 2, 5, 8)).astype(np.float32),
            "m": RNG.standard_normal((3, 5)).astype(np.float32),
        },
    ),
    (
        "argmax-argmin-select-last-index",
        [
            oh.make_node("ArgMax", ["x"], ["a"], axis=1, select_last_index=1),
            oh.make_node("ArgMin", ["x"], ["b"], axis=-1, keepdims=0, select_last_index=1),
        ],
        [_vi("x", [3, 4])],
        [_vi("a", None, I64), _vi("b", None, I64)],
        [],
        {"x": np.array([[1, 3, 3, 0], [2, 2, 1, 1], [0, 5, 5, 5]], dtype=np.float32)},
    ),
    (
        "avgpool-large-asymmetric-pads",
        [
            oh.make_node("AveragePool", ["x"], ["a"], kernel_shape=[3, 3], pads=[2, 0, 1, 2]),
            oh.make_node(
                "AveragePool",
                ["x"],
                ["b"],
                kernel_shape=[3, 3],
                pads=[2, 2, 2, 2],
                count_include_pad=1,
            ),
        ],
        [_vi("x", ["N", 4, 6, 6])],
        [_vi("a", None), _vi("b", None)],
        [],
        {"x": X},
    ),
    (
        "shape-logic-not-mod-and-where-range-axes",  # stay ShapeValues, as expanded functions
        [
            oh.make_node("Shape", ["x"], ["a"], start=1, end=2),
            oh.make_node("Shape", ["x"], ["b"], start=2, end=3),
            oh.make_node("Equal", ["a", "b"], ["eq"]),
            oh.make_node("Not", ["eq"], ["ne"]),
            oh.make_node("Mod", ["b", "a"], ["m"]),
            oh.make_node("Equal", ["m", "two1"], ["me"]),
            oh.make_node("And", ["ne", "me"], ["c"]),
            oh.make_node("Where", ["c", "a", "b"], ["w"]),
            oh.make_node("Shape", ["x"], ["n"], start=0, end=1),
            oh.make_node("Concat", ["n", "w", "minus1"], ["shape"], axis=0),
            oh.make_node("Reshape", ["x", "shape"], ["y"]),
            oh.make_node("Shape", ["x"], ["s"]),
            oh.make_node("Size", ["s"], ["rank"]),
            oh.make_node("Range", ["two", "rank", "one"], ["axes"]),
            oh.make_node("ReduceMean", ["x", "axes"], ["r"]),
            oh.make_node("Sub", ["rank", "two1"], ["nreduced"]),
            oh.make_node("ConstantOfShape", ["nreduced"], ["ones"], value=_const("v", [1])),
            oh.make_node("Slice", ["s", "zero1", "two1"], ["prefix"]),
            oh.make_node("Concat", ["prefix", "ones"], ["rshape"], axis=0),
            oh.make_node("Reshape", ["r", "rshape"], ["r4"]),
        ],
        [_vi("x", ["N", 4, 6, 6])],
        [_vi("y", None), _vi("r", None), _vi("r4", None)],
        [
            _const("two1", [2]),
            _const("zero1", [0]),
            _const("minus1", [-1]),
            _const("two", 2),
            _const("one", 1),
        ],
        {"x": X},
    ),
    (
        "layernorm-mean-invstddev-outputs",
        [
            oh.make_node(
                "LayerNormalization", ["x", "g", "b"], ["y", "mean", "inv"], axis=1, epsilon=1e-3
            )
        ],
        [_vi("x", ["N", 3, 8])],
        [_vi("y", None), _vi("mean", None), _vi("inv", None)],
        [
            numpy_helper.from_array(RNG.standard_normal((3, 8)).astype(np.float32), "g"),
            numpy_helper.from_array(RNG.standard_normal((3, 8)).astype(np.float32), "b"),
        ],
        {"x": RNG.standard_normal((2, 3, 8)).astype(np.float32)},
    ),
]


@pytest.mark.parametrize(
    ("nodes", "inputs", "outputs", "inits", "feeds"),
    [c[1:] for c in CASES],
    ids=[c[0] for c in CASES],
)
def test_op_matches_onnxruntime(
    nodes: Any, inputs: Any, outputs: Any, inits: Any, feeds: dict[str, np.ndarray]
) -> None:
    assert_matches(_model(nodes, inputs, outputs, inits), feeds)


def test_unsupported_nodes_say_why() -> None:
    body = oh.make_graph([oh.make_node("Identity", ["x"], ["z"])], "b", [], [_vi("z", [1])])
    proto = _model(
        [
            oh.make_node("Hardmax", ["x"], ["d"], name="hardmax"),
            oh.make_node("If", ["c"], ["i"], name="if", then_branch=body, else_branch=body),
            oh.make_node("Custom", ["x"], ["u"], name="custom", domain="my.ops"),
        ],
        [_vi("x", [1, 4, 2, 2]), _vi("c", [], onnx.TensorProto.BOOL)],
        [_vi("d", None), _vi("i", None), _vi("u", None)],
    )
    model = ir.serde.deserialize_model(proto)
    reasons = [node_support(node, 23) for node in model.graph]
    assert reasons[0] is not None and "Hardmax is not in our ONNX->torch op mapping" in reasons[0]
    assert reasons[1] is not None and "control flow is not converted" in reasons[1]
    assert reasons[2] is not None and "domain 'my.ops'" in reasons[2]
    with pytest.raises(ConversionError, match="Hardmax"):
        to_torch(model)
    support = CudaTarget().capability(model, None)  # type: ignore[arg-type]
    assert [s.supported for s in support.values()] == [False, False, False]


def test_op_features_not_converted_are_rejected_with_a_reason() -> None:
    """Semantics the op functions do not express: node_support says no, no silent mismatch."""
    seq = onnx.helper.make_tensor_sequence_value_info("s", F32, None)
    proto = _model(
        [
            oh.make_node("BatchNormalization", ["x", "c", "c", "c", "c"], ["bn"], training_mode=1),
            oh.make_node("Dropout", ["x", "r", "t"], ["dr"]),
            oh.make_node("Attention", ["q", "q", "q"], ["at", "", "", "qk"]),
            oh.make_node("Identity", ["s"], ["si"]),
            oh.make_node("Resize", ["x", "", "sc"], ["mp"], mode="linear", antialias=1),
            oh.make_node("AveragePool", ["x"], ["ap"], kernel_shape=[2, 2], dilations=[2, 2]),
        ],
        [
            _vi("x", [1, 4, 6, 6]),
            _vi("c", [4]),
            _vi("r", []),
            _vi("t", [], onnx.TensorProto.BOOL),
            _vi("q", [1, 2, 3, 8]),
            seq,
            _vi("sc", [4]),
        ],
        [
            _vi("bn", None),
            _vi("dr", None),
            _vi("at", None),
            _vi("qk", None),
            onnx.helper.make_tensor_sequence_value_info("si", F32, None),
            _vi("mp", None),
            _vi("ap", None),
        ],
    )
    model = ir.serde.deserialize_model(proto)
    reasons = [node_support(node, 23) for node in model.graph]
    expected = [
        "training_mode=1",
        "training_mode input",
        "qk_matmul_output",
        "SequenceType",
        "antialias",
        "dilations",
    ]
    for reason, want in zip(reasons, expected, strict=True):
        assert reason is not None and want in reason


ZOO = [
    "small_cnn",
    "resnet",
    "mobilenet",
    "transformer_encoder",
    "vit",
    "gpt2",
    "llama",
    "t5",
    "dlrm",
    "mlp",
    "lstm",
    "gru",
    "ocr_crnn",
]


def _fused(path: Path) -> ir.Model:
    """The zoo model as the cuda target receives it: canonicalized and fused for it."""
    model = ir.load(path)
    canonicalize(model, frozenset())
    target = CudaTarget()
    apply_recipe(
        model,
        choose_recipe(analyze(model)),
        target="cuda",
        supported_ops=target.supports_op,
        disabled=frozenset(),
        trace=False,
    )
    return model


@pytest.mark.parametrize("name", ZOO)
def test_zoo_model_converts_and_matches(
    name: str, zoo: ModuleType, zoo_model: Callable[[str], Path], tmp_path: Path
) -> None:
    model = _fused(zoo_model(name))
    path = tmp_path / "fused.onnx"
    ir.save(model, path)
    session = ort.InferenceSession(str(path))
    module = to_torch(model).eval()
    for batch, seq in ((1, 5), (3, 9)):
        feeds = zoo.example_inputs(name, batch, dims={"seq": seq})
        expected = session.run(None, feeds)
        with torch.no_grad():
            got = module(*[torch.from_numpy(feeds[n]) for n in module.input_names])
        for want, have in zip(expected, got, strict=True):
            np.testing.assert_allclose(have.numpy(), want, rtol=1e-4, atol=2e-5)


def test_export_keeps_dynamic_axes(zoo_model: Callable[[str], Path]) -> None:
    """Shape arithmetic stays symbolic: a llama exported once runs at other batch/seq sizes."""
    model = _fused(zoo_model("llama"))
    module = to_torch(model).eval()
    batch, seq = torch.export.Dim("batch", min=1, max=64), torch.export.Dim("seq", min=1, max=128)
    example = torch.zeros((2, 7), dtype=torch.int64)
    program = torch.export.export(
        module, (example,), dynamic_shapes={module.arg_names[0]: {0: batch, 1: seq}}, strict=False
    )
    ids = torch.randint(0, 100, (3, 11))
    with torch.no_grad():
        np.testing.assert_allclose(
            program.module()(ids)[0].numpy(), module(ids)[0].numpy(), rtol=1e-5, atol=1e-6
        )


def test_float32_min_mask_constant_stays_finite_in_float16() -> None:
    """HF encoders build masks as ``(1 - mask) * float32.min``: -3.4e38 is -inf in float16 and
    0 * -inf is NaN (MiniLM came out all NaN). Constants are clamped to float16's range."""
    nodes = [
        oh.make_node("Cast", ["mask"], ["m"], to=F32),
        oh.make_node("Sub", ["one", "m"], ["inv"]),
        oh.make_node("Mul", ["inv", "lowest"], ["bias"]),
        oh.make_node("Add", ["scores", "bias"], ["biased"]),
        oh.make_node("Softmax", ["biased"], ["y"], axis=-1),
    ]
    inits = [
        _const("one", 1.0, np.float32),
        _const("lowest", np.finfo(np.float32).min, np.float32),
    ]
    proto = _model(
        nodes, [_vi("scores", ["N", 5]), _vi("mask", ["N", 5], I64)], [_vi("y", None)], inits
    )
    scores = RNG.standard_normal((2, 5)).astype(np.float32)
    mask = np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], dtype=np.int64)
    module = to_torch(ir.serde.deserialize_model(proto), compute=torch.float16).eval()
    with torch.no_grad():
        got = module(torch.from_numpy(scores), torch.from_numpy(mask))[0].numpy()
    want = ort.InferenceSession(proto.SerializeToString()).run(
        None, {"scores": scores, "mask": mask}
    )
    np.testing.assert_allclose(got, want[0], rtol=0, atol=2e-3)


def _squeeze_if(condition_from_data: bool) -> onnx.ModelProto:
    """torch.onnx's "squeeze axis 1 if it is 1" (Silero VAD has five): If on Equal(Shape)."""
    then = oh.make_graph(
        [oh.make_node("Squeeze", ["x", "one"], ["t"])], "then", [], [_vi("t", None)]
    )
    other = oh.make_graph([oh.make_node("Identity", ["x"], ["e"])], "else", [], [_vi("e", None)])
    if condition_from_data:
        condition = [
            oh.make_node("ReduceMax", ["x"], ["mx"], keepdims=0),
            oh.make_node("Greater", ["mx", "zero_f"], ["cond"]),
        ]
    else:
        condition = [
            oh.make_node("Shape", ["x"], ["s"]),
            oh.make_node("Gather", ["s", "one_s"], ["d"]),
            oh.make_node("Equal", ["d", "one_s"], ["cond"]),
        ]
    nodes = [*condition, oh.make_node("If", ["cond"], ["y"], then_branch=then, else_branch=other)]
    inits = [_const("one", [1]), _const("one_s", 1), _const("zero_f", 0.0, np.float32)]
    return _model(nodes, [_vi("x", ["N", "C", 4])], [_vi("y", None)], inits)


@pytest.mark.parametrize("channels", [1, 3])
def test_if_on_a_shape_condition_picks_its_branch_while_tracing(channels: int) -> None:
    proto = _squeeze_if(condition_from_data=False)
    assert_matches(proto, {"x": RNG.standard_normal((2, channels, 4)).astype(np.float32)})


def test_if_on_data_is_rejected_with_a_reason() -> None:
    model = ir.serde.deserialize_model(_squeeze_if(condition_from_data=True))
    reasons = [node_support(node, 23) for node in model.graph]
    assert reasons[-1] is not None and "computed from tensor data" in reasons[-1]


def test_sizes_computed_from_data_are_rejected_up_front() -> None:
    """A Reshape whose shape is a graph input (tensor data) cannot export: node_support says so
    before a build is tried; the same Reshape fed by Shape/Neg arithmetic converts."""
    nodes = [
        oh.make_node("Reshape", ["x", "s"], ["data_shaped"]),
        oh.make_node("Shape", ["x"], ["sx"]),
        oh.make_node("Neg", ["minus_one"], ["one"]),
        oh.make_node("Concat", ["sx", "one"], ["sx1"], axis=0),
        oh.make_node("Reshape", ["x", "sx1"], ["shape_shaped"]),
    ]
    proto = _model(
        nodes,
        [_vi("x", ["N", 4]), _vi("s", [2], I64)],
        [_vi("data_shaped", None), _vi("shape_shaped", None)],
        [_const("minus_one", [-1])],
    )
    model = ir.serde.deserialize_model(proto)
    reasons = [node_support(node, 23) for node in model.graph]
    assert reasons[0] is not None and "computed from tensor data" in reasons[0]
    assert reasons[1:] == [None, None, None, None]
    shaped = _model(
        nodes[1:], [_vi("x", ["N", 4])], [_vi("shape_shaped", None)], [_const("minus_one", [-1])]
    )
    assert_matches(shaped, {"x": RNG.standard_normal((3, 4)).astype(np.float32)})
