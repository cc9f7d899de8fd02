#!/usr/bin/env bash
# Three Canopy nodes on 127.0.0.1:8081-8083 over one Redis and one Cassandra (start them
# first: `make services`), as one cluster: --cluster redis --journal redis --store scylla,
# node ids n1..n3, each with its own data dir under $CANOPY_CLUSTER_DIR. All three share
# one admin token (CANOPY_ADMIN_TOKEN, or one made here). Prints their URLs, /metrics
# URLs (Prometheus scrapes each node) and admin page URLs, and the token; Ctrl-C stops
# them all.
#
#   CANOPY_CLUSTER_DIR   data dirs and logs      (default /tmp/canopy-cluster)
#   CANOPY_REDIS_URL     the Redis               (default redis://127.0.0.1:6379/0)
#   CANOPY_SCYLLA_NODES  Cassandra contact point (default 127.0.0.1:9042)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."  # this checkout's code

BIN="${BIN:-.venv/bin}"
DIR="${CANOPY_CLUSTER_DIR:-/tmp/canopy-cluster}"
REDIS_URL="${CANOPY_REDIS_URL:-redis://127.0.0.1:6379/0}"
SCYLLA="${CANOPY_SCYLLA_NODES:-127.0.0.1:9042}"
PORTS=(8081 8082 8083)
mkdir -p "$DIR"

TOKEN="${CANOPY_ADMIN_TOKEN:-$("$BIN/python" -c 'import secrets; print(secrets.token_urlsafe(24))')}"

pids=()
stop() {
  trap - INT TERM EXIT
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  echo "cluster stopped"
}
trap stop INT TERM EXIT

for k in 0 1 2; do
  port=${PORTS[$k]} id="n$((k + 1))"
  "$BIN/python" -m gateway.cli serve --host 127.0.0.1 --port "$port" --data-dir "$DIR/$id" \
    --cluster redis --journal redis --store scylla --scylla-nodes "$SCYLLA" \
    --redis-url "$REDIS_URL" --node-id "$id" --advertise-url "http://127.0.0.1:$port" \
    --admin-token "$TOKEN" >"$DIR/$id.log" 2>&1 &
  pids+=($!)
  # the first node makes the keyspace's tables; the others start once it serves
  until grep -q "Running on" "$DIR/$id.log"; do
    kill -0 "${pids[-1]}" 2>/dev/null || { cat "$DIR/$id.log"; exit 1; }
    sleep 0.2
  done
  echo "$id: http://127.0.0.1:$port  admin page: http://127.0.0.1:$port/admin" \
    " metrics: http://127.0.0.1:$port/metrics  (log: $DIR/$id.log)"
done
echo "admin token: $TOKEN  (the page asks for it; /admin/... and /metrics take Authorization: Bearer $TOKEN)"
echo "Ctrl-C stops all three"
wait
