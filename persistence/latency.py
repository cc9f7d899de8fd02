"""A fixed-bucket histogram cheap enough for every request: one bisect and two adds.

prometheus-client's own Histogram takes a lock per bucket and per sum on each
observation (docs/decisions.md has the figures); components keep one of these and
show it in their stats(), and gateway/metrics.py turns it into Prometheus text at
scrape time.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Sequence

# Seconds: from a loopback Redis round trip to a stalled store.
LATENCY_BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5, 5.0, 10.0,
)  # fmt: skip
SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096)  # records in one batch


class Histogram:
    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: Sequence[float] = LATENCY_BUCKETS) -> None:
        self.bounds = tuple(bounds)
        self.counts = [0] * (len(self.bounds) + 1)  # the last one: above every bound
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value

    @property
    def count(self) -> int:
        return sum(self.counts)

    def snapshot(self) -> dict[str, object]:
        """Cumulative counts by upper bound (Prometheus' `le`), the sum and the count."""
        cumulative: list[int] = []
        total = 0
        for count in self.counts:
            total += count
            cumulative.append(total)
        return {"bounds": list(self.bounds), "cumulative": cumulative, "sum": self.sum,
                "count": total}  # fmt: skip
