"""Layer normalization and RMS normalization subgraphs -> one standard ONNX op (onnxscript's rules).

* ``layer_norm``: with ``m = mean(x)`` and ``v = mean((x - m)^2)`` over the last axis,
  ``(x - m) / sqrt(v + eps) * scale [+ bias]`` is ``LayerNormalization(x, scale[, bias],
  axis=-1, epsilon=eps)`` (opset 17). The division may appear as a multiplication by
  ``Reciprocal(Sqrt(...))`` and the square as ``Pow(d, 2)`` or ``d * d``; a following
  ``+ bias`` is absorbed by a second rule.
* ``rms_norm``: ``x / sqrt(mean(x^2) + eps) * scale`` (optionally computed in a wider type
  between two ``Cast``\\ s) is ``RMSNormalization(x, scale, axis=-1, epsilon=eps,
  stash_type=...)``, an opset-23 op: the recipe raises the model's opset to 23 first, and only
  when the rule would fire.
"""

from __future__ import annotations

from onnxscript.rewriter.rules.fusion._layer_norm import layer_normalization_rules
from onnxscript.rewriter.rules.fusion._rms_normalization import rms_normalization_rules

from ai_vmm.passes.fusion.core import FusionRule

FAMILY = "normalization"

RULES: tuple[FusionRule, ...] = (
    FusionRule(
        name="layer_norm",
        family=FAMILY,
        rules=tuple(layer_normalization_rules),
        produces=(("", "LayerNormalization"),),
        min_opset=17,
        origin="onnxscript",
        summary="mean/variance/normalise/scale(+bias) subgraph -> LayerNormalization",
        requires=frozenset({"ReduceMean", "Sqrt"}),
    ),
    FusionRule(
        name="rms_norm",
        family=FAMILY,
        rules=tuple(rms_normalization_rules),
        produces=(("", "RMSNormalization"),),
        min_opset=23,
        origin="onnxscript",
        summary="x * rsqrt(mean(x^2) + eps) * scale -> RMSNormalization (opset 23)",
        requires=frozenset({"ReduceMean", "Sqrt", "Pow"}),
    ),
)
