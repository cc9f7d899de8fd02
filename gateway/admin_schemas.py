"""What the admin API answers (msgspec Structs: encoded and described from one place)."""

from __future__ import annotations

from typing import Any

import msgspec


class NodeOut(msgspec.Struct, kw_only=True):
    node_id: str
    address: str
    heartbeat_age_seconds: float
    actors: int
    hot_messages: int
    memory_bytes: int  # the hot conversations, by the budget's model
    rss_bytes: int  # the whole process
    unflushed_bytes: int
    unflushed_records: int
    flush_lag_seconds: float
    requests_per_second: float
    stats: dict[str, dict[str, Any]]  # every component's stats()


class NodesOut(msgspec.Struct):
    nodes: list[NodeOut]


class ActorOut(msgspec.Struct, kw_only=True):
    conversation_id: str
    owner_node: str
    epoch: int
    messages: int
    branches: int
    memory_bytes: int
    unflushed_bytes: int
    unflushed_records: int
    last_flush: float | None  # epoch seconds; None: not among the recent writes
    pending_mutations: int  # appends queued for the next group commit
    idle_seconds: float
    title: str


class ActorsOut(msgspec.Struct, omit_defaults=True):  # missing_nodes only if any
    actors: list[ActorOut]
    total: int
    next_cursor: str | None
    missing_nodes: list[str] = msgspec.field(default_factory=list)  # peers that did not answer


class PassivatedOut(msgspec.Struct):
    conversation_id: str
    passivated: bool
