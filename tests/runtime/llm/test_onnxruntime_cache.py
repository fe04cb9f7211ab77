"""The ONNX Runtime LM context keeps its KV cache in buffers it preallocated.

Checked on a real compile of a random-weight Llama (``tiny_artifact``): ONNX Runtime writes each
step's ``present.*`` straight into our buffers (their addresses do not change between steps
inside the capacity), a step past the capacity grows the buffers and keeps the cache, and the
logits of a cached decode equal those of one prefill of the same tokens (float32, 1e-4).
"""

from __future__ import annotations

import numpy as np
import pytest
from lm_support import tiny_artifact

from ai_vmm.runtime.artifact import read_manifest
from ai_vmm.runtime.executors.onnxruntime_lm import OnnxRuntimeContext, OnnxRuntimeDecoder
from ai_vmm.runtime.llm.session import open_session
from ai_vmm.runtime.llm.spec import LMSpec

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def decoder() -> OnnxRuntimeDecoder:
    root = tiny_artifact("llama", "onnxruntime:CPU")
    session = open_session(root, LMSpec.from_manifest(read_manifest(root)))
    assert isinstance(session, OnnxRuntimeDecoder)
    return session


def _step(context: OnnxRuntimeContext, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Run ``ids`` ``[rows, seq]`` on the context; the logits of every new position."""
    seq = ids.shape[1]
    start = context.length
    positions = np.maximum(np.cumsum(mask, axis=1) - 1, 0)[:, start : start + seq]
    return context.forward(ids, mask[:, : start + seq], positions, np.arange(seq))


def _addresses(context: OnnxRuntimeContext) -> set[int]:
    return {flat.ctypes.data for pair in context._buffers for flat in pair}


def _tokens(rows: int, count: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(3, 200, size=(rows, count), dtype=np.int64)


def test_steps_write_into_the_preallocated_buffers_and_match_one_prefill(
    decoder: OnnxRuntimeDecoder,
) -> None:
    ids = _tokens(1, 260)
    mask = np.ones_like(ids)
    reference = _step(decoder.context(), ids, mask)[0]

    context = decoder.context()
    _step(context, ids[:, :240], mask)
    assert (context.capacity, context.length) == (256, 240)
    addresses = _addresses(context)
    for t in range(240, 256):
        logits = _step(context, ids[:, t : t + 1], mask)[0, 0]
        np.testing.assert_allclose(logits, reference[t], rtol=1e-4, atol=1e-4)
    # Inside the capacity the steps allocated nothing: the same buffers, swapped each step.
    assert _addresses(context) == addresses

    for t in range(256, 260):  # past the capacity: the buffers grow (doubling) and keep the cache
        logits = _step(context, ids[:, t : t + 1], mask)[0, 0]
        np.testing.assert_allclose(logits, reference[t], rtol=1e-4, atol=1e-4)
    assert (context.capacity, context.length) == (512, 260)
    for flat in (f for pair in context._buffers for f in pair):
        assert flat.ctypes.data % 64 == 0


def test_rows_leave_the_batch_and_the_rest_decode_as_alone(decoder: OnnxRuntimeDecoder) -> None:
    """``keep`` and ``read_cache`` / ``write_cache`` on the preallocated buffers: after row 0
    leaves, row 1 decodes as it does in a context of its own, in the same buffers; a cache
    written into a fresh context continues the same; a reset context reuses its buffers."""
    ids = _tokens(2, 12, seed=1)
    mask = np.ones_like(ids)
    alone = decoder.context()
    _step(alone, ids[1:, :10], mask[1:])
    expected = _step(alone, ids[1:, 10:11], mask[1:])

    batch = decoder.context()
    _step(batch, ids[:, :10], mask)
    addresses = _addresses(batch)
    batch.keep([1])
    assert (batch.rows, batch.length) == (1, 10)
    np.testing.assert_allclose(
        _step(batch, ids[1:, 10:11], mask[1:]), expected, rtol=1e-4, atol=1e-4
    )
    assert _addresses(batch) == addresses

    copy = decoder.context()
    copy.write_cache(alone.read_cache())
    assert (copy.rows, copy.length) == (1, 11)
    following = _step(alone, ids[1:, 11:12], mask[1:])
    np.testing.assert_allclose(
        _step(copy, ids[1:, 11:12], mask[1:]), following, rtol=1e-4, atol=1e-4
    )

    batch.reset()  # as the model's context pool does between requests
    assert (batch.rows, batch.length) == (0, 0)
    fresh = decoder.context()
    np.testing.assert_allclose(
        _step(batch, ids[:, :4], mask), _step(fresh, ids[:, :4], mask), rtol=1e-4, atol=1e-4
    )
    assert _addresses(batch) == addresses
