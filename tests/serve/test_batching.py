"""The dynamic batcher on a real compiled model: batches, priorities, queue policy, deadlines.

Where a test needs the replica busy at a known moment, the real model's ``run`` waits on a
``threading.Event`` first (the model still computes every answer).
"""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from ai_vmm.serve.admission import Rejected, Ticket
from ai_vmm.serve.backend import load_model
from ai_vmm.serve.batching import BatchStats, DynamicBatcher, Replica
from ai_vmm.serve.config import BatchingConfig, PriorityClass

# No headroom here, so the deadlines below are what admission measures against (the
# headroom's own test gives it one).
CLASSES = {
    "high": PriorityClass(rank=0, max_queue=8, timeout_ms=5000, headroom=0.0),
    "low": PriorityClass(rank=1, max_queue=3, timeout_ms=5000, headroom=0.0),
    "patient": PriorityClass(rank=1, max_queue=1, timeout_ms=5000, overflow="delay", headroom=0.0),
}


class Gated:
    """A real model whose next ``run`` calls wait until the gate opens."""

    def __init__(self, model: Any) -> None:
        self.model = model
        self.gate = threading.Event()
        self.gate.set()
        self.calls: list[int] = []
        for name in ("inputs", "outputs", "device", "memory", "platform", "kind", "check", "batch"):
            setattr(self, name, getattr(model, name))

    def run(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.gate.wait(10)
        self.calls.append(next(iter(feed.values())).shape[0])
        return dict(self.model.run(feed))

    def close(self) -> None:
        self.model.close()


def _ticket(cls: str = "high", timeout: float = 5.0) -> Ticket:
    now = time.monotonic()
    return Ticket(cls, CLASSES[cls].rank, now, now + timeout)


def _x(seed: int, rows: int = 1) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"pixel_values": rng.standard_normal((rows, 3, 32, 32)).astype(np.float32)}


@pytest.fixture
def model(cnn_artifact: Path) -> Gated:
    return Gated(load_model(cnn_artifact, kind="model"))


def _batcher(
    model: Gated, config: BatchingConfig, stats: list[BatchStats] | None = None
) -> DynamicBatcher:
    on_batch = stats.append if stats is not None else None
    batcher = DynamicBatcher("cnn", [Replica(model, 0)], config, CLASSES, on_batch)
    batcher.start()
    return batcher


def test_concurrent_requests_share_batches_and_get_their_own_rows(model: Gated) -> None:
    async def main() -> None:
        stats: list[BatchStats] = []
        batcher = _batcher(model, BatchingConfig(max_batch=8, max_queue_delay_ms=50), stats)
        feeds = [_x(i, rows=1 + i % 2) for i in range(6)]
        results = await asyncio.gather(
            *(batcher.infer(f, f["pixel_values"].shape[0], _ticket()) for f in feeds)
        )
        for feed, (out, _item) in zip(feeds, results, strict=True):
            alone = model.model.run(feed)["logits"]
            np.testing.assert_allclose(out["logits"], alone, rtol=1e-5, atol=1e-6)
            assert out["logits"].shape[0] == feed["pixel_values"].shape[0]
        assert max(s.rows for s in stats) > 1  # requests were joined
        assert sum(s.rows for s in stats) == sum(f["pixel_values"].shape[0] for f in feeds)
        await batcher.close()

    asyncio.run(main())


def test_preferred_size_dispatches_without_waiting_out_the_delay(model: Gated) -> None:
    async def main() -> None:
        batcher = _batcher(
            model, BatchingConfig(max_batch=8, max_queue_delay_ms=10_000, preferred_sizes=(2,))
        )
        start = time.monotonic()
        await asyncio.gather(*(batcher.infer(_x(i), 1, _ticket()) for i in range(2)))
        assert time.monotonic() - start < 5.0  # not the 10 s delay
        await batcher.close()

    asyncio.run(main())


def test_higher_priority_jumps_the_queue(model: Gated) -> None:
    async def main() -> None:
        batcher = _batcher(model, BatchingConfig(max_batch=1))
        model.gate.clear()
        first = asyncio.create_task(batcher.infer(_x(0), 1, _ticket("low")))
        await asyncio.sleep(0.05)  # the first request is on the replica, blocked
        lows = [asyncio.create_task(batcher.infer(_x(i), 1, _ticket("low"))) for i in (1, 2)]
        await asyncio.sleep(0.01)
        high = asyncio.create_task(batcher.infer(_x(3), 1, _ticket("high")))
        await asyncio.sleep(0.01)
        model.gate.set()
        (_, high_item), *low_items = await asyncio.gather(high, *lows)
        await first
        assert all(high_item.dispatched_at < item.dispatched_at for _, item in low_items)
        await batcher.close()

    asyncio.run(main())


def test_a_batch_holds_one_rank_and_a_high_priority_head_goes_at_once(model: Gated) -> None:
    """Rows cost time on CPU: a high-priority request is not made to carry low-priority rows,
    nor to wait out the queue delay while other requests wait for the replica."""

    async def main() -> None:
        batcher = _batcher(model, BatchingConfig(max_batch=8, max_queue_delay_ms=2000))
        model.gate.clear()
        first = asyncio.create_task(batcher.infer(_x(0, rows=8), 8, _ticket("low")))
        await asyncio.sleep(0.05)  # the first (full) batch is on the replica, blocked
        lows = [asyncio.create_task(batcher.infer(_x(i), 1, _ticket("low"))) for i in (1, 2, 3)]
        high = asyncio.create_task(batcher.infer(_x(4), 1, _ticket("high")))
        await asyncio.sleep(0.01)
        model.gate.set()
        (_, first_item), (_, high_item) = await asyncio.gather(first, high)
        low_items = [item for _, item in await asyncio.gather(*lows)]
        assert high_item.batch_size == 1 and all(item.batch_size == 3 for item in low_items)
        assert model.calls == [8, 1, 3]
        # Dispatched when the replica freed, not after the 2 s delay.
        assert high_item.dispatched_at - first_item.finished_at < 1.0
        await batcher.close()

    asyncio.run(main())


def test_full_queue_rejects_at_once_or_delays(model: Gated) -> None:
    async def main() -> None:
        batcher = _batcher(model, BatchingConfig(max_batch=1))
        model.gate.clear()
        running = asyncio.create_task(batcher.infer(_x(0), 1, _ticket("low")))
        await asyncio.sleep(0.05)
        queued = [asyncio.create_task(batcher.infer(_x(i), 1, _ticket("low"))) for i in range(3)]
        await asyncio.sleep(0.01)
        start = time.monotonic()
        with pytest.raises(Rejected) as refused:
            await batcher.infer(_x(9), 1, _ticket("low"))
        assert refused.value.status == 503 and refused.value.code == "queue_full"
        assert refused.value.retry_after is not None
        assert time.monotonic() - start < 1.0  # told at once, not after the queue drains
        # "delay": the second request waits for room and is then served.
        patient = [asyncio.create_task(batcher.infer(_x(i), 1, _ticket("patient"))) for i in (5, 6)]
        await asyncio.sleep(0.05)
        assert not any(p.done() for p in patient)
        model.gate.set()
        await asyncio.gather(running, *queued, *patient)
        await batcher.close()

    asyncio.run(main())


def test_deadlines_refuse_early_and_expire_in_queue(model: Gated) -> None:
    async def main() -> None:
        batcher = _batcher(model, BatchingConfig(max_batch=1))
        for _ in range(3):  # measure the service time
            await batcher.infer(_x(0), 1, _ticket())
        # Pretend each call takes 0.5 s: a 0.1 s deadline behind 3 queued calls cannot be met.
        for _ in range(300):
            batcher.service.observe(1, 0.5)
        model.gate.clear()
        blocked = [asyncio.create_task(batcher.infer(_x(i), 1, _ticket("high"))) for i in range(3)]
        await asyncio.sleep(0.05)
        with pytest.raises(Rejected) as refused:
            await batcher.infer(_x(4), 1, _ticket("high", timeout=0.1))
        assert refused.value.status == 503 and refused.value.code == "deadline"
        assert refused.value.retry_after and refused.value.retry_after > 0
        # A request admitted before anything was measured expires in the queue: 504, not late.
        batcher.service = type(batcher.service)()
        late = asyncio.create_task(batcher.infer(_x(5), 1, _ticket("high", timeout=0.2)))
        await asyncio.sleep(0.4)
        model.gate.set()
        with pytest.raises(Rejected) as expired:
            await late
        assert expired.value.status == 504
        await asyncio.gather(*blocked)
        await batcher.close()

    asyncio.run(main())


def test_unbatched_requests_are_estimated_one_call_each(model: Gated) -> None:
    """Without batching (max_batch 0) a request of 256 rows is one call, not 256: the estimate
    counted rows as calls and refused requests a 30 s deadline would easily meet (seen in the
    drain test: 4 of 8 refused with 'deadline' after the first call was measured)."""

    async def main() -> None:
        batcher = _batcher(model, BatchingConfig(max_batch=0))
        for rows in (16, 256, 16, 256):  # a line through a few sizes
            await batcher.infer(_x(rows, rows), rows, _ticket())
        per_call = batcher.service.estimate(256)
        model.gate.clear()
        queued = [
            asyncio.create_task(batcher.infer(_x(i, 256), 256, _ticket("high", timeout=30)))
            for i in range(3)
        ]
        await asyncio.sleep(0.05)
        # One running, two queued, this one: about 4 calls, whatever the rows of each.
        assert batcher.estimate(CLASSES["high"].rank, 256) <= 5 * per_call
        model.gate.set()
        await asyncio.gather(*queued)
        await batcher.close()

    asyncio.run(main())


def test_a_batch_leaves_out_requests_it_would_answer_late(model: Gated) -> None:
    """A request whose deadline a one-row call would meet but the batch it joins would not
    gets 504 at dispatch; the rest of the batch is answered."""

    async def main() -> None:
        batcher = _batcher(model, BatchingConfig(max_batch=2, max_queue_delay_ms=0))
        model.gate.clear()
        blocker = asyncio.create_task(batcher.infer(_x(0), 1, _ticket()))
        await asyncio.sleep(0.05)
        # Admitted while nothing is measured (admission cannot refuse them yet).
        patient = asyncio.create_task(batcher.infer(_x(1), 1, _ticket("high", timeout=5.0)))
        hurried = asyncio.create_task(batcher.infer(_x(2), 1, _ticket("high", timeout=0.8)))
        await asyncio.sleep(0.05)
        for _ in range(300):  # now a call is known to take 0.5 s a row
            batcher.service.observe(1, 0.5)
        model.gate.set()
        await blocker
        out, _item = await patient
        assert out["logits"].shape[0] == 1
        with pytest.raises(Rejected) as late:
            await hurried
        assert late.value.status == 504 and "batch of 2 rows" in late.value.message
        assert model.calls == [1, 1]  # the blocker, then the patient request alone
        await batcher.close()

    asyncio.run(main())


def test_rows_above_max_batch_are_refused(model: Gated) -> None:
    async def main() -> None:
        batcher = _batcher(model, BatchingConfig(max_batch=4))
        with pytest.raises(Rejected, match="at most 4"):
            await batcher.infer(_x(0, rows=5), 5, _ticket())
        await batcher.close()

    asyncio.run(main())


def test_late_answers_make_admission_refuse_earlier_for_a_while(model: Gated) -> None:
    async def main() -> None:
        batcher = _batcher(model, BatchingConfig(max_batch=1))
        for seed in range(3):
            await batcher.infer(_x(seed), 1, _ticket())
        # Every answer admitted with a plan (all but the first, before any call was measured)
        # is compared with it.
        assert len(batcher.lateness._seen[CLASSES["high"].rank]) == 2  # type: ignore[attr-defined]
        for _ in range(300):
            batcher.service.observe(1, 0.09)  # a call takes 90 ms: fits a 100 ms deadline
        await asyncio.sleep(0)
        batcher.precheck(_ticket("high", timeout=0.1))
        # Answers of this class came 40 ms after their plan: admission adds the margin,
        # capped at a quarter of the request's timeout (25 ms), and 90 + 25 > 100.
        batcher.lateness = type(batcher.lateness)(window_s=0.3)
        for _ in range(10):
            batcher.lateness.observe(CLASSES["high"].rank, 0.04)
        with pytest.raises(Rejected) as refused:
            batcher.precheck(_ticket("high", timeout=0.1))
        assert refused.value.status == 503 and refused.value.code == "deadline"
        batcher.precheck(_ticket("low", timeout=0.1))  # another class: nothing learned
        await asyncio.sleep(0.35)  # nothing late since: the margin is gone
        batcher.precheck(_ticket("high", timeout=0.1))
        await batcher.close()

    asyncio.run(main())


def test_requests_dropped_before_their_call_teach_admissions_margin(model: Gated) -> None:
    """A request admission let in that then expires in the queue (504) was admission's
    mistake: it teaches the class's lateness margin, as a late answer does. Before, only
    answers and calls that ran taught it, so under a host slower than its estimates admission
    went on letting in requests that expired (1.6 % of those admitted under 2x overload in
    16 runs here, 0.8 % with this; docs/serve.md)."""

    async def main() -> None:
        batcher = _batcher(model, BatchingConfig(max_batch=1))
        for seed in range(3):  # measured: a call takes a few ms
            await batcher.infer(_x(seed), 1, _ticket())
        rank = CLASSES["high"].rank
        batcher.lateness = type(batcher.lateness)(window_s=30.0, least=4)
        assert batcher.lateness.margin(_ticket("high", timeout=1.0)) == 0.0
        model.gate.clear()  # the next call runs until the test lets it end
        blocker = asyncio.create_task(batcher.infer(_x(0), 1, _ticket()))
        await asyncio.sleep(0.05)
        queued = [
            asyncio.create_task(batcher.infer(_x(i), 1, _ticket("high", timeout=0.3)))
            for i in range(6)  # the class queue holds 8
        ]
        results = await asyncio.gather(*queued, return_exceptions=True)
        assert all(isinstance(r, Rejected) and r.status == 504 for r in results), results
        seen = batcher.lateness._seen[rank]  # type: ignore[attr-defined]
        assert len(seen) == 6 and all(late > 0 for _, late in seen)
        assert batcher.lateness.margin(_ticket("high", timeout=1.0)) > 0
        model.gate.set()
        await blocker
        await batcher.close()

    asyncio.run(main())


def test_headroom_refuses_a_queued_request_that_would_end_in_its_timeouts_last_part(
    model: Gated,
) -> None:
    """With the default headroom (a fifth of the timeout) a request that would wait behind a
    queued call is refused at once when its estimated end falls in the last fifth; one that
    goes in the next call keeps its whole timeout; with no headroom, the whole timeout."""

    async def main() -> None:
        batcher = _batcher(model, BatchingConfig(max_batch=1))
        for seed in range(3):
            await batcher.infer(_x(seed), 1, _ticket())
        batcher.classes = {**batcher.classes, "high": PriorityClass(rank=0, timeout_ms=5000)}
        assert batcher.classes["high"].headroom == 0.2  # the server's default
        for _ in range(300):  # a call takes 60 ms
            batcher.service.observe(1, 0.06)
        await asyncio.sleep(0)
        batcher.precheck(_ticket("high", timeout=0.075))  # next call: 60 ms of 75, no headroom
        for _ in range(300):  # now 30 ms
            batcher.service.observe(1, 0.03)
        model.gate.clear()
        running = asyncio.create_task(batcher.infer(_x(10), 1, _ticket()))
        await asyncio.sleep(0.05)
        queued = asyncio.create_task(batcher.infer(_x(11), 1, _ticket()))
        await asyncio.sleep(0.01)
        # Behind the queued call: about 60 ms, past 70 ms less a fifth (56 ms).
        with pytest.raises(Rejected) as refused:
            batcher.precheck(_ticket("high", timeout=0.07))
        assert refused.value.status == 503 and refused.value.code == "deadline"
        assert refused.value.retry_after and refused.value.retry_after > 0
        batcher.precheck(_ticket("high", timeout=0.09))  # 60 ms fits 90 less a fifth (72)
        batcher.classes = {**batcher.classes, "high": CLASSES["high"]}  # no headroom
        batcher.precheck(_ticket("high", timeout=0.075))
        model.gate.set()
        await asyncio.gather(running, queued)
        await batcher.close()

    asyncio.run(main())


def test_an_admitted_request_gets_its_answer_or_a_504_by_its_deadline(model: Gated) -> None:
    """A call that runs past a request's deadline answers it 504 at the deadline, not late;
    a request still queued at its deadline is never computed; the late call still teaches
    admission's margin."""

    async def main() -> None:
        batcher = _batcher(model, BatchingConfig(max_batch=1))
        for seed in range(3):
            await batcher.infer(_x(seed), 1, _ticket())
        calls = len(model.calls)
        model.gate.clear()  # the next call takes as long as the test wants
        start = time.monotonic()
        running = asyncio.create_task(batcher.infer(_x(10), 1, _ticket("high", timeout=0.3)))
        await asyncio.sleep(0.05)
        queued = asyncio.create_task(batcher.infer(_x(11), 1, _ticket("high", timeout=0.2)))
        with pytest.raises(Rejected) as waited:
            await queued
        assert waited.value.status == 504 and "it waited" in waited.value.message
        with pytest.raises(Rejected) as ran:
            await running
        answered = time.monotonic() - start
        assert ran.value.status == 504 and "it ran" in ran.value.message
        assert 0.25 <= answered < 0.6  # at its deadline (0.3 s), while the call still runs
        rank = CLASSES["high"].rank
        seen_before = len(batcher.lateness._seen[rank])  # type: ignore[attr-defined]
        model.gate.set()
        await asyncio.sleep(0.2)
        # The running call ended late and admission learned from it; the queued one never ran.
        seen = batcher.lateness._seen[rank]  # type: ignore[attr-defined]
        assert len(seen) == seen_before + 1 and seen[-1][1] > 0
        assert len(model.calls) == calls + 1
        out, _ = await batcher.infer(_x(12), 1, _ticket())
        assert out["logits"].shape[0] == 1
        await batcher.close()

    asyncio.run(main())
