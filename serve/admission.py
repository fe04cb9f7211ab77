"""Admission control: deadlines, measured service times, and refusals that come at once.

A request's deadline is its priority class's ``timeout_ms`` from arrival, or earlier if the
request asks (a request can only shorten it). Before a request is queued, the scheduler that
would run it estimates when it would finish, from the work queued ahead of it and the service
time measured on recent batches (or decode steps); a request that would finish after its
deadline is refused now, with ``Retry-After``, instead of being served late.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass

from ai_vmm.serve.config import ADMISSION_QUANTILE, PriorityClass


class Rejected(Exception):
    """A request the server refuses; protocol layers turn it into their own error shape.

    Attributes:
        status: the HTTP status (400, 401, 403, 404, 413, 429, 503, 504 ...).
        code: a short machine-readable reason (``rate_limited``, ``deadline``, ``queue_full``).
        retry_after: seconds after which trying again makes sense (429/503), else ``None``.
    """

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        retry_after: float | None = None,
        param: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.retry_after = retry_after
        self.param = param
        """The request field at fault, where there is one (OpenAI's ``param``)."""

    def headers(self) -> dict[str, str]:
        if self.retry_after is None:
            return {}
        # Retry-After takes whole seconds; the openai client also reads the finer retry-after-ms.
        return {
            "Retry-After": str(max(1, math.ceil(self.retry_after))),
            "retry-after-ms": str(max(1, round(self.retry_after * 1000))),
        }


@dataclass(frozen=True)
class Ticket:
    """What admission decided for one request: its class, rank and absolute deadline."""

    priority_class: str
    rank: int
    arrival: float
    deadline: float
    """``time.monotonic()`` value after which the result is worthless."""

    @property
    def budget_s(self) -> float:
        return self.deadline - time.monotonic()


def make_ticket(
    class_name: str,
    policy: PriorityClass,
    requested_timeout_s: float | None,
    arrival: float | None = None,
) -> Ticket:
    """The ticket of a request that arrived at ``arrival`` (``time.monotonic()``; default
    now): the class's timeout from then, shortened if asked.

    Raises:
        Rejected: 400 for a timeout that is not a positive number.
    """
    now = time.monotonic() if arrival is None else arrival
    timeout = policy.timeout_ms / 1000.0
    if requested_timeout_s is not None:
        if not math.isfinite(requested_timeout_s) or requested_timeout_s <= 0:
            raise Rejected(400, "bad_deadline", "a request timeout must be a positive number")
        timeout = min(timeout, requested_timeout_s)
    return Ticket(class_name, policy.rank, now, now + timeout)


def quantile(values: Iterable[float], q: float) -> float:
    """The ``q`` quantile of ``values`` (not empty) as the value at rank ``q * n`` of the
    sorted ones, the one rule of every estimate here."""
    ordered = sorted(values)
    return ordered[min(int(q * len(ordered)), len(ordered) - 1)]


class ServiceTimes:
    """Recent service times of one model, by batch size, as a pessimistic estimate.

    A least-squares line ``time(n) ~= fixed + per_row * n`` over the last ``window``
    observations (with one batch size seen, through the origin and that point), scaled by the
    ``quantile`` of observed/predicted ratios: admission should plan with a bad call, not an
    average one, or a deadline met on average is missed by every slow call. The 97th
    percentile (bench_serve's overload phase, 2 cores, 2026-12-05): admitted requests that
    expired (504) under 2x overload were 8-105 a run of about 2,900 with the 90th and 0-74
    with the 97th. The 99th had none in 6 runs of 7, but three slow calls in the window then
    set the estimate, and the CI load test's high-priority tenant was refused 117 of 359 and
    268 of 339 requests in 2 runs of 9 (with the 97th, in none of 5 runs).
    """

    def __init__(self, window: int = 256, quantile: float = ADMISSION_QUANTILE) -> None:
        self._samples: deque[tuple[int, float]] = deque(maxlen=window)
        self._quantile = quantile
        self._fit: tuple[float, float, float] | None = None

    def observe(self, size: int, seconds: float) -> None:
        self._samples.append((size, seconds))
        self._fit = None

    @property
    def known(self) -> bool:
        return bool(self._samples)

    @property
    def quantile(self) -> float:
        """The quantile of observed/predicted ratios the estimate plans with."""
        return self._quantile

    def estimate(self, size: int, pessimistic: bool = True) -> float:
        """Seconds for one call of ``size`` rows (0.0 before any observation).

        ``pessimistic``: a slow call (the quantile), else a typical one (the line).
        """
        if not self._samples:
            return 0.0
        fixed, per_row, scale = self._line()
        return max(fixed + per_row * size, 0.0) * (scale if pessimistic else 1.0)

    def _line(self) -> tuple[float, float, float]:
        if self._fit is None:
            n = len(self._samples)
            mean_x = sum(s for s, _ in self._samples) / n
            mean_y = sum(t for _, t in self._samples) / n
            var = sum((s - mean_x) ** 2 for s, _ in self._samples)
            if var == 0:
                fixed, per_row = 0.0, mean_y / max(mean_x, 1.0)
            else:
                cov = sum((s - mean_x) * (t - mean_y) for s, t in self._samples)
                per_row = max(cov / var, 0.0)
                fixed = max(mean_y - per_row * mean_x, 0.0)
            ratios = [
                t / predicted for s, t in self._samples if (predicted := fixed + per_row * s) > 0
            ]
            scale = quantile(ratios, self._quantile) if ratios else 1.0
            self._fit = (fixed, per_row, max(scale, 1.0))
        return self._fit


class LatenessMargin:
    """How much later than admission planned recent answers of one priority rank came.

    Admission adds it to its estimate, so that a server whose calls or event loop run late
    refuses a little earlier instead of answering late. Two limits keep it from refusing a
    whole class: observations expire after ``window_s`` (a class that is refused teaches
    nothing, so its margin falls back to zero by itself), and the margin never exceeds a
    fraction (``cap``, the class's ``late_margin``) of the request's own timeout. (A margin
    without either, tried on 2026-12-04, grew on a congested loop until nearly every request
    of a class was refused, and stayed there.)
    """

    REFRESH_S = 0.05
    """How long a computed quantile is reused: admission asks twice per request (the headers'
    precheck and the queueing), and sorting the window each time cost ~15 us an ask."""

    def __init__(self, window_s: float = 2.0, quantile: float = 0.95, least: int = 8) -> None:
        self._window_s = window_s
        self._quantile = quantile
        self._least = least
        self._seen: dict[int, deque[tuple[float, float]]] = {}
        self._computed: dict[int, tuple[float, float]] = {}
        """Per rank: when the quantile was last computed, and its value (before the cap)."""

    def observe(self, rank: int, late_s: float, now: float | None = None) -> None:
        """An answer of ``rank`` came ``late_s`` after admission's estimate (< 0: early)."""
        now = time.monotonic() if now is None else now
        seen = self._seen.setdefault(rank, deque(maxlen=512))
        seen.append((now, late_s))

    def margin(self, ticket: Ticket, cap: float = 0.25, now: float | None = None) -> float:
        """Seconds to add to the estimate of a request with ``ticket``: at most ``cap`` of its
        timeout (the class's ``late_margin``)."""
        seen = self._seen.get(ticket.rank)
        if not seen or cap <= 0:
            return 0.0
        now = time.monotonic() if now is None else now
        computed = self._computed.get(ticket.rank)
        if computed is not None and 0 <= now - computed[0] < self.REFRESH_S:
            late = computed[1]
        else:
            while seen and seen[0][0] < now - self._window_s:
                seen.popleft()
            late = 0.0
            if len(seen) >= self._least:
                late = max(quantile([value for _, value in seen], self._quantile), 0.0)
            self._computed[ticket.rank] = (now, late)
        return min(late, cap * (ticket.deadline - ticket.arrival))


class ReplyTimes:
    """How long the server takes from a model's answer to the response's start (waking the
    request's coroutine, encoding the outputs), as a reserve kept before each deadline.

    The batcher stops waiting for a call ``reserve`` seconds before the request's deadline (a
    504 then), and admission plans with it: without it, answers ready just in time reached the
    client 0-4 ms after their deadline (bench_serve under 2x overload, 2026-12-05). The 99th
    percentile: a reply's time is small, and its tail is the event loop's congestion.
    """

    REFRESH_S = 0.05

    def __init__(self, window: int = 256, quantile: float = 0.99) -> None:
        self._seen: deque[float] = deque(maxlen=window)
        self._quantile = quantile
        self._computed = (-math.inf, 0.0)

    def observe(self, seconds: float) -> None:
        self._seen.append(max(seconds, 0.0))

    def reserve(self, ticket: Ticket, cap: float = 0.1, now: float | None = None) -> float:
        """Seconds to keep before the deadline of ``ticket``: the quantile of recent reply
        times, at most ``cap`` of its timeout."""
        if not self._seen:
            return 0.0
        now = time.monotonic() if now is None else now
        when, value = self._computed
        if not 0 <= now - when < self.REFRESH_S:
            value = quantile(self._seen, self._quantile)
            self._computed = (now, value)
        return min(value, cap * (ticket.deadline - ticket.arrival))


def refuse_late(estimate_s: float, ticket: Ticket, what: str, headroom: float = 0.0) -> None:
    """Refuse now (503 + Retry-After) when ``estimate_s`` from now ends past the deadline, or
    within its last ``headroom`` (a fraction of the request's timeout: the class's)."""
    budget = ticket.budget_s - headroom * (ticket.deadline - ticket.arrival)
    if estimate_s > budget:
        raise Rejected(
            503,
            "deadline",
            f"{what} would finish in about {estimate_s * 1000:.0f} ms, after the request's "
            f"deadline ({max(budget, 0) * 1000:.0f} ms left); retry later or allow more time",
            retry_after=max(estimate_s - budget, 0.05),
        )


__all__ = [
    "LatenessMargin",
    "Rejected",
    "ReplyTimes",
    "ServiceTimes",
    "Ticket",
    "make_ticket",
    "refuse_late",
]
