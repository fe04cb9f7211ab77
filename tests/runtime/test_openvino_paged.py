"""The paged OpenVINO context on its own: a pool that grows mid-sequence keeps the cache, rows kept
twice get their own blocks, left-padded rows round-trip through read/write_cache, and a row with
no new token gets zero logits. The tiny Llama artifact, paged (tests/support/lm_support.py); the
stateful context of the same decoder is the reference."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
from lm_support import tiny_artifact

import ai_vmm
from ai_vmm.runtime.executors import openvino_paged
from ai_vmm.runtime.llm import CausalLM

PROMPT = [5, 17, 42, 8, 99, 3, 61, 7, 12]


@pytest.fixture(scope="module")
def lms() -> Iterator[tuple[CausalLM, CausalLM]]:
    paged = ai_vmm.load(tiny_artifact("llama", "openvino:CPU+paged"))
    stateful = ai_vmm.load(tiny_artifact("llama", "openvino:CPU"))
    assert paged.attention[0] == "paged" and stateful.attention[0] == "stateful"
    yield paged, stateful
    paged.close()
    stateful.close()


def _prefill(ctx: object, rows: list[list[int]]) -> np.ndarray:
    """Left-padded prefill of ``rows``; the logits of the last position."""
    longest = max(map(len, rows))
    ids = np.zeros((len(rows), longest), np.int64)
    mask = np.zeros_like(ids)
    positions = np.zeros_like(ids)
    for r, tokens in enumerate(rows):
        ids[r, longest - len(tokens) :] = tokens
        mask[r, longest - len(tokens) :] = 1
        positions[r, longest - len(tokens) :] = np.arange(len(tokens))
    return ctx.forward(ids, mask, positions, np.array([longest - 1]))  # type: ignore[attr-defined,no-any-return]


def _greedy(ctx: object, prompt: list[int], steps: int) -> list[int]:
    logits = _prefill(ctx, [prompt])
    tokens = [int(logits[0, -1].argmax())]
    for k in range(steps):
        n = len(prompt) + k
        mask = np.ones((1, n + 1), np.int64)
        step = ctx.forward(  # type: ignore[attr-defined]
            np.array([[tokens[-1]]]), mask, np.array([[n]]), np.zeros(1, np.int64)
        )
        tokens.append(int(step[0, -1].argmax()))
    return tokens


def test_a_pool_that_grows_mid_sequence_keeps_the_cache(
    lms: tuple[CausalLM, CausalLM], monkeypatch: pytest.MonkeyPatch
) -> None:
    paged, stateful = lms
    monkeypatch.setattr(openvino_paged, "MIN_BLOCKS", 1)  # grow at every new block
    ctx = paged._session.context()
    got = _greedy(ctx, PROMPT * 4, 60)
    assert ctx._capacity >= 3  # type: ignore[union-attr]  # it grew, copying its blocks
    assert got == _greedy(stateful._session.context(), PROMPT * 4, 60)


def test_rows_kept_twice_get_their_own_blocks(lms: tuple[CausalLM, CausalLM]) -> None:
    paged, _ = lms
    ctx = paged._session.context()
    _prefill(ctx, [PROMPT, PROMPT[:4]])
    ctx.keep([1, 1])
    n = ctx.length
    mask = np.zeros((2, n + 1), np.int64)
    mask[:, n - 4 :] = 1
    step = (np.array([[3], [9]]), mask, np.array([[4], [4]]), np.zeros(1, np.int64))
    logits = ctx.forward(*step)
    expect = []
    for token in (3, 9):  # each row alone: the short prompt, then its token
        alone = paged._session.context()
        _prefill(alone, [PROMPT[:4]])
        one = (np.array([[token]]), np.ones((1, 5), np.int64), np.array([[4]]), step[3])
        expect.append(alone.forward(*one))
    assert np.allclose(logits[0], expect[0][0], atol=1e-5)  # row 0 wrote token 3 into its blocks
    assert np.allclose(logits[1], expect[1][0], atol=1e-5)  # row 1 did not see it


def test_left_padded_rows_round_trip_through_read_and_write_cache(
    lms: tuple[CausalLM, CausalLM],
) -> None:
    paged, stateful = lms
    rows = [PROMPT, PROMPT[:3]]
    first, second, reference = (paged._session.context() for _ in range(3))
    _prefill(first, rows)
    cache = first.read_cache()
    assert cache[0].shape[2] == len(PROMPT)
    assert not cache[0][1, :, : len(PROMPT) - 3].any()  # the short row's padding is zeros
    ref = stateful._session.context()
    _prefill(ref, rows)
    for ours, theirs in zip(cache, ref.read_cache(), strict=True):
        assert np.allclose(ours[0], theirs[0], atol=1e-5)  # the long row, every column
        assert np.allclose(ours[1][:, -3:], theirs[1][:, -3:], atol=1e-5)  # the short one's
    second.write_cache(cache)
    mask = np.zeros((2, len(PROMPT) + 1), np.int64)
    mask[0] = 1
    mask[1, -4:] = 1
    step = (np.array([[4], [4]]), mask, np.array([[9], [3]]), np.zeros(1, np.int64))
    _prefill(reference, rows)
    assert np.allclose(second.forward(*step), reference.forward(*step), atol=1e-5)


def test_a_row_without_a_new_token_gets_zero_logits(lms: tuple[CausalLM, CausalLM]) -> None:
    paged, _ = lms
    ctx = paged._session.context()
    _prefill(ctx, [PROMPT, PROMPT])
    n = ctx.length
    mask = np.ones((2, n + 1), np.int64)
    mask[1, -1] = 0  # row 1 sits this step out
    logits = ctx.forward(np.array([[4], [0]]), mask, np.array([[n], [n]]), np.zeros(1, np.int64))
    assert logits[0].any() and not logits[1].any()
    assert ctx._lens == [n + 1, n]  # type: ignore[attr-defined]
