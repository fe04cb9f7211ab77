"""GELU subgraphs -> the standard ONNX ``Gelu`` op (opset 20), both forms.

* erf form (``gelu_erf``): ``0.5 * x * (1 + erf(x / sqrt(2)))`` -> ``Gelu(x)``; the division
  may be a multiplication by ``1 / sqrt(2)``.
* tanh form (``gelu_tanh``): ``0.5 * x * (1 + tanh(sqrt(2 / pi) * (x + 0.044715 * x^3)))``
  -> ``Gelu(x, approximate="tanh")``.

Exporters associate the three factors of ``0.5 * x * bracket`` in different orders
(``(x * 0.5) * b``, ``x * (0.5 * b)``, ``(x * b) * 0.5``), and put the operands of every ``Add``
and ``Mul`` either way round. Each association order is two rules (the root ``Mul``'s operands
either way round); inner operand orders are ``OrValue`` alternatives. The constants match
loosely (within 25%) and are then checked in ``check`` (relative tolerance ``1e-3``), so that a
subgraph with a slightly different constant is reported as a near miss with the value it had.
Scalar constants must be 0-d tensors (as exporters write them). onnxscript ships GELU rules too,
but they produce com.microsoft ops; these produce the standard op every target runs.
"""

from __future__ import annotations

import math
from typing import Any

import onnx_ir as ir
from onnxscript.rewriter import _pattern_ir, pattern
from onnxscript.rewriter._basics import MatchResult
from onnxscript.rewriter._rewrite_rule import RewriteRule

from ai_vmm.passes.fusion.core import FusionRule, constant_scalar, rule_class

FAMILY = "gelu"
_RTOL = 1e-3
_SQRT2 = math.sqrt(2.0)
_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
_CUBE = 0.044715
_MATCH_RTOL = 0.25
_FLOAT_TYPES = frozenset(
    {ir.DataType.FLOAT, ir.DataType.FLOAT16, ir.DataType.BFLOAT16, ir.DataType.DOUBLE}
)
# The three ways 0.5 * x * bracket is associated.
_ORDERS = ("x_half_first", "half_bracket_first", "x_bracket_first")


def _close(value: float | None, expected: float) -> bool:
    return value is not None and math.isclose(value, expected, rel_tol=_RTOL)


def _expect(result: MatchResult, value: ir.Value, expected: float, what: str) -> bool:
    """True if ``value`` is a constant scalar close to ``expected``; else records why not."""
    actual = constant_scalar(value)
    if _close(actual, expected):
        return True
    shown = "not a constant scalar" if actual is None else f"{actual:.6g}"
    result.fail(f"{what} is {shown}, expected {expected:.6g}", value)
    return False


def _either(make: Any, a: Any, b: Any) -> Any:
    """``make(a, b)`` or ``make(b, a)``: a commutative op with its operands either way round."""
    return pattern.OrValue([make(a, b), make(b, a)])


class _Near(_pattern_ir.Constant):
    """A scalar constant within 25% of ``value``, bound to the pattern variable ``name``.

    The matcher needs constants to tell ``Mul(x, c)`` from ``Mul(c, x)`` (two plain variables
    would bind either way round, and an ``OrValue`` does not backtrack once an alternative
    matched); the loose tolerance lets ``check`` compare the value exactly and report it.
    """

    def __init__(self, name: str, value: float) -> None:
        super().__init__(value, rel_tol=_MATCH_RTOL)
        self._name = name

    def clone(self, node_map: dict[Any, Any]) -> _Near:
        del node_map
        return _Near(str(self._name), float(self.value))  # type: ignore[arg-type]


class _GeluBase(pattern.RewriteRuleClassBase):
    def __init__(self, name: str, order: str, swap_root: bool) -> None:
        super().__init__(name)
        self._order = order
        self._swap_root = swap_root

    def _outer(self, op: Any, x: Any, bracket: Any) -> Any:
        half = _Near("half", 0.5)
        # The root of a pattern cannot be an OrValue: its two operand orders are two rules.
        if self._order == "x_half_first":
            left, right = _either(op.Mul, x, half), bracket
        elif self._order == "half_bracket_first":
            left, right = x, _either(op.Mul, half, bracket)
        else:
            left, right = _either(op.Mul, x, bracket), half
        return op.Mul(right, left) if self._swap_root else op.Mul(left, right)

    def _check_common(self, x: ir.Value, half: ir.Value, one: ir.Value) -> MatchResult:
        result = MatchResult()
        if x.dtype not in _FLOAT_TYPES:
            result.fail(f"input dtype {x.dtype} is not a float type", x)
        elif _expect(result, half, 0.5, "the half factor"):
            _expect(result, one, 1.0, "the added one")
        return result


class GeluErf(_GeluBase):
    """``0.5 * x * (1 + erf(x / sqrt(2)))`` -> ``Gelu(x)``."""

    def pattern(self, op: Any, x: Any) -> Any:
        scaled = pattern.OrValue(
            [
                op.Div(x, _Near("root", _SQRT2)),
                _either(op.Mul, x, _Near("root", 1.0 / _SQRT2)),
            ],
            tag_var="scaling",
            tag_values=["Div", "Mul"],
        )
        return self._outer(op, x, _either(op.Add, op.Erf(scaled), _Near("one", 1.0)))

    def check(  # type: ignore[override]
        self,
        context: Any,
        x: ir.Value,
        half: ir.Value,
        one: ir.Value,
        root: ir.Value,
        scaling: str,
        **_: Any,
    ) -> MatchResult:
        result = self._check_common(x, half, one)
        if result:
            expected = _SQRT2 if scaling == "Div" else 1.0 / _SQRT2
            _expect(result, root, expected, f"the erf argument's {scaling} constant")
        return result

    def rewrite(self, op: Any, x: ir.Value, **_: Any) -> Any:
        return op.Gelu(x)


class GeluTanh(_GeluBase):
    """``0.5 * x * (1 + tanh(sqrt(2/pi) * (x + 0.044715 * x^3)))`` -> ``Gelu(x, "tanh")``."""

    def pattern(self, op: Any, x: Any) -> Any:
        cubed = _either(op.Mul, op.Pow(x, _Near("three", 3.0)), _Near("coefficient", _CUBE))
        inner = _either(op.Mul, _either(op.Add, x, cubed), _Near("root", _SQRT_2_OVER_PI))
        return self._outer(op, x, _either(op.Add, op.Tanh(inner), _Near("one", 1.0)))

    def check(  # type: ignore[override]
        self,
        context: Any,
        x: ir.Value,
        half: ir.Value,
        one: ir.Value,
        root: ir.Value,
        coefficient: ir.Value,
        three: ir.Value,
        **_: Any,
    ) -> MatchResult:
        result = self._check_common(x, half, one)
        if (
            result
            and _expect(result, three, 3.0, "the power")
            and _expect(result, coefficient, _CUBE, "the cube coefficient")
        ):
            _expect(result, root, _SQRT_2_OVER_PI, "the tanh scale")
        return result

    def rewrite(self, op: Any, x: ir.Value, **_: Any) -> Any:
        return op.Gelu(x, approximate="tanh")


def _variants(cls: type[_GeluBase], prefix: str) -> tuple[RewriteRule, ...]:
    return tuple(
        rule_class(cls, f"{prefix}_{order}", order, swap_root)
        for order in _ORDERS
        for swap_root in (False, True)
    )


RULES: tuple[FusionRule, ...] = (
    FusionRule(
        name="gelu_erf",
        family=FAMILY,
        rules=_variants(GeluErf, "GeluErf"),
        produces=(("", "Gelu"),),
        min_opset=20,
        summary="0.5*x*(1+erf(x/sqrt2)) -> Gelu (opset 20)",
        requires=frozenset({"Erf"}),
    ),
    FusionRule(
        name="gelu_tanh",
        family=FAMILY,
        rules=_variants(GeluTanh, "GeluTanh"),
        produces=(("", "Gelu"),),
        min_opset=20,
        summary="0.5*x*(1+tanh(sqrt(2/pi)*(x+0.044715x^3))) -> Gelu(approximate=tanh)",
        requires=frozenset({"Tanh", "Pow"}),
    ),
)
