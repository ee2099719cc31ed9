"""Facts and guards of the current process that every side needs (pure: standard library only).

The versions a process reports (the driver refuses a node whose Python or TensorFlow differs),
the parent-death signal every child of a node task arms, and the address a server binds.
"""
from __future__ import annotations

import ctypes
import logging
import os
import signal
import socket
import sys
from importlib import metadata

logger = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1
# A TF process prints the Python stacks of all its threads on this signal (faulthandler, so
# also while a thread is stuck in native code): its node task sends it when the driver stops
# nodes that outlived shutdown's timeout.
STACKS_SIGNAL = signal.SIGUSR1


def python_version() -> str:
    return "%d.%d" % sys.version_info[:2]


def tensorflow_version() -> str:
    """The installed TensorFlow's version, read from its metadata (TensorFlow is not imported)."""
    try:
        return metadata.version("tensorflow")
    except metadata.PackageNotFoundError:
        return "none"


def show_stacks_on_signal() -> None:
    """Makes ``STACKS_SIGNAL`` print every thread's Python stack on stderr (and go on)."""
    import faulthandler
    faulthandler.register(STACKS_SIGNAL, file=sys.stderr, all_threads=True, chain=False)


def die_with_parent(expected_parent: int | None) -> bool:
    """Arms PR_SET_PDEATHSIG in this process; False when the parent is already gone."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
            logger.warning("prctl(PR_SET_PDEATHSIG) failed: errno %d", ctypes.get_errno())
    # The parent may have died between fork and prctl: then we were re-parented already.
    return expected_parent is None or os.getppid() == expected_parent


def listen_host(host: str, all_interfaces: bool = False) -> str:
    """The address a server binds: ``host`` (the address it advertises) or, with
    ``all_interfaces`` (ClusterConfig.bind_all_interfaces), the wildcard of its family."""
    if not all_interfaces:
        return host
    return "::" if ":" in host else "0.0.0.0"


def hold_port(host: str, port: int = 0) -> socket.socket:
    """A socket bound to ``host:port`` (0: a free port) with SO_REUSEADDR that never listens:
    it keeps everybody else off the port, while a server that also sets SO_REUSEADDR
    (TensorFlow's gRPC server, TensorBoard) can still bind it."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except BaseException:
        sock.close()
        raise
    return sock
