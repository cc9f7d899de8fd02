"""A data dir under operator mistakes, with real node processes: a second process on a live
node's directory, and a journal damaged before its tail."""

from __future__ import annotations

import asyncio
import signal
import sys
from collections.abc import Callable
from pathlib import Path

import aiohttp

from persistence.journal_file import DAMAGED, scan
from persistence.records import decode_record
from tests.processes import NodeProcess
from tests.processes import post_json as _post

HOLD = ("--flush-interval", "3600")  # nothing is flushed or trimmed: the journal holds it all


async def run_to_exit(*args: str) -> tuple[int, str]:
    """Run `canopy ARGS` to its end: exit code and everything it printed."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway.cli", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    async with asyncio.timeout(60):
        output, _ = await process.communicate()
    assert process.returncode is not None
    return process.returncode, output.decode()


def journal_files(data_dir: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((data_dir / "journal").glob("*.log"))}


async def chat(session: aiohttp.ClientSession, base: str, count: int) -> tuple[str, list[str]]:
    """A conversation with a chain of `count` messages: its id and the message ids."""
    created = await _post(
        session, f"{base}/api/v1/conversations", {"title": "t", "created_by": "u"}
    )
    cid = created["conversation_id"]
    async with session.get(f"{base}/api/v1/conversations/{cid}/tree") as response:
        parent = (await response.json())["messages"][0]["message_id"]
    said = []
    for i in range(count):
        body = {"parent_message_id": parent, "role": "human", "created_by": "u",
                "content": {"type": "text", "text": f"message {i}"}}  # fmt: skip
        parent = (await _post(session, f"{base}/api/v1/conversations/{cid}/messages", body))[
            "message_id"
        ]
        said.append(parent)
    return cid, said


async def tree_ids(session: aiohttp.ClientSession, base: str, cid: str) -> list[str]:
    async with session.get(f"{base}/api/v1/conversations/{cid}/tree") as response:
        assert response.status == 200
        return [m["message_id"] for m in (await response.json())["messages"]]


async def test_a_second_process_on_a_live_data_dir_refuses_and_touches_nothing(
    node_process: Callable[..., NodeProcess], unused_tcp_port_factory: Callable[[], int]
) -> None:
    first = node_process(*HOLD)
    await first.start()
    async with aiohttp.ClientSession() as session:
        cid, said = await chat(session, first.base, 50)
        before = journal_files(first.data_dir)
        assert before
        for command in ("serve", "migrate"):
            code, output = await run_to_exit(
                command, "--data-dir", str(first.data_dir), "--port",
                str(unused_tcp_port_factory()), "--scylla-nodes", "127.0.0.1:1",
            )  # fmt: skip
            assert code == 2, output
            assert "in use by another canopy process" in output
            assert journal_files(first.data_dir) == before
        cid2, said2 = await chat(session, first.base, 5)  # the first node still serves
        assert await first.stop(signal.SIGKILL) == -signal.SIGKILL

        second = node_process()
        await second.start()
        assert (await tree_ids(session, second.base, cid))[1:] == said
        assert (await tree_ids(session, second.base, cid2))[1:] == said2
        assert await second.stop(signal.SIGTERM) == 0


async def test_a_damaged_journal_refuses_to_start_until_told_and_then_loses_nothing_intact(
    node_process: Callable[..., NodeProcess],
) -> None:
    first = node_process(*HOLD)
    await first.start()
    async with aiohttp.ClientSession() as session:
        chats = [await chat(session, first.base, 20) for _ in range(4)]
        assert await first.stop(signal.SIGKILL) == -signal.SIGKILL
        (name, data), = journal_files(first.data_dir).items()  # fmt: skip
        # Damage the 10th message of the second conversation, mid-segment.
        hurt, hurt_said = chats[1]
        offset = next(
            offset for offset, payload in scan(data, last=True).frames
            if (r := decode_record(payload)).conversation_id == hurt and r.seq == 11
        )  # fmt: skip
        damaged = bytearray(data)
        damaged[offset + 30] ^= 0x55
        (first.data_dir / "journal" / name).write_bytes(bytes(damaged))

        code, output = await run_to_exit("serve", "--data-dir", str(first.data_dir), "--port", "1")
        assert code == 2, output
        assert f"{name} bytes {offset}-" in output and "--recover-damaged" in output
        assert journal_files(first.data_dir) == {name: bytes(damaged)}

        second = node_process("--recover-damaged")
        await second.start()
        for cid, said in chats:
            served = await tree_ids(session, second.base, cid)
            assert served[1:] == (said[:9] if cid == hurt else said)
            for message_id in served:
                for suffix in ("", "/lineage", "/children"):
                    path = f"/api/v1/conversations/{cid}/messages/{message_id}{suffix}"
                    async with session.get(second.base + path) as response:
                        assert response.status == 200, path
        assert await second.stop(signal.SIGTERM) == 0
    aside = first.data_dir / "journal" / DAMAGED
    assert (aside / name).read_bytes() == bytes(damaged)
    kept = [
        decode_record(p) for _, p in scan((aside / "set-aside.log").read_bytes(), last=False).frames
    ]
    assert [(r.conversation_id, r.seq) for r in kept] == [(hurt, seq) for seq in range(12, 22)]
