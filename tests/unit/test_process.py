"""Child processes of a node task (`tfos.executor.process`, `tfos.executor.process_guard`): real processes."""
from __future__ import annotations

import errno
import json
import os
import signal
import socket
import subprocess
import sys
import time

import psutil
import pytest

from tfos.executor import process

HOST = "127.0.0.1"

# Ignores SIGTERM (as a TF process with a distribution strategy does), starts a grandchild in
# its own process group (which inherits the ignored SIGTERM), and prints its pid once set up.
STUBBORN = """
import signal, subprocess, sys, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
grandchild = subprocess.Popen(["sleep", "60"])
print(grandchild.pid, flush=True)
time.sleep(60)
"""


def gone(pid: int) -> bool:
    """True once ``pid`` is dead (a zombie awaiting its reaper counts as dead)."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def wait_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not gone(pid):
        if time.monotonic() > deadline:
            return False
        try:
            psutil.Process(pid).wait(0.05)
        except (psutil.TimeoutExpired, psutil.NoSuchProcess, ChildProcessError):
            pass
    return True


def kill_if_alive(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def test_stop_kills_a_child_that_ignores_sigterm_and_its_grandchild():
    child = process.ChildProcess([sys.executable, "-c", STUBBORN], env=dict(os.environ),
                                 stdout=subprocess.PIPE, kill_grace=0.3)
    grandchild = int(child.popen.stdout.readline())
    try:
        assert os.getpgid(grandchild) == child.pid == os.getpgid(child.pid)
        assert os.getpgid(child.pid) != os.getpgid(0)  # its own group, not ours
        started = time.monotonic()
        assert child.stop() == -signal.SIGKILL
        assert time.monotonic() - started < 5
        assert wait_gone(grandchild, timeout=5), "grandchild survived the group kill"
    finally:
        kill_if_alive(grandchild)
        child.popen.stdout.close()


def test_stop_of_a_cooperative_child_returns_its_sigterm_exit():
    child = process.ChildProcess(["sleep", "60"], env=dict(os.environ), kill_grace=5)
    started = time.monotonic()
    assert child.stop() == -signal.SIGTERM
    assert time.monotonic() - started < 3  # did not wait out the grace period


def test_stop_kills_grandchildren_left_by_a_leader_that_already_exited():
    script = ("import subprocess; p = subprocess.Popen(['sleep', '60']); "
              "print(p.pid, flush=True)")
    child = process.ChildProcess([sys.executable, "-c", script], env=dict(os.environ),
                                 stdout=subprocess.PIPE, kill_grace=1)
    grandchild = int(child.popen.stdout.readline())
    try:
        assert child.popen.wait(10) == 0
        assert not gone(grandchild)
        child.stop()
        assert wait_gone(grandchild, timeout=5)
    finally:
        kill_if_alive(grandchild)
        child.popen.stdout.close()


def test_the_context_manager_stops_the_group():
    with process.ChildProcess(["sleep", "60"], env=dict(os.environ), kill_grace=1) as child:
        assert child.popen.poll() is None
    assert child.popen.returncode == -signal.SIGTERM


def test_a_second_stop_is_harmless():
    child = process.ChildProcess(["true"], env=dict(os.environ), kill_grace=1)
    assert child.stop() in (0, -signal.SIGTERM)
    assert child.stop() == child.popen.returncode


def test_the_child_gets_exactly_the_environment_given():
    env = {"PATH": os.environ["PATH"], "ONLY_THIS": "yes"}
    child = process.ChildProcess(
        [sys.executable, "-c", "import json, os; print(json.dumps(sorted(os.environ)))"],
        env=env, stdout=subprocess.PIPE, kill_grace=1)
    out, _ = child.popen.communicate(timeout=10)
    child.stop()
    # Python itself may add LC_CTYPE (C locale coercion); nothing else may leak in.
    assert set(json.loads(out)) - {"LC_CTYPE"} == {"ONLY_THIS", "PATH"}


# -- reserved_port ------------------------------------------------------------------------------

def test_reserved_port_blocks_plain_binds_but_admits_a_reuseaddr_listener():
    with process.reserved_port(HOST) as port:
        assert 0 < port < 65536
        plain = socket.socket()
        with pytest.raises(OSError) as info:
            plain.bind((HOST, port))
        plain.close()
        assert info.value.errno == errno.EADDRINUSE

        server = socket.socket()
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind((HOST, port))
        server.listen()
        try:
            with socket.create_connection((HOST, port), timeout=5) as client:
                conn, _ = server.accept()
                client.sendall(b"ping")
                assert conn.recv(4) == b"ping"
                conn.close()
        finally:
            server.close()


def test_a_reserved_port_is_released_at_the_end_of_the_block():
    with process.reserved_port(HOST) as port:
        pass
    plain = socket.socket()
    try:
        plain.bind((HOST, port))
    finally:
        plain.close()


def test_two_reservations_get_different_ports():
    with process.reserved_port(HOST) as a, process.reserved_port(HOST) as b:
        assert a != b


def test_reserved_port_works_on_ipv6_loopback():
    if not socket.has_ipv6:
        pytest.skip("no IPv6 in this Python")
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError:
        pytest.skip("no IPv6 loopback on this host")
    with process.reserved_port("::1") as port:
        plain = socket.socket(socket.AF_INET6)
        with pytest.raises(OSError):
            plain.bind(("::1", port))
        plain.close()


# -- process_guard --------------------------------------------------------------------------------

# An intermediate process (a Spark Python worker, say) that starts a guarded `sleep`.
INTERMEDIATE = """
import os, subprocess, sys
guard = subprocess.Popen([sys.executable, "-m", "tfos.executor.process_guard", str(os.getpid()), "--",
                          "sleep", "60"])
print(guard.pid, flush=True)
guard.wait()
"""


def test_guarded_sleep_dies_when_its_parent_is_sigkilled():
    intermediate = subprocess.Popen([sys.executable, "-c", INTERMEDIATE], stdout=subprocess.PIPE)
    guarded = int(intermediate.stdout.readline())
    try:
        # The guard execs into `sleep` (same pid) once the parent-death signal is armed.
        deadline = time.monotonic() + 10
        while psutil.Process(guarded).name() != "sleep":
            assert time.monotonic() < deadline, "process_guard never exec'ed the command"
            time.sleep(0.02)
        assert psutil.Process(guarded).ppid() == intermediate.pid
        intermediate.kill()
        intermediate.wait(5)
        assert wait_gone(guarded, timeout=5), "guarded command outlived its parent"
    finally:
        kill_if_alive(guarded)
        intermediate.kill()
        intermediate.wait(5)
        intermediate.stdout.close()


def test_guard_refuses_to_start_when_its_parent_is_not_the_expected_one(tmp_path):
    marker = tmp_path / "ran"
    result = subprocess.run([sys.executable, "-m", "tfos.executor.process_guard", "1", "--",
                             "touch", str(marker)], capture_output=True, timeout=30)
    assert result.returncode == 1
    assert not marker.exists()


def test_guard_runs_the_command_under_its_expected_parent(tmp_path):
    marker = tmp_path / "ran"
    result = subprocess.run(process.guarded(["touch", str(marker)]), capture_output=True,
                            timeout=30)
    assert result.returncode == 0, result.stderr
    assert marker.exists()


@pytest.mark.parametrize("args", [[], ["123"], ["123", "sleep", "1"], ["123", "--"]])
def test_guard_usage_errors(args):
    result = subprocess.run([sys.executable, "-m", "tfos.executor.process_guard", *args],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 2
    assert "usage: python -m tfos.executor.process_guard PARENT_PID -- COMMAND" in result.stderr


def test_guarded_wraps_the_command_with_this_process_as_parent():
    command = process.guarded(["tensorboard", "--logdir", "x"])
    assert command == [sys.executable, "-m", "tfos.executor.process_guard", str(os.getpid()), "--",
                       "tensorboard", "--logdir", "x"]
