"""The directory over Redis: one lease key per active conversation holding "node-id
epoch", valid while that node is a live member (Orleans' directory over its membership
table): no per-conversation TTL and no renewal at all, so an idle node sends no lease
command however many conversations it holds hot. Liveness is the node's heartbeat key
(engine/membership_redis.py), renewed every heartbeat interval.

Acquiring runs one script on the conversation's slot: it takes a free key, one naming
this node, or one whose value is the dead holder's value read before (compare-and-set),
and increments the conversation's epoch as it takes it. That epoch is the journal's own
(persistence/redis_keys.py `epoch`, in the lease's slot): taking the lease fences the
previous owner's appends, and the journal adopts its value (`RedisJournal.own`). A key
naming another node is held while that node's heartbeat key exists, checked by a
separate GET (the heartbeat is in another slot: a script cannot span Redis Cluster
slots); only then is it taken, compare-and-set on the value read.

Timing: this node acknowledges only while its heartbeat is current (`now < last
heartbeat sent + deadline`, RedisMembership.can_acknowledge) and the heartbeat key lives
`deadline` from when it reached Redis, so the node has stopped acknowledging before
anyone can find its key gone and take its conversations. Whatever it still sends is
fenced by the epoch. A node whose heartbeat finds its key gone was declared dead: it
marks every conversation it held lost (its actors dropped, the flusher forgets them);
an append refused as FENCED marks its conversation lost the same way.

Releases (passivation, close) are compare-and-delete, queued and sent in one pipeline
per interval; an interval with none sends nothing. The keys have no TTL: a vanished
node's keys are taken over at the next activation, like the epoch keys beside them.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Sequence
from typing import Any

from redis.exceptions import NoScriptError, RedisError

from engine.directory import LeaseHeld, LossWatcher
from engine.membership_redis import RedisMembership
from persistence import redis_keys
from persistence.background import Throttled, stop
from persistence.journal import Journal
from persistence.redis_pool import Client

log = logging.getLogger(__name__)
throttled = Throttled(log)

# KEYS: lease, epoch. ARGV: node id, the dead holder's value ("" for none).
# -> {1, epoch} taken, or {0, holder's value}
_ACQUIRE = """
local held = redis.call('GET', KEYS[1])
if held and held ~= ARGV[2] and string.sub(held, 1, #ARGV[1] + 1) ~= ARGV[1] .. ' ' then
  return {0, held}
end
local epoch = redis.call('INCR', KEYS[2])
redis.call('SET', KEYS[1], ARGV[1] .. ' ' .. epoch)
return {1, epoch}
"""
# KEYS: lease. ARGV: "node epoch". Deletes it only if still ours.
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""
_SCRIPTS = (_ACQUIRE, _RELEASE)
TAKEOVER_ATTEMPTS = 3  # a key that changes between the read and the compare-and-set


def _sha(script: str) -> str:
    return hashlib.sha1(script.encode()).hexdigest()


def node_of(value: str) -> str:
    """The node a lease's value ("node-id epoch") names."""
    return value.rsplit(" ", 1)[0]


class RedisDirectory:
    """This node's leases: acquired one by one, valid with its heartbeat, released in
    batches."""

    def __init__(
        self,
        client: Client,
        journal: Journal,
        membership: RedisMembership,
        *,
        release_seconds: float,
        timeout: float | None = None,
    ) -> None:
        self._client = client
        self._timeout = min(timeout or release_seconds, release_seconds)
        self._journal = journal
        self._membership = membership
        self._node_id = membership.node_id
        self._interval = release_seconds
        self._held: dict[str, int] = {}  # conversation id -> the epoch its lease was taken at
        self._releasing: dict[str, str] = {}  # conversation id -> the lease value to delete
        # Takes whose answer was lost (a timeout, a cancelled activation): the script may
        # have run, leaving a lease that names this node and covers nothing.
        self._unsure: set[str] = set()
        self._acquiring: dict[str, int] = {}  # conversation id -> acquires in flight
        # The unsure ids whose lease is being read back; a take started meanwhile removes
        # its id: what the read found may be older than what that take left.
        self._settling: set[str] = set()
        self._watchers: list[LossWatcher] = []
        self._task: asyncio.Task[None] | None = None
        self._scripts_missing = False
        self.acquisitions = 0
        self.takeovers = 0  # leases taken from a node found dead
        self.refusals = 0
        self.release_round_trips = 0
        self.release_failures = 0
        self.lost = 0
        self.released = 0
        membership.on_expelled(self._lose_all)
        on_fenced = getattr(journal, "on_fenced", None)
        if on_fenced is not None:  # the Redis journal: told when an append is FENCED
            on_fenced(self._fenced)

    async def __aenter__(self) -> RedisDirectory:
        await self._load_scripts()
        self._task = asyncio.create_task(self._run(), name="lease-release")
        return self

    async def __aexit__(self, *exc: object) -> None:
        """Stop and release every lease still held, in one round trip."""
        await stop(self._task)
        for conversation_id in list(self._held):
            self.release(conversation_id)
        try:
            await self.send_releases()
        except RedisError as exc:
            log.warning("releasing %d leases: %s (taken over once this node is gone)",
                        len(self._releasing), exc)  # fmt: skip
        log.info("directory closed: %d acquisitions (%d taken over), %d released, %d lost",
                 self.acquisitions, self.takeovers, self.released, self.lost)  # fmt: skip

    # -- what the registry calls -------------------------------------------------------------

    async def acquire(self, conversation_id: str) -> int:
        self._releasing.pop(conversation_id, None)  # taken again before its release went out
        self._settling.discard(conversation_id)
        self._acquiring[conversation_id] = self._acquiring.get(conversation_id, 0) + 1
        try:
            epoch = await self._take(conversation_id)
        except LeaseHeld:
            raise  # answered: not taken
        except BaseException:
            self._unsure.add(conversation_id)  # settled with the next releases
            raise
        finally:
            if self._acquiring[conversation_id] == 1:
                del self._acquiring[conversation_id]
            else:
                self._acquiring[conversation_id] -= 1
        self._held[conversation_id] = epoch
        own = getattr(self._journal, "own", None)
        try:
            if own is not None:  # the journal appends under the epoch just taken
                own(conversation_id, epoch)
            else:  # a journal with its own ownership (tests, the file journal)
                await self._journal.acquire(conversation_id)
        except BaseException:
            self.release(conversation_id)
            raise
        self.acquisitions += 1
        return epoch

    async def holder(self, conversation_id: str) -> str | None:
        """The live node holding the conversation's lease now, if any (one GET; liveness
        as this node's membership last saw it)."""
        value = await self._call(self._client.get(redis_keys.lease(conversation_id)))
        if not value:
            return None
        node = node_of(value.decode() if isinstance(value, bytes) else value)
        live = node == self._node_id or any(m.node_id == node for m in self._membership.live())
        return node if live else None

    def release(self, conversation_id: str) -> None:
        epoch = self._held.pop(conversation_id, None)
        if epoch is None:
            return  # lost already, or never held
        self._journal.release(conversation_id)
        self._releasing[conversation_id] = f"{self._node_id} {epoch}"

    def is_held(self, conversation_id: str) -> bool:
        return conversation_id in self._held

    def epoch(self, conversation_id: str) -> int | None:
        return self._held.get(conversation_id)

    def can_acknowledge(self) -> bool:
        """The leases are valid while this node's heartbeat is: no renewal of their own."""
        return self._membership.can_acknowledge()

    def on_lost(self, watcher: LossWatcher) -> None:
        self._watchers.append(watcher)

    def stats(self) -> dict[str, Any]:
        return {
            "kind": "redis",
            "leases_held": len(self._held),
            "acquisitions": self.acquisitions,
            "takeovers": self.takeovers,
            "refusals": self.refusals,
            "release_round_trips": self.release_round_trips,
            "release_failures": self.release_failures,
            "lost_leases": self.lost,
            "released": self.released,
            "unsure_takes": len(self._unsure),
        }

    # -- acquisition -------------------------------------------------------------------------

    async def _take(self, conversation_id: str) -> int:
        """Take the lease if it is free, ours, or its holder is dead; else LeaseHeld."""
        keys = (redis_keys.lease(conversation_id), redis_keys.epoch(conversation_id))
        dead = ""
        for _ in range(TAKEOVER_ATTEMPTS):
            taken, value = await self._eval(_ACQUIRE, keys, (self._node_id, dead))
            if taken:
                self.takeovers += bool(dead)
                return int(value)
            held = value.decode()
            holder = node_of(held)
            if await self._call(self._client.exists(redis_keys.member(holder))):
                break  # its heartbeat is current: it stays the owner
            dead = held  # taken below only if the key still says exactly this
        else:
            holder = node_of(held)
        self.refusals += 1
        raise LeaseHeld(conversation_id, holder)

    # -- loss --------------------------------------------------------------------------------

    def _lose_all(self) -> None:
        """This node was declared dead: any of its conversations may be another's now."""
        if self._held:
            log.warning("this node was declared dead: its %d conversations are lost",
                        len(self._held))  # fmt: skip
        for conversation_id in list(self._held):
            self._lose(conversation_id)

    def _fenced(self, conversation_id: str) -> None:
        """An append was refused as FENCED: another node took the conversation."""
        if conversation_id in self._held:
            log.warning("conversation %s was taken by another node", conversation_id)
            self._lose(conversation_id)

    def _lose(self, conversation_id: str) -> None:
        self.lost += 1
        del self._held[conversation_id]
        self._journal.release(conversation_id)
        for watcher in self._watchers:
            watcher(conversation_id)

    # -- releases ----------------------------------------------------------------------------

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            try:
                await self.send_releases()
            except RedisError as exc:
                self.release_failures += 1
                throttled.warning("release", "releasing leases failed: %s", exc)

    async def send_releases(self) -> None:
        """The releases queued since the last interval, in one pipeline (none: nothing)."""
        if self._unsure:
            try:
                await self._settle_unsure()
            except RedisError as exc:  # read again next round; the queued releases go now
                self.release_failures += 1
                throttled.warning("settle", "reading back unsure leases failed: %s", exc)
        if not self._releasing:
            return
        if self._scripts_missing:
            await self._load_scripts()
        releasing, self._releasing = self._releasing, {}
        release = _sha(_RELEASE)
        async with self._client.pipeline(transaction=False) as pipe:
            for cid, value in releasing.items():
                # execute_command: a Redis Cluster pipeline refuses evalsha() itself
                pipe.execute_command("EVALSHA", release, 1, redis_keys.lease(cid), value)
            self.release_round_trips += 1
            try:
                async with asyncio.timeout(self._timeout):
                    results = await pipe.execute(raise_on_error=False)
            except (RedisError, TimeoutError) as exc:
                self._releasing = {**releasing, **self._releasing}  # sent with the next round
                if isinstance(exc, TimeoutError):
                    raise RedisError(f"releasing took over {self._timeout:.2f}s") from exc
                raise
        self.released += sum(1 for result in results if result == 1)
        errors = [r for r in results if isinstance(r, Exception)]
        if errors:
            # Redis restarted or flushed its scripts: load them and send these again
            self._scripts_missing = True
            failed = zip(releasing.items(), results, strict=True)
            again = {cid: value for (cid, value), r in failed if isinstance(r, Exception)}
            self._releasing = {**again, **self._releasing}
            raise RedisError(f"{len(errors)} lease releases failed: {errors[0]}")

    async def _settle_unsure(self) -> None:
        """Let go of the leases whose take's answer was lost, if they name this node and it
        neither holds nor is taking them: read, then released by their exact value. A take
        after the read either drops the release (`acquire`) or sets a new epoch, which a
        release of the old value leaves alone."""
        self._unsure -= self._held.keys()  # taken since: held, and released as any other
        unsure = [cid for cid in self._unsure if cid not in self._acquiring]
        if not unsure:
            return
        self._settling = set(unsure)
        try:
            async with self._client.pipeline(transaction=False) as pipe:
                for cid in unsure:
                    pipe.get(redis_keys.lease(cid))
                values = await self._call(pipe.execute())
            for cid, value in zip(unsure, values, strict=True):
                if cid not in self._settling:
                    continue  # a take started while the values were read: read it again
                self._unsure.discard(cid)
                held = value.decode() if isinstance(value, bytes) else value
                if held and node_of(held) == self._node_id:
                    # a release queued since names the newer epoch: it is the one to send
                    self._releasing.setdefault(cid, held)
        finally:
            self._settling = set()

    # -- Redis calls -------------------------------------------------------------------------

    async def _call(self, call: Any) -> Any:
        try:
            async with asyncio.timeout(self._timeout):
                return await call
        except TimeoutError as exc:
            raise RedisError(f"Redis took over {self._timeout:.2f}s") from exc

    async def _load_scripts(self) -> None:
        async with asyncio.timeout(self._timeout * len(_SCRIPTS)):
            for script in _SCRIPTS:
                await self._client.script_load(script)
        self._scripts_missing = False

    async def _eval(self, script: str, keys: Sequence[str], args: Sequence[object]) -> Any:
        try:
            async with asyncio.timeout(self._timeout):
                try:
                    return await self._client.evalsha(_sha(script), len(keys), *keys, *args)  # type: ignore[arg-type]
                except NoScriptError:
                    await self._client.script_load(script)
                    return await self._client.evalsha(_sha(script), len(keys), *keys, *args)  # type: ignore[arg-type]
        except TimeoutError as exc:
            raise RedisError(f"Redis took over {self._timeout:.2f}s") from exc
