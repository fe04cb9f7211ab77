"""Admission's learned margin (``Lateness``): a quantile of how late answers came, per class."""

from __future__ import annotations

import pytest

from ai_vmm.serve.admission import Lateness


def test_margin_is_zero_until_enough_answers_were_seen() -> None:
    lateness = Lateness(min_samples=4)
    for _ in range(3):
        lateness.observe("gold", 0.2)
    assert lateness.margin("gold") == 0.0
    lateness.observe("gold", 0.2)
    assert lateness.margin("gold") == pytest.approx(0.2)


def test_margin_is_the_quantile_of_recent_errors_per_class_and_never_negative() -> None:
    lateness = Lateness(window=100, quantile=0.9, min_samples=10)
    for i in range(100):
        lateness.observe("free", i / 1000)  # 0 .. 99 ms late
        lateness.observe("gold", -0.05)  # always answered 50 ms early
    assert lateness.margin("free") == pytest.approx(0.090)
    assert lateness.margin("gold") == 0.0
    assert lateness.margin("unseen") == 0.0
    for _ in range(100):  # the window forgets: recent answers on time
        lateness.observe("free", 0.0)
    assert lateness.margin("free") == 0.0
