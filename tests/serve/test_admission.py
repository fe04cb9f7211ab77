"""Admission's estimates: the margin learned from late answers expires and is capped; the
reserve kept for replies is a quantile of recent reply times, capped."""

from __future__ import annotations

import pytest

from ai_vmm.serve.admission import LatenessMargin, ReplyTimes, Ticket


def _ticket(rank: int = 0, timeout: float = 0.1, now: float = 100.0) -> Ticket:
    return Ticket("c", rank, now, now + timeout)


def test_the_margin_is_a_high_quantile_of_recent_lateness_per_rank() -> None:
    margin = LatenessMargin(window_s=2.0, quantile=0.95, least=8)
    for i in range(7):
        margin.observe(0, 0.010, now=100.0 + i * 0.01)
    assert margin.margin(_ticket(), now=100.1) == 0.0  # too few answers to say
    for i in range(13):
        margin.observe(0, 0.001 * i, now=100.1)
    assert margin.margin(_ticket(), now=100.2) == pytest.approx(0.012)  # the 95th percentile of 20
    assert margin.margin(_ticket(rank=1), now=100.2) == 0.0  # another class learned nothing
    early = LatenessMargin()
    for _ in range(10):
        early.observe(0, -0.05, now=100.0)
    assert early.margin(_ticket(), now=100.0) == 0.0  # early answers never shrink the estimate


def test_the_margin_is_capped_by_the_timeout_and_expires() -> None:
    margin = LatenessMargin(window_s=2.0)
    for _ in range(20):
        margin.observe(0, 0.5, now=100.0)  # a congested loop: half a second late
    # A quarter of a 100 ms timeout at most:
    assert margin.margin(_ticket(timeout=0.1), now=100.5) == pytest.approx(0.025)
    assert margin.margin(_ticket(timeout=10.0), now=100.5) == 0.5
    assert margin.margin(_ticket(timeout=10.0), cap=0.0, now=100.5) == 0.0  # late_margin = 0
    # A class that is refused teaches nothing more: the margin falls back to zero by itself.
    assert margin.margin(_ticket(timeout=10.0), now=102.5) == 0.0


def test_the_quantile_is_reused_for_a_moment_then_recomputed() -> None:
    margin = LatenessMargin(window_s=2.0)
    for _ in range(10):
        margin.observe(0, 0.010, now=100.0)
    assert margin.margin(_ticket(timeout=1.0), now=100.0) == pytest.approx(0.010)
    for _ in range(30):
        margin.observe(0, 0.040, now=100.01)
    # Asked again within REFRESH_S: the value computed a moment ago (no sort per request).
    assert margin.margin(_ticket(timeout=1.0), now=100.02) == pytest.approx(0.010)
    later = 100.0 + LatenessMargin.REFRESH_S + 0.01
    assert margin.margin(_ticket(timeout=1.0), now=later) == pytest.approx(0.040)


def test_the_reply_reserve_is_a_high_quantile_of_reply_times_capped_by_the_timeout() -> None:
    replies = ReplyTimes(window=100, quantile=0.95)
    assert replies.reserve(_ticket(), now=100.0) == 0.0  # nothing measured: no reserve
    for i in range(100):
        replies.observe(0.0001 * (i + 1))  # 0.1 .. 10 ms
    assert replies.reserve(_ticket(timeout=1.0), now=100.0) == pytest.approx(0.0096)
    # At most a tenth of the request's timeout: 5 ms of a 50 ms one.
    assert replies.reserve(_ticket(timeout=0.05), now=100.0) == pytest.approx(0.005)
    for _ in range(100):
        replies.observe(0.001)  # the window moves on
    assert replies.reserve(_ticket(timeout=1.0), now=100.0 + ReplyTimes.REFRESH_S + 0.01) == (
        pytest.approx(0.001)
    )
