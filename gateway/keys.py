"""Typed application keys for the objects handlers share."""

from __future__ import annotations

from aiohttp import web

from engine.access import Principal
from engine.retention import Retention
from engine.service import Conversations
from gateway.accounts import Accounts
from gateway.guards import EdgeLimits
from gateway.login_limiter import LoginLimiter
from gateway.response_cache import ResponseCache
from gateway.responses import Sender
from persistence.flusher import Flusher
from persistence.journal import Journal
from persistence.store import Store

ACCOUNTS = web.AppKey("accounts", Accounts)
CONVERSATIONS = web.AppKey("conversations", Conversations)
STORE = web.AppKey("store", Store)
RETENTION = web.AppKey("retention", Retention)
DEFAULT_TTL = web.AppKey("default_ttl_seconds", int)  # of a new conversation; 0: none
EDGE = web.AppKey("edge", EdgeLimits)
FLUSHER = web.AppKey("flusher", Flusher)
JOURNAL = web.AppKey("journal", Journal)
LOGIN_LIMITER = web.AppKey("login_limiter", LoginLimiter)
RESPONSES = web.AppKey("responses", ResponseCache)
SENDER = web.AppKey("sender", Sender)

PRINCIPAL = web.RequestKey("principal", Principal)  # the caller, set by gateway.auth
