"""Typed application keys for the objects handlers share."""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

from engine.access import Principal
from engine.adoption import Adopter
from engine.rebalance import Rebalancer
from engine.retention import Retention
from engine.service import Conversations
from gateway.accounts import Accounts
from gateway.cluster_member import ClusterMember
from gateway.guards import EdgeLimits
from gateway.login_limiter import LoginLimiter
from gateway.response_cache import ResponseCache
from gateway.responses import Sender
from persistence.flusher import Flusher
from persistence.journal import Journal
from persistence.store import Store

if TYPE_CHECKING:
    from gateway.forwarding import Forwarder  # imports the error mapping, which needs keys
    from persistence.redis_pool import RedisPool  # redis is an optional extra

ACCOUNTS = web.AppKey("accounts", Accounts)
CLUSTER = web.AppKey("cluster", ClusterMember)  # this node's membership, placement, directory
CONVERSATIONS = web.AppKey("conversations", Conversations)
STORE = web.AppKey("store", Store)
RETENTION = web.AppKey("retention", Retention)
DEFAULT_TTL = web.AppKey("default_ttl_seconds", int)  # of a new conversation; 0: none
EDGE = web.AppKey("edge", EdgeLimits)
FLUSHER = web.AppKey("flusher", Flusher)
JOURNAL = web.AppKey("journal", Journal)
FORWARDER: web.AppKey[Forwarder] = web.AppKey("forwarder")  # in a cluster: relays to the owner
LOGIN_LIMITER = web.AppKey("login_limiter", LoginLimiter)
ADOPTER = web.AppKey("adopter", Adopter)  # in a cluster: activates the dead's journaled ones
REBALANCER = web.AppKey("rebalancer", Rebalancer)  # in a cluster: moves on join and leave
RESPONSES = web.AppKey("responses", ResponseCache)
SENDER = web.AppKey("sender", Sender)
# The node's one Redis client pool (with --journal redis): membership, leases and any
# other Redis user take `app[REDIS].client` rather than opening their own.
REDIS: web.AppKey[RedisPool] = web.AppKey("redis")

PRINCIPAL = web.RequestKey("principal", Principal)  # the caller, set by gateway.auth
