"""Fusion rule sets: subgraphs rewritten into one (standard ONNX, where one exists) op.

One rule family per module, each stating its maths in its docstring:

========================  =====================================================================
``conv_bn``               BatchNormalization folded into Conv / ConvTranspose / Gemm
``bias_activation``       bias Adds absorbed into Conv / Gemm; Relu / Clip / Min / Max chains
``normalization``         LayerNormalization, RMSNormalization (opset 23)
``gelu``                  Gelu, erf and tanh forms (opset 20)
``attention``             MatMul-Softmax-MatMul -> Attention (opset 23), grouped-query K/V
``rotary``                rotary position embeddings -> RotaryEmbedding (opset 23)
``ort_contrib``           com.microsoft fused ops, for the onnxruntime target only
========================  =====================================================================

``FUSIONS`` maps each step name to its :class:`~ai_vmm.passes.fusion.core.FusionRule`.
"""

from __future__ import annotations

from ai_vmm.passes.fusion import (
    attention,
    bias_activation,
    conv_bn,
    gelu,
    normalization,
    ort_contrib,
    rotary,
)
from ai_vmm.passes.fusion.core import (
    FusionResult,
    FusionRule,
    NearMiss,
    apply_fusion,
    count_matches,
    trace_near_misses,
)

FUSIONS: dict[str, FusionRule] = {
    fusion.name: fusion
    for module in (conv_bn, bias_activation, normalization, gelu, rotary, attention, ort_contrib)
    for fusion in module.RULES
}

__all__ = [
    "FUSIONS",
    "FusionResult",
    "FusionRule",
    "NearMiss",
    "apply_fusion",
    "count_matches",
    "trace_near_misses",
]
