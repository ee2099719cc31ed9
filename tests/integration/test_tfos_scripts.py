"""TensorFlowOnSpark scripts with only the import renamed, on a real local-cluster."""
import json
import os

import tfos
from tfos import TFCluster, TFNode


def squares_fun(args, ctx):
    """TensorFlowOnSpark's inference loop, as its users wrote it, plus a look at the port."""
    port = ctx.tmp_socket.getsockname()[1]     # release_port=False: held until released
    TFNode.release_port(ctx)
    record = {"held": port, "address": ctx.cluster_spec[ctx.job_name][ctx.task_index],
              "released": ctx.tmp_socket is None}
    with open(os.path.join(args["out"], f"{ctx.job_name}-{ctx.task_index}.json"), "w") as f:
        json.dump(record, f)
    tf_feed = TFNode.DataFeed(ctx.mgr, False)
    while not tf_feed.should_stop():
        batch = tf_feed.next_batch(10)
        if len(batch) > 0:
            tf_feed.batch_results([x * x for x in batch])


def test_positional_run_datafeed_of_ctx_mgr_inference_and_a_held_port(spark_local_cluster_4x1,
                                                                       tmp_path):
    sc = spark_local_cluster_4x1.sparkContext
    cluster = TFCluster.run(sc, squares_fun, {"out": str(tmp_path)}, 2, 0, False,
                            TFCluster.InputMode.SPARK, None, False, None, 600,
                            ["input", "output", "error"], False, False)
    squares = cluster.inference(sc.parallelize(range(1000), 10)).collect()
    assert squares == [x * x for x in range(1000)] and sum(squares) == 332833500
    cluster.shutdown()
    records = [json.loads(p.read_text()) for p in sorted(tmp_path.glob("*.json"))]
    assert len(records) == 2
    for record in records:
        assert record["address"].endswith(f":{record['held']}") and record["released"]


def streaming_fun(args, ctx):
    """Reads its share of every micro-batch of a DStream, then returns."""
    feed = TFNode.DataFeed(ctx.mgr)
    ids = []
    while len(ids) < args["per_worker"] and not feed.should_stop():
        ids.extend(int(i) for i in feed.next_batch(10))
    with open(os.path.join(args["out"], f"{ctx.job_name}-{ctx.task_index}.json"), "w") as f:
        json.dump(ids, f)


def test_a_dstream_is_fed_until_the_nodes_finish_then_shutdown_stops_it(spark_local_cluster_4x1,
                                                                        tmp_path):
    from pyspark.streaming import StreamingContext
    sc = spark_local_cluster_4x1.sparkContext
    ssc = StreamingContext(sc, 1)
    batches = [sc.parallelize(range(i * 40, (i + 1) * 40), 2) for i in range(3)]
    cluster = TFCluster.run(sc, streaming_fun, {"out": str(tmp_path), "per_worker": 60}, 2, 0,
                            input_mode=TFCluster.InputMode.SPARK)
    cluster.train(ssc.queueStream(batches), 1)
    ssc.start()
    cluster.shutdown(ssc, timeout=180)
    received = [json.loads(p.read_text()) for p in sorted(tmp_path.glob("*.json"))]
    assert [len(ids) for ids in received] == [60, 60]
    assert sorted(received[0] + received[1]) == list(range(120))


def failing_inference_fun(args, ctx):
    """Answers one batch, then fails with an error of its own."""
    tf_feed = TFNode.DataFeed(ctx.mgr, False)
    batch = tf_feed.next_batch(10)
    tf_feed.batch_results([x * x for x in batch])
    raise RuntimeError(f"model blew up on {ctx.job_name}:{ctx.task_index} (code 4711)")


def test_a_node_failing_during_lazy_inference_is_the_error_of_the_users_action(
        spark_local_cluster_4x1):
    import pytest
    sc = spark_local_cluster_4x1.sparkContext
    cluster = TFCluster.run(sc, failing_inference_fun, None, 2, 0, False,
                            TFCluster.InputMode.SPARK, log_stream=None)
    with pytest.raises(Exception) as raised:   # whatever Spark wraps it in
        cluster.inference(sc.parallelize(range(1000), 10)).collect()
    message = str(raised.value)
    assert "model blew up on worker:" in message and "(code 4711)" in message
    assert "RuntimeError" in message
    with pytest.raises(tfos.ClusterFailed, match="code 4711"):
        cluster.shutdown(timeout=60)


def instance_fun(args, ctx):
    """One independent instance: writes who it is and whether it was given a cluster, and
    returns its number and pid (a numpy integer, sent as a plain one)."""
    import numpy as np
    with open(os.path.join(args["out"], f"instance-{ctx.worker_num}.json"), "w") as f:
        json.dump({"num_workers": ctx.num_workers, "cluster_spec": ctx.cluster_spec,
                   "tf_config": os.environ.get("TF_CONFIG"), "pid": os.getpid()}, f)
    return {"worker_num": ctx.worker_num, "pid": np.int64(os.getpid())}


def test_tfparallel_runs_independent_instances_with_and_without_a_barrier(
        spark_local_cluster_4x1, tmp_path):
    import pytest

    from tfos import TFParallel
    sc = spark_local_cluster_4x1.sparkContext
    (tmp_path / "barrier").mkdir()
    (tmp_path / "waves").mkdir()
    returned = {
        "barrier": TFParallel.run(sc, instance_fun, {"out": str(tmp_path / "barrier")}, 3),
        "waves": TFParallel.run(sc, instance_fun, {"out": str(tmp_path / "waves")}, 6,
                                use_barrier=False)}
    for name, count in (("barrier", 3), ("waves", 6)):
        records = {p.stem: json.loads(p.read_text()) for p in (tmp_path / name).glob("*.json")}
        assert sorted(records) == [f"instance-{i}" for i in range(count)]
        assert all(r["num_workers"] == count and r["cluster_spec"] == {}
                   and r["tf_config"] is None for r in records.values())
        assert len({r["pid"] for r in records.values()}) == count
        # What each instance returned, in worker_num order.
        assert returned[name] == [{"worker_num": i, "pid": records[f"instance-{i}"]["pid"]}
                                  for i in range(count)]
    # More instances than the 4 task slots cannot start together.
    with pytest.raises(tfos.PreflightError, match="needs 5 task slots"):
        TFParallel.run(sc, instance_fun, {"out": str(tmp_path)}, 5)
