"""GET /metrics: Prometheus text from the components' stats() and the request latencies
counted in the error middleware; behind the admin token unless --metrics-public."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest
from gateway_helpers import API, chain, conv_path, new_conversation, ok
from prometheus_client.parser import text_string_to_metric_families

if TYPE_CHECKING:
    from conftest import Node, NodeFactory

HOT = pytest.mark.parametrize("backend", ["embedded", "cassandra+redis"], indirect=True)
TOKEN = "metrics-token-of-the-tests-0123456789"
MESSAGE_ROUTE = "/api/v1/conversations/{conversation_id}/messages/{message_id}"


async def scrape(node: Node, headers: dict[str, str] | None = None) -> dict[str, Any]:
    """Every sample by (name, sorted labels)."""
    auth = {"Authorization": f"Bearer {TOKEN}"} if headers is None else headers
    async with node.session.get(node.base + "/metrics", headers=auth) as response:
        assert response.status == 200, await response.text()
        assert response.content_type == "text/plain"
        text = await response.text()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def requests_of(samples: dict[str, Any], route: str, status: str, method: str = "GET") -> float:
    labels = (("method", method), ("route", route), ("status", status))
    return samples.get(("canopy_request_duration_seconds_count", labels), 0.0)


@HOT
async def test_the_figures_parse_and_follow_what_was_written(start_node: NodeFactory) -> None:
    node = await start_node(admin_token=TOKEN, flush_interval=3600.0)
    cid, root = await new_conversation(node)
    await chain(node, cid, 2, root)
    samples = await scrape(node)
    assert samples[("canopy_hot_actors", ())] == 1
    assert samples[("canopy_hot_messages", ())] == 3
    assert samples[("canopy_unflushed_records", ())] == 3
    assert samples[("canopy_activations_total", ())] >= 0
    assert samples[("canopy_hot_bytes", ())] > 0 and samples[("canopy_unflushed_bytes", ())] > 0
    assert samples[("canopy_resident_memory_bytes", ())] > samples[("canopy_hot_bytes", ())]
    assert samples[("canopy_journal_append_duration_seconds_count", ())] >= 1
    assert ("canopy_flush_duration_seconds_count", ()) in samples
    assert samples[("canopy_forwarded_requests_total", ())] == 0  # a node alone
    assert ("canopy_lease_renewals_total", ()) not in samples  # no leases yet
    creations = requests_of(samples, f"{API}/conversations", "200", "POST")
    assert creations == 1


@HOT
async def test_a_request_counts_in_its_route_template_and_an_error_by_its_code(
    start_node: NodeFactory,
) -> None:
    node = await start_node(admin_token=TOKEN)
    cid, root = await new_conversation(node)
    before = await scrape(node)
    await ok(node, "GET", conv_path(cid, f"/messages/{root}"))
    missing = "6d1f3c1e-8a4b-4c55-9d2e-0f6a7b8c9d0e"
    status, body = await node.request("GET", conv_path(missing, f"/messages/{root}"))
    assert status == 404 and body["error"]["code"] == "not_found"
    status, _ = await node.request("GET", "/no/such/route")
    assert status == 404
    after = await scrape(node)
    assert requests_of(after, MESSAGE_ROUTE, "200") == requests_of(before, MESSAGE_ROUTE, "200") + 1
    assert requests_of(after, MESSAGE_ROUTE, "404") == requests_of(before, MESSAGE_ROUTE, "404") + 1
    assert requests_of(after, "unmatched", "404") == requests_of(before, "unmatched", "404") + 1
    errors = ("canopy_errors_total", (("code", "not_found"),))
    assert after[errors] == before.get(errors, 0) + 2


@pytest.mark.parametrize("backend", ["embedded"], indirect=True)
async def test_metrics_need_the_admin_token_unless_public(start_node: NodeFactory) -> None:
    private = await start_node(admin_token=TOKEN)
    for headers in ({}, {"Authorization": "Bearer wrong"}):
        status, body = await private.request("GET", "/metrics", headers=headers)
        assert status == 401 and body["error"]["code"] == "invalid_admin_token"
    public = await start_node(
        admin_token=TOKEN,
        metrics_public=True,
        data_dir=private.settings.data_dir.with_name("public"),
    )
    assert ("canopy_hot_actors", ()) in await scrape(public, headers={})
