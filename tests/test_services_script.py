"""scripts/services.sh: waiting for a server it just launched."""

from __future__ import annotations

import subprocess
from pathlib import Path

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "services.sh"


def test_a_server_still_on_its_way_to_exec_is_waited_for_not_declared_dead(
    tmp_path: Path,
) -> None:
    """The pid written at launch is the launching subshell's until it execs the server,
    and its command line does not name the server yet: on a slow machine the first poll
    saw that and said "cassandra exited during start-up" while it was starting."""
    up = tmp_path / "up"
    program = f"""
        source {SCRIPT}
        bash -c 'sleep 1.5; touch {up}; exec sleep 60' &
        launched=$!
        echo $launched > {tmp_path}/server.pid
        check() {{ [[ -e {up} ]]; }}
        wait_until server 30 check {tmp_path}/server.pid NotInItsCommandLine {tmp_path}/log
        echo waited
        kill $launched
    """
    done = subprocess.run(["bash", "-c", program], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "waited" in done.stdout
