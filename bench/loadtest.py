"""`make loadtest`: a local node plus a headless, bounded locust run.

    python -m bench.loadtest [--users 32] [--seconds 30]

Writes `bench/results/loadtest.html` and `loadtest_*.csv`, then prints the node's
store writes per acknowledged message (from its shutdown log line).
"""

from __future__ import annotations

import argparse
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

RESULTS = Path(__file__).parent / "results"
LOCUSTFILE = Path(__file__).parent / "locustfile.py"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--users", type=int, default=32)
    parser.add_argument("--seconds", type=int, default=30)
    args = parser.parse_args()
    RESULTS.mkdir(exist_ok=True)
    port = free_port()
    with tempfile.TemporaryDirectory() as data, open(RESULTS / "node.log", "wb") as log:
        node = subprocess.Popen(
            [sys.executable, "-m", "gateway.cli", "serve", "--port", str(port), "--data-dir", data],
            stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        try:
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
        finally:
            node.terminate()
            node.wait(timeout=60)
    print((RESULTS / "node.log").read_text().strip().splitlines()[-1])
    return locust.returncode


if __name__ == "__main__":
    sys.exit(main())
