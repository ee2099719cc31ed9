"""Fixtures of the unit tier: real control planes on 127.0.0.1, no Spark, no TensorFlow.

Fixtures are named after the cluster they build (``control_chief_worker``). Every test is
followed by a check that it left no child process of this pytest process behind.
"""
from __future__ import annotations

import contextlib
import io
import time
from dataclasses import dataclass

import psutil
import pytest

from tfos.core import auth
from tfos.core.config import ClusterConfig
from tfos.core.runtime import python_version, tensorflow_version
from tfos.driver.cluster_state import ClusterState
from tfos.driver.control_service import ControlService
from tfos.executor.control_client import ControlClient

HOST = "127.0.0.1"


@dataclass
class ControlPlane:
    """A driver-side control plane: its state, its running service, a client and the log."""

    config: ClusterConfig
    state: ClusterState
    service: ControlService
    secret: bytes
    client: ControlClient
    log: io.StringIO

    @property
    def address(self) -> str:
        return self.service.address


@pytest.fixture
def control_plane():
    """Factory: ``control_plane(config, ...)`` starts a driver's control plane on 127.0.0.1.

    Keyword arguments go to ``ClusterState`` (``clock``, ``on_failure``); ``driver_versions``
    defaults to this interpreter's Python and TensorFlow. Every plane is stopped at teardown.
    """
    started: list[ControlPlane] = []

    def start(config: ClusterConfig, driver_versions: tuple[str, str] | None = None,
              **state_kwargs) -> ControlPlane:
        log = io.StringIO()
        state = ClusterState(config,
                             driver_versions=driver_versions or (python_version(),
                                                                 tensorflow_version()),
                             log_stream=log, **state_kwargs)
        secret = auth.new_secret()
        service = ControlService(state, secret, HOST).start()
        plane = ControlPlane(config, state, service, secret,
                             ControlClient(service.address, secret, timeout=5.0), log)
        started.append(plane)
        return plane

    yield start
    for plane in started:
        plane.client.close()
        plane.service.stop(grace=0)


@pytest.fixture
def control_chief_worker(control_plane):
    """The control plane of a two-node cluster: chief:0 (node 0) and worker:0 (node 1)."""
    return control_plane(ClusterConfig(num_executors=2, master_node="chief"))


@pytest.fixture(autouse=True)
def no_leftover_children():
    """Fails the test if a child process it started outlives it (bounded wait, then kill).

    Children that existed before the test (another tier's Spark JVMs and Python workers, when
    both tiers run in one pytest session) are not the test's and are left alone.
    """
    before = {p.pid for p in _live_children()}
    yield
    deadline = time.monotonic() + 10
    left = [p for p in _live_children() if p.pid not in before]
    while left and time.monotonic() < deadline:
        psutil.wait_procs(left, timeout=0.5)
        left = [p for p in _live_children() if p.pid not in before]
    described = []
    for proc in left:
        with contextlib.suppress(psutil.Error):
            described.append(" ".join(proc.cmdline()))
            proc.kill()
    assert not left, f"child processes left behind: {described}"


def _live_children() -> list[psutil.Process]:
    live = []
    for proc in psutil.Process().children(recursive=True):
        with contextlib.suppress(psutil.NoSuchProcess):
            if proc.status() != psutil.STATUS_ZOMBIE:
                live.append(proc)
    return live


@pytest.fixture
def launch_record():
    """Makes a node's launch record (tfos.core.launch) for a worker, with ``fields`` changed."""
    return make_launch_record


def make_launch_record(**fields):
    from tfos.core import launch
    defaults = {"node_id": 0, "job_name": "worker", "task_index": 0, "num_workers": 1,
                "cluster_spec": {}, "default_fs": "file:///", "working_dir": "/w", "host": "h"}
    return launch.LaunchRecord(**{**defaults, **fields})
