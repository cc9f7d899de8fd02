"""GET /metrics: the node's figures in Prometheus text (prometheus-client).

Nothing is counted here: a scrape reads every component's stats() (gateway/node_stats.py)
and the request latencies (gateway/request_metrics.py) through one custom collector, on
a registry of the app's own (tests run several apps in one process; the global one would
mix them). The route needs the admin token unless `--metrics-public`.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from gateway.admin_token import ADMIN, require_admin
from gateway.node_stats import Stats, node_stats
from gateway.openapi import describe
from gateway.request_metrics import REQUEST_METRICS

routes = web.RouteTableDef()
PREFIX = "canopy_"

# (section, key, metric, help): gauges and counters read straight from stats()
GAUGES = (
    ("registry", "hot_actors", "hot_actors", "Conversations hot in memory"),
    ("registry", "hot_messages", "hot_messages", "Messages of the hot conversations"),
    ("registry", "hot_bytes", "hot_bytes", "What the hot conversations cost (budget model)"),
    ("registry", "max_hot_bytes", "max_hot_bytes", "The memory budget of hot conversations"),
    ("process", "rss_bytes", "resident_memory_bytes", "The node process's resident memory"),
    ("flusher", "unflushed_bytes", "unflushed_bytes", "Bytes written, not yet in the store"),
    ("flusher", "unflushed_records", "unflushed_records", "Journal records not yet stored"),
    ("flusher", "dirty_conversations", "dirty_conversations", "Conversations with unflushed data"),
    ("directory", "leases_held", "leases_held", "Conversation leases this node holds"),
    ("membership", "live_nodes", "live_nodes", "Live nodes this node sees"),
    ("connections", "connections", "connections", "Open client connections"),
    ("responses", "in_flight_bytes", "response_bytes_in_flight", "Large responses being sent"),
    ("busy_poll", "window_us", "busy_poll_window_us", "How long the loop polls after I/O now"),
)
COUNTERS = (
    ("registry", "activations", "activations", "Conversations activated"),
    ("registry", "passivations", "passivations", "Conversations passivated"),
    ("flusher", "batches_written", "flushed_batches", "Store writes of the flusher"),
    ("flusher", "messages_written", "flushed_messages", "Messages written to the store"),
    ("connections", "refused", "connections_refused", "Connections refused at the cap"),
    ("busy_poll", "polls", "busy_polls", "Times the loop polled after I/O instead of sleeping"),
    ("rate_limiter", "limited", "rate_limited_requests", "Requests refused by the rate limit"),
    ("retention", "swept", "expired_conversations", "Expired conversations removed"),
    # Cluster figures (a node alone has no leases: absent there).
    # Leases are valid while their node's heartbeat is: a heartbeat renews them all.
    ("membership", "heartbeats", "lease_renewals", "Heartbeats (each renews every lease held)"),
    ("membership", "heartbeat_failures", "lease_renewal_failures", "Heartbeats that failed"),
    ("directory", "lost_leases", "lease_losses", "Leases lost to another node"),
    ("directory", "acquisitions", "lease_acquisitions", "Leases acquired"),
    ("directory", "takeovers", "lease_takeovers", "Leases taken from a dead node"),
    ("forwarder", "forward_failures", "forward_failures", "Forwarded requests not answered"),
    ("forwarder", "held_elsewhere", "held_elsewhere", "Requests sent on to a new lease holder"),
    ("workers", "handed_over", "handed_over_requests", "Requests handed to another worker"),
    ("workers", "unreachable", "worker_unreachable", "Requests another worker did not answer"),
    ("workers", "connections_opened", "worker_connections", "Connections opened to other workers"),
    ("workers", "connections_moved", "moved_connections", "Connections moved to their owner"),
    ("workers", "connections_adopted", "adopted_connections", "Client connections moved here"),
)
HISTOGRAMS = (
    ("flusher", "flush_seconds", "flush_duration_seconds", "One conversation's store write"),
    ("flusher", "batch_records", "flush_batch_records", "Journal records in one store write"),
    ("journal", "append_seconds", "journal_append_duration_seconds", "One journal send"),
)


class NodeCollector(Collector):
    """Reads the app's stats() at scrape time: nothing costs a request."""

    def __init__(self, app: web.Application) -> None:
        self._app = app

    def collect(self) -> Iterator[Metric]:
        stats = node_stats(self._app)
        for section, key, name, about in GAUGES:
            if key in stats.get(section, {}):
                yield GaugeMetricFamily(PREFIX + name, about, value=stats[section][key])
        for section, key, name, about in COUNTERS:
            if key in stats.get(section, {}):
                yield CounterMetricFamily(PREFIX + name, about, value=stats[section][key])
        forwarded = stats.get("forwarder", {}).get("forwarded", 0)  # 0 on a node alone
        yield CounterMetricFamily(
            PREFIX + "forwarded_requests", "Requests forwarded to their owner", value=forwarded
        )
        lag = stats.get("flusher", {}).get("lag_ms")
        if lag is not None:
            yield GaugeMetricFamily(
                PREFIX + "flush_lag_seconds", "Age of the oldest unflushed change", lag / 1000
            )
        for section, key, name, about in HISTOGRAMS:
            snapshot = stats.get(section, {}).get(key)
            if snapshot is not None:
                family = HistogramMetricFamily(PREFIX + name, about)
                family.add_metric([], *_buckets(snapshot))
                yield family
        yield from self._requests(stats)

    def _requests(self, stats: Stats) -> Iterator[Metric]:
        latency = HistogramMetricFamily(
            PREFIX + "request_duration_seconds",
            "Request latency by route template and status",
            labels=("method", "route", "status"),
        )
        for labels, histogram in self._app[REQUEST_METRICS].latencies():
            latency.add_metric(list(labels), *_buckets(histogram.snapshot()))
        yield latency
        errors = CounterMetricFamily(PREFIX + "errors", "Error responses by code", labels=("code",))
        for code, count in stats["requests"]["errors"].items():
            errors.add_metric([code], count)
        yield errors


def _buckets(snapshot: Mapping[str, Any]) -> tuple[list[tuple[str, float]], float]:
    bounds = [str(bound) for bound in snapshot["bounds"]] + ["+Inf"]
    return list(zip(bounds, snapshot["cumulative"], strict=True)), snapshot["sum"]


METRICS_REGISTRY = web.AppKey("metrics_registry", CollectorRegistry)


def add_metrics(app: web.Application) -> None:
    registry = app[METRICS_REGISTRY] = CollectorRegistry(auto_describe=False)
    registry.register(NodeCollector(app))


@routes.get("/metrics")
@describe("The node's figures in Prometheus text (admin token unless --metrics-public)",
          response=str, media="text/plain")  # fmt: skip
async def metrics(request: web.Request) -> web.Response:
    if not request.app[ADMIN].metrics_public:
        require_admin(request)
    body = generate_latest(request.app[METRICS_REGISTRY])
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})
