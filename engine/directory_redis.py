"""The directory over Redis: one lease key per active conversation ("node-id epoch",
PX = the lease), taken by a script that refuses while another node holds it and
increments the conversation's epoch at each acquisition. That epoch is the journal's
own (persistence/redis_keys.py `epoch`, in the lease's slot): the script that takes the
lease is the one that fences the previous owner's appends, and the journal adopts its
value (`RedisJournal.own`), so an activation costs one round trip and there is one
counter, not two.

Every renewal interval (a third of the lease) one pipeline renews every lease this node
holds and sends the releases queued since: one Redis round trip per node per interval,
however many conversations are hot. Each renewal is its own one-key script call (the
keys are hash-tagged per conversation, so one script over many would span Redis Cluster
slots). A renewal that finds the lease taken by another node marks the conversation
lost: its actor is dropped and the journal forgets its ownership (appends refused).

Timing: this node acknowledges only while `now < last round sent + 0.9 * lease`; the
lease, set when the round reached Redis, lasts past that. The heartbeat deadline is
shorter than the lease (engine/membership_redis.py), so a node that cannot reach Redis
stops acknowledging before any of its leases can expire and be taken.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Sequence
from typing import Any

from redis.exceptions import NoScriptError, RedisError

from engine.directory import LeaseHeld, LossWatcher
from persistence import redis_keys
from persistence.background import Throttled
from persistence.journal import Journal
from persistence.redis_pool import Client

log = logging.getLogger(__name__)
throttled = Throttled(log)

SAFETY = 0.9  # of the lease: acknowledgements stop this much into it without a renewal

# KEYS: lease, epoch. ARGV: node id, lease ms. -> {1, epoch} or {0, holder}
_ACQUIRE = """
local held = redis.call('GET', KEYS[1])
if held and string.sub(held, 1, #ARGV[1] + 1) ~= ARGV[1] .. ' ' then return {0, held} end
local epoch = redis.call('INCR', KEYS[2])
redis.call('SET', KEYS[1], ARGV[1] .. ' ' .. epoch, 'PX', ARGV[2])
return {1, epoch}
"""
# KEYS: lease, epoch. ARGV: "node epoch", lease ms, epoch. -> 1 renewed, 0 lost.
# An expired lease nobody took since (the epoch did not move) is taken back.
_RENEW = """
local held = redis.call('GET', KEYS[1])
if held == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
if not held and redis.call('GET', KEYS[2]) == ARGV[3] then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
"""
# KEYS: lease. ARGV: "node epoch". Deletes it only if still ours.
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""
_SCRIPTS = (_ACQUIRE, _RENEW, _RELEASE)


def _sha(script: str) -> str:
    return hashlib.sha1(script.encode()).hexdigest()


class RedisDirectory:
    """This node's leases: acquired one by one, renewed and released in batches."""

    def __init__(
        self,
        client: Client,
        journal: Journal,
        node_id: str,
        *,
        lease_seconds: float,
        timeout: float | None = None,
    ) -> None:
        self._client = client
        # A stuck call must not outlast a renewal interval (the pool's socket timeout
        # may be longer): each Redis call here is bounded by this.
        self._timeout = min(timeout or lease_seconds / 3, lease_seconds / 3)
        self._journal = journal
        self._node_id = node_id
        self._lease_ms = int(lease_seconds * 1000)
        self._lease = lease_seconds
        self._held: dict[str, int] = {}  # conversation id -> the epoch its lease was taken at
        self._releasing: dict[str, str] = {}  # conversation id -> the lease value to delete
        self._watchers: list[LossWatcher] = []
        self._renewed_at = time.monotonic()  # send time of the last round that landed
        self._task: asyncio.Task[None] | None = None
        self._scripts_missing = False
        self.acquisitions = 0
        self.refusals = 0
        self.renewals = 0  # leases renewed
        self.round_trips = 0  # renewal rounds sent (one pipeline each)
        self.renew_failures = 0
        self.lost = 0
        self.released = 0

    async def __aenter__(self) -> RedisDirectory:
        await self._load_scripts()
        self._task = asyncio.create_task(self._run(), name="lease-renewal")
        return self

    async def __aexit__(self, *exc: object) -> None:
        """Stop renewing and release every lease still held, in one round trip."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        for conversation_id in list(self._held):
            self.release(conversation_id)
        try:
            await self._round()
        except RedisError as exc:
            log.warning("releasing %d leases: %s (they expire by themselves)",
                        len(self._releasing), exc)  # fmt: skip
        log.info("directory closed: %d acquisitions, %d renewals in %d round trips, %d lost",
                 self.acquisitions, self.renewals, self.round_trips, self.lost)  # fmt: skip

    # -- what the registry calls -------------------------------------------------------------

    async def acquire(self, conversation_id: str) -> int:
        self._releasing.pop(conversation_id, None)  # taken again before its release went out
        keys = (redis_keys.lease(conversation_id), redis_keys.epoch(conversation_id))
        taken, value = await self._eval(_ACQUIRE, keys, (self._node_id, self._lease_ms))
        if not taken:
            self.refusals += 1
            raise LeaseHeld(conversation_id, value.decode().rsplit(" ", 1)[0])
        epoch = int(value)
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
        """The node holding the conversation's lease now, if any (one GET)."""
        async with asyncio.timeout(self._timeout):
            value = await self._client.get(redis_keys.lease(conversation_id))
        if not value:
            return None
        held = value.decode() if isinstance(value, bytes) else value
        return held.rsplit(" ", 1)[0]

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
        return time.monotonic() < self._renewed_at + self._lease * SAFETY

    def on_lost(self, watcher: LossWatcher) -> None:
        self._watchers.append(watcher)

    def stats(self) -> dict[str, Any]:
        return {
            "kind": "redis",
            "leases_held": len(self._held),
            "acquisitions": self.acquisitions,
            "refusals": self.refusals,
            "renewals": self.renewals,
            "renewal_round_trips": self.round_trips,
            "renew_failures": self.renew_failures,
            "lost_leases": self.lost,
            "released": self.released,
            "lease_seconds": self._lease,
        }

    # -- renewal -----------------------------------------------------------------------------

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._lease / 3)
            try:
                await self._round()
            except RedisError as exc:
                self.renew_failures += 1
                throttled.warning("renew", "lease renewal failed: %s", exc)

    async def _round(self) -> None:
        """Renew every held lease and send the queued releases: one pipeline."""
        if self._scripts_missing:
            await self._load_scripts()
        sent_at = time.monotonic()
        held = list(self._held.items())
        releasing, self._releasing = self._releasing, {}
        if not held and not releasing:
            self._renewed_at = sent_at  # nothing to keep valid
            return
        renew, release = _sha(_RENEW), _sha(_RELEASE)
        async with self._client.pipeline(transaction=False) as pipe:
            for cid, epoch in held:
                value = f"{self._node_id} {epoch}"
                # execute_command: a Redis Cluster pipeline refuses evalsha() itself
                keys = (redis_keys.lease(cid), redis_keys.epoch(cid))
                pipe.execute_command("EVALSHA", renew, 2, *keys, value, self._lease_ms, epoch)
            for cid, value in releasing.items():
                pipe.execute_command("EVALSHA", release, 1, redis_keys.lease(cid), value)
            self.round_trips += 1
            try:
                async with asyncio.timeout(self._timeout):
                    results = await pipe.execute(raise_on_error=False)
            except (RedisError, TimeoutError) as exc:
                self._releasing = {**releasing, **self._releasing}  # sent with the next round
                if isinstance(exc, TimeoutError):
                    raise RedisError(f"lease renewal took over {self._timeout:.2f}s") from exc
                raise
        self._settle(held, results[: len(held)], sent_at)
        self.released += sum(1 for result in results[len(held) :] if result == 1)

    def _settle(
        self, held: list[tuple[str, int]], results: Sequence[object], sent_at: float
    ) -> None:
        failed = False
        for (conversation_id, epoch), result in zip(held, results, strict=True):
            if result == 1:
                self.renewals += 1
            elif result == 0 and self._held.get(conversation_id) == epoch:
                self._lose(conversation_id)
            elif isinstance(result, Exception):
                failed = True
                # Redis restarted or flushed its scripts: load them before the next round
                self._scripts_missing |= isinstance(result, NoScriptError)
        if failed:
            self.renew_failures += 1
        else:
            self._renewed_at = sent_at

    def _lose(self, conversation_id: str) -> None:
        log.warning("lease of conversation %s was taken by another node", conversation_id)
        self.lost += 1
        del self._held[conversation_id]
        self._journal.release(conversation_id)
        for watcher in self._watchers:
            watcher(conversation_id)

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
