"""Node settings, built in one place from the environment and the command line.

Every option has an environment equivalent (`CANOPY_*`); seed 000's variables
(`SERVER_HOST`, `SERVER_PORT`, `MAX_LINEAGE_DEPTH`, `MAX_BATCH_SIZE`) are accepted too.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple, get_args

from engine.actor import ActorConfig, Durability
from engine.budget import default_max_hot_bytes
from engine.registry import RegistryConfig
from engine.retention import RetentionConfig
from gateway.responses import ResponseLimits
from persistence.flusher import FlusherConfig

if TYPE_CHECKING:
    from persistence.redis_pool import RedisSettings
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
    busy_poll_us: int = 200  # the loop polls this long at most after I/O (gateway/busy_poll.py)
    allowed_hosts: str = ""  # host names answered besides IP literals and localhost; "*": any
    response_cache_bytes: int = 64 * 1024 * 1024  # encoded lineages and trees, per node
    max_response_bytes: int = 64 * 1024 * 1024  # one response; 413 (with a hint) past it
    response_budget_bytes: int = 128 * 1024 * 1024  # large responses in flight, node-wide
    write_timeout: float = 30.0  # seconds a client may take to drain one write
    max_unflushed_bytes: int = 256 * 1024 * 1024
    flush_interval: float = 0.05
    flusher_process: str = "auto"  # on, off, auto: write behind from a `canopy flusher` child
    flusher_nice: int = 10  # the child's nice increment: write-behind yields the core to serving
    node_id: str = ""  # names the node in the cluster and its flusher in Redis; "": host:port
    cluster: str = "none"  # or "redis": membership and leases in Redis
    advertise_url: str = ""  # where other nodes reach this one; "": http://HOST:PORT
    lease_seconds: float = 2.0  # failover waits at most this long (leases follow heartbeats)
    heartbeat_seconds: float = 0.5  # between heartbeats; missing 3 in a row stops acks
    shutdown_timeout: float = 10.0
    workers: str = "1"  # worker processes on the one port; "auto": one per core
    store: str = "sqlite"  # or "scylla"
    journal: str = "file"  # or "redis"
    scylla_nodes: str = "127.0.0.1:9042"
    scylla_keyspace: str = "canopy"
    scylla_replication: str = "SimpleStrategy:1"
    scylla_consistency: str = "LOCAL_QUORUM"
    redis_url: str = "redis://127.0.0.1:6379/0"
    redis_cluster: bool = False  # redis_url names seed nodes of a Redis Cluster
    redis_timeout: float = 1.0  # seconds to connect to Redis and for each reply
    redis_max_connections: int = 64  # the shared pool's connections per Redis server
    recover_damaged: bool = False  # replay past journal damage (the segment is kept aside)
    auth: str = "none"  # comma-separated: none, api-key, jwt
    allow_anonymous: bool = False  # --auth none on an address other than loopback
    api_keys_file: Path | None = None  # lines "name sha256-hex" (--auth api-key)
    api_keys: str = ""  # "name:sha256-hex,..." (CANOPY_API_KEYS)
    rate_limit: str = ""  # per caller: "50/s,burst=100"; "" or "off": none (docs/decisions.md)
    cors_origins: str = ""  # origins whose pages may call the API, comma separated; "*": any
    jwt_secret: str = ""  # HS256 (--auth jwt); also signs --accounts' tokens
    jwt_public_key: Path | None = None  # PEM RSA or EC public key: RS256 / ES256 tokens
    jwks_file: Path | None = None  # a JSON Web Key Set: keys chosen by the token's kid
    jwt_audience: str = ""  # the `aud` tokens must carry, if set
    jwt_issuer: str = ""  # the `iss` tokens must carry, if set
    jwt_ttl_seconds: int = 3600  # lifetime of the tokens --accounts' login issues
    accounts: bool = False  # built-in accounts: /api/auth/register, login, me
    retention_sweep_seconds: float = 60.0  # between removals of expired conversations
    default_ttl_seconds: int = 0  # a new conversation expires this long after creation; 0: never
    sidebar_cache_seconds: float = 60.0  # a user's first-page store rows kept at most; 0: none
    admin_token: str = ""  # bearer of /admin/... and /metrics; "": one is made at start
    metrics_public: bool = False  # /metrics answers without the admin token

    def registry(self) -> RegistryConfig:
        return RegistryConfig(
            actor=ActorConfig(durability=self.durability, max_lineage_depth=self.max_lineage_depth),
            max_hot_bytes=self.max_hot_bytes,
            max_hot_messages=self.max_hot_messages,
            idle_seconds=self.idle_seconds,
            sidebar_first_reads_seconds=self.sidebar_cache_seconds,
            lease_wait_seconds=self.lease_seconds if self.cluster != "none" else 0.0,
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

    def retention(self) -> RetentionConfig:
        return RetentionConfig(interval=self.retention_sweep_seconds)

    def auth_modes(self) -> frozenset[str]:
        return frozenset(m.strip() for m in self.auth.split(",") if m.strip())

    def hosts(self) -> frozenset[str]:
        return frozenset(h.strip().lower() for h in self.allowed_hosts.split(",") if h.strip())

    def redis(self) -> RedisSettings:
        from persistence.redis_pool import RedisSettings  # redis is an optional extra

        return RedisSettings(
            url=self.redis_url,
            cluster=self.redis_cluster,
            timeout=self.redis_timeout,
            max_connections=self.redis_max_connections,
        )

    def node(self) -> str:
        return self.node_id or f"{socket.gethostname()}:{self.port}"

    def advertised(self) -> str:
        return self.advertise_url or f"http://{self.host}:{self.port}"

    def worker_count(self) -> int:
        """How many worker processes `--workers` asks for ("auto": one per usable core)."""
        if self.workers.strip().lower() == "auto":
            return len(os.sched_getaffinity(0))
        count = int(self.workers)
        if count < 1:
            raise ValueError(f"workers must be a positive number or auto; got {self.workers!r}")
        return count

    def heartbeat_deadline(self) -> float:
        """How long a heartbeat lives: shorter than a lease (engine/membership_redis.py)."""
        return self.heartbeat_seconds * HEARTBEATS_PER_DEADLINE

    def flusher_in_child(self) -> bool:
        """Whether the write-behind runs in a `canopy flusher` child: `on`, or `auto` on
        Cassandra, where it was measured better (fork p99 ~20 against 47-110 ms,
        docs/decisions.md), when nothing refuses it (one worker, a cache, ...)."""
        if self.flusher_process != "auto":
            return self.flusher_process == "on"
        return self.store == "scylla" and not flusher_process_refused(self)

    def flusher(self) -> FlusherConfig:
        return FlusherConfig(
            interval=self.flush_interval, max_unflushed_bytes=self.max_unflushed_bytes
        )


def switch(raw: str) -> str:
    """on, off or auto; the words of a bool flag (1, true, no, ...) also read as on or off."""
    lowered = raw.strip().lower()
    return lowered if lowered == "auto" else ("on" if _flag(lowered) else "off")


def _flag(raw: str) -> bool:
    lowered = raw.strip().lower()
    if lowered not in ("1", "true", "yes", "on", "0", "false", "no", "off"):
        raise ValueError(raw)
    return lowered in ("1", "true", "yes", "on")


class Option(NamedTuple):
    """One setting's command-line flag: where else it comes from, and what it does."""

    env: tuple[str, ...]  # environment variables, most specific first
    kind: Callable[[str], object]  # reads the raw value (bool: `_flag`)
    group: str  # one of GROUPS: where `canopy serve --help` lists it
    help: str  # what it does; the default and env names are added to it
    default: str | None = None  # shown instead of the Settings default (a computed one)


GROUPS = {
    "server": "where the node listens and what it answers",
    "storage": "where conversations are kept",
    "durability": "when a write is acknowledged and how it reaches the store",
    "limits": "memory, request and response bounds",
    "auth": "who may call",
    "cluster": "membership and ownership among nodes",
    "admin": "the admin API and page, and Prometheus metrics",
}

HEARTBEATS_PER_DEADLINE = 3  # a node stops acknowledging after missing this many

_OPTIONS: dict[str, Option] = {
    "host": Option(("CANOPY_HOST", "SERVER_HOST"), str, "server", "listen address"),
    "port": Option(("CANOPY_PORT", "SERVER_PORT"), int, "server", "listen port"),
    "workers": Option(("CANOPY_WORKERS",), str, "server",
        "worker processes serving the one port (SO_REUSEPORT), each owning the conversations "
        "placed on it and its own shard of the data dir (data-dir/worker-K); auto: one per "
        "core. A shared store or journal (Cassandra, Redis) stays shared; the number is fixed "
        "for a data dir once chosen. With --cluster redis each worker is a member"),
    "max_connections": Option(("CANOPY_MAX_CONNECTIONS",), int, "server",
        "open client connections; past it a new one gets 503 and is closed",
        "soft RLIMIT_NOFILE - 80"),
    "busy_poll_us": Option(("CANOPY_BUSY_POLL_US",), int, "server",
        "microseconds the serving loop keeps polling its sockets after a request, an answer "
        "or a Redis command, instead of sleeping (a virtual machine's wake-ups are slow); "
        "the window shrinks while nothing comes that soon. 0: sleep at once"),
    "allowed_hosts": Option(("CANOPY_ALLOWED_HOSTS",), str, "server",
        "host names answered besides IP literals and localhost, comma separated; * answers "
        "any (others get 421: DNS-rebinding protection)", "none"),
    "data_dir": Option(("CANOPY_DATA_DIR",), Path, "storage",
        "directory of the SQLite store and the journal segments"),
    "store": Option(("CANOPY_STORE",), str, "storage",
        "sqlite (embedded) or scylla (ScyllaDB / Cassandra)"),
    "journal": Option(("CANOPY_JOURNAL",), str, "storage",
        "file (embedded) or redis (Redis Streams)"),
    "cache": Option(("CANOPY_CACHE",), str, "storage",
        "off: serve every request from the store and write through (the comparison baseline)"),
    "scylla_nodes": Option(("CANOPY_SCYLLA_NODES", "SCYLLA_NODES"), str, "storage",
        "Cassandra contact points, comma separated"),
    "scylla_keyspace": Option(("CANOPY_SCYLLA_KEYSPACE", "SCYLLA_KEYSPACE"), str, "storage",
        "Cassandra keyspace"),
    "scylla_replication": Option(("CANOPY_SCYLLA_REPLICATION",), str, "storage",
        "for migrate: SimpleStrategy:N or NetworkTopologyStrategy:dc1=3,dc2=3"),
    "scylla_consistency": Option(("CANOPY_SCYLLA_CONSISTENCY",), str, "storage",
        "consistency level of every Cassandra statement"),
    "redis_url": Option(("CANOPY_REDIS_URL", "REDIS_URL"), str, "storage",
        "Redis for the journal, the flusher process and shared rate limits: redis://host:port/db; "
        "with --redis-cluster, one or more seed nodes, comma separated"),
    "redis_cluster": Option(("CANOPY_REDIS_CLUSTER",), bool, "storage",
        "--redis-url is a Redis Cluster (keys of one conversation share one slot)", "off"),
    "redis_timeout": Option(("CANOPY_REDIS_TIMEOUT",), float, "storage",
        "seconds to connect to Redis and to wait for each reply"),
    "redis_max_connections": Option(("CANOPY_REDIS_MAX_CONNECTIONS",), int, "storage",
        "connections per Redis server in the node's one pool (journal, limits, flusher)"),
    "max_batch_size": Option(("CANOPY_MAX_BATCH_SIZE", "MAX_BATCH_SIZE"), int, "storage",
        "rows per Cassandra batch statement"),
    "durability": Option(("CANOPY_DURABILITY",), str, "durability",
        "memory: ack before the journal; journal: once the record reached the OS; "
        "store: after the store commit"),
    "fsync": Option(("CANOPY_FSYNC",), str, "durability",
        "seconds between journal fsyncs, or always (fsync before every ack)"),
    "flush_interval": Option(("CANOPY_FLUSH_INTERVAL",), float, "durability",
        "seconds between write-behind cycles to the store"),
    "flusher_process": Option(("CANOPY_FLUSHER_PROCESS",), switch, "durability",
        "on, off or auto; with --journal redis: write behind from a separate process "
        "(`canopy flusher`) the node starts, restarts and stops, so the serving process pays "
        "only the journal append; auto: on with --store scylla, unless --workers without "
        "--cluster redis, --cache off or --durability store (a bare --flusher-process: on)",
        "auto"),
    "flusher_nice": Option(("CANOPY_FLUSHER_NICE",), int, "durability",
        "nice increment of the flusher process (0-19): on a busy core its write-behind "
        "yields to serving, the unflushed-bytes limit bounding how far it falls behind"),
    "node_id": Option(("CANOPY_NODE_ID",), str, "cluster",
        "this node's name in the cluster and for its flusher process (its queue and lease "
        "in Redis)", "hostname:port"),
    "cluster": Option(("CANOPY_CLUSTER",), str, "cluster",
        "none (one node) or redis: heartbeat in Redis and hold a lease per active "
        "conversation there (--redis-url)"),
    "advertise_url": Option(("CANOPY_ADVERTISE_URL",), str, "cluster",
        "the URL other nodes reach this one at", "http://HOST:PORT"),
    "lease_seconds": Option(("CANOPY_LEASE_SECONDS",), float, "cluster",
        "the longest a dead node's conversations wait: its leases last while its "
        "heartbeat does (3 x --heartbeat-seconds, which must be under this); releases "
        "are sent every third of it"),
    "heartbeat_seconds": Option(("CANOPY_HEARTBEAT_SECONDS",), float, "cluster",
        "seconds between heartbeats; a node whose heartbeat is 3 intervals late stops "
        "acknowledging writes (3 x this must be under --lease-seconds)"),
    "max_unflushed_bytes": Option(("CANOPY_MAX_UNFLUSHED_BYTES",), int, "durability",
        "bytes written but not yet in the store; past it writes get 503"),
    "recover_damaged": Option(("CANOPY_RECOVER_DAMAGED",), bool, "durability",
        "start despite a damaged journal: replay every intact record, set the damage aside",
        "off"),
    "max_lineage_depth": Option(("CANOPY_MAX_LINEAGE_DEPTH", "MAX_LINEAGE_DEPTH"), int,
        "limits", "deepest allowed message"),
    "max_hot_bytes": Option(("CANOPY_MAX_HOT_BYTES",), int, "limits",
        "memory budget for hot conversations; least recently used ones are passivated past it",
        "25% of physical memory"),
    "max_hot_messages": Option(("CANOPY_MAX_HOT_MESSAGES",), int, "limits",
        "a second cap, on hot messages; whichever is reached first evicts"),
    "idle_seconds": Option(("CANOPY_IDLE_SECONDS",), float, "limits",
        "conversations untouched this long are passivated"),
    "max_body_bytes": Option(("CANOPY_MAX_BODY_BYTES",), int, "limits",
        "larger request bodies get 413"),
    "body_timeout": Option(("CANOPY_BODY_TIMEOUT",), float, "limits",
        "seconds to receive a whole request body; past it, 408"),
    "max_body_buffer_bytes": Option(("CANOPY_MAX_BODY_BUFFER_BYTES",), int, "limits",
        "request bodies still arriving, node-wide; past it, 503"),
    "response_cache_bytes": Option(("CANOPY_RESPONSE_CACHE_BYTES",), int, "limits",
        "encoded lineage and tree responses kept, node-wide (0 turns the cache off)"),
    "max_response_bytes": Option(("CANOPY_MAX_RESPONSE_BYTES",), int, "limits",
        "one response larger than this answers 413 with a hint to page"),
    "response_budget_bytes": Option(("CANOPY_RESPONSE_BUDGET_BYTES",), int, "limits",
        "large responses being encoded or sent at once, node-wide; past it they wait, then 503"),
    "write_timeout": Option(("CANOPY_WRITE_TIMEOUT",), float, "limits",
        "seconds a client may take to read one chunk of a response before it is cut"),
    "auth": Option(("CANOPY_AUTH",), str, "auth",
        "how callers authenticate, comma separated: none, api-key, jwt"),
    "allow_anonymous": Option(("CANOPY_ALLOW_ANONYMOUS",), bool, "auth",
        "allow --auth none on an address other than loopback", "off"),
    "api_keys_file": Option(("CANOPY_API_KEYS_FILE",), Path, "auth",
        "file of 'name sha256-hex' lines, one per API key (--auth api-key)", "none"),
    "api_keys": Option(("CANOPY_API_KEYS",), str, "auth",
        "API key digests inline: name:sha256-hex,... (--auth api-key)", "none"),
    "rate_limit": Option(("CANOPY_RATE_LIMIT",), str, "limits",
        "requests per caller: N/s,burst=M (a token bucket per user, service or address; "
        "shared in Redis when the journal is there)", "off"),
    "cors_origins": Option(("CANOPY_CORS_ORIGINS",), str, "server",
        "browser origins allowed to call, comma separated, or *; preflights are answered", "none"),
    "retention_sweep_seconds": Option(("CANOPY_RETENTION_SWEEP_SECONDS",), float, "storage",
        "seconds between sweeps that remove expired conversations from the store and journal "
        "(they vanish from reads at once)"),
    "default_ttl_seconds": Option(("CANOPY_DEFAULT_TTL_SECONDS",), int, "storage",
        "a new conversation expires this many seconds after creation; 0: never"),
    "sidebar_cache_seconds": Option(("CANOPY_SIDEBAR_CACHE_SECONDS",), float, "storage",
        "seconds at most a user's sidebar first-page store rows are kept in memory (this "
        "node's writes keep them right; the limit bounds other writers'); 0: read every time"),
    "jwt_secret": Option(("CANOPY_JWT_SECRET",), str, "auth",
        "HS256 secret of --auth jwt (at least 32 bytes); also signs --accounts' tokens",
        "none; with --accounts, generated once into the data dir"),
    "jwt_public_key": Option(("CANOPY_JWT_PUBLIC_KEY",), Path, "auth",
        "PEM RSA or EC public key: RS256 / ES256 tokens of an identity provider", "none"),
    "jwks_file": Option(("CANOPY_JWKS_FILE",), Path, "auth",
        "JSON Web Key Set file; the key is chosen by the token's kid", "none"),
    "jwt_audience": Option(("CANOPY_JWT_AUDIENCE",), str, "auth",
        "the aud claim tokens must carry", "not checked"),
    "jwt_issuer": Option(("CANOPY_JWT_ISSUER",), str, "auth",
        "the iss claim tokens must carry", "not checked"),
    "jwt_ttl_seconds": Option(("CANOPY_JWT_TTL_SECONDS",), int, "auth",
        "lifetime of the tokens /api/auth/login issues"),
    "accounts": Option(("CANOPY_ACCOUNTS",), bool, "auth",
        "built-in accounts: /api/auth/register, /api/auth/login, /api/auth/me (needs --auth jwt)",
        "off"),
    "admin_token": Option(("CANOPY_ADMIN_TOKEN",), str, "admin",
        "bearer token of /admin/... and /metrics (Authorization: Bearer <token>)",
        "none: one is made at start and logged"),
    "metrics_public": Option(("CANOPY_METRICS_PUBLIC",), bool, "admin",
        "serve /metrics without the admin token (for a scrape on a private network)", "off"),
}  # fmt: skip

AUTH_MODES = frozenset({"none", "api-key", "jwt"})

_CHOICES = {
    "flusher_process": ("auto", "on", "off"),
    "durability": get_args(Durability),
    "cache": ("on", "off"),
    "store": ("sqlite", "scylla"),
    "journal": ("file", "redis"),
    "cluster": ("none", "redis"),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    groups = {name: parser.add_argument_group(name, about) for name, about in GROUPS.items()}
    for name, option in _OPTIONS.items():
        flag = "--" + name.replace("_", "-")
        group = groups[option.group]
        help = help_text(name).replace("%", "%%")  # argparse formats help with %
        if option.kind is bool:
            group.add_argument(flag, dest=name, default=None, action="store_const", const="1",
                               help=help)  # fmt: skip
        elif option.kind is switch:  # a bare flag is on, as when it was a bool
            group.add_argument(flag, dest=name, default=None, nargs="?", const="on",
                               choices=_CHOICES[name], help=help)  # fmt: skip
        else:
            group.add_argument(flag, dest=name, default=None, help=help, choices=_CHOICES.get(name))


def help_text(name: str) -> str:
    """An option's help: what it does, its default, its environment variables."""
    option = _OPTIONS[name]
    default = option.default
    if default is None:
        default = str(Settings.__dataclass_fields__[name].default)
    return f"{option.help} (default: {default}; env: {', '.join(option.env)})"


def build(args: argparse.Namespace, environ: Mapping[str, str] = os.environ) -> Settings:
    """Command line over environment over defaults; raises ValueError on a bad value."""
    values: dict[str, object] = {}
    for name, (variables, kind, *_) in _OPTIONS.items():
        raw = getattr(args, name, None)
        if raw is None:
            raw = next((environ[v] for v in variables if environ.get(v)), None)
        if raw is not None:
            try:
                values[name] = _flag(raw) if kind is bool else kind(raw)
            except ValueError:
                what = getattr(kind, "__name__", kind)
                raise ValueError(f"{name}: cannot read {raw!r} as {what}") from None
    settings = Settings(**values)  # type: ignore[arg-type]
    for name, choices in _CHOICES.items():  # the environment bypasses argparse's choices
        if getattr(settings, name) not in choices:
            raise ValueError(
                f"{name} must be one of {', '.join(choices)}; got {getattr(settings, name)!r}"
            )
    try:
        workers = settings.worker_count()
    except ValueError:
        raise ValueError(
            f"workers must be a positive number or auto; got {settings.workers!r}"
        ) from None
    if workers > 1:
        check_workers(settings)
    if settings.flusher_process == "on":
        check_flusher_process(settings)
    if not 0 <= settings.flusher_nice <= 19:
        raise ValueError(f"flusher_nice must be 0 to 19; got {settings.flusher_nice}")
    if settings.cluster != "none":
        check_cluster(settings)
    if settings.journal == "redis":
        settings.redis().check()
    if settings.busy_poll_us < 0:
        raise ValueError(f"busy_poll_us must be 0 (off) or more; got {settings.busy_poll_us}")
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
    if "jwt" in modes or settings.accounts:
        _check_jwt(settings)
    from gateway.cors import parse_origins  # ValueError for a malformed spec, at start
    from gateway.ratelimit import parse_rate_limit

    parse_rate_limit(settings.rate_limit)
    parse_origins(settings.cors_origins)
    if "none" in modes and len(modes) > 1:
        raise ValueError(
            "--auth none lets every request without a credential in unchecked, so combined "
            f"with {', '.join(sorted(modes - {'none'}))} it would turn them off: choose one"
        )
    if "none" in modes and not settings.allow_anonymous and not _loopback(settings.host):
        raise ValueError(
            f"--auth none on {settings.host} would let anyone on the network in: bind to "
            "127.0.0.1, configure --auth jwt or api-key, or pass --allow-anonymous"
        )
    return settings


def check_workers(settings: Settings) -> None:
    """Workers shard what is embedded (SQLite, the file journal) by placement and share
    what is shared (Cassandra, Redis); what they cannot do yet is refused here."""
    if settings.cache == "off":
        raise ValueError("--workers above 1 needs the cache: listings merge the workers' hot ones")
    if settings.accounts and settings.store == "sqlite":
        raise ValueError("--workers above 1 with --accounts needs a shared store (--store "
                         "scylla): accounts live in one store, and the workers shard "
                         "SQLite")  # fmt: skip
    if settings.cluster != "none" and settings.advertise_url:
        raise ValueError("--advertise-url names one address, and each of --workers is a "
                         "cluster member of its own: each advertises its own peer port on "
                         "--host (http://HOST:<port>); leave --advertise-url out")  # fmt: skip


def check_flusher_process(settings: Settings) -> None:
    refused = flusher_process_refused(settings)
    if refused:
        raise ValueError(refused)


def flusher_process_refused(settings: Settings) -> str:
    """Why a flusher process cannot run with these settings ("": it can). It writes a
    Redis journal behind, for a node that caches."""
    if settings.journal != "redis":
        return ("--flusher-process writes a Redis journal behind: it needs "
                "--journal redis (the file journal's flusher runs in the node)")  # fmt: skip
    if settings.cache == "off":
        return "--flusher-process has nothing to write behind with --cache off"
    if settings.durability == "store":
        return ("--flusher-process cannot acknowledge after the store commit: "
                "--durability store writes in the serving process")  # fmt: skip
    if settings.worker_count() > 1 and settings.cluster == "none":
        return ("--workers above 1 with --flusher-process needs --cluster redis (each "
                "worker's flusher would take every journaled conversation; a member's "
                "takes only those no other member holds)")  # fmt: skip
    return ""


def check_cluster(settings: Settings) -> None:
    """A node's leases last while its heartbeat does (engine/directory_redis.py): the
    heartbeat deadline bounds failover, kept under --lease-seconds."""
    if settings.heartbeat_seconds <= 0 or settings.lease_seconds <= 0:
        raise ValueError("heartbeat_seconds and lease_seconds must be positive")
    if settings.heartbeat_deadline() >= settings.lease_seconds:
        raise ValueError(
            f"a heartbeat deadline of {settings.heartbeat_deadline():g}s "
            f"({HEARTBEATS_PER_DEADLINE} x --heartbeat-seconds) must be shorter than "
            f"--lease-seconds ({settings.lease_seconds:g}s)"
        )


def environment(settings: Settings) -> dict[str, str]:
    """The settings as `CANOPY_*` variables: what a child process (`canopy flusher`)
    builds the same settings from."""
    variables: dict[str, str] = {}
    for name, option in _OPTIONS.items():
        value = getattr(settings, name)
        if value is None:
            continue
        if isinstance(value, bool):
            value = "1" if value else "0"
        variables[option.env[0]] = str(value)
    return variables


def _check_jwt(settings: Settings) -> None:
    from gateway.jwt_auth import load_public_keys  # config stays free of the gateway's imports

    if settings.accounts and "jwt" not in settings.auth_modes():
        raise ValueError("--accounts issues JWTs: it needs --auth jwt (e.g. --auth jwt,api-key)")
    if settings.jwt_secret and len(settings.jwt_secret.encode()) < 32:
        raise ValueError("jwt_secret: an HS256 secret needs at least 32 bytes (RFC 7518 3.2)")
    if settings.jwt_ttl_seconds <= 0:
        raise ValueError("jwt_ttl_seconds must be positive")
    try:
        keys = load_public_keys(settings.jwt_public_key, settings.jwks_file)
    except (OSError, ValueError) as exc:
        raise ValueError(f"jwt keys: {exc}") from None
    if not (keys or settings.jwt_secret or settings.accounts):
        raise ValueError(
            "--auth jwt needs a key: --jwt-secret, --jwt-public-key, --jwks-file or --accounts"
        )


def _loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"
