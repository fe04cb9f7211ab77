"""Scaled dot-product attention subgraphs -> the standard ONNX ``Attention`` op (opset 23).

``attention`` rewrites, for 4-D ``Q [B, H, S, Dh]``, ``K [B, Hkv, T, Dh]``, ``V [B, Hkv, T, Dv]``::

    MatMul(Softmax(MatMul(Q * a, K^T * b) * c + M1 [+ M2]), V)  ->  Attention(Q, K, V, M, scale=s)

where ``s = a * b * c`` (each factor optional, a ``Div`` counts as its reciprocal; when ``s`` is
``1 / sqrt(Dh)`` the attribute is left at its default), ``M = M1 [+ M2]`` is the additive mask
(T5 adds a position bias and a padding mask: both are summed into one mask, which is smaller
than the scores), and ``K^T`` is found in the three forms exporters write: ``Transpose(K, [0, 1,
3, 2])``, a 3-D ``Reshape -> Transpose -> Reshape`` round trip, or ``Transpose(K', [0, 2, 3,
1])`` of a ``[B, T, Hkv, Dh]`` tensor (then ``K = Transpose(K', [0, 2, 1, 3])``).
Two steps, one pattern: ``attention`` takes cores that end in a ``Where(IsNaN(p), 0, p)``
guard after the softmax (torch's SDPA decomposition), ``attention_unguarded`` cores without one
(eager attention, T5). The guard is dropped: it only acts on rows where every key is masked
with ``-inf``, whose output is padding (the fused op returns finite numbers there instead of
zeros). ``attention_unguarded`` is avoided on OpenVINO, where it was measured slower.

``attention_gqa`` then removes the grouped-query "repeat_kv" expansion that exporters put in
front of K and V (``Reshape(Expand(Unsqueeze(K, 2)))`` from ``[B, Hkv, T, D]`` to
``[B, Hkv * G, T, D]``): ``Attention`` takes ``Hkv < H`` key/value heads itself and repeats
head ``h // G`` for query head ``h``, which is exactly what the expansion computes.

The checks decline when shapes are unknown, head counts are not static, the softmax is not over
the last axis, a scale is not a constant scalar, or the mask does not span the query axis
(ONNX Runtime 1.32's ``Attention`` requires the mask's second-to-last axis to equal the query
length; OpenVINO broadcasts it): each reason lands in the near-miss trace.
"""

from __future__ import annotations

import math
from typing import Any

import onnx_ir as ir
from onnxscript.rewriter import pattern
from onnxscript.rewriter._basics import MatchResult

from ai_vmm.passes.fusion.core import FusionRule, constant_array, constant_scalar, rule_class

FAMILY = "attention"
ATTENTION_OPSET = 23
_FLOAT_TYPES = frozenset(
    {ir.DataType.FLOAT, ir.DataType.FLOAT16, ir.DataType.BFLOAT16, ir.DataType.DOUBLE}
)


def _shape(value: ir.Value | None, rank: int) -> tuple[int | ir.SymbolicDim, ...] | None:
    if value is None or value.shape is None or len(value.shape) != rank:
        return None
    return tuple(value.shape)


def _same_dim(a: Any, b: Any) -> bool:
    """Equal sizes, or the same named symbolic dimension."""
    if isinstance(a, int) or isinstance(b, int):
        return a == b
    return a.value is not None and a.value == b.value


def _static(dim: int | ir.SymbolicDim) -> int:
    """A dimension the check proved static."""
    assert isinstance(dim, int)
    return dim


def _scale_factor(tag: str, value: ir.Value | None, result: MatchResult, what: str) -> float:
    """The multiplier a ``Mul`` / ``Div`` by ``value`` applies (1 when absent)."""
    if tag == "None":
        return 1.0
    scalar = constant_scalar(value)
    if scalar is None or scalar == 0.0:
        result.fail(f"the {what} scale is not a non-zero constant scalar", value)
        return 1.0
    return scalar if tag == "Mul" else 1.0 / scalar


class ScaledDotProductAttention(pattern.RewriteRuleClassBase):
    """The decomposed attention core -> ``Attention`` (opset 23).

    ``guarded``: the core ends in ``Where(IsNaN(softmax), 0, softmax)`` (torch's SDPA
    decomposition writes it); otherwise it has no such guard (eager attention).
    """

    def __init__(self, name: str, guarded: bool) -> None:
        super().__init__(name)
        self._guarded = guarded

    def pattern(
        self,
        op: Any,
        query: Any,
        key: Any,
        value: Any,
        mask: Any,
        bias: Any,
        query_scale: Any,
        key_scale: Any,
        qk_scale: Any,
    ) -> Any:
        key_t = pattern.OrValue(
            [
                op.Transpose(key, perm=[0, 1, 3, 2]),
                op.Reshape(
                    op.Transpose(
                        op.Reshape(key, pattern.ANY_VALUE, _outputs=["key_3d"]), perm=[0, 2, 1]
                    ),
                    pattern.ANY_VALUE,
                    _outputs=["key_t_4d"],
                ),
                op.Transpose(key, perm=[0, 2, 3, 1]),
            ],
            tag_var="key_format",
            tag_values=["BHSd", "BHSd", "BSHd"],
        )
        query = pattern.OrValue(
            [op.Mul(query, query_scale), op.Div(query, query_scale), query],
            tag_var="query_scaling",
            tag_values=["Mul", "Div", "None"],
        )
        key_t = pattern.OrValue(
            [op.Mul(key_t, key_scale), op.Div(key_t, key_scale), key_t],
            tag_var="key_scaling",
            tag_values=["Mul", "Div", "None"],
        )
        scores = op.MatMul(query, key_t)
        scores = pattern.OrValue(
            [op.Mul(scores, qk_scale), op.Div(scores, qk_scale), scores],
            tag_var="qk_scaling",
            tag_values=["Mul", "Div", "None"],
        )
        scores = pattern.OrValue(
            [op.Add(op.Add(scores, bias), mask), op.Add(scores, mask), scores],
            tag_var="mask_terms",
            tag_values=[2, 1, 0],
        )
        weights = op.Softmax(scores, _allow_other_attributes=True, _outputs=["weights"])
        if self._guarded:
            weights = op.Where(op.IsNaN(weights), pattern.ANY_VALUE, weights)
        return op.MatMul(weights, value)

    def check(  # type: ignore[override]
        self,
        context: Any,
        query: ir.Value,
        key: ir.Value,
        value: ir.Value,
        weights: ir.Value,
        key_format: str,
        mask_terms: int,
        **bindings: Any,
    ) -> MatchResult:
        result = MatchResult()
        q_shape, k_shape, v_shape = _shape(query, 4), _shape(key, 4), _shape(value, 4)
        if q_shape is None or k_shape is None or v_shape is None:
            return result.fail("query, key and value are not all known 4-D tensors", query)
        if query.dtype not in _FLOAT_TYPES or key.dtype != query.dtype:
            return result.fail("query/key are not of one float type", query)
        if key_format == "BSHd":
            k_shape = (k_shape[0], k_shape[2], k_shape[1], k_shape[3])
        batch, heads, _, head_size = q_shape
        kv_heads = k_shape[1]
        if not (isinstance(heads, int) and isinstance(kv_heads, int) and kv_heads > 0):
            return result.fail("the number of heads is not static", query)
        if heads % kv_heads or v_shape[1] != kv_heads:
            return result.fail(f"{heads} query heads vs {kv_heads} key/value heads", key)
        if not isinstance(head_size, int) or not _same_dim(k_shape[3], head_size):
            return result.fail("query and key head sizes differ or are not static", key)
        if not (_same_dim(k_shape[2], v_shape[2]) and _same_dim(k_shape[0], v_shape[0])):
            return result.fail("key and value batch / length differ", value)
        if not self._round_trip_ok(key, bindings.get("key_3d"), bindings.get("key_t_4d")):
            return result.fail("the 3-D reshape round trip is not a transpose of K", key)
        softmax = weights.producer()
        assert softmax is not None
        axis = softmax.attributes.get_int("axis", -1)
        if axis not in (-1, 3):
            return result.fail(f"softmax over axis {axis}, not the key axis", weights)
        for tag, name in (("query_scaling", "query"), ("key_scaling", "key"), ("qk_scaling", "qk")):
            factor = _scale_factor(bindings[tag], bindings[f"{name}_scale"], result, name)
            if not result:
                return result
            bindings[f"{name}_factor"] = factor
        self._scale = bindings["query_factor"] * bindings["key_factor"] * bindings["qk_factor"]
        for term in ("mask", "bias")[:mask_terms]:
            term_value = bindings[term]
            if term_value.dtype != query.dtype:
                return result.fail(f"the additive {term} is not {query.dtype}", term_value)
            term_shape = term_value.shape
            if term_shape is None or len(term_shape) > 4:
                return result.fail(f"the additive {term} is not known and at most 4-D", term_value)
            if len(term_shape) >= 2 and not _same_dim(term_shape[-2], q_shape[2]):
                return result.fail(
                    f"the {term} broadcasts along the query axis ({term_shape[-2]} vs "
                    f"{q_shape[2]}); ONNX Runtime's Attention needs it spelled out",
                    term_value,
                )
        del batch
        return result

    @staticmethod
    def _round_trip_ok(key: ir.Value, key_3d: ir.Value | None, key_t: ir.Value | None) -> bool:
        """``Reshape -> Transpose(0, 2, 1) -> Reshape`` transposes K's last two axes only if
        the 3-D form keeps them ``[*, T, D]`` and the result is ``[B, H, D, T]``."""
        if key_3d is None and key_t is None:
            return True  # the plain Transpose form
        k_shape, mid, out = _shape(key, 4), _shape(key_3d, 3), _shape(key_t, 4)
        if k_shape is None or mid is None or out is None:
            return False
        b, h, t, d = k_shape
        return all(
            _same_dim(x, y) for x, y in zip((*mid[1:], *out), (t, d, b, h, d, t), strict=True)
        )

    def rewrite(
        self,
        op: Any,
        query: ir.Value,
        key: ir.Value,
        value: ir.Value,
        key_format: str,
        mask_terms: int,
        **bindings: Any,
    ) -> Any:
        if key_format == "BSHd":
            key = op.Transpose(key, perm=[0, 2, 1, 3])
        inputs: list[ir.Value | None] = [query, key, value]
        if mask_terms == 2:
            inputs.append(op.Add(bindings["bias"], bindings["mask"]))
        elif mask_terms == 1:
            inputs.append(bindings["mask"])
        assert query.shape is not None and value.shape is not None  # guaranteed by check
        head_size = query.shape[3]
        # The head counts are implied by 4-D shapes; stating them lets OpenVINO 2026.4's ONNX
        # frontend handle grouped-query attention when a producer (its RotaryEmbedding
        # conversion) hides the head axis' size at conversion time.
        attributes: dict[str, Any] = {
            "q_num_heads": _static(query.shape[1]),
            "kv_num_heads": _static(value.shape[1]),
        }
        default = 1.0 / math.sqrt(head_size) if isinstance(head_size, int) else None
        if default is None or not math.isclose(self._scale, default, rel_tol=1e-6):
            attributes["scale"] = float(self._scale)
        return op.Attention(*inputs, **attributes)


class RepeatedKeyValueAttention(pattern.RewriteRuleClassBase):
    """``Attention(Q, repeat(K), repeat(V), ...)`` -> ``Attention(Q, K, V, ...)`` (GQA)."""

    def pattern(
        self,
        op: Any,
        query: Any,
        key: Any,
        value: Any,
        key_axes: Any,
        value_axes: Any,
        mask: Any,
    ) -> Any:
        repeated_key = op.Reshape(
            op.Expand(op.Unsqueeze(key, key_axes), pattern.ANY_VALUE, _outputs=["key_expanded"]),
            pattern.ANY_VALUE,
            _outputs=["key_repeated"],
        )
        repeated_value = op.Reshape(
            op.Expand(
                op.Unsqueeze(value, value_axes), pattern.ANY_VALUE, _outputs=["value_expanded"]
            ),
            pattern.ANY_VALUE,
            _outputs=["value_repeated"],
        )
        return op.Attention(
            query,
            repeated_key,
            repeated_value,
            pattern.Var("mask", can_match_none=True),
            _allow_other_attributes=True,
            _outputs=["attention_out"],
        )

    def check(  # type: ignore[override]
        self,
        context: Any,
        key: ir.Value,
        value: ir.Value,
        key_axes: ir.Value,
        value_axes: ir.Value,
        key_expanded: ir.Value,
        key_repeated: ir.Value,
        value_expanded: ir.Value,
        value_repeated: ir.Value,
        attention_out: ir.Value,
        **_: Any,
    ) -> MatchResult:
        result = MatchResult()
        node = attention_out.producer()
        assert node is not None
        if len(node.inputs) > 4 or len(node.outputs) > 1:
            return result.fail("Attention with past key/value or extra outputs", attention_out)
        for source, axes, expanded, repeated in (
            (key, key_axes, key_expanded, key_repeated),
            (value, value_axes, value_expanded, value_repeated),
        ):
            source_shape = _shape(source, 4)
            expanded_shape = _shape(expanded, 5)
            repeated_shape = _shape(repeated, 4)
            if source_shape is None or expanded_shape is None or repeated_shape is None:
                return result.fail("repeat_kv shapes are not known", source)
            unsqueezed = constant_array(axes)
            if unsqueezed is None or unsqueezed.reshape(-1).tolist() != [2]:
                return result.fail("the key/value is not unsqueezed at axis 2", axes)
            batch, kv_heads, length, size = source_shape
            groups = expanded_shape[2]
            if not (isinstance(kv_heads, int) and isinstance(groups, int)):
                return result.fail("head counts of repeat_kv are not static", expanded)
            expected = (batch, kv_heads, groups, length, size)
            if not all(_same_dim(a, b) for a, b in zip(expanded_shape, expected, strict=True)):
                return result.fail("Expand does not only repeat a new head axis", expanded)
            merged = (batch, kv_heads * groups, length, size)
            if not all(_same_dim(a, b) for a, b in zip(repeated_shape, merged, strict=True)):
                return result.fail("Reshape does not merge the repeated heads", repeated)
        return result

    def rewrite(
        self,
        op: Any,
        query: ir.Value,
        key: ir.Value,
        value: ir.Value,
        mask: ir.Value | None,
        attention_out: ir.Value,
        **_: Any,
    ) -> Any:
        node = attention_out.producer()
        assert node is not None and key.shape is not None  # guaranteed by check
        inputs = [query, key, value] + ([mask] if mask is not None else [])
        attributes = {name: attr for name, attr in node.attributes.items()}
        attributes["kv_num_heads"] = ir.AttrInt64("kv_num_heads", _static(key.shape[1]))
        return op.Attention(*inputs, **attributes)


# Measured (docs/fusion.md): OpenVINO 2026.4 converts Attention into its SDPA plus a NaN guard
# of its own. Fusing a guarded core swaps one guard for the other and drops the exporter's shape
# plumbing (0.85-0.90x); fusing an unguarded one only adds work (1.02-1.09x on one core).
_UNGUARDED_ON_OPENVINO = (
    "measured slower: OpenVINO 2026.4 adds a NaN guard to Attention that this core lacks"
)

RULES: tuple[FusionRule, ...] = (
    FusionRule(
        name="attention",
        family=FAMILY,
        rules=(rule_class(ScaledDotProductAttention, "SdpaToAttention", guarded=True),),
        produces=(("", "Attention"), ("", "Transpose"), ("", "Add")),
        min_opset=ATTENTION_OPSET,
        summary="attention core with a NaN guard (torch SDPA) -> Attention (opset 23)",
        requires=frozenset({"Softmax", "MatMul", "IsNaN"}),
    ),
    FusionRule(
        name="attention_unguarded",
        family=FAMILY,
        rules=(rule_class(ScaledDotProductAttention, "EagerToAttention", guarded=False),),
        produces=(("", "Attention"), ("", "Transpose"), ("", "Add")),
        min_opset=ATTENTION_OPSET,
        avoid_on={"openvino": _UNGUARDED_ON_OPENVINO},
        summary="attention core without a guard (eager) -> Attention (opset 23)",
        requires=frozenset({"Softmax", "MatMul"}),
    ),
    FusionRule(
        name="attention_gqa",
        family=FAMILY,
        rules=(rule_class(RepeatedKeyValueAttention, "AttentionDropRepeatKv"),),
        produces=(("", "Attention"),),
        min_opset=ATTENTION_OPSET,
        summary="Attention over repeat_kv-expanded K/V -> Attention with fewer KV heads",
        requires=frozenset({"Attention", "Expand"}),
    ),
)
