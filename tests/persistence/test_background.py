"""The helpers background loops survive their failures with."""

from __future__ import annotations

import logging

import pytest

from persistence.background import Backoff, Throttled


def test_throttled_logs_one_line_per_interval_and_counts_what_it_held(
    caplog: pytest.LogCaptureFixture,
) -> None:
    limited = Throttled(logging.getLogger("test"), every=3600)
    with caplog.at_level(logging.WARNING):
        for i in range(5):
            limited.warning("a", "line %d", i)
        limited.warning("b", "other %d", 0)  # keys are throttled apart
        limited._last["a"] = -1e9  # the interval is over
        limited.warning("a", "line %d", 5)
    assert [r.getMessage() for r in caplog.records] == [
        "line 0",
        "other 0",
        "line 5 (4 more like it since the last report)",
    ]


def test_backoff_doubles_up_to_its_maximum_and_resets() -> None:
    backoff = Backoff(0.1, 1.0)
    delays = [backoff.failed() for _ in range(8)]
    ceilings = [min(1.0, 0.1 * 2**n) for n in range(1, 9)]  # jittered down to half
    assert all(c / 2 <= d <= c for c, d in zip(ceilings, delays, strict=True))
    backoff.succeeded()
    assert backoff.delay() == 0.1
