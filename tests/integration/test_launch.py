"""Launching, supervising and stopping clusters on a real local-cluster (no TF import: fast)."""
import io
import json
import os
import re
import signal
import threading
import time
import urllib.request

import pytest

import tfos
from tfos import ClusterFailed, ConfigError, PreflightError


def report_identity(args, ctx):
    record = {"job": ctx.job_name, "index": ctx.task_index, "worker_num": ctx.worker_num,
              "num_workers": ctx.num_workers, "cluster_spec": ctx.cluster_spec,
              "tf_config": json.loads(os.environ["TF_CONFIG"]),
              "legacy_keras": os.environ.get("TF_USE_LEGACY_KERAS"),
              "pid": os.getpid(), "ppid": os.getppid(), "pgid": os.getpgid(0),
              "default_fs": ctx.defaultFS, "abs": ctx.absolute_path("data/x")}
    print(f"hello from {ctx.job_name}:{ctx.task_index}")
    path = os.path.join(args["out"], f"{ctx.job_name}-{ctx.task_index}.json")
    with open(path, "w") as f:
        json.dump(record, f)


def test_nodes_get_roles_tf_config_and_forwarded_output(spark_local_cluster_4x1, tmp_path):
    stream = io.StringIO()
    cluster = tfos.TFCluster.run(spark_local_cluster_4x1, report_identity, {"out": str(tmp_path)},
                                 num_executors=4, num_ps=1, master_node="chief",
                                 log_stream=stream)
    info = {(n["job_name"], n["task_index"]): n for n in cluster.cluster_info}
    assert set(info) == {("ps", 0), ("chief", 0), ("worker", 0), ("worker", 1)}
    cluster.shutdown(timeout=120)

    records = {p.stem: json.loads(p.read_text()) for p in tmp_path.glob("*.json")}
    assert set(records) == {"ps-0", "chief-0", "worker-0", "worker-1"}
    spec = records["chief-0"]["cluster_spec"]
    assert spec == {"ps": [info[("ps", 0)]["addr"]], "chief": [info[("chief", 0)]["addr"]],
                    "worker": [info[("worker", 0)]["addr"], info[("worker", 1)]["addr"]]}
    for name, rec in records.items():
        job, index = name.split("-")
        assert rec["tf_config"] == {"cluster": spec, "task": {"type": job, "index": int(index)},
                                    "environment": "cloud"}
        assert rec["num_workers"] == 3
        assert rec["legacy_keras"] == "1"
        assert rec["pgid"] == rec["pid"], "the TF process leads its own process group"
        assert rec["ppid"] != os.getpid()
        assert rec["default_fs"] == "file:///"
        assert rec["abs"].startswith("file:///") and rec["abs"].endswith("/data/x")
        assert f"[{job}:{index}@127.0.0.1] hello from {job}:{index}\n" in stream.getvalue()
    assert len({rec["worker_num"] for rec in records.values()}) == 4


def fail_one_node(args, ctx):
    if (ctx.job_name, ctx.task_index) == ("worker", 1):
        print("about to fail", flush=True)
        if args["how"] == "raise":
            raise ValueError("boom from worker 1")
        if args["how"] == "exit":
            os._exit(3)
        os.kill(os.getpid(), signal.SIGKILL)
    threading.Event().wait(300)  # the healthy nodes would block for minutes


@pytest.mark.parametrize("how, reason", [
    ("raise", "exited with code 1"),
    ("exit", "exited with code 3"),
    ("kill", "killed by SIGKILL"),
])
def test_a_failed_node_fails_the_cluster_fast_with_its_log(spark_local_cluster_4x1, how, reason):
    start = time.monotonic()
    # The node may fail before its peers have registered: then run() raises, else shutdown().
    with pytest.raises(ClusterFailed) as failed:
        cluster = tfos.TFCluster.run(spark_local_cluster_4x1, fail_one_node, {"how": how},
                                     num_executors=3, master_node="chief", log_stream=None)
        cluster.shutdown(timeout=120)
    elapsed = time.monotonic() - start
    first = failed.value.failures[0]
    assert first.node == "worker:1@127.0.0.1"
    assert reason in str(failed.value)
    assert "about to fail" in first.log_tail
    if how == "raise":
        assert "ValueError: boom from worker 1" in "\n".join(first.log_tail)
    assert elapsed < 30, f"failure took {elapsed:.1f}s to surface"


def test_the_application_runs_a_new_cluster_after_a_failure(spark_local_cluster_4x1, tmp_path):
    with pytest.raises(ClusterFailed):   # from run() or shutdown(), as the race goes
        cluster = tfos.TFCluster.run(spark_local_cluster_4x1, fail_one_node, {"how": "exit"},
                                     num_executors=2, master_node=None, log_stream=None)
        cluster.shutdown(timeout=60)
    cluster = tfos.TFCluster.run(spark_local_cluster_4x1, report_identity, {"out": str(tmp_path)},
                                 num_executors=2, log_stream=None)
    cluster.shutdown(timeout=60)
    assert {p.stem for p in tmp_path.glob("*.json")} == {"worker-0", "worker-1"}


def idle(args, ctx):
    pass


def test_more_nodes_than_slots_fails_in_seconds(spark_local_cluster_4x1):
    start = time.monotonic()
    with pytest.raises(PreflightError, match=r"needs 5 task slots .* has 4"):
        tfos.TFCluster.run(spark_local_cluster_4x1, idle, None, num_executors=5)
    assert time.monotonic() - start < 5


def test_unpicklable_map_fun_is_refused_before_launch(spark_local_cluster_4x1):
    lock = threading.Lock()

    def uses_lock(args, ctx):
        with lock:
            pass

    with pytest.raises(ConfigError, match="uses_lock.*cannot be pickled"):
        tfos.TFCluster.run(spark_local_cluster_4x1, uses_lock, None, num_executors=2)


def test_tensorboard_serves_until_shutdown(spark_local_cluster_4x1, tmp_path):
    with tfos.TFCluster.run(spark_local_cluster_4x1, idle, None, num_executors=2,
                            master_node="chief", tensorboard=True,
                            log_dir=str(tmp_path / "tb")) as cluster:
        url = cluster.tensorboard_url(timeout=90)
        assert url and url.startswith("http://127.0.0.1:")
        with urllib.request.urlopen(url, timeout=10) as response:
            assert response.status == 200
    with pytest.raises(OSError):
        urllib.request.urlopen(url, timeout=5)


@pytest.mark.skipif(bool(__import__("rdma.devices").devices.list_ports()),
                    reason="this host has an RDMA device")
def test_rdma_without_a_device_is_refused_not_ignored(spark_local_cluster_4x1):
    with pytest.raises(ConfigError, match=r"\(1\) no RDMA device.*drop --rdma"):
        tfos.TFCluster.run(spark_local_cluster_4x1, idle, None, num_executors=2, rdma=True)


def wait_for_release(args, ctx):
    threading.Event().wait(args["seconds"])


def test_the_leftover_check_sees_running_nodes(spark_local_cluster_4x1):
    from conftest import tfos_processes
    with tfos.TFCluster.run(spark_local_cluster_4x1, wait_for_release, {"seconds": 60},
                            num_executors=2, log_stream=None) as cluster:
        deadline = time.monotonic() + 30
        while len(tfos_processes()) < 2 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert len(tfos_processes()) == 2, "the node processes must be visible to the check"
        cluster._stop_everything()


def stuck_in_a_named_place(args, ctx):
    if ctx.task_index == 1:
        threading.Event().wait()    # never returns: shutdown's timeout stops it


def test_a_node_that_outlives_shutdowns_timeout_shows_where_it_is_stuck(
        spark_local_cluster_4x1):
    from tfos.core.errors import ShutdownTimeout
    stream = io.StringIO()
    cluster = tfos.TFCluster.run(spark_local_cluster_4x1, stuck_in_a_named_place, {},
                                 num_executors=2, log_stream=stream)
    with pytest.raises(ShutdownTimeout, match=r"worker:1@\S+ were still running after "
                                              r"timeout=3s; .* Python stacks"):
        cluster.shutdown(timeout=3)
    # The stuck node's stacks reached the driver before it was stopped; the other node, which
    # returned, printed none.
    lines = stream.getvalue().splitlines()
    stuck = [line for line in lines if line.startswith("[worker:1@")]
    assert any(re.search(r'File ".*test_launch\.py", line \d+ in stuck_in_a_named_place', line)
               for line in stuck), stream.getvalue()[-3000:]
    assert not any("most recent call first" in line for line in lines
                   if line.startswith("[worker:0@"))
