"""BatchNormalization folded into the Conv, ConvTranspose or Gemm before it (onnxscript's rules).

Given the producer ``Y = W * X + B`` and the inference-mode batch norm
``Z = gamma * (Y - mean) / sqrt(var + eps) + beta``, with ``s = gamma / sqrt(var + eps)``
(one factor per output channel)::

    W' = W * s          (broadcast along the output-channel axis of W)
    B' = (B - mean) * s + beta

so ``Z = W' * X + B'`` exactly (up to float rounding). The rules apply only when ``W``, ``B`` and
the four batch-norm tensors are constant initializers that nothing outside the match reads.
"""

from __future__ import annotations

from onnxscript.rewriter.rules.common import (
    fuse_batchnorm_into_conv_rule,
    fuse_batchnorm_into_conv_transpose_rule,
    fuse_batchnorm_into_gemm_rule,
)

from ai_vmm.passes.fusion.core import FusionRule

FAMILY = "conv_bn"

RULES: tuple[FusionRule, ...] = (
    FusionRule(
        name="conv_bn",
        family=FAMILY,
        rules=(fuse_batchnorm_into_conv_rule,),
        produces=(("", "Conv"),),
        origin="onnxscript",
        summary="BatchNormalization(Conv(x)) -> Conv(x) with rescaled weights and bias",
        requires=frozenset({"Conv", "BatchNormalization"}),
    ),
    FusionRule(
        name="conv_transpose_bn",
        family=FAMILY,
        rules=(fuse_batchnorm_into_conv_transpose_rule,),
        produces=(("", "ConvTranspose"),),
        origin="onnxscript",
        summary="BatchNormalization(ConvTranspose(x)) -> ConvTranspose(x)",
        requires=frozenset({"ConvTranspose", "BatchNormalization"}),
    ),
    FusionRule(
        name="gemm_bn",
        family=FAMILY,
        rules=(fuse_batchnorm_into_gemm_rule,),
        produces=(("", "Gemm"),),
        origin="onnxscript",
        summary="BatchNormalization(Gemm(x)) -> Gemm(x)",
        requires=frozenset({"Gemm", "BatchNormalization"}),
    ),
)
