"""The TensorFlow strategies tfos must run, each trained for real on a local-cluster."""
import json
import os
import time

import numpy as np

import tfos


def _toy_data(n=512):
    import numpy as np
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, 4)).astype("float32")
    y = x @ np.array([[1.0], [-2.0], [3.0], [0.5]], dtype="float32")
    return x, y


def _linear_model():
    import tensorflow as tf
    model = tf.keras.Sequential([tf.keras.layers.Input((4,)), tf.keras.layers.Dense(1)])
    model.compile(optimizer=tf.keras.optimizers.SGD(0.05), loss="mse")
    return model


def _write(args, ctx, record):
    with open(os.path.join(args["out"], f"{ctx.job_name}-{ctx.task_index}.json"), "w") as f:
        json.dump(record, f)


def mwms_fit(args, ctx):
    import tensorflow as tf
    # The node's resolver alone, without TF_CONFIG (TF code that takes a resolver).
    os.environ.pop("TF_CONFIG")
    strategy = tf.distribute.MultiWorkerMirroredStrategy(cluster_resolver=ctx.cluster_resolver())
    with strategy.scope():
        model = _linear_model()
    x, y = _toy_data()
    data = tf.data.Dataset.from_tensor_slices((x, y)).repeat().batch(32)
    history = model.fit(data, epochs=3, steps_per_epoch=8, verbose=0)
    weights = np.concatenate([w.numpy().ravel() for w in model.weights]).tolist()
    _write(args, ctx, {"loss": history.history["loss"], "weights": weights,
                       "keras": type(model).__module__, "replicas": strategy.num_replicas_in_sync})


def test_multi_worker_mirrored_keras_fit_chief_and_workers(spark_local_cluster_4x1, tmp_path):
    with tfos.TFCluster.run(spark_local_cluster_4x1, mwms_fit, {"out": str(tmp_path)},
                            num_executors=3, master_node="chief") as cluster:
        cluster.shutdown(timeout=300)
    records = {p.stem: json.loads(p.read_text()) for p in tmp_path.glob("*.json")}
    assert set(records) == {"chief-0", "worker-0", "worker-1"}
    chief = records["chief-0"]
    for record in records.values():
        assert record["replicas"] == 3
        assert record["keras"].startswith("tf_keras"), "tf-keras (Keras 2) runs the strategy"
        np.testing.assert_allclose(record["weights"], chief["weights"], rtol=1e-6)
    assert chief["loss"][-1] < 0.5 * chief["loss"][0]


def pss_fit(args, ctx):
    import tensorflow as tf
    if ctx.job_name in ("ps", "worker"):
        _, server = ctx.start_cluster_server()
        server.join()
        return
    os.environ.pop("TF_CONFIG")   # the coordinator's resolver alone tells it the cluster
    strategy = tf.distribute.experimental.ParameterServerStrategy(ctx.cluster_resolver())
    with strategy.scope():
        model = _linear_model()
    x, y = _toy_data()

    def dataset_fn(input_context):
        return tf.data.Dataset.from_tensor_slices((x, y)).repeat().batch(32)

    history = model.fit(tf.keras.utils.experimental.DatasetCreator(dataset_fn), epochs=3,
                        steps_per_epoch=8, verbose=0)
    _write(args, ctx, {"loss": history.history["loss"],
                       "devices": [v.device for v in model.variables]})


def test_parameter_server_strategy_keras_fit(spark_local_cluster_4x1, tmp_path):
    with tfos.TFCluster.run(spark_local_cluster_4x1, pss_fit, {"out": str(tmp_path)},
                            num_executors=4, num_ps=1, master_node="chief") as cluster:
        roles = sorted((n["job_name"], n["task_index"]) for n in cluster.cluster_info)
        assert roles == [("chief", 0), ("ps", 0), ("worker", 0), ("worker", 1)]
        cluster.shutdown(timeout=300)
    (record,) = [json.loads(p.read_text()) for p in tmp_path.glob("*.json")]
    assert all("/job:ps/" in device for device in record["devices"])
    assert record["loss"][-1] < 0.5 * record["loss"][0]


def tf1_between_graph(args, ctx):
    import tensorflow as tf
    tf1 = tf.compat.v1
    tf1.disable_eager_execution()
    cluster, server = ctx.start_cluster_server()
    if ctx.job_name == "ps":
        server.join()
        return
    worker = f"/job:worker/task:{ctx.task_index}"
    with tf1.device(tf1.train.replica_device_setter(worker_device=worker, cluster=cluster)):
        step = tf1.train.get_or_create_global_step()
        w = tf1.get_variable("w", initializer=0.0)
        loss = tf.square(w - 3.0)
        train = tf1.train.GradientDescentOptimizer(0.1).minimize(loss, global_step=step)
    config = tf1.ConfigProto(device_filters=["/job:ps", worker])
    if ctx.task_index != 0:
        # MonitoredTrainingSession makes a non-chief wait for the chief's initialisation but
        # checks only every 30 s: look every 0.2 s instead, for at most 120 s.
        not_ready = tf1.report_uninitialized_variables()
        with tf1.Session(server.target, config=config) as probe:
            for _ in range(600):
                if not len(probe.run(not_ready)):
                    break
                time.sleep(0.2)
    done = 0
    with tf1.train.MonitoredTrainingSession(
            master=server.target, is_chief=ctx.task_index == 0, config=config,
            hooks=[tf1.train.StopAtStepHook(last_step=args["steps"])]) as sess:
        while not sess.should_stop():
            _, final_w, final_step = sess.run([train, w, step])
            done += 1
    _write(args, ctx, {"w": float(final_w), "step": int(final_step), "local_steps": done,
                       "device": w.device})


def test_tf1_between_graph_replication(spark_local_cluster_4x1, tmp_path):
    steps = 60
    with tfos.TFCluster.run(spark_local_cluster_4x1, tf1_between_graph,
                            {"out": str(tmp_path), "steps": steps}, num_executors=3,
                            num_ps=1) as cluster:
        cluster.shutdown(timeout=300)
    records = {p.stem: json.loads(p.read_text()) for p in tmp_path.glob("*.json")}
    assert set(records) == {"worker-0", "worker-1"}
    for record in records.values():
        assert record["device"].startswith("/job:ps/task:0")
        assert record["step"] > 0
    # A worker's last fetch of the shared step is read while the other worker may still be
    # applying updates, so only the furthest of the two is sure to have seen the end.
    assert max(r["step"] for r in records.values()) >= steps - 2
    # The two workers shared one global step on the ps: together they did the steps.
    assert sum(r["local_steps"] for r in records.values()) >= steps - 2
    assert abs(records["worker-0"]["w"] - 3.0) < 0.5


def with_evaluator(args, ctx):
    import tensorflow as tf
    model_dir = args["model_dir"]
    if ctx.job_name == "evaluator":
        x, y = _toy_data(128)
        model = _linear_model()
        checkpoint = tf.train.Checkpoint(model=model, epoch=tf.Variable(0))
        for path in tf.train.checkpoints_iterator(model_dir, min_interval_secs=0.5, timeout=240):
            checkpoint.restore(path).expect_partial()
            if int(checkpoint.epoch.numpy()) == args["epochs"]:
                _write(args, ctx, {"tf_config": json.loads(os.environ["TF_CONFIG"]),
                                   "eval_loss": float(model.evaluate(x, y, verbose=0)),
                                   "epoch": int(checkpoint.epoch.numpy())})
                return
        raise RuntimeError("the final checkpoint never appeared")
    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    with strategy.scope():
        model = _linear_model()
        epoch = tf.Variable(0)
    x, y = _toy_data()
    data = tf.data.Dataset.from_tensor_slices((x, y)).repeat().batch(32)
    is_chief = ctx.job_name == "chief"
    directory = model_dir if is_chief else os.path.join(args["out"], f"scratch-{ctx.task_index}")
    manager = tf.train.CheckpointManager(tf.train.Checkpoint(model=model, epoch=epoch),
                                         directory, max_to_keep=2)
    for _ in range(args["epochs"]):
        model.fit(data, epochs=1, steps_per_epoch=8, verbose=0)
        epoch.assign_add(1)
        manager.save()


def test_evaluator_node_evaluates_the_chiefs_checkpoints(spark_local_cluster_4x1, tmp_path):
    args = {"out": str(tmp_path), "model_dir": str(tmp_path / "model"), "epochs": 3}
    with tfos.TFCluster.run(spark_local_cluster_4x1, with_evaluator, args, num_executors=3,
                            master_node="chief", eval_node=True) as cluster:
        roles = sorted((n["job_name"], n["task_index"]) for n in cluster.cluster_info)
        assert roles == [("chief", 0), ("evaluator", 0), ("worker", 0)]
        cluster.shutdown(timeout=300)
    record = json.loads((tmp_path / "evaluator-0.json").read_text())
    assert record["tf_config"]["task"] == {"type": "evaluator", "index": 0}
    assert set(record["tf_config"]["cluster"]) == {"chief", "worker"}
    assert record["epoch"] == 3
    assert record["eval_loss"] < 2.0
