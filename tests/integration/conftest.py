"""Fixtures that build real Spark applications, named after the cluster they build.

One SparkContext can live in a process at a time, so a session-wide ``SparkSessions`` keeps the
current one and replaces it when a test asks for a different cluster. Every test is followed
by a check of the process table: no TF node, TensorBoard or guard process may outlive it.
"""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

REPO = Path(__file__).resolve().parents[2]
TFOS_PROCESS_MARKERS = ("tfos.node.main", "tfos.executor.process_guard", "tensorboard.main")
# Every process this test session starts (Spark executors, and through them the TF nodes)
# inherits this variable, so the leftover check sees our processes and nobody else's.
SESSION_MARK = "TFOS_TEST_SESSION"
os.environ[SESSION_MARK] = f"{os.getpid()}-{time.time_ns()}"
# The tests' JVMs live seconds to minutes and run small jobs: C1 alone and the serial GC (as
# scripts/spark_lib.sh gives the daemons) spend about a third less CPU on them, which a 2-core
# machine gets back as wall time. SPARK_SUBMIT_OPTS reaches every driver JVM this session
# starts (this process's, and those of the applications, notebooks and examples it runs; in
# local[N] their executors too); local-cluster executors get them from the session below.
FAST_JVM = "-XX:TieredStopAtLevel=1 -XX:+UseSerialGC"
os.environ["SPARK_SUBMIT_OPTS"] = f"{FAST_JVM} {os.environ.get('SPARK_SUBMIT_OPTS', '')}".strip()


def private_spark_home() -> str:
    out = subprocess.run(["bash", str(REPO / "scripts" / "spark_home.sh")], check=True,
                         capture_output=True, text=True, timeout=60)
    return out.stdout.strip().splitlines()[-1]


class SparkSessions:
    def __init__(self):
        self.session = None
        self.key = None
        self.settings: dict = {}

    def get(self, master: str, **conf):
        key = (master, tuple(sorted(conf.items())))
        if self.key != key:
            self.stop()
            from pyspark.sql import SparkSession

            from tfos.driver.preflight import BARRIER_FAIL_FAST
            builder = SparkSession.builder.master(master).appName("tfos-tests")
            # The driver's address is named every time, as the test hosts' sessions name theirs.
            loopback = {"spark.driver.host": "127.0.0.1", "spark.driver.bindAddress": "127.0.0.1"}
            settings = {**BARRIER_FAIL_FAST, "spark.ui.enabled": "false",
                        "spark.executor.extraJavaOptions": FAST_JVM, **loopback, **conf}
            for k, v in settings.items():
                builder = builder.config(k, v)
            self.session, self.key = builder.getOrCreate(), key
            self.settings = settings
        return self.session

    def stop(self):
        if self.session is not None:
            jvm = self.session.sparkContext._jvm
            self.session.stop()
            # PySpark leaves a builder's options as system properties of the JVM, which
            # outlives the session: the next session would inherit them (a test host's
            # address, GPU discovery for every worker).
            for k in self.settings:
                jvm.System.clearProperty(k)
            self.session = self.key = None


SHARED_CLUSTER_FIXTURE = "spark_local_cluster_4x1"


def pytest_collection_modifyitems(session, config, items):
    """Runs the integration modules on the shared local-cluster[4,1,1024] first, one after
    another, then the others (each group in its usual order, each module's tests in theirs).

    Starting that application takes 10-20 s on 2 cores (5 JVMs); in file order the modules
    between them (local[3], test hosts, GPUs, local[2]) replaced it three times over.
    """
    here = Path(__file__).parent
    modules: dict[Path, list] = {}
    for item in items:
        modules.setdefault(item.path, []).append(item)

    def group(module_items) -> int:
        if here not in module_items[0].path.parents:
            return 0      # tests/unit (and anything outside tests/integration) keep the lead
        shared = any(SHARED_CLUSTER_FIXTURE in getattr(item, "fixturenames", ())
                     for item in module_items)
        return 1 if shared else 2

    ordered = sorted(modules.values(), key=group)     # stable: file order within each group
    items[:] = [item for module_items in ordered for item in module_items]


@pytest.fixture(scope="session")
def spark_sessions():
    os.environ["SPARK_HOME"] = private_spark_home()
    sessions = SparkSessions()
    yield sessions
    sessions.stop()


@pytest.fixture
def spark_local_cluster_4x1(spark_sessions):
    """An embedded local-cluster: 4 executor JVMs with 1 core and 1 GiB each."""
    return spark_sessions.get("local-cluster[4,1,1024]")


def tfos_processes() -> list[psutil.Process]:
    """The TF node, guard and TensorBoard processes started by this test session."""
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        cmdline = " ".join(proc.info["cmdline"] or ())
        if any(marker in cmdline for marker in TFOS_PROCESS_MARKERS):
            try:
                ours = proc.environ().get(SESSION_MARK) == os.environ[SESSION_MARK]
            except psutil.Error:
                continue  # gone already
            if ours:
                found.append(proc)
    return found


@pytest.fixture(autouse=True)
def no_leftover_processes():
    """Fails the test if any tfos process outlives it (bounded wait: kills are asynchronous)."""
    yield
    deadline = time.monotonic() + 15
    left = tfos_processes()
    while left and time.monotonic() < deadline:
        psutil.wait_procs(left, timeout=1)
        left = tfos_processes()
    for proc in left:
        proc.kill()
    assert not left, f"tfos processes left behind: {[p.info['cmdline'] for p in left]}"


def run_app(script: str, *args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    """Runs ``tests/integration/apps/<script>`` as its own Spark application."""
    return subprocess.run([sys.executable, str(REPO / "tests" / "integration" / "apps" / script),
                           *args], capture_output=True, text=True, timeout=timeout,
                          env=dict(os.environ))
