"""TensorBoard beside the primary TF node (executor side, started by the node task).

TensorBoard runs as a guarded child in its own process group, on a port of the node's address
held for it (bound to that address only, unless ``bind_all``), and is stopped with its group
when the node task ends. TensorBoard itself has no authentication: it serves the event files
read-only to whoever reaches that address.
"""
from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import threading
from typing import Callable

from tfos.core.runtime import listen_host
from tfos.executor import process


@contextlib.contextmanager
def nothing():
    yield None


@contextlib.contextmanager
def serve(host: str, log_dir: str, kill_grace: float, on_ready: Callable[[str], None],
          on_output: Callable[[str], None], bind_all: bool = False):
    """Runs TensorBoard on ``log_dir``; calls ``on_ready(url)`` once it announces its address.

    Its output lines go to ``on_output`` (the node's forwarded log), so a TensorBoard that
    cannot start says why on the driver.
    """
    os.makedirs(log_dir, exist_ok=True)
    with process.reserved_port(host) as port:
        command = process.guarded([sys.executable, "-m", "tensorboard.main", "--logdir", log_dir,
                                   "--host", listen_host(host, bind_all),
                                   "--port", str(port)])
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        with process.ChildProcess(command, env=env, stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, kill_grace=kill_grace) as child:
            url = f"http://{host}:{port}/"
            watcher = threading.Thread(target=_watch, args=(child.popen.stdout, url, on_ready, on_output),
                                       name="tfos-tensorboard", daemon=True)
            watcher.start()
            yield url


def _watch(stream, url: str, on_ready: Callable[[str], None],
           on_output: Callable[[str], None]) -> None:
    """Announces the URL when TensorBoard says it serves, and passes its output on."""
    announced = False
    for raw in stream:
        line = raw.decode("utf-8", "replace").rstrip()
        on_output(f"tensorboard: {line}")
        if not announced and " at http" in line:
            announced = True
            on_ready(url)
    if not announced:
        on_output(f"tensorboard: exited before serving on {url}")
