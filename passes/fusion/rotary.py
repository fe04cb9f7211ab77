"""Rotary position embeddings -> the standard ONNX ``RotaryEmbedding`` op (opset 23).

With ``f [B, S, D/2]`` the rotation angles (position x inverse frequency), ``c = cos(f)``,
``s = sin(f)``, and ``x = [x1, x2]`` split into halves along the head axis ``D``::

    x * cos([f, f]) + [-x2, x1] * sin([f, f])  ==  RotaryEmbedding(x, c, s, interleaved=0)

(the "rotate half" form of Hugging Face models, ``x [B, H, S, D]``). onnxscript ships this rule
and the partial-rotation variant (only the first ``d < D`` features rotate); we reuse both.
The one change: onnxscript passes ``cos(f)`` as it is, and exporters compute ``f`` once for
batch 1 (``[1, S, D/2]``). The ONNX spec wants ``[B, S, D/2]``; OpenVINO broadcasts, ONNX
Runtime 1.32 rejects it ("cos_cache ... expected to have the same shape as input x"), so our
rewrite expands the caches to the input's batch unless ``f``'s first axis is already it.
"""

from __future__ import annotations

from typing import Any

import onnx_ir as ir
from onnxscript.rewriter._basics import MatchResult
from onnxscript.rewriter.rules.fusion._rotary_embedding import (
    PartialRotaryEmbedding23Fusion,
    RotaryEmbedding23Fusion,
)

from ai_vmm.passes.fusion.core import FusionRule, rule_class

FAMILY = "rotary"
ROTARY_OPSET = 23


def _same_dim(a: Any, b: Any) -> bool:
    if isinstance(a, int) or isinstance(b, int):
        return bool(a == b)
    return a.value is not None and a.value == b.value


class BatchedRotaryEmbedding(RotaryEmbedding23Fusion):
    """onnxscript's rotate-half rule, with the cos/sin caches expanded to the input's batch."""

    def __init__(self) -> None:
        super().__init__()
        self.name = "RotaryEmbedding23"

    def check(self, op: Any, x: ir.Value, **bindings: Any) -> MatchResult:  # type: ignore[override]
        result: MatchResult = super().check(op, x, **bindings)
        freqs = bindings.get("freqs")
        if result and (freqs is None or freqs.shape is None or len(freqs.shape) != 3):
            return MatchResult().fail("the angle tensor is not 3-D [B, S, D/2]", freqs)
        return result

    def rewrite(self, op: Any, x: ir.Value, freqs: ir.Value, **_: Any) -> Any:
        assert x.shape is not None and freqs.shape is not None  # guaranteed by check
        cos = op.Cos(freqs)
        sin = op.Sin(freqs)
        if not _same_dim(freqs.shape[0], x.shape[0]):
            shape = op.Concat(op.Shape(x, start=0, end=1), op.Shape(freqs, start=1), axis=0)
            cos = op.Expand(cos, shape)
            sin = op.Expand(sin, shape)
        return op.RotaryEmbedding(x, cos, sin, interleaved=0, num_heads=x.shape[1])


RULES: tuple[FusionRule, ...] = (
    FusionRule(
        name="rotary",
        family=FAMILY,
        rules=(rule_class(BatchedRotaryEmbedding),),
        produces=(
            ("", "RotaryEmbedding"),
            ("", "Cos"),
            ("", "Sin"),
            ("", "Shape"),
            ("", "Concat"),
            ("", "Expand"),
        ),
        min_opset=ROTARY_OPSET,
        origin="onnxscript",
        summary="x*cos + rotate_half(x)*sin -> RotaryEmbedding (opset 23)",
        requires=frozenset({"Cos", "Sin", "Neg"}),
    ),
    FusionRule(
        name="rotary_partial",
        family=FAMILY,
        rules=(rule_class(PartialRotaryEmbedding23Fusion),),
        produces=(("", "RotaryEmbedding"),),
        min_opset=ROTARY_OPSET,
        origin="onnxscript",
        summary="RotaryEmbedding on the first d features + pass-through -> rotary_embedding_dim",
        requires=frozenset({"RotaryEmbedding"}),
    ),
)
