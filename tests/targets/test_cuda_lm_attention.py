"""Grouped-query attention without repeated keys/values gives what transformers' SDPA gives."""

from __future__ import annotations

from typing import Any

import pytest
from lm_support import hf_dir

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from transformers.integrations.sdpa_attention import sdpa_attention_forward  # noqa: E402

from ai_vmm.targets.cuda_lm_attention import NAME, grouped_sdpa, use_grouped  # noqa: E402


class _Layer(torch.nn.Module):  # type: ignore[misc,name-defined]
    def __init__(self, groups: int) -> None:
        super().__init__()
        self.num_key_value_groups = groups
        self.is_causal = True


def _mask(batch: int, seq: int, length: int, start: int, pad: int) -> Any:
    """Causal over a cache of ``length`` columns of which ``start + seq`` are written; the
    second row's first ``pad`` columns are padding."""
    rows = torch.arange(seq).unsqueeze(1) + start
    cols = torch.arange(length).unsqueeze(0)
    mask = (cols <= rows).expand(batch, 1, seq, length).clone()
    mask[1, :, :, :pad] = False
    return mask


@pytest.mark.parametrize("seq", [1, 5])
@pytest.mark.parametrize("heads,kv_heads", [(9, 3), (8, 2), (4, 4)])
def test_grouped_equals_repeated(seq: int, heads: int, kv_heads: int) -> None:
    gen = torch.Generator().manual_seed(seq * 100 + heads)
    batch, length, dim, start = 2, 32, 16, 7
    query = torch.randn(batch, heads, seq, dim, generator=gen)
    key = torch.randn(batch, kv_heads, length, dim, generator=gen)
    value = torch.randn(batch, kv_heads, length, dim, generator=gen)
    mask = _mask(batch, seq, length, start, pad=3)
    layer = _Layer(heads // kv_heads)
    expected, _ = sdpa_attention_forward(layer, query, key, value, mask, scaling=0.25)
    got, weights = grouped_sdpa(layer, query, key, value, mask, scaling=0.25)
    assert weights is None and got.shape == (batch, seq, heads, dim)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_without_a_mask_it_is_transformers_sdpa() -> None:
    gen = torch.Generator().manual_seed(1)
    query = torch.randn(1, 6, 4, 8, generator=gen)
    key, value = (torch.randn(1, 2, 4, 8, generator=gen) for _ in range(2))
    layer = _Layer(3)
    got, _ = grouped_sdpa(layer, query, key, value, None)
    expected, _ = sdpa_attention_forward(layer, query, key, value, None)
    torch.testing.assert_close(got, expected)


def test_a_model_switches_to_it() -> None:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(hf_dir("llama")).eval()  # 4 heads, 2 KV heads
    ids = torch.tensor([[3, 5, 7, 11, 13]])
    mask = torch.tensor([[0, 1, 1, 1, 1]])
    with torch.no_grad():
        before = model(input_ids=ids, attention_mask=mask).logits
        assert use_grouped(model) and model.config._attn_implementation == NAME
        after = model(input_ids=ids, attention_mask=mask).logits
    torch.testing.assert_close(after[:, 1:], before[:, 1:], rtol=1e-5, atol=1e-5)
