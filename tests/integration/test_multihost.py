"""tfos across test hosts: a Spark standalone cluster whose 3 workers live in network namespaces.

``scripts/testnet.sh up`` builds the hosts (tfos-h1..3 at 10.213.0.11-13, joined by a bridge
whose address 10.213.0.1 is the driver's), a master beside the driver and one worker per host.
The driver (this process) binds to the bridge address. Needs root; skipped otherwise.
"""
import json
import os
import re
import subprocess
import threading
import time

import pytest
from conftest import REPO, SESSION_MARK
from test_feed import check_epochs, uneven_rdd

import tfos

pytestmark = pytest.mark.multihost

TESTNET = str(REPO / "scripts" / "testnet.sh")
DRIVER_IP = "10.213.0.1"
NAMESPACE_OF = {f"10.213.0.1{i}": f"tfos-h{i}" for i in (1, 2, 3)}   # host address -> netns
NODE_MARKERS = ("tfos.node.main", "tfos.executor.process_guard")


def privilege_problem() -> str | None:
    """Why this machine cannot build test hosts (None: it can)."""
    if os.geteuid() != 0:
        return "the multi-host tests build network namespaces: they need root"
    probe = f"tfos-probe-{os.getpid()}"
    try:
        added = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True,
                               timeout=30)
    except FileNotFoundError:
        return "the multi-host tests need the 'ip' command (iproute2)"
    if added.returncode != 0:
        return f"network namespaces are not permitted here (`ip netns add`: {added.stderr.strip()})"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True, timeout=30)
    return None


@pytest.fixture(scope="module")
def testnet_master():
    """The master URL of the 3-host test network; everything is removed at the end."""
    problem = privilege_problem()
    if problem:
        pytest.skip(problem)
    up = subprocess.run(["bash", TESTNET, "up"], capture_output=True, text=True, timeout=240)
    try:
        assert up.returncode == 0, f"scripts/testnet.sh up failed:\n{up.stderr}"
        yield up.stdout.strip()
    finally:
        down = subprocess.run(["bash", TESTNET, "down"], capture_output=True, text=True,
                              timeout=120)
        assert down.returncode == 0, f"scripts/testnet.sh down failed:\n{down.stderr}"


def executor_hosts(sc) -> list[str]:
    infos = sc._jsc.sc().statusTracker().getExecutorInfos()
    return sorted(info.host() for info in infos if info.host() != DRIVER_IP)


def running_tasks(sc) -> int:
    return sum(info.numRunningTasks() for info in sc._jsc.sc().statusTracker().getExecutorInfos())


def wait_until(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    tick = threading.Event()
    while not (result := predicate()):
        if time.monotonic() > deadline:
            pytest.fail(f"{what} within {timeout:.0f}s")
        tick.wait(0.25)
    return result


def seconds_until(predicate, since: float, timeout: float) -> float | None:
    """Seconds from ``since`` (monotonic) until ``predicate`` holds; None after ``timeout``."""
    tick = threading.Event()
    while not predicate():
        if time.monotonic() - since > timeout:
            return None
        tick.wait(0.1)
    return time.monotonic() - since


@pytest.fixture(scope="module")
def spark_testnet_3_hosts(spark_sessions, testnet_master):
    """A SparkSession on the test network: one 2-core executor on each of the 3 hosts.

    The driver binds to the bridge address through spark.driver.host/bindAddress (not
    SPARK_LOCAL_IP: the driver JVM is shared by the whole test process and may be running).
    """
    spark_sessions.stop()
    spark = spark_sessions.get(testnet_master, **{
        "spark.driver.host": DRIVER_IP, "spark.driver.bindAddress": DRIVER_IP,
        "spark.executor.cores": "2", "spark.executor.memory": "1g", "spark.cores.max": "6",
        # The workers may predate this test process (testnet.sh up keeps a running cluster).
        f"spark.executorEnv.{SESSION_MARK}": os.environ[SESSION_MARK]})
    # Nodes are spread one per host only when all three executors are there.
    wait_until(lambda: executor_hosts(spark.sparkContext) == sorted(NAMESPACE_OF), 120,
               "an executor on each test host did not register")
    try:
        yield spark
    finally:
        spark_sessions.stop()


def netns_inode(path: str) -> int:
    return os.stat(path).st_ino


def processes_in_test_hosts(namespaces=tuple(NAMESPACE_OF.values())) -> list[str]:
    """The tfos node and guard processes inside the test hosts (all of them, or ``namespaces``)."""
    found = []
    for ns in namespaces:
        pids = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True,
                              timeout=30).stdout.split()
        for pid in pids:
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    cmdline = f.read().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if any(marker in cmdline for marker in NODE_MARKERS):
                found.append(f"{ns} pid {pid}: {cmdline[:200]}")
    return found


# -- a: a TF cluster spread over the hosts ------------------------------------------------------
def where_then_mwms_fit(args, ctx):
    """Records where this node runs, then trains under MultiWorkerMirroredStrategy."""
    import numpy as np
    import tensorflow as tf
    addresses = subprocess.run(["ip", "-4", "-o", "addr", "show"], capture_output=True,
                               text=True, check=True).stdout
    record = {"host": ctx.host, "tf_config": json.loads(os.environ["TF_CONFIG"]),
              "netns": os.stat("/proc/self/ns/net").st_ino,
              "addresses": re.findall(r"inet ([\d.]+)/", addresses)}
    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    with strategy.scope():
        model = tf.keras.Sequential([tf.keras.layers.Input((4,)), tf.keras.layers.Dense(1)])
        model.compile(optimizer=tf.keras.optimizers.SGD(0.05), loss="mse")
    rng = np.random.default_rng(0)
    x = rng.normal(size=(256, 4)).astype("float32")
    y = x @ np.array([[1.0], [-2.0], [3.0], [0.5]], dtype="float32")
    data = tf.data.Dataset.from_tensor_slices((x, y)).repeat().batch(32)
    history = model.fit(data, epochs=2, steps_per_epoch=6, verbose=0)
    record.update(loss=history.history["loss"], replicas=strategy.num_replicas_in_sync,
                  weights=np.concatenate([w.numpy().ravel() for w in model.weights]).tolist())
    with open(os.path.join(args["out"], f"{ctx.job_name}-{ctx.task_index}.json"), "w") as f:
        json.dump(record, f)


def test_a_cluster_spread_over_the_hosts_trains_with_mwms(spark_testnet_3_hosts, tmp_path):
    with tfos.TFCluster.run(spark_testnet_3_hosts, where_then_mwms_fit, {"out": str(tmp_path)},
                            num_executors=3, master_node="chief", log_stream=None) as cluster:
        info = {(n["job_name"], n["task_index"]): n for n in cluster.cluster_info}
        # Spark places barrier tasks on any free slot (2 per host): the nodes span 2 or 3
        # hosts, each known by its own host's address.
        hosts = [n["host"] for n in info.values()]
        assert set(hosts) <= set(NAMESPACE_OF) and len(set(hosts)) >= 2, hosts
        for node in info.values():   # the node's task really runs in that host's namespace
            assert netns_inode(f"/proc/{node['pid']}/ns/net") == \
                netns_inode(f"/run/netns/{NAMESPACE_OF[node['host']]}"), node
        cluster.shutdown(timeout=240)

    records = {p.stem: json.loads(p.read_text()) for p in tmp_path.glob("*.json")}
    assert set(records) == {"chief-0", "worker-0", "worker-1"}
    spec = {"chief": [info[("chief", 0)]["addr"]],
            "worker": [info[("worker", 0)]["addr"], info[("worker", 1)]["addr"]]}
    for name, record in records.items():
        job, index = name.split("-")
        node = info[(job, int(index))]
        assert record["host"] == node["host"]
        assert node["host"] in record["addresses"], "the advertised address is the node's own"
        assert record["netns"] == netns_inode(f"/run/netns/{NAMESPACE_OF[node['host']]}")
        assert record["tf_config"]["cluster"] == spec
        assert record["tf_config"]["task"] == {"type": job, "index": int(index)}
        assert record["replicas"] == 3
        assert record["weights"] == pytest.approx(records["chief-0"]["weights"], rel=1e-6)
    assert records["chief-0"]["loss"][-1] < 0.5 * records["chief-0"]["loss"][0]


# -- b: InputMode.SPARK across hosts --------------------------------------------------------------
def collect_and_trace_feeders(args, ctx):
    """Like test_feed.collect_epochs, and records how each feeder reached this node."""
    from tfos.node import feed_server
    connections, lock = [], threading.Lock()
    serve_feeder = feed_server.FeedServer._serve_feeder

    def traced(self, conn, hello):
        record = {"transport": type(conn).__module__, "peer": conn.peer_address}
        if conn.peer_address.startswith("shm://pid:"):   # which host the feeder process is on
            try:
                record["peer_netns"] = os.stat(
                    f"/proc/{conn.peer_address[len('shm://pid:'):]}/ns/net").st_ino
            except (OSError, ValueError):
                record["peer_netns"] = None
        with lock:
            connections.append(record)
        return serve_feeder(self, conn, hello)

    feed_server.FeedServer._serve_feeder = traced
    open(os.path.join(args["out"], f"{ctx.job_name}-{ctx.task_index}.ready"), "w").close()
    feed = ctx.get_data_feed()
    epochs = []
    while True:
        ids = []
        while (batch := feed.next_columns(7, within_epoch=True)):
            ids.extend(int(i) for i in batch["1"])
        if batch is None:
            break
        epochs.append(ids)
    with open(os.path.join(args["out"], f"{ctx.job_name}-{ctx.task_index}.json"), "w") as f:
        json.dump({"input": epochs, "connections": connections, "host": ctx.host,
                   "netns": os.stat("/proc/self/ns/net").st_ino}, f)


def test_spark_feed_across_hosts_goes_over_tcp(spark_testnet_3_hosts, tmp_path):
    spark = spark_testnet_3_hosts
    rdd, total = uneven_rdd(spark.sparkContext, [30, 0, 17, 25, 1, 40, 12, 33, 8, 20, 5, 9])
    rdd.cache()
    with tfos.TFCluster.run(spark, collect_and_trace_feeders, {"out": str(tmp_path)},
                            num_executors=3, input_mode=tfos.InputMode.SPARK,
                            log_stream=None) as cluster:
        assert sorted(n["host"] for n in cluster.cluster_info) == sorted(NAMESPACE_OF)
        # Feeders connect only once train() runs: by then every node traces its connections.
        wait_until(lambda: len(list(tmp_path.glob("*.ready"))) == 3, 120,
                   "the nodes did not start map_fun")
        cluster.train(rdd, num_epochs=2)
        cluster.shutdown(timeout=120)

    check_epochs(tmp_path, "input", total, epochs=2, workers=3)
    tcp = shm = 0
    for path in tmp_path.glob("*.json"):
        record = json.loads(path.read_text())
        assert record["connections"], f"{path.stem} saw no feeder"
        for conn in record["connections"]:
            if conn["transport"] == "rdma.shm":
                shm += 1
                assert conn["peer_netns"] == record["netns"], \
                    f"a feeder on another host reached {path.stem} over shm://: {conn}"
            else:
                tcp += 1
                assert conn["transport"] == "rdma.tcp", conn
                peer = conn["peer"].removeprefix("tcp://").rsplit(":", 1)[0]
                assert peer in NAMESPACE_OF and peer != record["host"], \
                    f"{path.stem} on {record['host']} was fed over tcp:// from {peer}: {conn}"
    # 24 feed tasks on 3 hosts: both paths are taken (same host: shm, other hosts: tcp).
    assert tcp > 0 and shm > 0, (tcp, shm)


# -- c: a host cut off during training -------------------------------------------------------------
def train_until_stopped(args, ctx):
    """Numpy SGD steps until stopped (bounded: returns after ``seconds``)."""
    import numpy as np
    with open(os.path.join(args["out"], f"{ctx.job_name}-{ctx.task_index}.started"), "w") as f:
        f.write(ctx.host)
    rng = np.random.default_rng(ctx.task_index)
    x = rng.normal(size=(256, 4))
    y = x @ np.array([1.0, -2.0, 3.0, 0.5])
    w = np.zeros(4)
    deadline = time.monotonic() + args["seconds"]
    while time.monotonic() < deadline:
        w -= 0.01 * x.T @ (x @ w - y) / len(x)
        time.sleep(0.01)


def report_host(args, ctx):
    with open(os.path.join(args["out"], f"{ctx.job_name}-{ctx.task_index}.host"), "w") as f:
        f.write(ctx.host)


def test_a_host_cut_off_fails_the_cluster_then_the_application_recovers(spark_testnet_3_hosts,
                                                                        tmp_path):
    spark = spark_testnet_3_hosts
    heartbeat_timeout, kill_grace = 10.0, 3.0
    with tfos.TFCluster.run(spark, train_until_stopped, {"out": str(tmp_path), "seconds": 180},
                            num_executors=3, heartbeat_timeout=heartbeat_timeout,
                            kill_grace=kill_grace, log_stream=None) as cluster:
        lost = next(n for n in cluster.cluster_info
                    if (n["job_name"], n["task_index"]) == ("worker", 1))
        label, namespace = f"worker:1@{lost['host']}", NAMESPACE_OF[lost["host"]]
        wait_until(lambda: len(list(tmp_path.glob("*.started"))) == 3, 120,
                   "the nodes did not start training")
        assert processes_in_test_hosts([namespace])
        subprocess.run(["ip", "link", "set", f"veth-{namespace}", "down"], check=True, timeout=30)
        cut = time.monotonic()
        try:
            # While the host is cut off nothing from the driver reaches it: its TF process can
            # only be stopped by its own task, which no longer hears the driver.
            stopped_after = []
            watch = threading.Thread(target=lambda: stopped_after.append(seconds_until(
                lambda: not processes_in_test_hosts([namespace]), cut, 60)), daemon=True)
            watch.start()
            with pytest.raises(tfos.ClusterFailed) as failed:
                cluster.shutdown(timeout=120)
            raised_after = time.monotonic() - cut
            watch.join(70)
        finally:
            subprocess.run(["ip", "link", "set", f"veth-{namespace}", "up"], check=True,
                           timeout=30)
    first = failed.value.failures[0]
    assert first.node == label, failed.value
    assert "sent nothing" in first.reason
    assert raised_after < 30, f"the lost host surfaced {raised_after:.1f}s after the cut"
    assert stopped_after and stopped_after[0] is not None, "the cut-off node never stopped"
    assert stopped_after[0] < heartbeat_timeout + kill_grace + 3, \
        f"the cut-off node ran on for {stopped_after[0]:.1f}s without its driver"

    # The other nodes were stopped by the driver; nothing of the cluster remains anywhere.
    assert seconds_until(lambda: not processes_in_test_hosts(), time.monotonic(), 30) \
        is not None, f"tfos processes remain in the test hosts: {processes_in_test_hosts()}"
    # The cancelled node tasks end once the kill reaches the restored host: then all the slots
    # are free and the same application runs a new cluster, again one node per host.
    wait_until(lambda: running_tasks(spark.sparkContext) == 0, 90,
               "the old cluster's tasks did not end")
    with tfos.TFCluster.run(spark, report_host, {"out": str(tmp_path)}, num_executors=3,
                            log_stream=None) as cluster:
        cluster.shutdown(timeout=120)
    hosts = sorted(p.read_text() for p in tmp_path.glob("*.host"))
    assert hosts == sorted(NAMESPACE_OF)
