"""Child processes of a node task (executor side): the TF node and helper services.

Every child is the leader of its own process group, and asks the kernel to SIGKILL it when
its parent dies (``PR_SET_PDEATHSIG``), so a Spark Python worker killed by task cancellation
cannot leave an orphan behind. Normal clean-up stops the whole group: SIGTERM, then SIGKILL
after a grace period (a TF process that built a distribution strategy ignores SIGTERM).
"""
from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys

from tfos.core.runtime import STACKS_SIGNAL, hold_port

logger = logging.getLogger(__name__)
STACKS_GRACE = 1.0   # seconds


def guarded(command: list[str]) -> list[str]:
    """Wraps ``command`` so it runs under the parent-death guard (``tfos.executor.process_guard``)."""
    return [sys.executable, "-m", "tfos.executor.process_guard", str(os.getpid()), "--",
            *command]


class ChildProcess:
    """A child in its own process group, stopped with its whole group on ``stop`` or exit."""

    def __init__(self, command: list[str], *, env: dict[str, str], cwd: str | None = None,
                 stdin=subprocess.DEVNULL, stdout=None, stderr=None, pass_fds=(),
                 kill_grace: float = 3.0):
        self.kill_grace = kill_grace
        self.popen = subprocess.Popen(command, env=env, cwd=cwd, stdin=stdin, stdout=stdout,
                                      stderr=stderr, pass_fds=pass_fds, start_new_session=True)
        self.pid = self.popen.pid

    def stop(self, show_stacks: bool = False) -> int:
        """Stops the process group (TERM, then KILL after the grace period); returns exit code.
        With ``show_stacks`` the process first prints its threads' stacks (``STACKS_SIGNAL``),
        given ``STACKS_GRACE`` seconds to write them before TERM could cut them off."""
        if show_stacks:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(self.pid, STACKS_SIGNAL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.popen.wait(STACKS_GRACE)
        self._signal_group(signal.SIGTERM)
        try:
            self.popen.wait(self.kill_grace)
        except subprocess.TimeoutExpired:
            logger.info("process %d ignored SIGTERM for %.1fs; sending SIGKILL",
                        self.pid, self.kill_grace)
        # Kill the group even when the leader exited: grandchildren may remain in it.
        self._signal_group(signal.SIGKILL)
        return self.popen.wait()

    def _signal_group(self, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, sig)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()


@contextlib.contextmanager
def reserved_port(host: str):
    """Holds a free TCP port on ``host`` until the block ends.

    The socket is bound with SO_REUSEADDR but never listens, so a server that also sets
    SO_REUSEADDR (TensorFlow's gRPC server, TensorBoard) can bind the same port while we hold
    it, and nobody else can take it in between.
    """
    with hold_port(host) as sock:
        yield sock.getsockname()[1]
