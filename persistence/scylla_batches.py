"""Unlogged batches of prepared statements, bound without the driver's per-value cost.

`BatchStatement.add` binds each row through a `BoundStatement`: per value a column
descriptor namedtuple, an encryption-policy check and a serializer call, about 10 µs of
Python per row. A `Binder` serializes a prepared statement's values with one function
per column, chosen once, and appends the row to the batch as the driver itself would
(`_add_statement_and_params`, the driver's own path for bound rows); the batch's first
row still goes through `add`, which gives the batch its routing key.

A write's batches are built one at a time (`Batches`), so that a caller can let the
event loop run between them: a fork's 1,000 rows are ten short steps, not one 15 ms one.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

from cassandra import cqltypes
from cassandra.marshal import int32_pack, int64_pack
from cassandra.query import BatchStatement, BatchType, PreparedStatement

Serializer = Callable[[Any], bytes]

_BY_TYPE: dict[type, Serializer] = {
    cqltypes.UTF8Type: str.encode,
    cqltypes.VarcharType: str.encode,
    cqltypes.Int32Type: int32_pack,
    cqltypes.LongType: int64_pack,
    cqltypes.BytesType: bytes,
    cqltypes.BooleanType: lambda value: b"\x01" if value else b"\x00",
}


class Binder:
    """Serializes values for one prepared statement, as `BoundStatement.bind` would."""

    def __init__(self, prepared: PreparedStatement) -> None:
        self.prepared = prepared
        version = prepared.protocol_version
        self._serializers = tuple(
            _serializer(column.type, version) for column in prepared.column_metadata
        )
        # Column encryption rewrites values per column: leave such statements to the driver.
        self.fast = prepared.column_encryption_policy is None
        self.table = prepared.column_metadata[0].table_name if prepared.column_metadata else ""

    def values(self, params: Sequence[Any]) -> list[bytes | None]:
        if len(params) != len(self._serializers):
            raise ValueError(f"{len(params)} values for {len(self._serializers)} bind markers")
        return [
            None if value is None else serialize(value)
            for serialize, value in zip(self._serializers, params, strict=True)
        ]


def _serializer(kind: Any, protocol_version: int) -> Serializer:
    found = _BY_TYPE.get(kind)
    if found is not None:
        return found
    return lambda value: kind.serialize(value, protocol_version)


class Batches:
    """Cuts statements into unlogged batches of at most `rows` statements and about
    `max_bytes` of values each (Cassandra refuses a batch over 50 KiB by default); a batch
    over several tables stays under `mixed_bytes` (Cassandra warns of a batch over 5 KiB
    of several partitions, and the driver logs each warning)."""

    def __init__(self, rows: int, max_bytes: int, mixed_bytes: int = 4096) -> None:
        self._rows = rows
        self._max_bytes = max_bytes
        self._mixed_bytes = mixed_bytes

    def cut(
        self, bound: Iterable[tuple[Binder, Sequence[Any]]]
    ) -> Iterator[tuple[BatchStatement, bool]]:
        """Each batch as soon as it is full, and whether more follow: the caller may let
        the loop run between them."""
        batch, size = BatchStatement(batch_type=BatchType.UNLOGGED), 0
        table, mixed = "", False
        for binder, params in bound:
            if not len(batch):
                batch.add(binder.prepared, params)  # sets the batch's routing key
                size, table, mixed = _weight(params), binder.table, False
                continue
            if binder.fast:
                values = binder.values(params)
                weight = sum(map(len, filter(None, values)))
            else:
                values, weight = None, _weight(params)
            mixed = mixed or binder.table != table
            if (
                len(batch) >= self._rows
                or size + weight > self._max_bytes
                or (mixed and size + weight > self._mixed_bytes)
            ):
                yield batch, True
                batch, size = BatchStatement(batch_type=BatchType.UNLOGGED), 0
                batch.add(binder.prepared, params)
                table, mixed = binder.table, False
            elif values is None:
                batch.add(binder.prepared, params)
            else:
                batch._add_statement_and_params(True, binder.prepared.query_id, values)
            size += weight
        if len(batch):
            yield batch, False


    def together(self, bound: Iterable[tuple[Binder, Sequence[Any]]]) -> BatchStatement:
        """One logged batch of all of `bound`, whatever its size: what must land at once."""
        batch = BatchStatement(batch_type=BatchType.LOGGED)
        for binder, params in bound:
            if len(batch) and binder.fast:
                values = binder.values(params)
                batch._add_statement_and_params(True, binder.prepared.query_id, values)
            else:
                batch.add(binder.prepared, params)
        return batch


def _weight(params: Sequence[Any]) -> int:
    return sum(len(p) for p in params if isinstance(p, bytes | str))
