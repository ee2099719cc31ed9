"""``tfos.collective``'s TensorFlow layer on 3 real processes (a chief and two workers built from
launch records, as the node process builds its ctx): the operations eagerly and inside
``tf.function``, the gradient tape, and Keras 3 ``fit`` with the distributed optimizer and
the callbacks, which must leave every rank with the very same weights."""
from __future__ import annotations

import multiprocessing
import os
import socket
import traceback
from multiprocessing import resource_tracker

import numpy as np
import pytest

CTX = multiprocessing.get_context("spawn")
resource_tracker.ensure_running()
SECRET = b"k" * 32


def free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for sock in socks:
        sock.bind(("127.0.0.1", 0))
    ports = [sock.getsockname()[1] for sock in socks]
    for sock in socks:
        sock.close()
    return ports


def node_context(spec, job, index):
    from tests.unit.conftest import make_launch_record
    from tfos.node.context import NodeContext
    return NodeContext(make_launch_record(job_name=job, task_index=index, cluster_spec=spec,
                                          host="127.0.0.1"), SECRET)


def member(spec, job, index, script, results):
    os.environ.pop("TF_USE_LEGACY_KERAS", None)      # Keras 3
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "2"
    try:
        import tfos.collective as hvd
        hvd.init(node_context(spec, job, index), timeout=60)
        try:
            results.put((hvd.rank(), None, script(hvd)))
        finally:
            hvd.shutdown()
    except Exception as exc:  # noqa: BLE001 - reported to the test, which fails with it
        results.put((f"{job}:{index}", f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}",
                     None))


def run_cluster(script, spec=None) -> list:
    """``script(hvd)`` on a chief and two workers; their answers by rank."""
    ports = free_ports(3)
    spec = spec or {"chief": [f"127.0.0.1:{ports[0]}"],
                    "worker": [f"127.0.0.1:{ports[1]}", f"127.0.0.1:{ports[2]}"]}
    nodes = [(job, i) for job in ("chief", "worker") for i in range(len(spec.get(job, [])))]
    results = CTX.Queue()
    procs = [CTX.Process(target=member, args=(spec, job, i, script, results))
             for job, i in nodes]
    for proc in procs:
        proc.start()
    try:
        answers = [None] * len(nodes)
        for _ in nodes:
            rank, error, value = results.get(timeout=180)
            if error:
                raise AssertionError(f"{rank}: {error}")
            answers[rank] = value
        return answers
    finally:
        for proc in procs:
            proc.join(30)
            if proc.is_alive():
                proc.kill()


def operations_and_keras(hvd):
    import keras
    import tensorflow as tf
    out = {"rank": hvd.rank(), "size": hvd.size(), "local": (hvd.local_rank(), hvd.local_size()),
           "transports": hvd.transports()}
    r = hvd.rank()
    out["eager_mean"] = hvd.allreduce(tf.constant([1.0, 2.0]) * (r + 1)).numpy()
    out["eager_max"] = hvd.allreduce(tf.constant([r, -r], tf.int32), op=hvd.Max).numpy()
    out["gather"] = hvd.allgather(tf.fill([2, 3], r)).numpy()
    out["bcast"] = hvd.broadcast(tf.constant([r, r], tf.int64), root_rank=2).numpy()
    # Large: the shared-memory all-reduce, whose results later calls must leave alone.
    large = [hvd.allreduce(tf.fill([1 << 16], float(r + k)), op=hvd.Sum) for k in range(4)]
    out["large"] = [(float(tf.reduce_min(t)), float(tf.reduce_max(t))) for t in large]

    @tf.function
    def graph_step(x):
        a, b = hvd.grouped_allreduce([x, tf.cast(x, tf.float64) * 2], op=hvd.Sum)
        return a, b, hvd.allreduce(tf.cast(x, tf.bfloat16))
    a, b, c = graph_step(tf.fill([5], float(r)))
    out["graph"] = (a.numpy(), b.numpy(), c.numpy().astype(np.float32))

    # A custom loop with the tape: each rank's data differs, the averaged step is the same.
    w = tf.Variable(tf.fill([3], float(r)))
    hvd.broadcast_variables([w], root_rank=0)
    out["broadcast_w"] = w.numpy()
    x = tf.constant(np.random.default_rng(r).normal(size=(8, 3)), tf.float32)
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum((tf.linalg.matvec(x, w) - 1.0) ** 2)
    tape = hvd.DistributedGradientTape(tape)
    (grad,) = tape.gradient(loss, [w])
    out["tape_grad"] = grad.numpy()
    with tf.GradientTape() as local:
        loss = tf.reduce_sum((tf.linalg.matvec(x, w) - 1.0) ** 2)
    out["local_grad"] = local.gradient(loss, w).numpy()

    # Keras 3 fit: different initial weights and data per rank.
    keras.utils.set_random_seed(100 + r)
    model = keras.Sequential([keras.layers.Input((4,)), keras.layers.Dense(8, "relu"),
                              keras.layers.Dense(1)])
    optimizer = hvd.DistributedOptimizer(keras.optimizers.Adam(0.03))
    model.compile(optimizer=optimizer, loss="mse")
    rng = np.random.default_rng(r)
    xs = rng.normal(size=(96, 4)).astype("float32")
    ys = xs @ np.array([[1.0], [-2.0], [3.0], [0.5]], "float32")
    history = model.fit(xs, ys, batch_size=16, epochs=4, verbose=0,
                        callbacks=[hvd.BroadcastGlobalVariablesCallback(0),
                                   hvd.MetricAverageCallback()])
    out["keras"] = type(model).__module__
    out["optimizer_class"] = type(model.optimizer).__name__
    out["weights"] = [v.numpy() for v in model.weights]
    out["loss"] = history.history["loss"]
    return out


def test_operations_tape_and_keras3_fit_on_a_chief_and_two_workers():
    answers = run_cluster(operations_and_keras)
    assert [a["rank"] for a in answers] == [0, 1, 2] and {a["size"] for a in answers} == {3}
    assert [a["local"] for a in answers] == [(0, 3), (1, 3), (2, 3)]
    assert answers[0]["transports"] == {"from_prev": "shm://", "to_next": "shm://",
                                        "allreduce": "shared-memory"}
    for a in answers:
        np.testing.assert_allclose(a["eager_mean"], [2.0, 4.0])
        assert a["eager_max"].tolist() == [2, 0]
        assert a["gather"].tolist() == [[0] * 3] * 2 + [[1] * 3] * 2 + [[2] * 3] * 2
        assert a["bcast"].tolist() == [2, 2]
        assert a["large"] == [(3.0 + 3 * k, 3.0 + 3 * k) for k in range(4)]
        np.testing.assert_allclose(a["graph"][0], [3.0] * 5)
        np.testing.assert_allclose(a["graph"][1], [6.0] * 5)
        np.testing.assert_allclose(a["graph"][2], [1.0] * 5)
        assert a["broadcast_w"].tolist() == [0.0, 0.0, 0.0]
        # The tape's gradient is the mean of the ranks' own ones.
        mean = np.mean([b["local_grad"] for b in answers], axis=0)
        np.testing.assert_allclose(a["tape_grad"], mean, rtol=1e-5)
        assert a["keras"].startswith("keras.") and a["optimizer_class"] == "Adam"
    assert not np.allclose(answers[0]["local_grad"], answers[1]["local_grad"])
    # Keras 3 fit: the very same weights on every rank, and it learned.
    for a in answers[1:]:
        for mine, chiefs in zip(a["weights"], answers[0]["weights"]):
            assert mine.tobytes() == chiefs.tobytes()
        assert a["loss"] == answers[0]["loss"], "MetricAverageCallback: one number everywhere"
    assert answers[0]["loss"][-1] < 0.5 * answers[0]["loss"][0]


def test_init_outside_the_group_and_before_init_are_explained():
    import tfos.collective as hvd
    from tfos.core.errors import ConfigError
    with pytest.raises(ConfigError, match="call tfos.collective.init\\(ctx\\) first"):
        hvd.rank()
    spec = {"ps": ["127.0.0.1:1"], "worker": ["127.0.0.1:2"]}
    with pytest.raises(ConfigError, match="only the chief and the workers"):
        hvd.init(node_context(spec, "ps", 0))


def test_ring_addresses_use_shm_within_a_host_and_tcp_between():
    from tfos.collective import ring_addresses
    addresses = ring_addresses(["10.0.0.1:1000", "10.0.0.1:1001", "10.0.0.2:1002"], SECRET)
    assert addresses[0].startswith("tcp://10.0.0.1:1000")     # its predecessor is on .2
    assert addresses[1].startswith("shm://") and addresses[1].endswith("-1001.sock")
    assert addresses[2] == "tcp://10.0.0.2:1002"
    assert ring_addresses(["10.0.0.1:1", "10.0.0.2:2"], SECRET, rdma=True) == [
        "rdma://10.0.0.1:1", "rdma://10.0.0.2:2"]
    # Another cluster (another secret) on the same host never shares a socket path.
    assert ring_addresses(["h:1", "h:2"], b"x" * 32)[0] != ring_addresses(["h:1", "h:2"],
                                                                         SECRET)[0]
