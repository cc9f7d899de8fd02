"""The Redis journal: one Redis Stream per conversation, fenced by an ownership epoch.

Each record is an entry `{seq}-1` in the conversation's stream. Appends go through a
Lua script that checks the caller's epoch against the conversation's epoch key and
adds the entry atomically, so a node that lost ownership can never append (fencing).
A record over `BESIDE` bytes (a fork's copy of 1,000 messages is ~350 KB) goes beside
the stream: an HSET into the conversation's blob hash, in the same write just ahead of
the script, whose entry then names the blob's field (`b`) instead of carrying the record
(`r`). Redis spends ~0.65 ms turning one 350 KB script argument into Lua strings and
back, its one thread blocked for every node; a plain HSET of it takes ~20 µs there
(docs/decisions.md). The script refuses an entry whose blob is missing, removes the
blobs of a call it fences, and a trim removes the blobs of the entries it removes.
Appends made in one event-loop tick are sent in one pipeline (group commit), a
conversation's records of the tick in one script call. Trimming
removes entries up to the flushed seq and deletes an emptied stream.

Scripts run by EVALSHA, loaded again only when Redis answers NOSCRIPT (a restart, a
SCRIPT FLUSH). redis-py's `Script` asks SCRIPT EXISTS before every pipeline that runs
one: a second round trip on every journal append (p50 184 -> 110 µs without it). The
script calls, their blobs and an activation's epoch INCR go over the pool's lean channel
(persistence/redis_pool.py), the reads over its redis-py client. Each script's keys
share one hash tag (persistence/redis_keys.py), so on a Redis Cluster each call runs on
one master.

The journal never closes the pool's client: the pool closes after its users. Closing
the journal refuses new appends, then sends what is queued and waits for every send in
flight (each appender hears its outcome).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import logging
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

from redis.exceptions import NoScriptError, RedisError, ResponseError

from persistence import journal_migration, redis_keys
from persistence.background import Throttled
from persistence.journal import Entry, JournalError, OutcomeUnknown
from persistence.latency import Histogram
from persistence.redis_pool import RedisPool, RedisSettings
from persistence.resp import checked

log = logging.getLogger(__name__)
throttled = Throttled(log)

BESIDE = 16 * 1024  # bytes: a record larger than this goes in the blob hash (see above)
RECORD, BLOB = "r", "b"  # an entry's field: the record itself, or its blob's field name

# KEYS: stream, epoch, shard's journaled set, blob hash. ARGV: epoch, conversation id,
# then (seq, field, value) for each record in seq order: field `r` carries the record,
# `b` names the blob hash field the HSET ahead of this call put it in.
_APPEND = """
if redis.call('GET', KEYS[2]) ~= ARGV[1] then
  for i = 3, #ARGV, 3 do
    if ARGV[i + 1] == 'b' then redis.call('HDEL', KEYS[4], ARGV[i + 2]) end
  end
  return redis.error_reply('FENCED epoch ' .. ARGV[1] .. ' is not the owner')
end
for i = 3, #ARGV, 3 do
  if ARGV[i + 1] == 'b' and redis.call('HEXISTS', KEYS[4], ARGV[i + 2]) == 0 then
    return redis.error_reply('NOBLOB the record of seq ' .. ARGV[i] .. ' did not arrive')
  end
end
for i = 3, #ARGV, 3 do
  redis.call('XADD', KEYS[1], ARGV[i] .. '-1', ARGV[i + 1], ARGV[i + 2])
end
redis.call('SADD', KEYS[3], ARGV[2])
return 1
"""

# KEYS: stream, shard's journaled set, blob hash. ARGV: the first entry id kept
# ("{seq}-0"), conversation id. Blob fields are "{seq}:{epoch}": only those below the
# kept seq go. Never the whole hash: an append's HSET may have landed while its script
# call has not (Redis reads a large argument on its own, serving others meanwhile), and
# a hash whose last field goes is gone anyway.
_TRIM = """
redis.call('XTRIM', KEYS[1], 'MINID', ARGV[1])
if redis.call('XLEN', KEYS[1]) == 0 then
  redis.call('DEL', KEYS[1])
  redis.call('SREM', KEYS[2], ARGV[2])
end
if redis.call('EXISTS', KEYS[3]) == 1 then
  local kept = tonumber(string.match(ARGV[1], '^%d+'))
  for _, field in ipairs(redis.call('HKEYS', KEYS[3])) do
    if tonumber(string.match(field, '^%d+')) < kept then redis.call('HDEL', KEYS[3], field) end
  end
end
return 1
"""

_SET_ASIDE = """
if redis.call('SADD', KEYS[2], ARGV[1]) == 1 then
  redis.call('XADD', KEYS[1], '*', 'origin', ARGV[1], 'reason', ARGV[2], 'r', ARGV[3])
end
return 1
"""


RECORD_KEY, BLOB_KEY = RECORD.encode(), BLOB.encode()  # as XRANGE names the fields
TAIL_READS = 5  # reads of a tail whose blobs a trim kept taking (each trim needs a flush)

Call = tuple[Sequence[str], Sequence[str | int | bytes]]  # one script run: keys, args
Command = tuple[str | int | bytes, ...]  # a plain command sent ahead of the script calls
# conversation, seq, record, the epoch it was appended under (None: not acquired), ack
_Queued = tuple[str, int, bytes, int | None, "asyncio.Future[None]"]


class Fenced(JournalError):
    """Another node activated the conversation since this node did."""


@functools.cache
def _sha(script: str) -> str:
    return hashlib.sha1(script.encode()).hexdigest()  # the name Redis caches it by


class RedisJournal:
    """Journal backend over Redis Streams (see module docstring)."""

    def __init__(
        self,
        pool: RedisPool,
        *,
        close_timeout: float = 3.0,
        replays: Callable[[str], bool] | None = None,
    ) -> None:
        self._pool = pool
        # which journaled conversations `replay` takes (one of --workers N: those placed
        # on it; the others are its siblings', never acquired here); None: every one
        self._replays = replays
        self._client = pool.client
        self._lean = pool.lean  # the script calls: the hot path
        self._close_timeout = close_timeout
        self._closed = False
        self._epochs: dict[str, int] = {}
        self._fenced_watchers: list[Callable[[str], None]] = []
        self._batch: list[_Queued] = []
        self._scheduled: asyncio.Handle | None = None  # the tick's send of `_batch`
        self._sends: set[asyncio.Task[None]] = set()  # owned: awaited on close
        self._sending = asyncio.Lock()  # batches go out in order, one at a time
        # A batch written at once (`_send_now`), its replies not all in: until they are,
        # every other send waits (it is the one at a time the lock would have let through).
        self._in_flight: asyncio.Future[None] | None = None
        self._in_flight_batch: list[_Queued] = []
        self.set_aside_records = 0
        self.sends = 0  # script runs of appends, and the records they carried
        self.records_sent = 0
        self.records_beside = 0  # of those, sent as blobs beside the stream
        self.append_seconds = Histogram()  # one send: the script calls of a tick's records

    async def __aenter__(self) -> RedisJournal:
        try:
            for script in (_APPEND, _TRIM, _SET_ASIDE):
                await self._client.script_load(script)
            if not self._pool.cluster:  # an older version ran on a single Redis only
                await journal_migration.migrate(self._client)
        except RedisError as exc:
            raise JournalError(f"redis unavailable: {exc}") from exc
        return self

    async def __aexit__(self, *exc: object) -> None:
        """Refuse new appends, send what is queued and wait for every send in flight,
        within `close_timeout`: a send still unfinished then is cancelled and its
        appenders fail (never acked). The client stays open: it is the pool's."""
        self._closed = True
        if self._scheduled is not None:
            self._scheduled.cancel()
            self._send_batch()
        waits: set[asyncio.Future[None]] = set(self._sends)
        if self._in_flight is not None:
            waits.add(self._in_flight)
        if waits:
            _, late = await asyncio.wait(waits, timeout=self._close_timeout)
            for task in late:
                task.cancel()
            await asyncio.gather(*late, return_exceptions=True)
            _fail(self._in_flight_batch, "journal closed before the append")
            if late:
                log.warning("redis journal closed with %d sends cut short", len(late))
        log.info("redis journal closed: %d records in %d sends", self.records_sent, self.sends)

    async def acquire(self, conversation_id: str) -> None:
        """Become the conversation's owner: appends from any earlier owner are refused."""
        try:  # over the lean channel: every creation (a fork's too) waits for it
            [epoch] = await self._lean.execute([("INCR", redis_keys.epoch(conversation_id))])
        except RedisError as exc:
            raise JournalError(f"redis unavailable: {exc}") from exc
        if isinstance(epoch, Exception):
            raise JournalError(f"redis: {epoch}")
        self._epochs[conversation_id] = int(epoch)

    def own(self, conversation_id: str, epoch: int) -> None:
        """Append under `epoch`, which the caller took by incrementing the conversation's
        epoch key (a cluster lease's script, engine/directory_redis.py): `acquire` without
        a round trip of its own."""
        self._epochs[conversation_id] = epoch

    def release(self, conversation_id: str) -> None:
        self._epochs.pop(conversation_id, None)

    def on_fenced(self, watcher: Callable[[str], None]) -> None:
        """Call `watcher(conversation id)` when Redis refuses an append as FENCED: another
        owner incremented the epoch (engine/directory_redis.py marks it lost)."""
        self._fenced_watchers.append(watcher)

    def epoch(self, conversation_id: str) -> int:
        return self._epochs.get(conversation_id, 0)

    def append(self, conversation_id: str, seq: int, payload: bytes) -> asyncio.Future[None]:
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        if self._closed:  # no send may start once close has waited for the last one
            future.set_exception(JournalError("journal closed before the append"))
            return future
        if not self._batch:
            self._scheduled = loop.call_soon(self._send_batch)
        # Its epoch now, not when the batch is sent: a batch queued behind another send is
        # prepared late, maybe after the conversation was lost and taken again here, and
        # under the new epoch the old actor's record would land among the new one's.
        epoch = self._epochs.get(conversation_id)
        self._batch.append((conversation_id, seq, payload, epoch, future))
        return future

    def _send_batch(self) -> None:
        batch, self._batch, self._scheduled = self._batch, [], None
        if not batch:
            return
        prepared = None
        if not self._sends and self._in_flight is None:  # the lock is only held by a send
            prepared = self._prepare(batch)
            if not prepared.calls:
                return  # every appender heard already (not acquired, or gone)
            if self._send_now(prepared):
                return
        # Behind another send, the batch is made ready when its turn comes (an appender
        # that stops waiting meanwhile, or a conversation released, is left out).
        task = asyncio.create_task(self._send(batch, prepared), name="redis-journal-send")
        self._sends.add(task)
        task.add_done_callback(self._sends.discard)

    def _prepare(self, batch: list[_Queued]) -> _Prepared:
        """One script call per conversation for all its records in the batch: they land
        together or not at all (a script runs atomically)."""
        grouped: dict[str, list[_Queued]] = {}
        for queued in batch:
            conversation_id, _, _, epoch, future = queued
            if future.done():  # its appender stopped waiting before it was sent
                continue
            if epoch is None or self._epochs.get(conversation_id) != epoch:
                future.set_exception(Fenced(f"conversation {conversation_id} is not acquired"
                                            " (or was released since the append)"))  # fmt: skip
                continue
            grouped.setdefault(conversation_id, []).append(queued)
        calls: list[Call] = []
        beside: list[Command] = []  # the blobs' HSETs, sent just ahead of the script calls
        for conversation_id, records in grouped.items():
            keys = append_keys(conversation_id)
            blobs = keys[3]
            epoch = self._epochs[conversation_id]
            args: list[str | int | bytes] = [epoch, conversation_id]
            for _, seq, payload, _, _ in records:
                if len(payload) > BESIDE:
                    field = f"{seq}:{epoch}"  # an older owner's blob of this seq is another
                    beside.append(("HSET", blobs, field, payload))
                    args += (seq, BLOB, field)
                else:
                    args += (seq, RECORD, payload)
            calls.append((keys, args))
        self.sends += len(calls)
        self.records_sent += sum(len(records) for records in grouped.values())
        self.records_beside += len(beside)
        return _Prepared(batch, grouped, calls, beside)

    def _send_now(self, prepared: _Prepared) -> bool:
        """Write the batch at once when nothing else is being sent and the connection is
        up, its replies settled by a callback: no task, no lock, and two event-loop
        passes fewer for a lone append (docs/decisions.md). False: send it by a task."""
        commands = [*prepared.beside, *_evalshas(_APPEND, prepared.calls)]
        replies = self._lean.send_now(commands)
        if replies is None:
            return False
        in_flight = self._in_flight = asyncio.get_running_loop().create_future()
        self._in_flight_batch = prepared.batch
        started = time.perf_counter()

        def replied(_: object) -> None:
            handed_over = False
            try:
                error = next((e for r in replies if (e := r.exception()) is not None), None)
                if error is not None:
                    self._settle(prepared, error, started)
                    return
                results = [reply.result() for reply in replies][len(prepared.beside) :]
                if any(isinstance(result, NoScriptError) for result in results):
                    # Redis forgot the script: load it and send those again, in their
                    # place (no other send starts until this one is done).
                    task = asyncio.create_task(self._resend(prepared, results, started, in_flight))
                    self._sends.add(task)
                    task.add_done_callback(self._sends.discard)
                    handed_over = True
                    return
                self._settle(prepared, results, started)
            finally:  # whatever raised, no appender and no later send waits for ever
                if not handed_over:
                    _fail(prepared.batch, "journal send failed")
                    self._done_in_flight(in_flight)

        replies[-1].add_done_callback(replied)  # replies come in order: the last is the last
        return True

    async def _resend(
        self,
        prepared: _Prepared,
        results: list[Any],
        started: float,
        in_flight: asyncio.Future[None],
    ) -> None:
        try:
            try:
                await self._retry_missing(_APPEND, prepared.calls, results)
            except Exception as exc:  # noqa: BLE001 - appenders must hear of any failure
                self._settle(prepared, exc, started)
                return
            self._settle(prepared, results, started)
        finally:
            _fail(prepared.batch, "journal closed before the append")  # cancelled by close
            self._done_in_flight(in_flight)

    def _done_in_flight(self, in_flight: asyncio.Future[None]) -> None:
        if not in_flight.done():
            in_flight.set_result(None)
        if self._in_flight is in_flight:
            self._in_flight, self._in_flight_batch = None, []

    async def _send(self, batch: list[_Queued], prepared: _Prepared | None) -> None:
        try:
            async with self._sending:
                while self._in_flight is not None:  # a batch written at once goes first
                    await asyncio.shield(self._in_flight)
                if prepared is None:
                    prepared = self._prepare(batch)
                started = time.perf_counter()
                try:
                    results = await self._run(_APPEND, prepared.calls, prepared.beside)
                except Exception as exc:  # noqa: BLE001 - appenders must hear of any failure
                    self._settle(prepared, exc, started)
                    return
                self._settle(prepared, results, started)
        finally:  # cancelled by close: its appenders hear it, none waits for ever
            _fail(batch, "journal closed before the append")

    def _settle(
        self, prepared: _Prepared, outcome: list[Any] | BaseException, started: float
    ) -> None:
        """Each appender hears its conversation's result; all of them an exception raised
        by the send as a whole."""
        if isinstance(outcome, BaseException):
            throttled.warning("send", "journal append to redis failed: %r", outcome)
            _fail(prepared.batch, f"redis unavailable: {outcome}")
            return
        self.append_seconds.observe(time.perf_counter() - started)
        for (conversation_id, records), result in zip(
            prepared.grouped.items(), outcome, strict=True
        ):
            if isinstance(result, ResponseError) and str(result).startswith("FENCED"):
                for watcher in self._fenced_watchers:
                    try:
                        watcher(conversation_id)
                    except Exception:  # noqa: BLE001 - the appenders must still hear
                        log.exception("a fenced watcher failed for %s", conversation_id)
            for *_, future in records:
                if future.done():  # its appender stopped waiting meanwhile
                    continue
                if isinstance(result, ResponseError):
                    kind = Fenced if str(result).startswith("FENCED") else JournalError
                    future.set_exception(kind(str(result)))
                elif isinstance(result, Exception):
                    future.set_exception(JournalError(f"redis: {result}"))
                else:
                    future.set_result(None)

    async def replay(self) -> list[Entry]:
        try:
            payloads: list[Entry] = []
            for conversation_id in await self.journaled():
                if self._replays is not None and not self._replays(conversation_id):
                    continue
                await self.acquire(conversation_id)
                payloads += await self.tail(conversation_id, 0)
        except RedisError as exc:
            raise JournalError(f"redis unavailable: {exc}") from exc
        return payloads

    async def journaled(self) -> list[str]:
        """Every conversation whose journal stream is not empty, sorted: the shards'
        sets, read in one batch."""
        sets = await self._lean.execute(
            [("SMEMBERS", redis_keys.journaled(n)) for n in range(redis_keys.SHARDS)]
        )
        failed = next((s for s in sets if isinstance(s, Exception)), None)
        if failed is not None:
            raise JournalError(f"redis: {failed}")
        return sorted(raw.decode() for members in sets for raw in members)

    async def tail(self, conversation_id: str, after_seq: int) -> list[Entry]:
        """The records after `after_seq`, in order, those kept beside the stream read back.

        A blob read after its entry is gone only if a trim took both meanwhile (it
        removes them in one script, and only once they are stored): the stream is then
        read again, without it. One missing again while its entry stays is lost (an
        evicting Redis): its record comes back empty, so replay sets it aside."""
        stream = redis_keys.journal(conversation_id)
        beside = redis_keys.journal_blobs(conversation_id)
        missing_before: set[bytes] = set()
        try:  # over the lean channel: the flusher process reads a tail every write
            for _ in range(TAIL_READS):
                [entries] = checked(
                    await self._lean.execute([("XRANGE", stream, f"{after_seq + 1}-0", "+")])
                )
                # Each entry has one field, `r` or `b` (`_APPEND`): no dict per entry (a
                # flusher process reads every record here; 0.65 -> 0.15 µs an entry).
                read = [
                    (f"{stream} {at.decode()}", flat[0], flat[1]) for at, flat in entries if flat
                ]
                named = [value for _, field, value in read if field == BLOB_KEY]
                blobs: dict[bytes, bytes | None] = {}
                if named:
                    [found] = checked(await self._lean.execute([("HMGET", beside, *named)]))
                    blobs = dict(zip(named, cast(list[bytes | None], found), strict=True))
                missing = {name for name, blob in blobs.items() if blob is None}
                if missing and missing <= missing_before:  # twice, entries kept: no trim
                    log.error("journal of %s: blobs %s are gone (evicted?): their records are "
                              "set aside", conversation_id, sorted(missing))  # fmt: skip
                if not missing or missing <= missing_before:
                    return [
                        Entry(_record(field, value, blobs), origin) for origin, field, value in read
                    ]
                missing_before = missing
        except RedisError as exc:
            raise JournalError(f"redis unavailable: {exc}") from exc
        raise JournalError(f"the journal of {conversation_id} kept changing under its read")

    async def set_aside(self, entry: Entry, reason: str) -> None:
        """Copy the record to the set-aside stream, once per record however often replay
        meets it. It stays in its conversation's stream, so activations keep numbering
        new records past it, until a trim past its seq takes it out."""
        keys = [redis_keys.SET_ASIDE, redis_keys.SET_ASIDE_SEEN]
        try:
            [result] = await self._run(_SET_ASIDE, [(keys, [entry.origin, reason, entry.payload])])
        except RedisError as exc:
            raise JournalError(f"redis unavailable: {exc}") from exc
        if isinstance(result, Exception):
            raise JournalError(f"redis: {result}")
        self.set_aside_records += 1
        log.error("journal record at %s set aside in %s: %s", entry.origin, keys[0], reason)

    def recovered(self) -> None:
        """Nothing to release: trims are per conversation, up to the seq it has stored."""

    def stats(self) -> dict[str, object]:
        return {
            "kind": "redis",
            "owned": len(self._epochs),
            "queued": len(self._batch),
            "set_aside_records": self.set_aside_records,
            "sends": self.sends,
            "records_sent": self.records_sent,
            "records_beside": self.records_beside,
            "append_seconds": self.append_seconds.snapshot(),
        }

    async def mark(self) -> object:
        return None  # trimming is per conversation, by flushed seq

    async def trim(self, mark: object, flushed: Mapping[str, int]) -> None:
        calls: list[Call] = [
            (_trim_keys(cid), [f"{seq + 1}-0", cid]) for cid, seq in flushed.items()
        ]
        try:
            results = await self._run(_TRIM, calls)
        except RedisError as exc:
            raise JournalError(f"redis unavailable: {exc}") from exc
        failed = next((r for r in results if isinstance(r, Exception)), None)
        if failed is not None:
            raise JournalError(f"redis: {failed}")

    async def _run(
        self, script: str, calls: list[Call], beside: Sequence[Command] = ()
    ) -> list[Any]:
        """Run `script` once per call, in order, in one pipeline: each call's result or error.
        `beside` (an append's blobs) goes first in the same write; their replies are not
        looked at: a blob that did not land makes its own script call refuse (NOBLOB),
        and only that conversation's appends fail.

        Calls that found the script gone (NOSCRIPT: it never ran) are sent again, once,
        after loading it.
        """
        if not calls:
            return []
        replies = await self._lean.execute([*beside, *_evalshas(script, calls)])
        results = replies[len(beside) :]
        await self._retry_missing(script, calls, results)
        return results

    async def _retry_missing(self, script: str, calls: list[Call], results: list[Any]) -> None:
        """Send again, after loading the script, the calls whose result says NOSCRIPT."""
        missing = [i for i, result in enumerate(results) if isinstance(result, NoScriptError)]
        if missing:
            await self._client.script_load(script)
            again = await self._lean.execute(_evalshas(script, [calls[i] for i in missing]))
            for i, result in zip(missing, again, strict=True):
                results[i] = result


def _evalshas(script: str, calls: list[Call]) -> list[Command]:
    sha = _sha(script)
    return [("EVALSHA", sha, len(keys), *keys, *args) for keys, args in calls]


@dataclass
class _Prepared:
    """A batch made ready to send: its appends, by conversation, and the commands."""

    batch: list[_Queued]
    grouped: dict[str, list[_Queued]]
    calls: list[Call]
    beside: list[Command]


def _fail(batch: list[_Queued], message: str) -> None:
    """The send as a whole failed or was cut short: each record may or may not be in."""
    for *_, future in batch:
        if not future.done():
            future.set_exception(OutcomeUnknown(message))


def _record(field: bytes, value: bytes, blobs: Mapping[bytes, bytes | None]) -> bytes:
    """An entry's record: its own field's value, or the blob its field names (b"" if
    that is lost, or the field unknown: replay sets it aside as undecodable)."""
    if field == RECORD_KEY:
        return value
    return (blobs.get(value) or b"") if field == BLOB_KEY else b""


def append_keys(conversation_id: str) -> list[str]:
    """The KEYS of `_APPEND`: stream, epoch, the shard's journaled set, blob hash."""
    return [
        redis_keys.journal(conversation_id),
        redis_keys.epoch(conversation_id),
        redis_keys.journaled_of(conversation_id),
        redis_keys.journal_blobs(conversation_id),
    ]


def _trim_keys(conversation_id: str) -> list[str]:
    return [
        redis_keys.journal(conversation_id),
        redis_keys.journaled_of(conversation_id),
        redis_keys.journal_blobs(conversation_id),
    ]


@contextlib.asynccontextmanager
async def own_pool_journal(settings: RedisSettings) -> AsyncIterator[RedisJournal]:
    """A journal over a pool of its own (tools and tests; a node shares its pool)."""
    async with RedisPool(settings) as pool, RedisJournal(pool) as journal:
        yield journal
