"""CPU per relayed request of gateway/relay.py, in one process, without a node around it.

    python -m bench.relay [--requests 4000]

A keep-alive client (bench/client.py) sends GETs and small POSTs, sequentially, to an
aiohttp server on TCP directly and to a low-level aiohttp server that relays each one to
it over its Unix socket (gateway/peer_http.py's pool, the relay forwarding and
`--workers` handover use). The process's CPU time over the run divided by the requests;
the difference is what the relay adds (the relaying server's own parse and answer
included: the floor of any relay).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import uvloop
from aiohttp import web

from bench.client import Connection, build_request
from bench.node import free_port
from gateway.peer_http import PeerPool
from gateway.relay import relay

ANSWER = b'{"message_id":"m","lineage":["a","b"],"text":"' + b"x" * 300 + b'"}'
APPEND = {"parent_message_id": "p", "role": "human", "content": {"type": "text", "text": "hi"}}


async def cpu_us_per_request(port: int, request: bytes, count: int) -> float:
    connection = await Connection.open(port)
    try:
        for _ in range(200):  # warm up
            await connection.fetch(request)
        started = time.process_time()
        for _ in range(count):
            await connection.fetch(request)
        return (time.process_time() - started) / count * 1e6
    finally:
        connection.close()


async def measure(count: int) -> None:
    async def owner(request: web.BaseRequest) -> web.StreamResponse:
        await request.read()
        return web.Response(body=ANSWER, content_type="application/json")

    upstream = web.ServerRunner(web.Server(owner))
    await upstream.setup()
    with tempfile.TemporaryDirectory() as directory:
        path = str(Path(directory) / "owner.sock")
        direct_port, relay_port = free_port(), free_port()
        await web.UnixSite(upstream, path).start()
        await web.TCPSite(upstream, "127.0.0.1", direct_port).start()
        async with PeerPool.unix(path) as pool:

            async def relaying(request: web.BaseRequest) -> web.StreamResponse:
                return await relay(request, pool, hop_header="X-Canopy-Hop")

            front = web.ServerRunner(web.Server(relaying))
            await front.setup()
            await web.TCPSite(front, "127.0.0.1", relay_port).start()
            for op, method, body in (("get", "GET", None), ("append", "POST", APPEND)):
                direct = await cpu_us_per_request(
                    direct_port, build_request(method, "/x", body, port=direct_port), count
                )
                relayed = await cpu_us_per_request(
                    relay_port, build_request(method, "/x", body, port=relay_port), count
                )
                print(f"{op}: direct {direct:.1f} µs CPU/request, relayed {relayed:.1f}, "
                      f"the relay adds {relayed - direct:.1f}")  # fmt: skip
            await front.cleanup()
    await upstream.cleanup()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=4000)
    args = parser.parse_args()
    uvloop.run(measure(args.requests))


if __name__ == "__main__":
    main()
