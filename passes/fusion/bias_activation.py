"""Bias additions absorbed into their Conv / MatMul, and activation chains merged.

* ``conv_add_bias`` (ours): ``Conv(x, W, B) + c`` where ``c`` is constant and varies only along
  the channel axis (shape ``[C]`` after dropping unit axes, or a scalar) equals
  ``Conv(x, W, B + c)``, because convolution adds its bias per output channel.
* ``matmul_add_to_gemm`` (onnxscript's, plus a check on the bias): for 2-D operands,
  ``MatMul(A, W) + c == Gemm(A, W, c)`` (``alpha = beta = 1``; a ``Transpose`` of either operand
  becomes ``transA`` / ``transB``). Our check also requires ``c`` to be a vector or a
  ``[1, N]`` row, so that Gemm's one-directional broadcast of ``C`` gives the same shape.
* ``relu_clip_merge`` (onnxscript's): ``Relu(Relu(x)) = Relu(x)``, ``Clip(Clip(x))`` with the
  intersected range, and the mixed forms.
* ``min_max_to_clip`` (onnxscript's): ``Min(Max(x, a), b) = Clip(x, a, b)`` for constant
  scalars, and successive ``Min`` / ``Max`` merged.
* ``hardswish`` (onnxscript's): ``Clip(x + 3, 0, 6) / 6 = HardSigmoid(x, 1/6, 1/2)`` and
  ``x * HardSigmoid(x) = HardSwish(x)``.

The standard ONNX vocabulary has no Conv + activation op; ONNX Runtime and OpenVINO both fuse
that pair themselves when they load a model. The explicit com.microsoft ``FusedConv`` /
``FusedGemm`` forms live in ``ort_contrib``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx_ir as ir
from onnxscript.rewriter import pattern
from onnxscript.rewriter._basics import MatchResult
from onnxscript.rewriter.rules.common import (
    fuse_hardswish_rules,
    max_max_rule,
    max_min_rule,
    min_max_rule,
    min_min_rule,
    successive_clip_relu_rule,
    successive_clip_rule,
    successive_relu_clip_rule,
    successive_relu_rule,
)
from onnxscript.rewriter.rules.common._matmul_add_to_gemm import (
    MatMulAddToGemm,
    TransABMatMulAddToGemm,
    TransAMatMulAddToGemm,
    TransBMatMulAddToGemm,
)

from ai_vmm.passes.fusion.core import FusionRule, constant_array, rule_class

FAMILY = "bias_activation"


def _bias_fits_gemm(bias: ir.Value | None) -> bool:
    """Gemm broadcasts C one way to [M, N]: a scalar, a vector or a [1, N] row always fits."""
    if bias is None or bias.shape is None:
        return False
    rank = len(bias.shape)
    return rank <= 1 or (rank == 2 and bias.shape[0] == 1)


class _CheckedBias:
    """Adds the bias-shape check to onnxscript's MatMul + Add -> Gemm rules."""

    def check(self, context: Any, input_a: Any, input_b: Any, **bindings: Any) -> MatchResult:
        result: MatchResult = super().check(context, input_a, input_b, **bindings)  # type: ignore[misc]
        if result and not _bias_fits_gemm(bindings.get("input_c")):
            return MatchResult().fail("bias is not a scalar, vector or [1, N] row", input_a)
        return result


class _MatMulAdd(_CheckedBias, MatMulAddToGemm):  # type: ignore[misc]
    pass


class _TransAMatMulAdd(_CheckedBias, TransAMatMulAddToGemm):  # type: ignore[misc]
    pass


class _TransBMatMulAdd(_CheckedBias, TransBMatMulAddToGemm):  # type: ignore[misc]
    pass


class _TransABMatMulAdd(_CheckedBias, TransABMatMulAddToGemm):  # type: ignore[misc]
    pass


class ConvAddBias(pattern.RewriteRuleClassBase):
    """``Add(Conv(x, W[, B]), c)`` with a per-channel constant ``c`` -> ``Conv(x, W, B + c)``."""

    def pattern(self, op: Any, x: Any, w: Any, c: Any) -> Any:
        conv = op.Conv(x, w, _allow_other_inputs=True, _outputs=["conv_out"])
        return op.Add(conv, c)

    def check(  # type: ignore[override]
        self, context: Any, w: ir.Value, c: ir.Value, conv_out: ir.Value, **_: Any
    ) -> Any:
        result = MatchResult()
        conv = conv_out.producer()
        assert conv is not None  # conv_out is bound to the matched Conv's output
        weights = constant_array(w)
        if weights is None:
            return result.fail("Conv weight is not a constant", w)
        bias_input = conv.inputs[2] if len(conv.inputs) > 2 else None
        if bias_input is not None and constant_array(bias_input) is None:
            return result.fail("Conv bias is not a constant", bias_input)
        added = constant_array(c)
        if added is None:
            return result.fail("the added tensor is not a constant", c)
        if added.ndim > weights.ndim:
            return result.fail(f"the added tensor has rank {added.ndim} > conv rank", c)
        channels = weights.shape[0]
        shape = (1,) * (weights.ndim - added.ndim) + added.shape
        other_axes = [size for axis, size in enumerate(shape) if axis != 1]
        if any(size != 1 for size in other_axes) or shape[1] not in (1, channels):
            return result.fail(f"the added tensor {list(added.shape)} is not per-channel", c)
        if added.dtype != weights.dtype:
            return result.fail("the added tensor's dtype differs from the weight's", c)
        return result

    def rewrite(self, op: Any, x: ir.Value, w: ir.Value, c: ir.Value, conv_out: ir.Value) -> Any:
        conv = conv_out.producer()
        assert conv is not None
        weights = constant_array(w)
        added = constant_array(c)
        assert weights is not None and added is not None  # guaranteed by check
        channels = weights.shape[0]
        bias = np.zeros(channels, dtype=weights.dtype)
        if len(conv.inputs) > 2 and conv.inputs[2] is not None:
            original = constant_array(conv.inputs[2])
            assert original is not None
            bias = bias + original
        bias = (bias + np.broadcast_to(added.reshape(-1), (channels,))).astype(weights.dtype)
        name = f"{conv_out.name}_fused_bias"
        return op.Conv(x, w, op.initializer(ir.tensor(bias), name=name), **conv.attributes)


RULES: tuple[FusionRule, ...] = (
    FusionRule(
        name="conv_add_bias",
        family=FAMILY,
        rules=tuple(rule_class(ConvAddBias).commute()),
        produces=(("", "Conv"),),
        summary="Conv(x) + per-channel constant -> Conv(x) with that bias",
        requires=frozenset({"Conv", "Add"}),
    ),
    FusionRule(
        name="matmul_add_to_gemm",
        family=FAMILY,
        rules=(
            rule_class(_MatMulAdd, "MatMulAddToGemm"),
            rule_class(_TransAMatMulAdd, "TransAMatMulAddToGemm"),
            rule_class(_TransBMatMulAdd, "TransBMatMulAddToGemm"),
            rule_class(_TransABMatMulAdd, "TransABMatMulAddToGemm"),
        ),
        produces=(("", "Gemm"),),
        origin="onnxscript",
        summary="2-D MatMul(A, W) + bias -> Gemm",
        requires=frozenset({"MatMul", "Add"}),
    ),
    FusionRule(
        name="relu_clip_merge",
        family=FAMILY,
        rules=(
            successive_relu_rule,
            successive_clip_rule,
            successive_clip_relu_rule,
            successive_relu_clip_rule,
        ),
        produces=(("", "Relu"), ("", "Clip")),
        origin="onnxscript",
        summary="Relu/Clip chains merged into one",
    ),
    FusionRule(
        name="min_max_to_clip",
        family=FAMILY,
        rules=(min_min_rule, max_max_rule, min_max_rule, max_min_rule),
        produces=(("", "Min"), ("", "Max"), ("", "Clip")),
        origin="onnxscript",
        summary="Min/Max with constant bounds -> Clip",
    ),
    FusionRule(
        name="hardswish",
        family=FAMILY,
        rules=tuple(fuse_hardswish_rules().rules),
        produces=(("", "HardSigmoid"), ("", "HardSwish")),
        origin="onnxscript",
        summary="Clip(x+3, 0, 6)/6 -> HardSigmoid; x * HardSigmoid(x) -> HardSwish",
        requires=frozenset({"Clip"}),
    ),
)
