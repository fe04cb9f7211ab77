"""Grouped-query attention for the cuda LM step, without repeating keys and values.

``transformers``' SDPA path repeats each key/value head for its query heads (``repeat_kv``)
whenever an attention mask is given (PyTorch's ``enable_gqa`` falls back to the math kernel
with a mask), and the static-cache step always has one. For a decode step that copy is most
of the attention's memory traffic: at SmolLM2's 9 query / 3 key-value heads it writes the
whole cache window three times over and reads it back, every layer, every token.

Here the query heads of one key/value head are folded into the query-length axis instead::

    query [b, kv_heads * groups, s, d] -> [b, kv_heads, groups * s, d]
    mask  [b, 1, s, L]                 -> [b, 1, groups * s, L]   (a view when s == 1)

and SDPA runs once per key/value head, reading the cache as it is. The output is unfolded the
same way. Anything this does not cover (no mask, softcapping, position biases, masks per head)
goes to ``transformers``' own SDPA function unchanged. (Recent ``transformers`` folds the same
way in ``pack_gqa``, but for one query token only and not while torch.export or torch.compile
traces, which is exactly when the step is made.)
"""

from __future__ import annotations

from typing import Any

NAME = "ai_vmm_grouped_sdpa"


def grouped_sdpa(
    module: Any,
    query: Any,
    key: Any,
    value: Any,
    attention_mask: Any,
    dropout: float = 0.0,
    scaling: float | None = None,
    is_causal: bool | None = None,
    **kwargs: Any,
) -> tuple[Any, None]:
    """An ``AttentionInterface`` function (``transformers``' signature and layouts)."""
    import torch
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    batch, heads, seq, dim = query.shape
    kv_heads, length = key.shape[1], key.shape[2]
    if (
        attention_mask is None
        or heads == kv_heads
        or heads % kv_heads
        or attention_mask.dim() != 4
        or attention_mask.shape[1] != 1
        or kwargs.get("softcap") is not None
        or kwargs.get("position_bias") is not None
    ):
        return sdpa_attention_forward(  # type: ignore[no-any-return]
            module,
            query,
            key,
            value,
            attention_mask,
            dropout=dropout,
            scaling=scaling,
            is_causal=is_causal,
            **kwargs,
        )
    groups = heads // kv_heads
    folded = query.reshape(batch, kv_heads, groups * seq, dim)
    mask = (
        attention_mask.expand(batch, 1, seq, length)
        .unsqueeze(2)
        .expand(batch, 1, groups, seq, length)
        .reshape(batch, 1, groups * seq, length)
    )
    out = torch.nn.functional.scaled_dot_product_attention(
        folded, key, value, attn_mask=mask, dropout_p=dropout, scale=scaling
    )
    # [b, kv_heads, groups * seq, d] -> [b, seq, heads, d] by splitting and permuting only:
    # a reshape of SDPA's output would make torch.export guard on its strides.
    out = out.unflatten(2, (groups, seq)).permute(0, 3, 1, 2, 4).contiguous().flatten(2, 3)
    return out, None


def use_grouped(model: Any) -> bool:
    """Register :func:`grouped_sdpa` and switch ``model`` to it; False where the model does
    not take a registered attention function (it keeps its own then)."""
    from transformers import AttentionInterface

    try:
        from transformers.masking_utils import AttentionMaskInterface, sdpa_mask
    except ImportError:
        return False
    AttentionInterface.register(NAME, grouped_sdpa)
    AttentionMaskInterface.register(NAME, sdpa_mask)
    setter = getattr(model, "set_attn_implementation", None)
    if setter is None:
        return False
    try:
        setter(NAME)
    except (ValueError, TypeError, KeyError):
        return False
    return str(getattr(model.config, "_attn_implementation", "")) == NAME
