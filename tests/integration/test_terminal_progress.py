"""tfos's progress display on a real terminal (a pty): drawn while the driver waits, with the
nodes' lines whole above it and Spark's own console progress bar kept out."""
import os
import pty
import re
import select
import subprocess
import sys
import time

from conftest import REPO

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def run_on_a_terminal(script, timeout: float = 180) -> tuple[int, str]:
    leader, follower = pty.openpty()
    env = dict(os.environ, COLUMNS="120", LINES="40", TERM="xterm-256color")
    proc = subprocess.Popen([sys.executable, str(script)], stdin=subprocess.DEVNULL,
                            stdout=follower, stderr=follower, env=env, cwd=REPO)
    os.close(follower)
    chunks, deadline = [], time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([leader], [], [], deadline - time.monotonic())
        if not ready:
            break
        try:
            data = os.read(leader, 65536)
        except OSError:   # EIO: every process holding the terminal is gone
            break
        if not data:
            break
        chunks.append(data)
    os.close(leader)
    try:
        code = proc.wait(timeout=max(deadline - time.monotonic(), 1))
    finally:
        proc.kill()
    # Control sequences (cursor moves, erases, colours) as line breaks: what was drawn apart
    # stays apart.
    return code, ANSI.sub("\n", b"".join(chunks).decode("utf-8", "replace"))


def test_the_display_is_drawn_and_node_lines_stay_whole():
    code, screen = run_on_a_terminal(REPO / "tests" / "integration" / "apps" / "progress_app.py")
    assert code == 0, screen[-4000:]
    assert "APP DONE" in screen
    lines = [line.strip() for line in screen.replace("\r", "\n").splitlines()]
    # Both nodes' own line, each whole on a line of its own.
    assert sum(bool(re.fullmatch(r"\[worker:\d@[\w.-]+\] read 3000 rows", line))
               for line in lines) == 2, screen[-4000:]
    # The table: each wait titled, rows with state, records and the reported training.
    assert "tfos: starting 2 TF nodes" in screen
    assert "tfos: feeding 'input', 3 epochs" in screen
    assert re.search(r"│ worker:1@[\w.-]+ +│ done +│ +3,000 │", screen), screen[-4000:]
    assert re.search(r"│ epoch 1 +step 60 +loss [\d.e-]+ +│", screen), screen[-4000:]
    # Spark's console progress bar was on, and stopped when tfos first drew.
    assert "[Stage" not in screen, screen[-4000:]
