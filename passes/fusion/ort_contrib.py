"""ONNX Runtime's com.microsoft fused ops: applied for the ``onnxruntime`` target only.

* ``skip_layer_norm`` (onnxscript's): ``LayerNormalization(x + skip [+ bias])`` ->
  ``SkipLayerNormalization(x, skip, gamma, beta, bias)``, which also returns ``x + skip`` for
  the residual branch.
* ``bias_gelu`` (onnxscript's): ``Gelu(x + b)`` with a 1-D ``b`` -> ``BiasGelu(x, b)``
  (erf form only; ``Gelu(approximate="tanh")`` is declined).
* ``fused_matmul`` (onnxscript's): a ``Transpose`` of either operand of ``MatMul`` (last two
  axes, or with the batch axes moved) and a constant ``Div`` / ``Mul`` of the product ->
  ``FusedMatMul(transA, transB, alpha)``.
* ``fused_conv`` / ``fused_gemm`` (ours): ``act(Conv(...))`` / ``act(Gemm(...))`` for ``act`` in
  Relu, Sigmoid, Tanh, LeakyRelu(alpha), HardSigmoid(alpha, beta) and Clip with constant bounds
  -> ``FusedConv`` / ``FusedGemm(activation=..., activation_*)``, which apply the activation to
  each output element inside the kernel: ``y = act(W * x + b)``.

Other targets cannot run com.microsoft ops (OpenVINO rejects the domain), so each rule says so
through ``FusionRule.targets`` and the recipe skips it with that reason.
"""

from __future__ import annotations

from typing import Any

import onnx_ir as ir
from onnxscript.rewriter import pattern
from onnxscript.rewriter._basics import MatchResult
from onnxscript.rewriter.ort_fusions.bias_gelu import bias_gelu_rules
from onnxscript.rewriter.ort_fusions.fused_matmul_rule_sets import fused_matmul_rule_sets
from onnxscript.rewriter.ort_fusions.skip_normalization import (
    skip_layer_normalization_ruleset,
)

from ai_vmm.passes.fusion.core import FusionRule, constant_scalar, rule_class

FAMILY = "ort_contrib"
MS_DOMAIN = "com.microsoft"
ORT_ONLY = frozenset({"onnxruntime"})

# Activation op -> its attributes as FusedConv/FusedGemm's activation_params, in order.
_ACTIVATIONS: dict[str, tuple[tuple[str, float], ...]] = {
    "Relu": (),
    "Sigmoid": (),
    "Tanh": (),
    "LeakyRelu": (("alpha", 0.01),),
    "HardSigmoid": (("alpha", 0.2), ("beta", 0.5)),
    "Clip": (),
}


class _FusedActivation(pattern.RewriteRuleClassBase):
    """``act(Producer(...))`` -> ``com.microsoft Fused<Producer>(..., activation=act)``."""

    def __init__(self, producer: str, activation: str) -> None:
        super().__init__(f"Fused{producer}{activation}")
        self._producer = producer
        self._activation = activation

    def pattern(self, op: Any, x: Any) -> Any:
        inner = getattr(op, self._producer)(
            x,
            _allow_other_inputs=True,
            _allow_other_attributes=True,
            _outputs=["inner"],
        )
        return getattr(op, self._activation)(
            inner,
            _allow_other_inputs=True,
            _allow_other_attributes=True,
            _outputs=["activated"],
        )

    def _params(self, activated: ir.Value) -> list[float] | None:
        node = activated.producer()
        assert node is not None
        if self._activation == "Clip":
            bounds = [constant_scalar(v) if v is not None else None for v in node.inputs[1:3]]
            if len(node.inputs) < 3 or any(b is None for b in bounds):
                return None
            return [float(b) for b in bounds if b is not None]
        return [
            node.attributes.get_float(name, default)
            for name, default in _ACTIVATIONS[self._activation]
        ]

    def check(  # type: ignore[override]
        self, context: Any, x: ir.Value, inner: ir.Value, activated: ir.Value
    ) -> Any:
        result = MatchResult()
        if x.dtype != ir.DataType.FLOAT:
            return result.fail("com.microsoft fused ops run float32 only here", x)
        if self._params(activated) is None:
            return result.fail("Clip bounds are not both constant scalars", activated)
        return result

    def rewrite(self, op: Any, x: ir.Value, inner: ir.Value, activated: ir.Value) -> Any:
        node = inner.producer()
        assert node is not None
        params = self._params(activated)
        attributes: dict[str, Any] = dict(node.attributes)
        attributes["activation"] = self._activation
        if params:
            attributes["activation_params" if self._producer == "Conv" else "activation_alpha"] = (
                params if self._producer == "Conv" else params[0]
            )
            if self._producer == "Gemm" and len(params) > 1:
                attributes["activation_beta"] = params[1]
        return op.op(f"Fused{self._producer}", *node.inputs, _domain=MS_DOMAIN, **attributes)


def _gemm_activations() -> tuple[str, ...]:
    # FusedGemm takes one or two float parameters (alpha, beta), not Clip's bounds.
    return tuple(a for a in _ACTIVATIONS if a != "Clip")


RULES: tuple[FusionRule, ...] = (
    FusionRule(
        name="skip_layer_norm",
        family=FAMILY,
        rules=tuple(skip_layer_normalization_ruleset.rules),
        produces=((MS_DOMAIN, "SkipLayerNormalization"),),
        targets=ORT_ONLY,
        origin="onnxscript",
        summary="LayerNormalization(x + skip [+ bias]) -> com.microsoft SkipLayerNormalization",
        requires=frozenset({"LayerNormalization", "Add"}),
    ),
    FusionRule(
        name="bias_gelu",
        family=FAMILY,
        rules=tuple(bias_gelu_rules.rules),
        produces=((MS_DOMAIN, "BiasGelu"),),
        targets=ORT_ONLY,
        origin="onnxscript",
        summary="Gelu(x + b) -> com.microsoft BiasGelu",
        requires=frozenset({"Gelu", "Add"}),
    ),
    FusionRule(
        name="fused_matmul",
        family=FAMILY,
        rules=tuple(fused_matmul_rule_sets().rules),
        produces=((MS_DOMAIN, "FusedMatMul"),),
        targets=ORT_ONLY,
        origin="onnxscript",
        summary="MatMul with transposed operands / constant scaling -> com.microsoft FusedMatMul",
        requires=frozenset({"MatMul"}),
    ),
    FusionRule(
        name="fused_conv",
        family=FAMILY,
        rules=tuple(rule_class(_FusedActivation, "Conv", a) for a in _ACTIVATIONS),
        produces=((MS_DOMAIN, "FusedConv"),),
        targets=ORT_ONLY,
        summary="activation(Conv) -> com.microsoft FusedConv",
        requires=frozenset({"Conv"}),
    ),
    FusionRule(
        name="fused_gemm",
        family=FAMILY,
        rules=tuple(rule_class(_FusedActivation, "Gemm", a) for a in _gemm_activations()),
        produces=((MS_DOMAIN, "FusedGemm"),),
        targets=ORT_ONLY,
        summary="activation(Gemm) -> com.microsoft FusedGemm",
        requires=frozenset({"Gemm"}),
    ),
)
