"""A small asyncio load driver for a KServe v2 endpoint (the load test and ``bench_serve``).

Requests are binary-tensor infer calls (what ``tritonclient.http`` sends) built here from
numpy arrays, independently of the server's own protocol code, and every answer is checked
against an expected output. Open-loop runs send at a fixed rate whatever the server does (so
an overloaded server cannot slow the load down and hide its queue); closed-loop runs keep a
fixed number of requests in flight (to measure capacity). Each request ends as exactly one
``Outcome``: answered (right or wrong), refused (with or without ``Retry-After``), or lost.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Case:
    """One request body and the output it must produce."""

    inputs: dict[str, np.ndarray]
    output: str
    expected: np.ndarray
    rtol: float = 1e-4
    atol: float = 1e-5

    def body(self) -> tuple[bytes, int]:
        header = {
            "inputs": [
                {
                    "name": name,
                    "shape": list(value.shape),
                    "datatype": _DATATYPES[value.dtype.name],
                    "parameters": {"binary_data_size": value.nbytes},
                }
                for name, value in self.inputs.items()
            ],
            "outputs": [{"name": self.output, "parameters": {"binary_data": True}}],
        }
        head = json.dumps(header).encode()
        data = b"".join(np.ascontiguousarray(v).tobytes() for v in self.inputs.values())
        return head + data, len(head)

    def check(self, body: bytes, header_length: int) -> bool:
        header = json.loads(body[:header_length])
        (out,) = header["outputs"]
        dtype = next(k for k, v in _DATATYPES.items() if v == out["datatype"])
        got = np.frombuffer(body[header_length:], dtype=dtype).reshape(out["shape"])
        return bool(
            got.shape == self.expected.shape
            and np.allclose(got, self.expected, rtol=self.rtol, atol=self.atol)
        )


_DATATYPES = {"float32": "FP32", "int64": "INT64", "int32": "INT32", "float16": "FP16"}


@dataclass
class Outcome:
    """What became of one request."""

    tenant: str
    started: float
    latency: float = 0.0
    status: int = 0
    """HTTP status; 0 when no answer came (lost)."""
    correct: bool = False
    retry_after: bool = False
    deadline: float | None = None
    server: float | None = None
    """Seconds the server says it spent (``Server-Timing: app``), arrival to answer."""


@dataclass
class Summary:
    """Figures of one run, per tenant."""

    name: str
    tenant: str
    offered_rps: float
    seconds: float
    sent: int
    ok: int
    wrong: int
    refused: int
    refused_without_retry_after: int
    expired: int
    errors: int
    lost: int
    p50_ms: float | None
    p99_ms: float | None
    refusal_p99_ms: float | None
    refusal_server_p99_ms: float | None
    """p99 of the server's own time to refuse (``Server-Timing``)."""
    late: int
    """Answered 200 after the request's deadline, as the client measured."""
    server_p99_ms: float | None
    """p99 of the server's own time (arrival to answer) of the answered requests."""
    server_late: int
    """Answered after the deadline by the server's own clock (the client adds the network and
    its own scheduling)."""
    throughput_rps: float
    statuses: dict[int, int] = field(default_factory=dict)

    def row(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "statuses"}


def summarize(
    name: str, outcomes: Sequence[Outcome], offered: float, seconds: float
) -> list[Summary]:
    """One ``Summary`` per tenant of ``outcomes``; ``seconds``: first send to last answer."""
    rows = []
    for tenant in sorted({o.tenant for o in outcomes}):
        mine = [o for o in outcomes if o.tenant == tenant]
        ok = [o for o in mine if o.status == 200]
        refused = [o for o in mine if o.status in (429, 503)]
        statuses: dict[int, int] = {}
        for o in mine:
            statuses[o.status] = statuses.get(o.status, 0) + 1
        rows.append(
            Summary(
                name=name,
                tenant=tenant,
                offered_rps=offered * len(mine) / max(len(outcomes), 1),
                seconds=seconds,
                sent=len(mine),
                ok=sum(1 for o in ok if o.correct),
                wrong=sum(1 for o in ok if not o.correct),
                refused=len(refused),
                refused_without_retry_after=sum(1 for o in refused if not o.retry_after),
                expired=sum(1 for o in mine if o.status == 504),
                errors=sum(1 for o in mine if o.status not in (0, 200, 429, 503, 504)),
                lost=sum(1 for o in mine if o.status == 0),
                p50_ms=_pct([o.latency for o in ok], 50),
                p99_ms=_pct([o.latency for o in ok], 99),
                refusal_p99_ms=_pct([o.latency for o in refused], 99),
                refusal_server_p99_ms=_pct([o.server for o in refused if o.server is not None], 99),
                late=sum(1 for o in ok if o.deadline is not None and o.latency > o.deadline),
                server_p99_ms=_pct([o.server for o in ok if o.server is not None], 99),
                server_late=sum(
                    1
                    for o in ok
                    if o.deadline is not None and o.server is not None and o.server > o.deadline
                ),
                throughput_rps=len(ok) / seconds if seconds else 0.0,
                statuses=statuses,
            )
        )
    return rows


def _pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    if len(values) == 1:
        return values[0] * 1000
    return float(np.percentile(np.array(values), q)) * 1000


@dataclass(frozen=True)
class Stream:
    """One source of load: a tenant's key, its rate and its requests."""

    tenant: str
    key: str | None
    rate: float
    """Requests per second (open loop)."""
    cases: Sequence[Case]
    deadline_ms: float | None = None
    """Sent as ``X-Request-Timeout-Ms``; ``None``: the class default applies."""


async def send(session: Any, url: str, stream: Stream, case: Case) -> Outcome:
    """One request on an ``aiohttp`` session, checked, as an ``Outcome``."""
    body, length = case.body()
    headers = {"Inference-Header-Content-Length": str(length)}
    if stream.key:
        headers["Authorization"] = f"Bearer {stream.key}"
    if stream.deadline_ms is not None:
        headers["X-Request-Timeout-Ms"] = f"{stream.deadline_ms:g}"
    deadline = None if stream.deadline_ms is None else stream.deadline_ms / 1000
    outcome = Outcome(stream.tenant, time.monotonic(), deadline=deadline)
    try:
        async with session.post(url, data=body, headers=headers) as response:
            content = await response.read()
            outcome.status = response.status
            outcome.retry_after = "Retry-After" in response.headers
            outcome.server = _server_time(response.headers.get("Server-Timing"))
            length_header = response.headers.get("Inference-Header-Content-Length")
    except Exception:  # no answer at all: counted as lost
        outcome.status = 0
    outcome.latency = time.monotonic() - outcome.started
    if outcome.status == 200:
        outcome.correct = length_header is not None and case.check(content, int(length_header))
    return outcome


def _server_time(header: str | None) -> float | None:
    for part in (header or "").split(","):
        name, _, value = part.strip().partition(";dur=")
        if name == "app" and value:
            return float(value) / 1000
    return None


def _session(timeout: float) -> Any:
    # aiohttp, not httpx: on 2 busy cores httpx's client fell behind at 200 requests/s
    # (5 s median for a health check) where aiohttp kept to schedule (2 ms).
    import aiohttp

    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=1024),
        timeout=aiohttp.ClientTimeout(total=timeout),
    )


async def open_loop(
    base_url: str, model: str, streams: Sequence[Stream], seconds: float, timeout: float = 60.0
) -> tuple[list[Outcome], float]:
    """Send each stream at its rate for ``seconds`` (evenly spaced), wait for every answer.

    Returns the outcomes and the seconds from the first send to the last answer.
    """
    url = f"{base_url}/v2/models/{model}/infer"
    async with _session(timeout) as session:
        plan: list[tuple[float, Stream, int]] = []
        for stream in streams:
            count = int(stream.rate * seconds)
            plan += [(i / stream.rate, stream, i) for i in range(count)]
        plan.sort(key=lambda p: p[0])
        start = time.monotonic()
        tasks = []
        for at, stream, i in plan:
            delay = start + at - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            case = stream.cases[i % len(stream.cases)]
            tasks.append(asyncio.create_task(send(session, url, stream, case)))
        outcomes = list(await asyncio.gather(*tasks))
        return outcomes, time.monotonic() - start


async def closed_loop(
    base_url: str, model: str, stream: Stream, concurrency: int, seconds: float
) -> list[Outcome]:
    """Keep ``concurrency`` requests in flight for ``seconds`` (capacity measurement)."""
    url = f"{base_url}/v2/models/{model}/infer"
    end = time.monotonic() + seconds
    outcomes: list[Outcome] = []
    async with _session(60.0) as session:

        async def worker(offset: int) -> None:
            i = offset
            while time.monotonic() < end:
                case = stream.cases[i % len(stream.cases)]
                outcomes.append(await send(session, url, stream, case))
                i += concurrency

        await asyncio.gather(*(worker(k) for k in range(concurrency)))
    return outcomes


def measure_capacity(
    base_url: str, model: str, stream: Stream, concurrency: int, seconds: float
) -> float:
    """Answers per second with ``concurrency`` requests kept in flight."""
    start = time.monotonic()
    outcomes = asyncio.run(closed_loop(base_url, model, stream, concurrency, seconds))
    elapsed = time.monotonic() - start
    return sum(1 for o in outcomes if o.status == 200) / elapsed


def run(
    base_url: str, model: str, streams: Sequence[Stream], seconds: float
) -> tuple[list[Outcome], float]:
    """``open_loop`` from synchronous code."""
    return asyncio.run(open_loop(base_url, model, streams, seconds))


__all__ = [
    "Case",
    "Outcome",
    "Stream",
    "Summary",
    "closed_loop",
    "measure_capacity",
    "open_loop",
    "run",
    "send",
    "summarize",
]
