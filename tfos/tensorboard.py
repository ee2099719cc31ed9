"""TensorBoard beside the primary TF node (executor side, started by the node task).

TensorBoard runs as a guarded child in its own process group, on a port of the node's address
held for it, and is stopped with its group when the node task ends.
"""
from __future__ import annotations

import contextlib
import logging
import os
import subprocess
import sys
import threading
from typing import Callable

from tfos import process

logger = logging.getLogger(__name__)


@contextlib.contextmanager
def nothing():
    yield None


@contextlib.contextmanager
def serve(host: str, log_dir: str, kill_grace: float, on_ready: Callable[[str], None]):
    """Runs TensorBoard on ``log_dir``; calls ``on_ready(url)`` once it announces its address."""
    os.makedirs(log_dir, exist_ok=True)
    with process.reserved_port(host) as port:
        command = process.guarded([sys.executable, "-m", "tensorboard.main", "--logdir", log_dir,
                                   "--host", host, "--port", str(port)])
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        with process.ChildProcess(command, env=env, stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, kill_grace=kill_grace) as child:
            url = f"http://{host}:{port}/"
            watcher = threading.Thread(target=_watch, args=(child.popen.stdout, url, on_ready),
                                       name="tfos-tensorboard", daemon=True)
            watcher.start()
            yield url


def _watch(stream, url: str, on_ready: Callable[[str], None]) -> None:
    """Announces the URL when TensorBoard says it serves, then drains its output."""
    announced = False
    for raw in stream:
        line = raw.decode("utf-8", "replace").rstrip()
        if not announced and " at http" in line:
            announced = True
            on_ready(url)
        logger.debug("tensorboard: %s", line)
    if not announced:
        logger.warning("TensorBoard exited before serving on %s", url)
