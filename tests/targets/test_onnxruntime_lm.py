"""``targets/onnxruntime_lm.attend_grouped``: ``Attention`` reads the grouped KV cache without
``repeat_kv``'s copies, with the same result.

The graphs here are built by hand in the exporter's pattern and run by ONNX Runtime before and
after the rewrite; a real export (a random-weight Llama with 2 key/value heads for 4 query
heads, compiled by the LM path) loses every ``Expand`` in front of its attention.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from lm_support import tiny_artifact
from onnx import TensorProto, helper, numpy_helper

from ai_vmm.runtime.artifact import read_manifest, read_report
from ai_vmm.targets.onnxruntime_lm import attend_grouped

HEADS, KV, DIM = 6, 2, 8


def _graph(axis: int = 2) -> onnx.ModelProto:
    """Attention over keys / values repeated as ``repeat_kv`` does (``axis`` 2), or repeated
    on another axis (a different head order: not the pattern)."""
    group = HEADS // KV
    first, second = (KV, group) if axis == 2 else (group, KV)
    constants = {
        "axes": [axis],
        "first": [first],
        "second": [second],
        "dim": [DIM],
        "heads": [HEADS],
    }
    nodes = [helper.make_node("Shape", ["k"], ["batch"], end=1)]
    for name in ("k", "v"):
        nodes += [
            helper.make_node("Unsqueeze", [name, "axes"], [f"{name}_u"]),
            helper.make_node("Shape", [name], [f"{name}_len"], start=2, end=3),
            helper.make_node(
                "Concat",
                ["batch", "first", "second", f"{name}_len", "dim"],
                [f"{name}_shape"],
                axis=0,
            ),
            helper.make_node("Expand", [f"{name}_u", f"{name}_shape"], [f"{name}_e"]),
            helper.make_node(
                "Concat", ["batch", "heads", f"{name}_len", "dim"], [f"{name}_flat"], axis=0
            ),
            helper.make_node("Reshape", [f"{name}_e", f"{name}_flat"], [f"{name}_r"]),
        ]
    nodes.append(helper.make_node("Attention", ["q", "k_r", "v_r"], ["out"], scale=0.25))
    inputs = [
        helper.make_tensor_value_info("q", TensorProto.FLOAT, [1, HEADS, "s", DIM]),
        helper.make_tensor_value_info("k", TensorProto.FLOAT, [1, KV, "t", DIM]),
        helper.make_tensor_value_info("v", TensorProto.FLOAT, [1, KV, "t", DIM]),
    ]
    out = helper.make_tensor_value_info("out", TensorProto.FLOAT, None)
    inits = [numpy_helper.from_array(np.array(v, np.int64), k) for k, v in constants.items()]
    graph = helper.make_graph(nodes, "repeat_kv", inputs, [out], initializer=inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 23)])


def _run(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> np.ndarray:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    out: np.ndarray = session.run(["out"], feeds)[0]
    return out


def _feeds(seq: int, length: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {
        "q": rng.standard_normal((1, HEADS, seq, DIM), dtype=np.float32),
        "k": rng.standard_normal((1, KV, length, DIM), dtype=np.float32),
        "v": rng.standard_normal((1, KV, length, DIM), dtype=np.float32),
    }


@pytest.mark.parametrize(("seq", "length"), [(1, 37), (5, 5)])
def test_the_rewrite_drops_the_copies_and_keeps_the_result(seq: int, length: int) -> None:
    model = _graph()
    feeds = _feeds(seq, length)
    before = _run(model, feeds)
    assert attend_grouped(model.graph) == 1
    ops = [node.op_type for node in model.graph.node]
    assert "Expand" not in ops and "Unsqueeze" not in ops and "Reshape" not in ops, ops
    assert list(model.graph.node[-1].input) == ["q", "k", "v"]
    assert {init.name for init in model.graph.initializer} == set()
    np.testing.assert_allclose(_run(model, feeds), before, rtol=1e-5, atol=1e-6)


def test_another_head_order_is_left_alone() -> None:
    """Repeats on axis 1 interleave the heads differently from what ``Attention`` assumes, so
    the graph must stay as it is."""
    model = _graph(axis=1)
    original = model.SerializeToString()
    assert attend_grouped(model.graph) == 0
    assert model.SerializeToString() == original


@pytest.mark.slow
def test_a_real_export_attends_over_the_grouped_cache() -> None:
    root = tiny_artifact("llama", "onnxruntime:CPU")
    entry = root / read_manifest(root).partitions[0].entry
    # The graph alone: the weights file may be hard-linked from the compile cache, which
    # onnx.load refuses to follow (a hard-link attack to it).
    graph = onnx.load(str(entry), load_external_data=False).graph
    attention = [node for node in graph.node if node.op_type == "Attention"]
    assert len(attention) == 2
    assert [node.input[1] for node in attention] == ["present.0.key", "present.1.key"]
    # The cache feeds attention alone now (before: attention and repeat_kv's Unsqueeze).
    readers = [node.op_type for node in graph.node if "present.0.key" in node.input]
    assert readers == ["Attention"]
    notes = str(read_report(root))
    assert "2 attention nodes read the grouped KV cache directly" in notes
