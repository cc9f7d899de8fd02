"""What each of `--workers N` serves with (gateway/workers.py `worker_settings`)."""

from __future__ import annotations

from pathlib import Path

from gateway.config import Settings
from gateway.workers import worker_settings


def test_each_worker_has_its_shard_and_node_id_and_all_share_one_accounts_secret(
    tmp_path: Path,
) -> None:
    node = Settings(data_dir=tmp_path, node_id="n1", workers="2", accounts=True, auth="jwt")
    first, second = (worker_settings(node, k) for k in range(2))
    assert (first.data_dir, second.data_dir) == (tmp_path / "worker-0", tmp_path / "worker-1")
    assert (first.node_id, second.node_id) == ("n1/worker-0", "n1/worker-1")
    assert first.jwt_secret and first.jwt_secret == second.jwt_secret  # a token verifies on both
    assert (tmp_path / "jwt-secret").read_text().strip() == first.jwt_secret
    assert worker_settings(node, 0).jwt_secret == first.jwt_secret  # kept across restarts


def test_over_a_shared_store_no_worker_keeps_first_pages_of_store_rows(tmp_path: Path) -> None:
    sharded = worker_settings(Settings(data_dir=tmp_path, sidebar_cache_seconds=60), 0)
    shared = worker_settings(Settings(data_dir=tmp_path, store="scylla"), 0)
    assert (sharded.sidebar_cache_seconds, shared.sidebar_cache_seconds) == (60, 0)
    assert worker_settings(Settings(data_dir=tmp_path, accounts=False), 0).jwt_secret == ""
