"""Ctrl-C in a driver script stops the feed, not the TF cluster (tfos.driver.interrupts)."""
import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time

from conftest import REPO

SCRIPT = REPO / "tests" / "integration" / "data" / "interrupted_train.py"


class Lines:
    """A child's stdout, line by line, read in a thread; ``wait_for`` has a deadline."""

    def __init__(self, stream):
        self.seen: list[str] = []
        self._queue: queue.Queue = queue.Queue()
        threading.Thread(target=self._read, args=(stream,), daemon=True).start()

    def _read(self, stream):
        for line in stream:
            self._queue.put(line.rstrip("\n"))
        self._queue.put(None)

    def wait_for(self, pattern: str, timeout: float) -> re.Match:
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            try:
                line = self._queue.get(timeout=left)
            except queue.Empty:
                break
            if line is None:
                break
            self.seen.append(line)
            found = re.search(pattern, line)
            if found:
                return found
        raise AssertionError(f"no line matching {pattern!r} within {timeout} s; output:\n" +
                             "\n".join(self.seen[-60:]))


def test_ctrl_c_during_train_stops_the_feed_and_the_cluster_trains_on():
    # Its own process group, as a terminal's foreground job: Ctrl-C reaches the driver, the
    # Spark JVMs and every Python worker of the local-cluster at once.
    child = subprocess.Popen([sys.executable, str(SCRIPT)], cwd=REPO, env=dict(os.environ),
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                             start_new_session=True)
    try:
        lines = Lines(child.stdout)
        log_dir = lines.wait_for(r"each node's complete output goes to (\S+)/<job>", 180)[1]
        lines.wait_for(r"^TRAINING$", 180)
        lines.wait_for(r"\] FIRST BATCH$", 120)      # the feed job is running
        interrupted_at = time.monotonic()
        os.killpg(child.pid, signal.SIGINT)
        lines.wait_for(r"^INTERRUPTED after", 60)
        stopped_in = time.monotonic() - interrupted_at
        assert lines.wait_for(r"^OTHER JOBS RUNNING (.*)$", 30)[1] == "[]"
        results = json.loads(lines.wait_for(r"^RESULTS (.*)$", 180)[1])
        assert child.wait(timeout=60) == 0, "\n".join(lines.seen[-60:])
    finally:
        if child.poll() is None:
            os.killpg(child.pid, signal.SIGKILL)
            child.wait()
    assert stopped_in < 20, f"train() took {stopped_in:.1f} s to stop after Ctrl-C"
    # Both nodes lived on: each read its 20 rows of the second train(), after what it had of
    # the interrupted epoch (a worker whose partitions had not started yet got none of it).
    assert sorted(results) == ["worker:0", "worker:1"]
    assert all(20 <= count < 10_020 for count in results.values()), results
    assert sum(results.values()) > 40, results
    logs = {name: open(os.path.join(log_dir, name)).read() for name in os.listdir(log_dir)}
    assert sorted(logs) == ["worker-0.log", "worker-1.log"]
    assert all("FIRST BATCH" in text for text in logs.values())
