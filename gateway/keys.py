"""Typed application keys for the objects handlers share."""

from __future__ import annotations

from aiohttp import web

from engine.registry import Registry

REGISTRY = web.AppKey("registry", Registry)
