"""Dynamic batching of a tensor model: one priority queue, one worker per replica.

Requests wait in one queue per model, ordered by priority rank, then arrival. A replica that
is free takes the highest-priority request and every queued request that can join it (same
rank, same inputs apart from the batch axis, in arrival order) up to ``max_batch`` rows, once
one of these holds: the batch is full, it has reached a preferred size, the oldest request has
waited ``max_queue_delay_ms``, waiting longer would make the head request miss its deadline, or
other requests wait that it cannot take. A batch holds one rank because on a CPU a row costs
nearly what a call does: a high-priority request carried with low-priority rows took several
times longer than alone. Free replicas pulling from one queue is the work stealing that issue
17 builds on: a replica never idles while another has a queue.

Admission happens before a request is queued: ``admit`` estimates, from the rows queued ahead
of it (same or higher priority) and the measured service time, when it would finish, and
refuses it at once if that is after its deadline; a full class queue refuses or delays
(the class's ``overflow``).
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import math
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ai_vmm.serve.admission import (
    LatenessMargin,
    Rejected,
    ReplyTimes,
    ServiceTimes,
    Ticket,
    refuse_late,
)
from ai_vmm.serve.backend import TensorModel
from ai_vmm.serve.config import ADMISSION_QUANTILE, BatchingConfig, PriorityClass


@dataclass(eq=False)
class WorkItem:
    """One request's tensors waiting for a batch."""

    inputs: dict[str, np.ndarray]
    rows: int
    signature: tuple[Any, ...]
    ticket: Ticket
    future: asyncio.Future[dict[str, np.ndarray]]
    queued_at: float = field(default_factory=time.monotonic)
    dispatched_at: float = 0.0
    batch_size: int = 0
    finished_at: float = 0.0
    """When the model call that answered it ended (``time.monotonic()``)."""
    planned_end: float = 0.0
    """When admission expected it answered (``time.monotonic()``)."""


@dataclass
class BatchStats:
    """What one dispatched batch looked like (handed to the metrics hook)."""

    model: str
    rows: int
    requests: int
    seconds: float
    replica: int


class Replica:
    """One loaded copy of a model with its own thread, so one batch runs at a time on it."""

    def __init__(self, model: TensorModel, index: int) -> None:
        self.model = model
        self.index = index
        self.busy_until = 0.0
        self.executor = ThreadPoolExecutor(1, thread_name_prefix=f"replica-{index}")

    def close(self) -> None:
        self.executor.shutdown(wait=True)
        self.model.close()


class DynamicBatcher:
    """The queue and workers of one tensor model version."""

    def __init__(
        self,
        name: str,
        replicas: list[Replica],
        batching: BatchingConfig,
        classes: dict[str, PriorityClass],
        on_batch: Callable[[BatchStats], None] | None = None,
        service_quantile: float = ADMISSION_QUANTILE,
    ) -> None:
        if not replicas:
            raise ValueError("a batcher needs at least one replica")
        self.name = name
        self.replicas = replicas
        self.config = batching
        self.classes = classes
        self.service = ServiceTimes(quantile=service_quantile)
        self.lateness = LatenessMargin()
        self.replies = ReplyTimes()
        """Fed by the protocol layer (``observe_reply``): answer to response."""
        self._on_batch = on_batch
        model = replicas[0].model
        self._batch_axis = all(t.batch_axis for t in (*model.inputs, *model.outputs))
        wanted = batching.max_batch
        if wanted is None:  # the config leaves it to deploy's choice
            wanted = model.batch if model.batch > 1 else 0
        self.max_batch = wanted
        """What the config (or deploy) asked for; ``batches`` says whether it applies."""
        self._max_rows = wanted if self._batch_axis and wanted else 0
        self._heap: list[tuple[int, int, WorkItem]] = []
        self._seq = itertools.count()
        self._queued_by_class: dict[str, int] = dict.fromkeys(classes, 0)
        self._changed = asyncio.Event()
        self._room = asyncio.Event()
        self._workers: list[asyncio.Task[None]] = []
        self._closing = False
        self.in_flight = 0

    @property
    def batches(self) -> bool:
        return self._max_rows > 0

    @property
    def queued(self) -> int:
        return len(self._heap)

    def queued_by_class(self) -> dict[str, int]:
        return dict(self._queued_by_class)

    def start(self) -> None:
        for replica in self.replicas:
            self._workers.append(asyncio.create_task(self._work(replica)))

    async def close(self) -> None:
        """Finish what is queued, then stop the workers and release the replicas."""
        self._closing = True
        while self._heap or self.in_flight:
            self._changed.set()
            await asyncio.sleep(0.01)
        for task in self._workers:
            task.cancel()
        for task in self._workers:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        loop = asyncio.get_running_loop()
        for replica in self.replicas:
            await loop.run_in_executor(None, replica.close)

    async def infer(
        self, inputs: dict[str, np.ndarray], rows: int, ticket: Ticket
    ) -> tuple[dict[str, np.ndarray], WorkItem]:
        """Queue one request (already checked against the signature) and await its outputs.

        Raises:
            Rejected: 503 when it cannot meet its deadline or its class queue is full,
                504 when its deadline passed while queued, 400 for too many rows.
        """
        if self._closing:
            raise Rejected(503, "shutting_down", "the server is shutting down", retry_after=1.0)
        if self._max_rows and rows > self._max_rows:
            raise Rejected(
                400,
                "batch_too_large",
                f"the request holds {rows} rows; model '{self.name}' takes at most "
                f"{self._max_rows} per call",
            )
        await self._wait_for_room(ticket)
        estimate, reserve = self._admit(ticket, rows)
        loop = asyncio.get_running_loop()
        item = WorkItem(inputs, rows, _signature(inputs), ticket, loop.create_future())
        if self.service.known:  # before any call, 0.0 is no plan to be late against
            item.planned_end = item.queued_at + estimate
        heapq.heappush(self._heap, (ticket.rank, next(self._seq), item))
        self._queued_by_class[ticket.priority_class] = (
            self._queued_by_class.get(ticket.priority_class, 0) + 1
        )
        self._changed.set()
        try:
            # The answer, or a 504 at the deadline: a late answer is worthless to the client
            # (the ticket says so), and the server never sends one.
            outputs = await asyncio.wait_for(asyncio.shield(item.future), ticket.budget_s - reserve)
        except TimeoutError:
            self._expire(item)
            raise Rejected(
                504,
                "deadline",
                f"the request's deadline would pass before its answer could be sent: it "
                f"{'ran' if item.dispatched_at else 'waited'} on model '{self.name}' too long",
            ) from None
        # Measured when this coroutine runs again: a busy event loop counts too.
        if item.planned_end:
            self.lateness.observe(ticket.rank, time.monotonic() - item.planned_end)
        return outputs, item

    def observe_reply(self, item: WorkItem) -> None:
        """The protocol layer has the response of ``item`` ready: from the call's end to now
        is what ``infer`` keeps in reserve before later deadlines."""
        if item.finished_at:
            self.replies.observe(time.monotonic() - item.finished_at)

    def _expire(self, item: WorkItem) -> None:
        """The deadline of ``item`` passed before its answer: a queued item is dropped (never
        computed); a running one still teaches admission how late its call ended."""
        if not item.dispatched_at:
            item.future.cancel()  # _drop_expired takes it out of the queue
            self._changed.set()
            now = time.monotonic()
            self._learn_missed(item, now + self.service.estimate(item.rows, pessimistic=False))
            return
        if item.planned_end:
            rank = item.ticket.rank

            def learn(_: asyncio.Future[dict[str, np.ndarray]]) -> None:
                self.lateness.observe(rank, time.monotonic() - item.planned_end)

            item.future.add_done_callback(learn)

    def precheck(self, ticket: Ticket) -> None:
        """``infer``'s refusals for a request of one row, before its body is even read.

        Raises:
            Rejected: 503 when shutting down, when the class queue is full and its overflow
                policy is ``reject``, or when even one row would finish past the deadline.
        """
        if self._closing:
            raise Rejected(503, "shutting_down", "the server is shutting down", retry_after=1.0)
        policy = self.classes[ticket.priority_class]
        queued = self._queued_by_class.get(ticket.priority_class, 0)
        if queued >= policy.max_queue and policy.overflow == "reject":
            raise self._queue_full(ticket, policy.max_queue)
        self._admit(ticket, 1)

    def _admit(self, ticket: Ticket, rows: int) -> tuple[float, float]:
        """Refuse (503) a request of ``rows`` that would end past its deadline: the estimate
        from the queue ahead, plus the class's lateness margin and the reply reserve, within
        the timeout less the class's headroom where the request would wait behind queued
        calls (their end moves when the host slows after admission, docs/serve.md). One that
        goes in the next call keeps its whole timeout: a headroom for those refused the load
        test's gold tenant in 3 runs of 4. Returns the estimate alone (the request's plan) and
        the reply reserve (``infer`` stops waiting that long before the deadline)."""
        policy = self.classes[ticket.priority_class]
        queued = self._queued_rows(ticket.rank)
        estimate = self.estimate(ticket.rank, rows, queued)
        reserve = self.replies.reserve(ticket)
        ahead = sum(queued)
        behind_calls = ahead + rows > self._max_rows if self._max_rows else ahead > 0
        refuse_late(
            estimate + self.lateness.margin(ticket, policy.late_margin) + reserve,
            ticket,
            f"model '{self.name}'",
            policy.headroom if behind_calls else 0.0,
        )
        return estimate, reserve

    def _queued_rows(self, rank: int) -> list[int]:
        """The rows of each queued request served before one of ``rank``."""
        return [item.rows for r, _, item in self._heap if r <= rank]

    def _queue_full(self, ticket: Ticket, limit: int) -> Rejected:
        return Rejected(
            503,
            "queue_full",
            f"the queue of model '{self.name}' for class '{ticket.priority_class}' is full "
            f"({limit} requests)",
            retry_after=max(self.estimate(ticket.rank, 1), 0.05),
        )

    def estimate(self, rank: int, rows: int, queued: list[int] | None = None) -> float:
        """Seconds until a request of ``rows`` at ``rank`` queued now would be answered
        (``queued``: ``_queued_rows(rank)`` where the caller has it)."""
        if not self.service.known:
            return 0.0  # nothing measured yet: admit, and learn from the first batches
        queued = self._queued_rows(rank) if queued is None else queued
        ahead = sum(queued)
        if self._max_rows:  # batched: calls of up to max_rows rows
            calls = math.ceil((ahead + rows) / self._max_rows)
            durations = [self.service.estimate(min(self._max_rows, ahead + rows))] * calls
        else:  # unbatched: each request is one call of its own rows, whatever their number
            durations = [self.service.estimate(n) for n in (*queued, rows)]
        now = time.monotonic()
        free_at = sorted(max(r.busy_until - now, 0.0) for r in self.replicas)
        # Calls go to replicas as they free up: the k-th call starts at the k-th free slot.
        slots = list(free_at)
        finish = 0.0
        for duration in durations:
            start = heapq.heappop(slots) if slots else 0.0
            finish = start + duration
            heapq.heappush(slots, finish)
        if self._max_rows and ahead + rows < self._max_rows:
            finish += self.config.max_queue_delay_ms / 1000.0
        return finish

    async def _wait_for_room(self, ticket: Ticket) -> None:
        policy = self.classes[ticket.priority_class]
        if self._queued_by_class.get(ticket.priority_class, 0) < policy.max_queue:
            return
        if policy.overflow == "reject":
            raise self._queue_full(ticket, policy.max_queue)
        while self._queued_by_class.get(ticket.priority_class, 0) >= policy.max_queue:
            self._room.clear()
            try:
                await asyncio.wait_for(self._room.wait(), timeout=max(ticket.budget_s, 0.0))
            except TimeoutError:
                raise Rejected(
                    503,
                    "queue_full",
                    f"the queue of model '{self.name}' for class '{ticket.priority_class}' "
                    "stayed full until the request's deadline",
                    retry_after=0.5,
                ) from None

    async def _work(self, replica: Replica) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._next_batch()
            rows = sum(item.rows for item in batch)
            now = time.monotonic()
            for item in batch:
                item.dispatched_at = now
                item.batch_size = rows
            replica.busy_until = now + self.service.estimate(rows)
            self.in_flight += len(batch)
            try:
                feed = _concatenate([item.inputs for item in batch])
                outputs = await loop.run_in_executor(replica.executor, replica.model.run, feed)
                seconds = time.monotonic() - now
                for item in batch:
                    item.finished_at = now + seconds
                self.service.observe(rows, seconds)
                if self._on_batch is not None:
                    self._on_batch(BatchStats(self.name, rows, len(batch), seconds, replica.index))
                _deliver(batch, outputs, self._batch_axis and len(batch) > 1)
            except Exception as exc:  # a failed call fails its requests, never the worker
                for item in batch:
                    if not item.future.done():
                        item.future.set_exception(exc)
            finally:
                self.in_flight -= len(batch)
                replica.busy_until = 0.0

    async def _next_batch(self) -> list[WorkItem]:
        while True:
            self._drop_expired()
            if not self._heap:
                self._changed.clear()
                await self._changed.wait()
                continue
            head = self._heap[0][2]
            if not self._max_rows:
                return [self._pop(head)]
            candidates = self._compatible(head)
            rows = sum(item.rows for item in candidates)
            now = time.monotonic()
            waited = now - head.queued_at
            delay = self.config.max_queue_delay_ms / 1000.0
            slack = head.ticket.deadline - now - self.service.estimate(max(rows, 1))
            if (
                rows >= self._max_rows
                or rows in self.config.preferred_sizes
                or waited >= delay
                or slack <= 0
                or self._closing
                # Others wait that this batch cannot take: waiting would idle the replica.
                or len(candidates) < len(self._heap)
            ):
                batch = self._in_time([self._pop(item) for item in candidates], rows)
                if batch:
                    return batch
                continue
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), timeout=min(delay - waited, slack))

    def _compatible(self, head: WorkItem) -> list[WorkItem]:
        chosen = [head]
        rows = head.rows
        for _, _, item in sorted(self._heap):
            if item is head or item.signature != head.signature:
                continue
            if item.ticket.rank != head.ticket.rank:
                continue
            if rows + item.rows > self._max_rows:
                continue
            chosen.append(item)
            rows += item.rows
            if rows == self._max_rows:
                break
        return chosen

    def _pop(self, item: WorkItem) -> WorkItem:
        self._heap = [entry for entry in self._heap if entry[2] is not item]
        heapq.heapify(self._heap)
        self._queued_by_class[item.ticket.priority_class] -= 1
        self._room.set()
        return item

    def _in_time(self, batch: list[WorkItem], rows: int) -> list[WorkItem]:
        """The batch without the requests a typical call of its size would answer after their
        deadline: those get 504 now (``_drop_expired`` looks at a one-row call; a batch of
        many rows takes longer, and its late answers would be worthless)."""
        if not self.service.known:
            return batch
        end = time.monotonic() + self.service.estimate(rows, pessimistic=False)
        kept = []
        for item in batch:
            if item.ticket.deadline >= end:
                kept.append(item)
            elif not item.future.done():
                self._learn_missed(item, end)
                item.future.set_exception(
                    Rejected(
                        504,
                        "deadline",
                        f"the request's deadline would pass before a batch of {rows} rows of "
                        f"model '{self.name}' could end",
                    )
                )
        return kept

    def _learn_missed(self, item: WorkItem, projected_end: float) -> None:
        """A request dropped with a 504 before its call: admission planned it to end at
        ``planned_end`` and it would have ended at ``projected_end`` at the earliest. That
        miss teaches the class's lateness margin like a late answer would: without it the
        requests admission got wrong taught it nothing, and under a host slower than its
        estimates it went on admitting requests that then expired (docs/serve.md)."""
        if item.planned_end:
            self.lateness.observe(item.ticket.rank, projected_end - item.planned_end)

    def _drop_expired(self) -> None:
        # A request that would end after its deadline even with a typical call from now is
        # answered 504 now rather than late; one whose client went away (cancelled future) is
        # dropped too, not computed.
        cutoff = time.monotonic() + self.service.estimate(1, pessimistic=False)
        expired = [
            entry
            for entry in self._heap
            if entry[2].ticket.deadline <= cutoff or entry[2].future.done()
        ]
        for _, _, item in expired:
            self._pop(item)
            if not item.future.done():
                self._learn_missed(item, cutoff)
                item.future.set_exception(
                    Rejected(
                        504,
                        "deadline",
                        f"the request's deadline passed (or would before a call could end) "
                        f"while it waited for model '{self.name}'",
                    )
                )


def _signature(inputs: dict[str, np.ndarray]) -> tuple[Any, ...]:
    return tuple((name, a.dtype.str, a.shape[1:]) for name, a in sorted(inputs.items()))


def _concatenate(feeds: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    if len(feeds) == 1:
        return feeds[0]
    return {name: np.concatenate([f[name] for f in feeds], axis=0) for name in feeds[0]}


def _deliver(batch: list[WorkItem], outputs: dict[str, np.ndarray], split: bool) -> None:
    if not split:
        for item in batch:
            if not item.future.done():
                item.future.set_result(outputs)
        return
    rows = sum(item.rows for item in batch)
    for name, value in outputs.items():
        if value.ndim == 0 or value.shape[0] != rows:
            raise Rejected(
                500,
                "bad_batch_axis",
                f"output '{name}' has shape {list(value.shape)} for a batch of {rows} rows, so "
                "its axis 0 is not the batch; serve this model with batching.max_batch = 0",
            )
    start = 0
    for item in batch:
        end = start + item.rows
        if not item.future.done():
            item.future.set_result({name: value[start:end] for name, value in outputs.items()})
        start = end


__all__ = ["BatchStats", "DynamicBatcher", "Replica", "WorkItem"]
