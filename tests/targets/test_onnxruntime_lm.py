"""``targets/onnxruntime_lm.build``: the decoder's ``Attention`` reads the grouped KV cache without
``repeat_kv``'s copies (the fusion step ``attention_gqa``; its numerics and the head orders it
declines are tested in ``tests/passes/fusion/test_attention.py``).

On a real export: a random-weight Llama with 2 key/value heads for 4 query heads, compiled by
the LM path, whose parity with transformers the compile checks.
"""

from __future__ import annotations

import onnx
import pytest
from lm_support import tiny_artifact

from ai_vmm.runtime.artifact import read_manifest, read_report

pytestmark = pytest.mark.slow


def test_a_real_export_attends_over_the_grouped_cache() -> None:
    root = tiny_artifact("llama", "onnxruntime:CPU")
    entry = root / read_manifest(root).partitions[0].entry
    # The graph alone: the weights file may be hard-linked from the compile cache, which
    # onnx.load refuses to follow (a hard-link attack to it).
    graph = onnx.load(str(entry), load_external_data=False).graph
    attention = [node for node in graph.node if node.op_type == "Attention"]
    assert [node.input[1] for node in attention] == ["present.0.key", "present.1.key"]
    assert [node.input[2] for node in attention] == ["present.0.value", "present.1.value"]
    # The cache feeds attention alone now (before: attention and repeat_kv's Unsqueeze).
    readers = [node.op_type for node in graph.node if "present.0.key" in node.input]
    assert readers == ["Attention"]
    notes = str(read_report(root))
    assert "2 attention nodes read the grouped KV cache directly" in notes
