"""Typed application keys for the objects handlers share."""

from __future__ import annotations

from aiohttp import web

from engine.registry import Registry
from persistence.flusher import Flusher

REGISTRY = web.AppKey("registry", Registry)
FLUSHER = web.AppKey("flusher", Flusher)
