"""InputMode.SPARK on a real local-cluster: every record reaches exactly one worker."""
import json
import os
import time

import numpy as np
import pytest

import tfos


def collect_epochs(args, ctx):
    """Records, per epoch, the ids this worker received on each feed."""
    received = {}
    for qname in args["feeds"]:
        feed = ctx.get_data_feed(qname_in=qname)
        epochs = []
        while True:
            ids = []
            while (batch := feed.next_columns(args["batch"], within_epoch=True)):
                ids.extend(int(i) for i in batch[args["id_column"]])
                assert all(v.shape[0] == len(batch[args["id_column"]]) for v in batch.values())
            if batch is None:
                break
            epochs.append(ids)
        received[qname] = epochs
    with open(os.path.join(args["out"], f"{ctx.job_name}-{ctx.task_index}.json"), "w") as f:
        json.dump(received, f)


def uneven_rdd(sc, sizes):
    rows, start = [], 0
    for size in sizes:
        rows.append([(np.full(4, i, np.float32), i) for i in range(start, start + size)])
        start += size
    return sc.parallelize(rows, len(sizes)).flatMap(lambda part: part), start


def check_epochs(out, feed, total, epochs, workers=2):
    records = [json.loads(p.read_text())[feed] for p in sorted(out.glob("*.json"))]
    assert len(records) == workers
    per_worker = total // workers
    for epoch in range(epochs):
        got = [r[epoch] for r in records]
        assert [len(ids) for ids in got] == [per_worker] * workers
        union = [i for ids in got for i in ids]
        assert len(set(union)) == len(union), "a record reached two workers"
        assert set(union) <= set(range(total))
        assert total - len(union) == total % workers


@pytest.fixture
def spark_feed_cluster(spark_local_cluster_4x1, tmp_path):
    def start(feeds=("input",), id_column="1"):
        args = {"out": str(tmp_path), "feeds": list(feeds), "batch": 7, "id_column": id_column}
        return tfos.TFCluster.run(spark_local_cluster_4x1, collect_epochs, args, num_executors=2,
                                  input_mode=tfos.InputMode.SPARK, log_stream=None)
    return start


def test_uneven_empty_and_single_partitions_of_an_rdd(spark_local_cluster_4x1, spark_feed_cluster,
                                                      tmp_path):
    rdd, total = uneven_rdd(spark_local_cluster_4x1.sparkContext, [0, 13, 1, 40, 0, 7])
    rdd.cache()
    with spark_feed_cluster() as cluster:
        cluster.train(rdd, num_epochs=2)
        cluster.train(rdd, num_epochs=1)    # again: its counts are known, the epochs go on
        cluster.shutdown(timeout=120)
    check_epochs(tmp_path, "input", total, epochs=3)


def test_python_workers_are_readied_for_the_feed_while_the_nodes_start(spark_local_cluster_4x1,
                                                                        spark_feed_cluster,
                                                                        tmp_path):
    def readied():   # nested: pickled by value for the workers
        import gc
        import sys
        # and the imports are out of the reach of the full collection PySpark's daemon runs
        # after every task (see feed_task._freeze_heap)
        return (all(name in sys.modules
                    for name in ("tfos.executor.feed_task", "pyarrow", "rdma.shm"))
                and gc.get_freeze_count() > 10_000)

    def rdd_workers_readied(_partition, _rows):
        yield readied()

    def dataframe_workers_readied(batches):
        import pyarrow as pa
        for _ in batches:
            pass
        yield pa.record_batch({"ready": pa.array([readied()])})

    spark = spark_local_cluster_4x1
    sc = spark.sparkContext
    with spark_feed_cluster() as cluster:
        cluster._warm_up.join(120)
        group = f"{cluster.job_group}-feed-warm-up"
        jobs = sc.statusTracker().getJobIdsForGroup(group)
        # an RDD job, and (the cluster was given a SparkSession) a DataFrame one: Spark runs a
        # DataFrame's Python functions in workers of their own
        assert len(jobs) == 2
        assert {sc.statusTracker().getJobInfo(job).status for job in jobs} == {"SUCCEEDED"}
        # one task per slot the 2 nodes leave free on local-cluster[4,1]; Spark reuses the
        # readied workers for the next tasks there
        assert sc.parallelize(range(2), 2).mapPartitionsWithIndex(
            rdd_workers_readied).collect() == [True, True]
        rdd, total = uneven_rdd(sc, [5, 6])
        cluster.train(rdd, num_epochs=1)
        # (a worker is back in Spark's pool of idle ones a moment after its job ends: checked
        # after the train, not at once after the warm-up)
        assert [row.ready for row in spark.range(0, 2, 1, 2).mapInArrow(
            dataframe_workers_readied, "ready boolean").collect()] == [True, True]
        cluster.shutdown(timeout=120)
    check_epochs(tmp_path, "input", total, epochs=1)


def test_a_retried_feed_task_delivers_each_record_once(spark_local_cluster_4x1,
                                                        spark_feed_cluster, tmp_path):
    def fail_first_attempt(index, rows):
        """Partition 1's first attempt fails after 30 rows, as a flaky source or a lost
        executor would; Spark's retry then succeeds. (Nested: pickled by value.)"""
        from pyspark import TaskContext
        for n, row in enumerate(rows):
            if index == 1 and n == 30 and TaskContext.get().attemptNumber() == 0:
                raise OSError("transient read error")
            yield row

    rdd, total = uneven_rdd(spark_local_cluster_4x1.sparkContext, [50, 80, 40])
    flaky = rdd.mapPartitionsWithIndex(fail_first_attempt)   # not cached: each pass fails once
    with spark_feed_cluster() as cluster:
        cluster.train(flaky, num_epochs=2)
        cluster.shutdown(timeout=120)
    check_epochs(tmp_path, "input", total, epochs=2)


def test_a_dataframe_with_an_array_column(spark_local_cluster_4x1, spark_feed_cluster, tmp_path):
    spark = spark_local_cluster_4x1
    df = spark.createDataFrame([(float(i), [float(i)] * 3, i) for i in range(101)],
                               "x double, v array<float>, id long").repartition(5)
    with spark_feed_cluster(id_column="id") as cluster:
        cluster.train(df, num_epochs=1)
        cluster.shutdown(timeout=120)
    check_epochs(tmp_path, "input", 101, epochs=1)


def test_two_named_feeds(spark_local_cluster_4x1, spark_feed_cluster, tmp_path):
    sc = spark_local_cluster_4x1.sparkContext
    train, n_train = uneven_rdd(sc, [10, 20, 5])
    valid, n_valid = uneven_rdd(sc, [3, 8])
    with spark_feed_cluster(feeds=("train", "valid")) as cluster:
        cluster.train(train, num_epochs=1, qname="train")
        cluster.train(valid, num_epochs=1, qname="valid")
        cluster.shutdown(timeout=120)
    check_epochs(tmp_path, "train", n_train, epochs=1)
    check_epochs(tmp_path, "valid", n_valid, epochs=1)


def test_one_epoch_of_an_uncached_dataframe_reads_its_source_once(spark_local_cluster_4x1,
                                                                   spark_feed_cluster, tmp_path):
    spark = spark_local_cluster_4x1
    reads = spark.sparkContext.accumulator(0)

    def read(i):
        reads.add(1)           # each time the source computes a row
        return i, [float(i)] * 3

    total = 501
    source = spark.sparkContext.range(total, numSlices=5).map(read)
    df = spark.createDataFrame(source, "id long, v array<float>")      # not cached
    with spark_feed_cluster(id_column="id") as cluster:
        (fed,) = cluster.train(df, num_epochs=1)
        cluster.shutdown(timeout=120)
    assert reads.value == total, "the source was read more than once"
    check_epochs(tmp_path, "input", total, epochs=1)
    assert (fed.epoch, fed.per_worker, fed.dropped) == (0, 250, 1)


def test_a_source_that_changes_between_reads_still_feeds_equal_shares_once_each(
        spark_local_cluster_4x1, spark_feed_cluster, tmp_path):
    import random

    from pyspark.sql import functions as F
    total = 3000
    # A sample drawn anew each time the source is computed: each epoch feeds another subset
    # of another size. (F.rand() without a seed would not do: Spark fixes its seed in the plan.)
    keep = F.udf(lambda i: random.random() < 0.5, "boolean").asNondeterministic()
    df = spark_local_cluster_4x1.range(total, numPartitions=6).where(keep("id"))
    with spark_feed_cluster(id_column="id") as cluster:
        fed = cluster.train(df, num_epochs=3)
        cluster.shutdown(timeout=120)
    records = [json.loads(p.read_text())["input"] for p in sorted(tmp_path.glob("*.json"))]
    assert len(records) == 2 and [f.epoch for f in fed] == [0, 1, 2]
    sizes = set()
    for epoch, report in enumerate(fed):
        shares = [r[epoch] for r in records]
        assert [len(ids) for ids in shares] == [report.per_worker] * 2
        union = shares[0] + shares[1]
        assert len(set(union)) == len(union), "a record reached two workers"
        assert set(union) <= set(range(total)) and report.dropped <= 1
        sizes.add(len(union) + report.dropped)
    assert len(sizes) > 1, "the sample was the same in every epoch: the test tests nothing"


def square(args, ctx):
    feed = ctx.get_data_feed(train_mode=False)
    while not feed.should_stop():
        batch = feed.next_batch(args["batch"])
        if batch:
            feed.batch_results([x * x for x in batch])


def test_inference_keeps_row_order_and_count(spark_local_cluster_4x1):
    rdd = spark_local_cluster_4x1.sparkContext.parallelize(range(1000), 10)
    with tfos.TFCluster.run(spark_local_cluster_4x1, square, {"batch": 64}, num_executors=2,
                            input_mode=tfos.InputMode.SPARK, log_stream=None) as cluster:
        results = cluster.inference(rdd).collect()
        cluster.shutdown(timeout=120)
    assert results == [x * x for x in range(1000)]
    assert sum(results) == sum(x * x for x in range(1000))


def consume_then(args, ctx):
    feed = ctx.get_data_feed()
    for _ in range(args["batches"]):
        feed.next_batch(8)
    print(f"consumed {args['batches']} batches", flush=True)
    if args["then"] == "raise" and ctx.task_index == 1:
        raise RuntimeError("model diverged on worker 1")
    if args["then"] == "terminate":
        feed.terminate()
    if args["then"] == "drain":
        while not feed.should_stop():
            feed.next_batch(64)
        if ctx.task_index == 1:
            raise RuntimeError("failed after the feed ended")


@pytest.mark.parametrize("then", ["terminate", "return"])
def test_nodes_that_stop_consuming_end_the_feed_at_once(spark_local_cluster_4x1, then):
    rdd, _ = uneven_rdd(spark_local_cluster_4x1.sparkContext, [200] * 4)
    with tfos.TFCluster.run(spark_local_cluster_4x1, consume_then, {"batches": 3, "then": then},
                            num_executors=2, input_mode=tfos.InputMode.SPARK,
                            feed_buffer_bytes=1 << 16, log_stream=None) as cluster:
        start = time.monotonic()
        cluster.train(rdd, num_epochs=50)   # far more than the nodes will ever read
        elapsed = time.monotonic() - start
        cluster.shutdown(timeout=60)
    assert elapsed < 30, f"train() took {elapsed:.1f}s to notice the nodes stopped"


def test_an_exception_in_map_fun_during_feeding_reaches_train(spark_local_cluster_4x1):
    rdd, _ = uneven_rdd(spark_local_cluster_4x1.sparkContext, [200] * 4)
    cluster = tfos.TFCluster.run(spark_local_cluster_4x1, consume_then,
                                 {"batches": 2, "then": "raise"}, num_executors=2,
                                 input_mode=tfos.InputMode.SPARK, feed_buffer_bytes=1 << 16,
                                 log_stream=None)
    start = time.monotonic()
    with pytest.raises(tfos.ClusterFailed) as failed:
        cluster.train(rdd, num_epochs=50)
    assert time.monotonic() - start < 30
    with pytest.raises(tfos.ClusterFailed):   # and shutdown reports the same root cause
        cluster.shutdown(timeout=60)
    first = failed.value.failures[0]
    assert first.node == "worker:1@127.0.0.1"
    assert "RuntimeError: model diverged on worker 1" in "\n".join(first.log_tail)


def test_an_exception_after_feeding_reaches_shutdown(spark_local_cluster_4x1):
    rdd, _ = uneven_rdd(spark_local_cluster_4x1.sparkContext, [30, 30])
    cluster = tfos.TFCluster.run(spark_local_cluster_4x1, consume_then,
                                 {"batches": 0, "then": "drain"}, num_executors=2,
                                 input_mode=tfos.InputMode.SPARK, log_stream=None)
    cluster.train(rdd, num_epochs=1)
    with pytest.raises(tfos.ClusterFailed, match="worker:1@127.0.0.1") as failed:
        cluster.shutdown(timeout=60)
    assert "RuntimeError: failed after the feed ended" in "\n".join(failed.value.failures[0].log_tail)


def test_preflight_counts_a_slot_for_the_feed_tasks(spark_local_cluster_4x1):
    with pytest.raises(tfos.PreflightError, match=r"needs 5 task slots .*plus 1 for the feed"):
        tfos.TFCluster.run(spark_local_cluster_4x1, square, {}, num_executors=4,
                           input_mode=tfos.InputMode.SPARK)


def test_train_from_structured_streaming_foreach_batch(spark_local_cluster_4x1,
                                                       spark_feed_cluster, tmp_path):
    spark = spark_local_cluster_4x1
    source = tmp_path / "stream"
    for part in range(3):   # three files, one micro-batch each
        spark.createDataFrame([(i, [float(i)] * 2) for i in range(part * 20, part * 20 + 20)],
                              "id long, v array<float>").coalesce(1) \
            .write.parquet(str(source / f"part={part}"))
    stream = spark.readStream.schema("id long, v array<float>") \
        .option("maxFilesPerTrigger", 1).parquet(str(source / "part=*"))
    with spark_feed_cluster(id_column="id") as cluster:
        query = stream.writeStream.trigger(availableNow=True) \
            .option("checkpointLocation", str(tmp_path / "checkpoint")) \
            .foreachBatch(lambda batch, batch_id: cluster.train(batch, num_epochs=1)).start()
        assert query.awaitTermination(240)
        assert query.exception() is None
        cluster.shutdown(timeout=120)
    records = [json.loads(p.read_text())["input"] for p in sorted(tmp_path.glob("*.json"))]
    epochs = list(zip(*records))
    assert len(epochs) == 3, "one epoch per micro-batch"
    for epoch in epochs:
        assert [len(ids) for ids in epoch] == [10, 10]
    received = sorted(i for epoch in epochs for ids in epoch for i in ids)
    assert received == list(range(60))


def double_x(args, ctx):
    feed = ctx.get_data_feed(train_mode=False, input_mapping={"x": "x"})
    while not feed.should_stop():
        batch = feed.next_batch(args["batch"])
        if batch:
            feed.batch_results(batch["x"] * 2)


def test_dataframe_inference_appends_results_next_to_the_input(spark_local_cluster_4x1):
    spark = spark_local_cluster_4x1
    # parallelize keeps row order (a shuffle would not, between two evaluations)
    df = spark.sparkContext.parallelize([(i, f"row{i}", float(i)) for i in range(250)], 4) \
        .toDF("id long, name string, x double")
    expected = [(r.id, r.name, r.x) for r in df.collect()]
    with tfos.TFCluster.run(spark, double_x, {"batch": 16}, num_executors=2,
                            input_mode=tfos.InputMode.SPARK, log_stream=None) as cluster:
        rows = cluster.inference(df, output_schema="doubled double").collect()
        cluster.shutdown(timeout=120)
    assert [(r.id, r.name, r.x) for r in rows] == expected
    assert all(r.doubled == 2 * r.x for r in rows)


def read_epochs_then_return(args, ctx):
    """Reads exactly the announced epochs (as Keras fit(epochs=N) does), worker 1 slowly."""
    feed = ctx.get_data_feed()
    got = 0
    for _ in range(args["epochs"]):
        while (batch := feed.next_columns(16, within_epoch=True)):
            got += len(batch["1"])
            if ctx.task_index == 1:
                time.sleep(0.01)
    with open(os.path.join(args["out"], f"{ctx.job_name}-{ctx.task_index}.count"), "w") as f:
        f.write(str(got))


def test_a_worker_done_with_its_epochs_does_not_cut_off_the_others(spark_local_cluster_4x1,
                                                                   tmp_path):
    rdd, total = uneven_rdd(spark_local_cluster_4x1.sparkContext, [300, 300, 300, 300])
    args = {"epochs": 2, "out": str(tmp_path)}
    with tfos.TFCluster.run(spark_local_cluster_4x1, read_epochs_then_return, args,
                            num_executors=2, input_mode=tfos.InputMode.SPARK,
                            feed_buffer_bytes=1 << 16, log_stream=None) as cluster:
        cluster.train(rdd, num_epochs=2)
        cluster.shutdown(timeout=120)
    counts = [int(p.read_text()) for p in sorted(tmp_path.glob("*.count"))]
    assert counts == [total, total]   # 2 epochs x total/2 records each


def drain(args, ctx):
    feed = ctx.get_data_feed()
    while not feed.should_stop():
        feed.next_batch(64)


def test_a_record_larger_than_the_feed_buffer_fails_train_clearly(spark_local_cluster_4x1):
    sc = spark_local_cluster_4x1.sparkContext
    small = [(np.zeros(1 << 19, np.float32)[:4], i) for i in range(10)]
    big = [(np.zeros(1 << 19, np.float32), i) for i in (98, 99)]   # 2 MiB each; 12 rows: none
    # is the equalisation remainder
    rdd = sc.parallelize([small, big], 2).flatMap(lambda part: part)
    cluster = tfos.TFCluster.run(spark_local_cluster_4x1, drain, {}, num_executors=2,
                                 input_mode=tfos.InputMode.SPARK, feed_buffer_bytes=1 << 20,
                                 log_stream=None)
    with pytest.raises(tfos.TfosError, match=r"partition 1, row [01]: 2097\d+ bytes, more than the "
                                             r"feed buffer of node (chief|worker):\d@127.0.0.1 "
                                             r"\(1048576 bytes\)"):
        cluster.train(rdd, num_epochs=1, feed_timeout=60)
    # The failed epoch was cut where it stopped: the nodes are not left waiting for the rest.
    cluster.shutdown(timeout=60)
