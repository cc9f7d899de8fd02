"""The aiohttp application: components composed in a fixed order, shut down in reverse.

data-dir lock -> persistence (store, journal) -> flusher -> registry (recovery) -> routes.
With `--flusher-process` the flusher is a child process (gateway/flusher_child.py) and
its serving side (persistence/remote_flusher.py).
On shutdown the registry stops, the flusher writes every dirty conversation, then the journal
and the store close. With `--cache off` the store-backed service stands in for the
registry and there is no journal: every write goes through to the store.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import AsyncIterator, Sequence
from typing import TYPE_CHECKING, Any

from aiohttp import web

from engine.adoption import Adopter
from engine.rebalance import Rebalancer
from engine.registry import Registry
from engine.retention import Retention
from engine.service import Conversations
from engine.store_backed import StoreBacked
from gateway.accounts import Accounts
from gateway.admin import add_admin
from gateway.auth import auth_middleware, authenticators
from gateway.auth_failures import AuthFailures
from gateway.busy_poll import BACKLOG_BYTES, BUSY_POLL, BusyPoll
from gateway.cluster_lifecycle import ClusterLifecycle
from gateway.cluster_member import join
from gateway.config import Settings
from gateway.connections import LIFECYCLE
from gateway.cors import Cors, cors_middleware, parse_origins
from gateway.errors import error_middleware
from gateway.flusher_child import FlusherChild
from gateway.forwarding import Forwarder, node_header
from gateway.guards import BodyBudget, EdgeLimits, edge_middleware
from gateway.heap import freeze_startup_objects
from gateway.json_answer import drop_server_header
from gateway.keys import (
    ACCOUNTS,
    ADOPTER,
    CLUSTER,
    CONVERSATIONS,
    DEFAULT_TTL,
    EDGE,
    FLUSHER,
    FORWARDER,
    JOURNAL,
    LOGIN_LIMITER,
    REBALANCER,
    REDIS,
    RESPONSES,
    RETENTION,
    SENDER,
    STORE,
)
from gateway.login_limiter import LoginLimiter
from gateway.node_stats import heartbeat_stats
from gateway.openapi import build_on_startup
from gateway.ratelimit import LIMITER, open_limiter, rate_limit_middleware
from gateway.response_cache import ResponseCache
from gateway.responses import ResponseBudget, Sender
from gateway.routes import add_routes
from gateway.shard_listings import add_internal_routes
from gateway.worker_peers import PEERS, WorkerPeers
from persistence.data_dir import DataDirLock
from persistence.flusher import Flusher
from persistence.journal import Journal, NoJournal
from persistence.journal_file import FileJournal
from persistence.remote_flusher import RemoteFlusher, RemoteFlusherConfig
from persistence.sqlite import SQLiteStore
from persistence.store import Store

if TYPE_CHECKING:
    from persistence.redis_pool import RedisPool  # redis is an optional extra


def open_store(settings: Settings) -> Store:
    if settings.store == "scylla":
        from persistence.scylla import ScyllaStore

        return ScyllaStore(settings.scylla())
    return SQLiteStore(settings.data_dir / "canopy.db")


def open_journal(
    settings: Settings, pool: RedisPool | None = None, peers: WorkerPeers | None = None
) -> contextlib.AbstractAsyncContextManager[Journal]:
    """The journal the settings name; a Redis one over `pool`, or a pool of its own. One
    of `--workers N` (`peers`) replays only its own conversations of a shared journal."""
    if settings.journal == "redis":
        from persistence.journal_redis import RedisJournal, own_pool_journal

        if pool is None:
            return own_pool_journal(settings.redis())
        return RedisJournal(pool, replays=peers.owns if peers is not None else None)
    fsync: str | float = settings.fsync if settings.fsync == "always" else float(settings.fsync)
    return FileJournal(
        settings.data_dir / "journal", fsync=fsync, recover_damaged=settings.recover_damaged
    )


def open_redis(settings: Settings, poll: BusyPoll) -> RedisPool | None:
    """The node's one Redis pool (journal, flusher process, rate limits), if it uses Redis;
    what its lean channel sends keeps the loop polling for the reply."""
    if settings.journal != "redis":
        return None
    from persistence.redis_pool import RedisPool

    return RedisPool(settings.redis(), on_send=poll.poker)


async def write_behind(
    settings: Settings,
    store: Store,
    journal: Journal,
    stack: contextlib.AsyncExitStack,
    pool: RedisPool | None,
) -> Flusher:
    """The in-process flusher, or (`--flusher-process`) the serving side of a flusher
    child process, started here and stopped after the registry."""
    if not settings.flusher_in_child():
        return Flusher(store, journal, settings.flusher())
    assert pool is not None  # the settings check: --flusher-process needs --journal redis
    child = await stack.enter_async_context(FlusherChild(settings, pool.client))
    config = RemoteFlusherConfig(settings.node(), settings.flusher())
    return RemoteFlusher(store, journal, config, pool.client, pool.lean, child.stats)


def node_report(app: web.Application) -> dict[str, Any]:
    """What this node's heartbeat carries: the figures /admin/nodes shows of it."""
    return heartbeat_stats(app)


def create_app(
    settings: Settings, peers: WorkerPeers | None = None, siblings: Sequence[str] = ()
) -> web.Application:
    """The node's app; one of `--workers N`: `peers` (its siblings to hand requests to),
    or in a cluster `siblings` (their member ids, which leave with it)."""
    limits = EdgeLimits(
        settings.max_body_bytes,
        settings.body_timeout,
        settings.hosts(),
        BodyBudget(settings.max_body_buffer_bytes),
    )
    # Preflights are answered before authentication (they carry no credential); the
    # rate limit spends the caller's budget, so it comes after.
    origins = parse_origins(settings.cors_origins)
    cors = Cors(origins) if origins else None
    poll = BusyPoll(settings.busy_poll_us / 1e6)
    pool = open_redis(settings, poll)
    limiter = open_limiter(settings.rate_limit, pool)
    middlewares = [error_middleware, edge_middleware(limits)]
    if cors is not None:
        middlewares.append(cors_middleware(cors))
    failures = AuthFailures(limiter) if limiter is not None else None
    middlewares.append(auth_middleware(authenticators(settings), failures))
    if limiter is not None:
        middlewares.append(rate_limit_middleware(limiter))
    app = web.Application(middlewares=middlewares, client_max_size=settings.max_body_bytes)
    app[EDGE] = limits
    app[BUSY_POLL] = poll
    app[DEFAULT_TTL] = settings.default_ttl_seconds
    app.on_response_prepare.append(drop_server_header)
    if cors is not None:
        app.on_response_prepare.append(cors.on_prepare)
    if settings.cluster != "none" or peers is not None:
        app.on_response_prepare.append(node_header(settings.node()))
        # a member once it listens; leaves first
        app[LIFECYCLE] = ClusterLifecycle(app, siblings, settings.heartbeat_seconds)
    add_routes(app)
    add_admin(app, settings)  # /admin/..., /metrics
    build_on_startup(app, settings.auth_modes())
    app[RESPONSES] = ResponseCache(settings.response_cache_bytes)
    app[SENDER] = Sender(ResponseBudget(settings.responses()))
    app[LOGIN_LIMITER] = LoginLimiter()
    if peers is not None:  # one of --workers N (gateway/workers.py)
        app[PEERS] = peers
        add_internal_routes(app)

    async def components(app: web.Application) -> AsyncIterator[None]:
        async with contextlib.AsyncExitStack() as stack:
            stack.callback(poll.close)  # the loop polls no more once the node is down
            # Before anything in the data dir is opened: a second process touches nothing.
            await stack.enter_async_context(DataDirLock(settings.data_dir))
            if peers is not None:
                await stack.enter_async_context(peers)
            if pool is not None:  # before its users, closed after them
                app[REDIS] = await stack.enter_async_context(pool)
            if limiter is not None:
                app[LIMITER] = await stack.enter_async_context(limiter)
            store = app[STORE] = await stack.enter_async_context(open_store(settings))
            if settings.accounts:
                accounts = Accounts.from_settings(store, settings)
                app[ACCOUNTS] = await stack.enter_async_context(accounts)
            cache_off = settings.cache == "off"  # the conventional design, for comparison
            journal = await stack.enter_async_context(
                NoJournal() if cache_off else open_journal(settings, pool, peers)
            )
            app[JOURNAL] = journal
            # Left after the flusher's final flush: leases outlive what they cover.
            report = functools.partial(node_report, app)
            member = app[CLUSTER] = await join(settings, journal, stack, report, pool, peers)
            flusher = await write_behind(settings, store, journal, stack, pool)
            await stack.enter_async_context(flusher)
            poll.yield_to(lambda: flusher.unflushed_bytes > BACKLOG_BYTES)
            conversations: Conversations = (
                StoreBacked(store, flusher, settings.registry().actor)
                if cache_off
                else Registry(
                    store,
                    member.actors_journal,
                    flusher,
                    settings.registry(),
                    directory=member.directory,
                    placement=member.placement,
                    node_id=member.node_id,
                    conversation_ids=member.conversation_ids,
                )  # fmt: skip
            )
            app[FLUSHER] = flusher
            app[CONVERSATIONS] = await stack.enter_async_context(conversations)
            if isinstance(conversations, Registry) and member.directory is not None:
                moves = Rebalancer(
                    conversations, member.placement, member.directory, member.node_id,
                    release_timeout=settings.lease_seconds,
                )  # fmt: skip
                app[REBALANCER] = await stack.enter_async_context(moves)
                member.membership.watch(moves.members_changed)  # after the placement's
                journaled = getattr(journal, "journaled", None)  # a Redis journal's sets
                if journaled is not None:
                    adopter = Adopter(conversations, journaled, member.placement,
                                      member.directory, member.node_id)  # fmt: skip
                    app[ADOPTER] = await stack.enter_async_context(adopter)
                    member.membership.watch(adopter.members_changed)
                forwarder = Forwarder(
                    member,
                    conversations.serves,
                    conversations.hot_entries,
                    moves=moves,
                    settle_seconds=settings.heartbeat_seconds,
                )
                app[FORWARDER] = await stack.enter_async_context(forwarder)
                conversations.ask_peers(forwarder.peer_entries)
            elif isinstance(conversations, Registry) and peers is not None and peers.shared_store:
                peers.list_hot(conversations.hot_entries)  # the store lists the rest
                conversations.ask_peers(peers.peer_entries)
            owns = peers.owns if peers is not None else None  # a shared store lists them all
            retention = Retention(store, app[CONVERSATIONS], settings.retention(), owns=owns)
            app[RETENTION] = await stack.enter_async_context(retention)
            yield

    app.cleanup_ctx.append(components)
    app.cleanup_ctx.append(freeze_startup_objects)  # after recovery: all that lives on
    return app
