async def test_health(node):
    status, body = await node.request("GET", "/health")
    assert status == 200 and body["status"] == "ok" and body["timestamp"].endswith("Z")
