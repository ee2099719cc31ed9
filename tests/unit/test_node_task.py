"""The node task run in-process without Spark (``tfos.executor.node_task.run_node``).

Each test runs its node tasks as threads, each with a ``Barrier`` of its own over a
``threading.Barrier``, against a real control service; each node task starts a real TF node
process (``python -m tfos.node.main``) whose ``map_fun`` is plain Python (no TensorFlow).
"""
from __future__ import annotations

import io
import json
import os
import threading
from dataclasses import dataclass, field

import pytest

from tfos.core import launch
from tfos.core import messages as m
from tfos.core.config import ClusterConfig
from tfos.core.errors import ClusterFailed, ProtocolError
from tfos.core.runtime import python_version, tensorflow_version
from tfos.driver.cluster import pickle_map_fun
from tfos.executor.node_task import NodeStageSpec, NodeSupervisor, run_node
from tfos.node.context import ClusterServer, NodeContext

HOST = "127.0.0.1"
FAST = dict(heartbeat_interval=0.1, heartbeat_timeout=5.0, kill_grace=1.0)


@dataclass
class GatherGroup:
    """What the node tasks of one barrier stage share."""

    size: int
    messages: list = field(init=False)
    barrier: threading.Barrier = field(init=False)

    def __post_init__(self):
        self.messages = [None] * self.size
        self.barrier = threading.Barrier(self.size)


class ThreadBarrier:
    """A ``tfos.executor.node_task.Barrier`` for node tasks run as threads of this process."""

    def __init__(self, group: GatherGroup, node_id: int, attempt: int = 0, host: str = HOST,
                 gpus: list[str] | None = None):
        self.group = group
        self.node_id = node_id
        self.attempt = attempt
        self.host = host
        self.gpus = gpus

    def all_gather(self, message: str) -> list[str]:
        self.group.messages[self.node_id] = message
        self.group.barrier.wait(timeout=30)
        # Reversed, so the node task must not rely on the order of the gathered messages.
        return list(reversed(self.group.messages))


def run_nodes(plane, map_fun, args, timeout: float = 60) -> list[int]:
    """Runs every node of ``plane.config`` as a thread; returns their exit codes by node id."""
    spec = NodeStageSpec(plane.config, plane.address, plane.secret,
                         pickle_map_fun(map_fun, args), "file:///")
    n = plane.config.num_nodes
    group = GatherGroup(n)
    codes: list = [None] * n

    def task(node_id: int) -> None:
        codes[node_id] = run_node(spec, ThreadBarrier(group, node_id))

    threads = [threading.Thread(target=task, args=(i,), name=f"node-task-{i}") for i in range(n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout)
    assert not any(t.is_alive() for t in threads), "a node task did not finish"
    return codes


def registered_supervisor(plane) -> NodeSupervisor:
    """The supervisor of node 0 of ``plane``, registered, with no TF process started."""
    plane.client.register(m.Register(0, 0, HOST, 1, os.getpid(), python_version(),
                                     tensorflow_version()))
    spec = NodeStageSpec(plane.config, plane.address, plane.secret, b"", "file:///")
    return NodeSupervisor(spec, plane.client, plane.config.roles[0], HOST, {})


# -- map functions (pickled by value, as TFCluster.run does for a user's module) --------------

def report_map_fun(out_dir, ctx):
    import sys
    print(f"hello from {ctx.job_name}:{ctx.task_index}")
    print("TF_CONFIG=" + os.environ["TF_CONFIG"])
    print("a line on stderr", file=sys.stderr)
    record = {
        "job_name": ctx.job_name, "task_index": ctx.task_index, "worker_num": ctx.worker_num,
        "num_workers": ctx.num_workers, "cluster_spec": ctx.cluster_spec, "host": ctx.host,
        "tf_config": os.environ["TF_CONFIG"],
        "legacy_keras": os.environ.get("TF_USE_LEGACY_KERAS"),
        "extra": os.environ.get("TFOS_TEST_EXTRA"),
        "leaked": sorted(k for k in os.environ
                         if k.startswith("PYSPARK_") or k in ("CUDA_VISIBLE_DEVICES",
                                                               "TFOS_NODE_INFO",
                                                               "TFOS_STATUS_FD",
                                                               "TFOS_PARENT_PID")),
        "absolute": ctx.absolute_path("data/x"), "cwd": os.getcwd(), "log_dir": ctx.log_dir,
    }
    with open(os.path.join(out_dir, f"{ctx.job_name}{ctx.task_index}.json"), "w") as f:
        json.dump(record, f)


def failing_map_fun(args, ctx):
    print("about to fail")
    raise ValueError(f"bad batch size {args}")


def serving_map_fun(args, ctx):
    """ps nodes block in a server's join(), as a TF parameter server does; workers return."""
    import time

    class Server:
        def join(self):
            time.sleep(60)

    if ctx.job_name == "ps":
        ClusterServer(Server(), ctx._notify_serving).join()
    print(f"{ctx.job_name} done")


def huge_output_then_fail_map_fun(args, ctx):
    print("x" * (m.MAX_MESSAGE_BYTES + 1000))
    raise ValueError("failed after a huge line")


# -- tests --------------------------------------------------------------------------------------

def test_two_nodes_run_with_their_roles_and_tf_config(control_plane, tmp_path, monkeypatch):
    monkeypatch.setenv("PYSPARK_GATEWAY_SECRET", "must-not-leak")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "7")
    monkeypatch.setenv("TF_CONFIG", '{"stale": true}')
    plane = control_plane(ClusterConfig(num_executors=2, master_node="chief",
                                        env={"TFOS_TEST_EXTRA": "extra-value"}, **FAST))

    codes = run_nodes(plane, report_map_fun, str(tmp_path))

    assert codes == [0, 0]
    plane.state.wait_finished(timeout=5)
    assert not plane.state.failures
    endpoints = [f"{HOST}:{plane.state.nodes[i].tf_port}" for i in (0, 1)]
    assert len(set(endpoints)) == 2
    spec = {"chief": [endpoints[0]], "worker": [endpoints[1]]}
    for node_id, job in ((0, "chief"), (1, "worker")):
        record = json.loads((tmp_path / f"{job}0.json").read_text())
        assert json.loads(record["tf_config"]) == {
            "cluster": spec, "task": {"type": job, "index": 0}, "environment": "cloud"}
        assert record["cluster_spec"] == spec
        assert (record["job_name"], record["task_index"], record["worker_num"]) == (job, 0, node_id)
        assert record["num_workers"] == 2 and record["host"] == HOST
        assert record["legacy_keras"] == "1"
        assert record["extra"] == "extra-value"
        assert record["leaked"] == []
        assert record["absolute"] == "file://" + os.path.join(record["cwd"], "data/x")
        assert record["log_dir"] is None
        node = plane.state.nodes[node_id]
        assert node.state is m.NodeState.EXITED and node.exit_code == 0

    log = plane.log.getvalue().splitlines()
    assert "[chief:0@127.0.0.1] hello from chief:0" in log
    assert "[worker:0@127.0.0.1] hello from worker:0" in log
    assert "[chief:0@127.0.0.1] a line on stderr" in log
    tf_config_lines = [line for line in log if line.startswith("[worker:0@127.0.0.1] TF_CONFIG=")]
    assert len(tf_config_lines) == 1
    assert json.loads(tf_config_lines[0].split("TF_CONFIG=", 1)[1])["task"] == {
        "type": "worker", "index": 0}


def test_legacy_keras_can_be_turned_off(control_plane, tmp_path):
    plane = control_plane(ClusterConfig(num_executors=1, legacy_keras=False, **FAST))
    assert run_nodes(plane, report_map_fun, str(tmp_path)) == [0]
    assert json.loads((tmp_path / "worker0.json").read_text())["legacy_keras"] is None


class FakeHistory:
    """What tf.keras's ``History`` callback looks like to tfos: ``history`` and the hooks."""

    def __init__(self, history):
        self.history = history

    def on_epoch_end(self, epoch, logs=None):
        pass


def returning_map_fun(args, ctx):
    """Returns what ``args`` names for this node: numpy values, a History, or an object."""
    import numpy as np
    value = args[ctx.worker_num]
    if value == "numpy":
        return {"n": np.int64(ctx.worker_num), "xs": np.arange(3, dtype=np.float32)}
    if value == "history":
        return FakeHistory({"loss": [np.float32(0.5), 0.25]})
    if value == "object":
        return object()
    if value == "huge":
        return "x" * launch.MAX_RESULT_BYTES
    return value


def test_what_map_fun_returns_reaches_the_driver_as_json(control_plane):
    plane = control_plane(ClusterConfig(num_executors=5, **FAST))
    args = ["numpy", "history", "object", "huge", None]
    assert run_nodes(plane, returning_map_fun, args) == [0] * 5
    plane.state.wait_finished(timeout=5)
    results = {n.role.label: n.result for n in plane.state.nodes.values()}
    assert json.loads(results["worker:0"]) == {"n": 0, "xs": [0.0, 1.0, 2.0]}
    assert json.loads(results["worker:1"]) == {"loss": [0.5, 0.25]}
    # What cannot travel is said on the node's output, and the node still succeeds.
    assert results["worker:2"] is None and results["worker:3"] is None
    assert results["worker:4"] is None
    log = plane.log.getvalue()
    assert "[worker:2@127.0.0.1] tfos: map_fun's return value does not reach the driver: " \
        "'object' values cannot be sent as JSON; return JSON-like values" in log
    assert f"{launch.MAX_RESULT_BYTES + 2} bytes as JSON, over the" in log
    assert not plane.state.failures


def test_a_raising_map_fun_exits_1_and_reports_its_traceback(control_plane):
    plane = control_plane(ClusterConfig(num_executors=1, **FAST))

    assert run_nodes(plane, failing_map_fun, 0) == [1]

    (failure,) = plane.state.failures
    assert (failure.node, failure.host, failure.exit_code) == ("worker:0@127.0.0.1", HOST, 1)
    tail = "\n".join(failure.log_tail)
    assert "about to fail" in tail
    assert "Traceback (most recent call last):" in tail
    assert "in failing_map_fun" in tail
    assert failure.log_tail[-1] == "ValueError: bad batch size 0"
    with pytest.raises(ClusterFailed, match="ValueError: bad batch size 0"):
        plane.state.wait_finished(timeout=5)
    assert "[worker:0@127.0.0.1] ValueError: bad batch size 0" in plane.log.getvalue()


def test_a_serving_node_is_stopped_by_the_driver_without_a_failure(control_plane):
    plane = control_plane(ClusterConfig(num_executors=2, num_ps=1, **FAST))
    codes: list = []
    runner = threading.Thread(target=lambda: codes.extend(run_nodes(plane, serving_map_fun, None)))
    runner.start()
    try:
        # Returns once the worker exited and the ps only serves (its process still runs).
        plane.state.wait_finished(timeout=30)
        assert plane.state.nodes[0].state is m.NodeState.SERVING
        assert plane.state.nodes[1].state is m.NodeState.EXITED
    finally:
        plane.state.request_stop()
        runner.join(30)
    assert not runner.is_alive()
    assert codes[1] == 0
    assert codes[0] < 0, "the ps should have been killed by a signal"
    assert not plane.state.failures
    assert plane.state.nodes[0].state is m.NodeState.EXITED
    assert "[worker:0@127.0.0.1] worker done" in plane.log.getvalue()
    assert "ps done" not in plane.log.getvalue()


def test_a_node_refused_by_the_driver_starts_no_process(control_plane, tmp_path):
    plane = control_plane(ClusterConfig(num_executors=1, **FAST),
                          driver_versions=("2.7", "0.1"))
    assert run_nodes(plane, report_map_fun, str(tmp_path)) == [-1]
    assert list(tmp_path.iterdir()) == []
    (failure,) = plane.state.failures
    assert "Python 2.7 / TensorFlow 0.1" in failure.reason


def test_rdma_on_a_host_without_a_device_fails_the_node_before_tensorflow_starts(
        control_plane, tmp_path):
    plane = control_plane(ClusterConfig(num_executors=1, rdma=True, **FAST))
    assert run_nodes(plane, report_map_fun, str(tmp_path)) == [-1]
    assert list(tmp_path.iterdir()) == [], "no TF process ran"
    (failure,) = plane.state.failures
    assert failure.reason.startswith(f"rdma=True (--rdma) on executor host {HOST}: --rdma "
                                     "cannot run on host ")
    assert "(1) no RDMA device" in failure.reason and "drop --rdma" in failure.reason
    assert plane.state.nodes[0].transport == "rdma (unusable)"


def test_a_node_that_fails_after_a_huge_line_is_still_reported_failed(control_plane):
    plane = control_plane(ClusterConfig(num_executors=1, **FAST))
    assert run_nodes(plane, huge_output_then_fail_map_fun, None) == [1]
    with pytest.raises(ClusterFailed):
        plane.state.wait_finished(timeout=3)
    assert plane.state.failures[0].exit_code == 1


def test_forwarding_many_long_lines_loses_none(control_plane):
    plane = control_plane(ClusterConfig(num_executors=1, **FAST))
    supervisor = registered_supervisor(plane)
    lines = [f"{i:03d} " + "y" * 8000 for i in range(256)]  # 2 MiB in all, 8 KB per line
    for line in [*lines, None]:
        supervisor._lines.put(line)
    supervisor._forward_output()
    forwarded = plane.log.getvalue().splitlines()
    assert [line.removeprefix("[worker:0@127.0.0.1] ") for line in forwarded] == lines


def test_tensorboard_lines_after_the_tf_output_ends_are_still_forwarded(control_plane):
    plane = control_plane(ClusterConfig(num_executors=1, **FAST))
    supervisor = registered_supervisor(plane)
    # The order of NodeSupervisor.run/_supervise: forwarder up, TF output read to its end
    # and forwarded, then TensorBoard (still serving) writes, then run() ends the forwarder.
    forwarder = threading.Thread(target=supervisor._forward_output, daemon=True)
    forwarder.start()
    supervisor._pump_output(io.BytesIO(b"tf: last line\n"))
    supervisor._lines.join()
    supervisor._output("tensorboard: still serving")
    supervisor._lines.put(None)
    forwarder.join(5)
    assert "[worker:0@127.0.0.1] tf: last line" in plane.log.getvalue()
    assert "[worker:0@127.0.0.1] tensorboard: still serving" in plane.log.getvalue()


def test_cluster_server_join_notifies_serving_before_blocking(launch_record):
    read_fd, write_fd = os.pipe()
    events = []

    class Server:
        target = "grpc://localhost:1"

        def join(self):
            events.append(os.read(read_fd, 100))

    ctx = NodeContext(launch_record(job_name="ps", cluster_spec={"ps": ["h:1"],
                                                                 "worker": ["h:2"]},
                                    status_fd=write_fd))
    try:
        server = ClusterServer(Server(), ctx._notify_serving)
        server.join()
        # written before the server's join ran
        assert [launch.decode_event(e) for e in events] == [launch.Serving()]
        assert server.target == "grpc://localhost:1"  # the rest is the TF server's
    finally:
        os.close(read_fd)
        os.close(write_fd)


def test_node_context_comes_from_the_launch_message(launch_record):
    cluster_spec = {"chief": ["a:1"], "worker": ["b:2", "c:3"]}
    record = launch_record(job_name="worker", task_index=1, node_id=2, num_workers=2,
                           cluster_spec=cluster_spec, default_fs="hdfs://nn:8020", host="c",
                           log_dir="/l", status_fd=9, restart=1)
    message = launch.encode(record, b"s" * 32, b"payload")
    assert launch.decode(message) == (record, b"s" * 32, b"payload")
    ctx = NodeContext(launch.decode(message)[0])
    assert (ctx.job_name, ctx.task_index, ctx.worker_num, ctx.executor_id) == ("worker", 1, 2, 2)
    assert ctx.num_workers == 2 and ctx.cluster_spec == cluster_spec and ctx.restart == 1
    assert ctx.log_dir == "/l" and ctx._status_fd == 9
    assert ctx.absolute_path("/data") == "hdfs://nn:8020/data"
    with pytest.raises(ProtocolError, match="does not fit"):
        launch.decode(message[:40])
    with pytest.raises(ProtocolError, match="ends before its secret"):
        launch.decode(message[:4 + int.from_bytes(message[:4], "little")])


def test_notify_serving_without_a_status_fd_does_nothing(launch_record):
    NodeContext(launch_record(job_name="ps"))._notify_serving()


@pytest.mark.parametrize("job_name, rdma, fragment", [
    ("evaluator", False, "only nodes in the cluster spec"),
    ("worker", True, "rdma=True"),
])
def test_start_cluster_server_rejects_before_importing_tensorflow(job_name, rdma, fragment,
                                                                  launch_record):
    from tfos.core.errors import ConfigError
    record = launch_record(job_name=job_name, node_id=1, cluster_spec={"worker": ["h:1"]})
    with pytest.raises(ConfigError, match=fragment):
        NodeContext(record).start_cluster_server(rdma=rdma)


def test_the_tf_process_environment_carries_tf_settings_and_never_the_secret(
        control_chief_worker, monkeypatch, launch_record):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1,2,3")   # the executor's, not the node's
    monkeypatch.setenv("PYSPARK_GATEWAY_SECRET", "spark's own")
    supervisor = registered_supervisor(control_chief_worker)
    env = supervisor.environment(launch_record(gpus=None))
    assert "CUDA_VISIBLE_DEVICES" not in env and "PYSPARK_GATEWAY_SECRET" not in env
    assert json.loads(env["TF_CONFIG"])["task"] == {"type": "chief", "index": 0}
    assert env["TF_USE_LEGACY_KERAS"] == "1"
    env = supervisor.environment(launch_record(gpus=["1", "3"]))
    assert env["CUDA_VISIBLE_DEVICES"] == "1,3"
    secret = control_chief_worker.secret
    assert not any(secret.hex() in v or secret.decode("latin-1") in v for v in env.values())
    # The record travels on stdin only (the old contract's variables are gone).
    assert not {"TFOS_NODE_INFO", "TFOS_STATUS_FD", "TFOS_PARENT_PID"} & set(env)


def test_the_launch_record_says_whether_the_node_is_the_primary_one(control_chief_worker):
    plane = control_chief_worker
    chief = registered_supervisor(plane)                   # chief:0, node 0
    assert chief.launch_record(3, None, "/tmp").primary
    worker = NodeSupervisor(chief.spec, plane.client, plane.config.roles[1], HOST, {})
    assert not worker.launch_record(3, None, "/tmp").primary
