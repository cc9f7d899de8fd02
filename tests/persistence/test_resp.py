"""The lean Redis connection (persistence/resp.py) against a real Redis, and against a
server that never answers: replies in order, errors in their place, a lost or silent
connection failing every pending command within its bound and connecting again."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator

import pytest
import redis
import uvloop
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeout

from persistence.resp import LARGE, LeanRedis, encode, encode_parts
from tests.services import REDIS_URL, require

KEY = "canopy:test:resp"


@pytest.fixture
async def lean() -> AsyncIterator[LeanRedis]:
    require("redis")
    connection = LeanRedis(REDIS_URL)
    await connection.execute([("DEL", KEY)])
    yield connection
    await connection.execute([("DEL", KEY)])
    connection.close()


def test_commands_encode_as_resp_arrays_of_bulk_strings() -> None:
    assert (
        encode(("SET", "k", 7, b"\x00v"))
        == b"*4\r\n$3\r\nSET\r\n$1\r\nk\r\n$1\r\n7\r\n$2\r\n\x00v\r\n"
    )
    # a list as well as a tuple (hiredis' packer takes tuples); text as UTF-8
    assert encode(["SET", "é", -3]) == b"*3\r\n$3\r\nSET\r\n$2\r\n\xc3\xa9\r\n$2\r\n-3\r\n"


def test_a_command_with_a_large_argument_leaves_it_uncopied_in_the_same_encoding() -> None:
    large = bytes(range(256)) * 100  # over LARGE
    command = ("EVALSHA", "f" * 40, 2, "é", 7, large, b"small", -1)
    parts = encode_parts(command)
    assert b"".join(parts) == encode(command)
    assert any(part is large for part in parts)
    assert encode_parts(("SET", "k", b"v" * LARGE)) == [encode(("SET", "k", b"v" * LARGE))]


async def test_large_arguments_arrive_whole_among_small_commands(lean: LeanRedis) -> None:
    large = bytes(range(256)) * 2_000  # 512 KB: more than one socket write's worth
    replies = await lean.execute(
        [("RPUSH", KEY, "a"), ("RPUSH", KEY, large), ("RPUSH", KEY, "c"), ("LRANGE", KEY, 0, -1)]
    )
    assert replies == [1, 2, 3, [b"a", large, b"c"]]


async def test_replies_come_back_in_order_with_errors_in_their_place(lean: LeanRedis) -> None:
    replies = await lean.execute(
        [
            ("RPUSH", KEY, "a"),
            ("INCR", KEY),  # the wrong type: an error reply, in its place
            ("RPUSH", KEY, "b"),
            ("EVALSHA", "0" * 40, 0),
            ("LRANGE", KEY, 0, -1),
        ]
    )
    assert replies[0] == 1 and replies[2] == 2
    assert isinstance(replies[1], ResponseError) and "WRONGTYPE" in str(replies[1])
    assert isinstance(replies[3], NoScriptError)
    assert replies[4] == [b"a", b"b"]


async def test_it_uses_the_urls_database(lean: LeanRedis) -> None:
    await lean.execute([("SET", KEY, "here")])
    with redis.Redis.from_url(REDIS_URL) as client:
        assert client.get(KEY) == b"here"


async def test_a_killed_connection_fails_its_commands_and_the_next_call_reconnects(
    lean: LeanRedis,
) -> None:
    [client_id] = await lean.execute([("CLIENT", "ID")])
    with redis.Redis.from_url(REDIS_URL) as client:
        client.client_kill_filter(_id=client_id)
    with pytest.raises(RedisConnectionError):
        await lean.execute([("PING",)])
    assert await lean.execute([("PING",)]) == [b"PONG"]
    [again] = await lean.execute([("CLIENT", "ID")])
    assert again != client_id


async def test_a_silent_server_times_out_every_pending_command() -> None:
    accepted: list[asyncio.StreamWriter] = []

    async def never_answer(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(writer)

    server = await asyncio.start_server(never_answer, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    lean = LeanRedis(f"redis://127.0.0.1:{port}", timeout=0.2)
    try:
        first = asyncio.ensure_future(lean.execute([("PING",)]))
        second = asyncio.ensure_future(lean.execute([("PING",), ("PING",)]))
        for pending in (first, second):
            with pytest.raises(RedisTimeout):
                await pending
        with pytest.raises(RedisTimeout):  # a fresh connection: silent again, bounded again
            await lean.execute([("PING",)])
        assert len(accepted) == 2
    finally:
        lean.close()
        for writer in accepted:
            writer.close()
        server.close()
        await server.wait_closed()


async def test_a_long_batch_answered_steadily_never_times_out() -> None:
    """The clock restarts with each reply: 4 replies 0.4 s apart outlast a 1 s bound."""

    served = asyncio.Event()

    async def answer_slowly(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            for _ in range(4):
                await reader.readuntil(b"PING\r\n")
            for _ in range(4):
                await asyncio.sleep(0.4)
                writer.write(b"+PONG\r\n")
            await reader.read()  # until the client closes
        finally:
            writer.close()
            served.set()

    server = await asyncio.start_server(answer_slowly, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    lean = LeanRedis(f"redis://127.0.0.1:{port}", timeout=1.0)
    try:
        assert await lean.execute([("PING",)] * 4) == [b"PONG"] * 4
    finally:
        lean.close()
        await served.wait()
        server.close()
        await server.wait_closed()


def test_a_reply_that_came_while_the_loop_was_busy_is_read_not_timed_out() -> None:
    """A callback of the poll phase sends a command and keeps the loop busy for a second;
    uvloop's next iteration runs due timers before it polls, so the 0.2 s bound is judged
    only after the reply waiting in the socket was read."""
    require("redis")

    async def scenario() -> object:
        loop = asyncio.get_running_loop()
        lean = LeanRedis(REDIS_URL, timeout=0.2)
        wake, waker = socket.socketpair()
        sent: asyncio.Future[asyncio.Future[object]] = loop.create_future()

        def busy() -> None:  # run by the poll phase: an I/O callback
            loop.remove_reader(wake)
            assert lean._protocol is not None
            [reply] = lean._protocol.send([("ECHO", "late")])
            time.sleep(1.0)  # Redis answers meanwhile
            sent.set_result(reply)

        try:
            await lean.execute([("PING",)])  # connected
            loop.add_reader(wake, busy)
            waker.send(b"!")
            return await (await sent)
        finally:
            lean.close()
            wake.close()
            waker.close()

    assert uvloop.run(scenario()) == b"late"


async def test_an_unreachable_redis_is_a_connection_error() -> None:
    probe = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = probe.sockets[0].getsockname()[1]
    probe.close()
    await probe.wait_closed()
    lean = LeanRedis(f"redis://127.0.0.1:{port}", timeout=0.5)
    with pytest.raises(RedisConnectionError):
        await lean.execute([("PING",)])


def test_it_runs_on_uvloop_as_the_node_does() -> None:
    """uvloop's transports are no asyncio.Transport subclasses."""
    require("redis")

    async def scenario() -> list[object]:
        lean = LeanRedis(REDIS_URL)
        try:
            return await lean.execute([("PING",), ("ECHO", "uv")])
        finally:
            lean.close()

    assert uvloop.run(scenario()) == [b"PONG", b"uv"]
