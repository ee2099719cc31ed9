"""InputMode.SPARK on a real local-cluster: every record reaches exactly one worker."""
import json
import os

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
    with spark_feed_cluster() as cluster:
        cluster.train(rdd, num_epochs=2)
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
