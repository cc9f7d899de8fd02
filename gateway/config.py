"""Node settings, built in one place from the environment and the command line.

Every option has an environment equivalent (`CANOPY_*`); seed 000's variables
(`SERVER_HOST`, `SERVER_PORT`, `MAX_LINEAGE_DEPTH`, `MAX_BATCH_SIZE`) are accepted too.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, get_args

from engine.actor import ActorConfig, Durability
from engine.budget import default_max_hot_bytes
from engine.registry import RegistryConfig
from gateway.responses import ResponseLimits
from persistence.flusher import FlusherConfig

if TYPE_CHECKING:
    from persistence.scylla import ScyllaConfig


@dataclass(frozen=True)
class Settings:
    host: str = "127.0.0.1"
    port: int = 8080
    data_dir: Path = Path("data")
    durability: Durability = "journal"
    cache: str = "on"  # "off": serve every request from the store (the comparison baseline)
    fsync: str = "0.05"  # seconds between journal fsyncs, or "always"
    max_lineage_depth: int = 1000
    max_batch_size: int = 100
    max_hot_bytes: int = field(default_factory=default_max_hot_bytes)  # 25% of RAM
    max_hot_messages: int = 2_000_000
    idle_seconds: float = 600.0
    max_body_bytes: int = 1024 * 1024
    body_timeout: float = 10.0  # seconds to receive a whole request body (408 past it)
    max_body_buffer_bytes: int = 64 * 1024 * 1024  # bodies still arriving, node-wide (503)
    max_connections: int = 0  # 0: derived from RLIMIT_NOFILE (gateway.connections)
    allowed_hosts: str = ""  # host names answered besides IP literals and localhost; "*": any
    response_cache_bytes: int = 64 * 1024 * 1024  # encoded lineages and trees, per node
    max_response_bytes: int = 64 * 1024 * 1024  # one response; 413 (with a hint) past it
    response_budget_bytes: int = 128 * 1024 * 1024  # large responses in flight, node-wide
    write_timeout: float = 30.0  # seconds a client may take to drain one write
    max_unflushed_bytes: int = 256 * 1024 * 1024
    flush_interval: float = 0.05
    shutdown_timeout: float = 10.0
    store: str = "sqlite"  # or "scylla"
    journal: str = "file"  # or "redis"
    scylla_nodes: str = "127.0.0.1:9042"
    scylla_keyspace: str = "canopy"
    scylla_replication: str = "SimpleStrategy:1"
    scylla_consistency: str = "LOCAL_QUORUM"
    redis_url: str = "redis://127.0.0.1:6379/0"
    recover_damaged: bool = False  # replay past journal damage (the segment is kept aside)
    auth: str = "none"  # comma-separated: none, api-key, jwt
    allow_anonymous: bool = False  # --auth none on an address other than loopback
    api_keys_file: Path | None = None  # lines "name sha256-hex" (--auth api-key)
    api_keys: str = ""  # "name:sha256-hex,..." (CANOPY_API_KEYS)
    default_ttl_seconds: int = 0  # a new conversation expires this long after creation; 0: never

    def registry(self) -> RegistryConfig:
        return RegistryConfig(
            actor=ActorConfig(durability=self.durability, max_lineage_depth=self.max_lineage_depth),
            max_hot_bytes=self.max_hot_bytes,
            max_hot_messages=self.max_hot_messages,
            idle_seconds=self.idle_seconds,
        )

    def responses(self) -> ResponseLimits:
        return ResponseLimits(
            max_response_bytes=self.max_response_bytes,
            budget_bytes=self.response_budget_bytes,
            write_timeout=self.write_timeout,
        )

    def scylla(self) -> ScyllaConfig:
        from persistence.scylla import ScyllaConfig  # the driver is an optional extra

        return ScyllaConfig(
            nodes=tuple(n for n in self.scylla_nodes.split(",") if n.strip()),
            keyspace=self.scylla_keyspace,
            replication=self.scylla_replication,
            consistency=self.scylla_consistency,
            batch_size=self.max_batch_size,
        )

    def auth_modes(self) -> frozenset[str]:
        return frozenset(m.strip() for m in self.auth.split(",") if m.strip())

    def hosts(self) -> frozenset[str]:
        return frozenset(h.strip().lower() for h in self.allowed_hosts.split(",") if h.strip())

    def flusher(self) -> FlusherConfig:
        return FlusherConfig(
            interval=self.flush_interval, max_unflushed_bytes=self.max_unflushed_bytes
        )


# option name -> (environment variables, most specific first; type)
_OPTIONS: dict[str, tuple[tuple[str, ...], type]] = {
    "host": (("CANOPY_HOST", "SERVER_HOST"), str),
    "port": (("CANOPY_PORT", "SERVER_PORT"), int),
    "data_dir": (("CANOPY_DATA_DIR",), Path),
    "durability": (("CANOPY_DURABILITY",), str),
    "cache": (("CANOPY_CACHE",), str),
    "fsync": (("CANOPY_FSYNC",), str),
    "max_lineage_depth": (("CANOPY_MAX_LINEAGE_DEPTH", "MAX_LINEAGE_DEPTH"), int),
    "max_batch_size": (("CANOPY_MAX_BATCH_SIZE", "MAX_BATCH_SIZE"), int),
    "max_hot_bytes": (("CANOPY_MAX_HOT_BYTES",), int),
    "max_hot_messages": (("CANOPY_MAX_HOT_MESSAGES",), int),
    "idle_seconds": (("CANOPY_IDLE_SECONDS",), float),
    "max_body_bytes": (("CANOPY_MAX_BODY_BYTES",), int),
    "body_timeout": (("CANOPY_BODY_TIMEOUT",), float),
    "max_body_buffer_bytes": (("CANOPY_MAX_BODY_BUFFER_BYTES",), int),
    "max_connections": (("CANOPY_MAX_CONNECTIONS",), int),
    "allowed_hosts": (("CANOPY_ALLOWED_HOSTS",), str),
    "response_cache_bytes": (("CANOPY_RESPONSE_CACHE_BYTES",), int),
    "max_response_bytes": (("CANOPY_MAX_RESPONSE_BYTES",), int),
    "response_budget_bytes": (("CANOPY_RESPONSE_BUDGET_BYTES",), int),
    "write_timeout": (("CANOPY_WRITE_TIMEOUT",), float),
    "max_unflushed_bytes": (("CANOPY_MAX_UNFLUSHED_BYTES",), int),
    "flush_interval": (("CANOPY_FLUSH_INTERVAL",), float),
    "store": (("CANOPY_STORE",), str),
    "journal": (("CANOPY_JOURNAL",), str),
    "scylla_nodes": (("CANOPY_SCYLLA_NODES", "SCYLLA_NODES"), str),
    "scylla_keyspace": (("CANOPY_SCYLLA_KEYSPACE", "SCYLLA_KEYSPACE"), str),
    "scylla_replication": (("CANOPY_SCYLLA_REPLICATION",), str),
    "scylla_consistency": (("CANOPY_SCYLLA_CONSISTENCY",), str),
    "redis_url": (("CANOPY_REDIS_URL", "REDIS_URL"), str),
    "recover_damaged": (("CANOPY_RECOVER_DAMAGED",), bool),
    "auth": (("CANOPY_AUTH",), str),
    "allow_anonymous": (("CANOPY_ALLOW_ANONYMOUS",), bool),
    "api_keys_file": (("CANOPY_API_KEYS_FILE",), Path),
    "api_keys": (("CANOPY_API_KEYS",), str),
    "default_ttl_seconds": (("CANOPY_DEFAULT_TTL_SECONDS",), int),
}

AUTH_MODES = frozenset({"none", "api-key", "jwt"})

_CHOICES = {
    "durability": get_args(Durability),
    "cache": ("on", "off"),
    "store": ("sqlite", "scylla"),
    "journal": ("file", "redis"),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    for name, (variables, kind) in _OPTIONS.items():
        flag = "--" + name.replace("_", "-")
        help = f"env: {', '.join(variables)}"
        if kind is bool:
            parser.add_argument(flag, dest=name, default=None, action="store_const", const="1",
                                help=help)  # fmt: skip
        else:
            parser.add_argument(
                flag, dest=name, default=None, help=help, choices=_CHOICES.get(name)
            )


def _flag(raw: str) -> bool:
    lowered = raw.strip().lower()
    if lowered not in ("1", "true", "yes", "on", "0", "false", "no", "off"):
        raise ValueError(raw)
    return lowered in ("1", "true", "yes", "on")


def build(args: argparse.Namespace, environ: Mapping[str, str] = os.environ) -> Settings:
    """Command line over environment over defaults; raises ValueError on a bad value."""
    values: dict[str, object] = {}
    for name, (variables, kind) in _OPTIONS.items():
        raw = getattr(args, name, None)
        if raw is None:
            raw = next((environ[v] for v in variables if environ.get(v)), None)
        if raw is not None:
            try:
                values[name] = _flag(raw) if kind is bool else kind(raw)
            except ValueError:
                raise ValueError(f"{name}: cannot read {raw!r} as {kind.__name__}") from None
    settings = Settings(**values)  # type: ignore[arg-type]
    for name, choices in _CHOICES.items():  # the environment bypasses argparse's choices
        if getattr(settings, name) not in choices:
            raise ValueError(
                f"{name} must be one of {', '.join(choices)}; got {getattr(settings, name)!r}"
            )
    if settings.default_ttl_seconds < 0:
        raise ValueError("default_ttl_seconds must be 0 (no expiry) or a number of seconds")
    if settings.fsync != "always":
        float(settings.fsync)
    modes = settings.auth_modes()
    if not modes or not modes <= AUTH_MODES:
        raise ValueError(f"auth must be a comma-separated list of {', '.join(AUTH_MODES)}; "
                         f"got {settings.auth!r}")  # fmt: skip
    if "api-key" in modes:
        from gateway.auth import load_api_keys  # config stays free of the gateway's imports

        try:
            if not load_api_keys(settings.api_keys_file, settings.api_keys):
                raise ValueError("--auth api-key needs --api-keys-file or CANOPY_API_KEYS")
        except OSError as exc:
            raise ValueError(f"api_keys_file: {exc}") from None
    if "none" in modes and not settings.allow_anonymous and not _loopback(settings.host):
        raise ValueError(
            f"--auth none on {settings.host} would let anyone on the network in: bind to "
            "127.0.0.1, configure --auth jwt or api-key, or pass --allow-anonymous"
        )
    return settings


def _loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"
