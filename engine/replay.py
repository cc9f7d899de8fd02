"""Which journal records of one conversation to apply, in which order, and which to set aside.

Records link to the record they were applied on top of (`Record.prev`). Starting from
the version the Store holds, replay follows those links: the chain it walks is exactly
the history that was acknowledged. A record off the chain is either superseded (an
append that failed, retried on the same state: its ack was never given) or stranded
behind a gap (its predecessor was lost or damaged). Stranded records are never applied,
since their parents may be missing, and never discarded: recovery sets them aside.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import msgspec

from persistence.journal import Entry
from persistence.records import Record, decode_record


@dataclass
class Replayed:
    """One journal record, decoded, with where it came from."""

    record: Record
    entry: Entry


@dataclass
class Plan:
    apply: list[Replayed] = field(default_factory=list)  # the acknowledged chain, in order
    stranded: list[Replayed] = field(default_factory=list)  # behind a gap: set aside
    superseded: int = 0  # failed attempts that a retry replaced
    last_seq: int = 0  # highest seq seen: new records must be numbered past it


def decode(entries: Iterable[Entry]) -> tuple[list[Replayed], list[tuple[Entry, str]]]:
    """The entries that decode, in order, and the ones that do not, with the reason."""
    decoded: list[Replayed] = []
    undecodable: list[tuple[Entry, str]] = []
    for entry in entries:
        try:
            decoded.append(Replayed(decode_record(entry.payload), entry))
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            undecodable.append((entry, f"undecodable record: {exc}"))
    return decoded, undecodable


def plan(records: list[Replayed], base: int) -> Plan:
    """Follow `prev` links from `base` (the stored version) through `records` (one
    conversation's, in journal order)."""
    result = Plan(last_seq=max((r.record.seq for r in records), default=0))
    newer = [r for r in records if r.record.seq > base]
    successor: dict[int, Replayed] = {}
    previous = base
    broken: list[Replayed] = []
    for replayed in newer:
        record = replayed.record
        prev = previous if record.prev < 0 else record.prev  # legacy: journal order
        previous = record.seq
        if prev >= record.seq:  # no live node writes this; following it could loop
            broken.append(replayed)
            continue
        current = successor.get(prev)
        # Two records on one state: the later one is the retry of a failed append.
        if current is None or record.seq > current.record.seq:
            successor[prev] = replayed
    on_chain = {base}
    version = base
    while (following := successor.get(version)) is not None:
        result.apply.append(following)
        version = following.record.seq
        on_chain.add(version)
    placed = {id(r) for r in (*result.apply, *broken)}
    result.stranded += broken
    for replayed in newer:
        if id(replayed) in placed:
            continue
        prev = replayed.record.prev
        if prev >= 0 and prev in on_chain:
            result.superseded += 1
        else:
            result.stranded.append(replayed)
    return result
