"""`make loadtest`: a local node plus a headless, bounded locust run.

    python -m bench.loadtest [--users 32] [--seconds 30]

Writes `bench/results/loadtest.html` and `loadtest_*.csv`, then prints the store
writes per acknowledged write: the node's flusher counts (its shutdown log line) over
the successful mutating requests locust counted.
"""

from __future__ import annotations

import argparse
import csv
import re
import subprocess
import sys
import tempfile
from pathlib import Path

from bench.node import canopy, free_port, node

RESULTS = Path(__file__).parent / "results"
LOCUSTFILE = Path(__file__).parent / "locustfile.py"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--users", type=int, default=32)
    parser.add_argument("--seconds", type=int, default=30)
    args = parser.parse_args()
    RESULTS.mkdir(exist_ok=True)
    port = free_port()
    with (
        tempfile.TemporaryDirectory() as data,
        node(canopy(port, Path(data)), port, RESULTS / "node.log"),
    ):
        locust = subprocess.run(
            [
                sys.executable, "-m", "locust", "-f", str(LOCUSTFILE),
                "--headless", "-u", str(args.users), "-r", str(max(1, args.users // 4)),
                "-t", f"{args.seconds}s", "--stop-timeout", "5",
                "--host", f"http://127.0.0.1:{port}",
                "--html", str(RESULTS / "loadtest.html"), "--csv", str(RESULTS / "loadtest"),
            ],
            timeout=args.seconds + 120,
        )  # fmt: skip
    print(store_writes_per_ack())
    return locust.returncode


MUTATIONS = ("append", "create", "branch", "fork", "share")


def store_writes_per_ack() -> str:
    with open(RESULTS / "loadtest_stats.csv", newline="") as stats:
        ok = {
            row["Name"]: int(row["Request Count"]) - int(row["Failure Count"])
            for row in csv.DictReader(stats)
        }
    acked = sum(ok.get(name, 0) for name in MUTATIONS)
    closed = re.search(
        r"flusher closed: (\d+) batches, (\d+) messages written",
        (RESULTS / "node.log").read_text(),
    )
    if closed is None or not acked:
        return "no flusher summary or no acknowledged writes: see bench/results/node.log"
    batches, rows = int(closed[1]), int(closed[2])
    return (
        f"{acked} acknowledged writes ({ok.get('append', 0)} appends): {batches} store batches"
        f" ({batches / acked:.2f} per write), {rows} message rows"
        f" ({rows / acked:.2f} per write, fork copies and roots included)"
    )


if __name__ == "__main__":
    sys.exit(main())
