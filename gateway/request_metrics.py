"""What every request costs the metrics: one call, `observe`, from gateway/errors.py's
error middleware (which every request passes already; no middleware of its own).

Latency is kept per (route template, status) in a histogram of persistence/latency.py,
the labelled child found by one dict lookup on (matched route, status); errors are
counted by their code. A scrape (gateway/metrics.py) reads it all through `stats()`.
"""

from __future__ import annotations

import time
from collections import Counter, deque
from collections.abc import Iterator

from aiohttp import web
from aiohttp.web_urldispatcher import AbstractRoute

from gateway.router import SegmentRouter
from persistence.latency import Histogram

UNMATCHED = "unmatched"  # the template of requests no route matched (404, 405)
RATE_WINDOW = 10.0  # seconds requests per second is averaged over


class RequestMetrics:
    def __init__(self) -> None:
        # (route or None for unmatched, status) -> its histogram, and its labels
        self._latency: dict[tuple[AbstractRoute | None, int], Histogram] = {}
        self._labels: dict[tuple[AbstractRoute | None, int], tuple[str, str, str]] = {}
        self._templates: dict[AbstractRoute, str] | None = None
        self.errors: Counter[str] = Counter()
        self.requests = 0
        self._samples: deque[tuple[float, int]] = deque([(time.monotonic(), 0)])

    def observe(
        self,
        request: web.Request,
        route: AbstractRoute,
        status: int,
        seconds: float,
        code: str | None,
    ) -> None:
        self.requests += 1
        key = (route, status)
        histogram = self._latency.get(key)
        if histogram is None:
            histogram = self._child(request, key)
        histogram.observe(seconds)
        if code is not None:
            self.errors[code] += 1

    def _child(self, request: web.Request, key: tuple[AbstractRoute | None, int]) -> Histogram:
        route, status = key
        if route is None or route.resource is None:  # a fresh SystemRoute each time
            key = (None, status)
            found = self._latency.get(key)
            if found is not None:
                return found
            labels = (request.method, UNMATCHED, str(status))
        else:
            if self._templates is None:
                self._templates = dict(_templates(request.app))
            template = self._templates.get(route, route.resource.canonical)
            labels = (route.method, template, str(status))
        histogram = self._latency[key] = Histogram()
        self._labels[key] = labels
        return histogram

    def latencies(self) -> Iterator[tuple[tuple[str, str, str], Histogram]]:
        """(method, route template, status) and its histogram, for every one seen."""
        for key, histogram in list(self._latency.items()):
            yield self._labels[key], histogram

    def rate(self) -> float:
        """Requests per second over about the last RATE_WINDOW seconds."""
        now, samples = time.monotonic(), self._samples
        if now - samples[-1][0] >= 1.0:
            samples.append((now, self.requests))
        while len(samples) > 1 and now - samples[1][0] >= RATE_WINDOW:
            samples.popleft()
        at, count = samples[0]
        return (self.requests - count) / (now - at) if now > at else 0.0

    def stats(self) -> dict[str, object]:
        return {
            "requests": self.requests,
            "requests_per_second": round(self.rate(), 3),
            "errors": dict(self.errors),
        }


def _templates(app: web.Application) -> Iterator[tuple[AbstractRoute, str]]:
    """Every route with the pattern it was registered under (HEAD included)."""
    for resource in app.router.resources():
        if isinstance(resource, SegmentRouter):
            yield from ((route, pattern) for pattern, route in resource.table())
        else:
            yield from ((route, resource.canonical) for route in resource)


REQUEST_METRICS = web.AppKey("request_metrics", RequestMetrics)


def observe(request: web.Request, status: int, seconds: float, code: str | None = None) -> None:
    """Count one answered request (`code`: its error code, if it failed)."""
    match = request.match_info
    match.current_app[REQUEST_METRICS].observe(request, match.route, status, seconds, code)
