"""Bad input on a real local-cluster: each case is a clear error, and nothing hangs or is lost.

(More nodes than slots, dynamic allocation, unpicklable map_fun and version skew are in
test_launch.py and test_preflight_spark.py; a record larger than the buffer in test_feed.py.)
"""
import json
import os
import re
import threading

import numpy as np
import pytest

import tfos
from tfos import ClusterFailed, ConfigError, FeedJobFailed


def read_all(args, ctx):
    """Reads its feed to the end; records the ids it received."""
    feed = ctx.get_data_feed()
    ids = []
    while not feed.should_stop():
        ids.extend(int(row[1]) for row in feed.next_batch(32))
    if args and "out" in args:
        with open(os.path.join(args["out"], f"{args['name']}-{ctx.task_index}.json"), "w") as f:
            json.dump(ids, f)


def spark_cluster(spark, map_fun=read_all, args=None, nodes=2, **options):
    return tfos.TFCluster.run(spark, map_fun, args, num_executors=nodes,
                              input_mode=tfos.InputMode.SPARK, log_stream=None, **options)


def rows(start, stop):
    return [(np.full(4, i, np.float32), i) for i in range(start, stop)]


@pytest.mark.parametrize("bad_row, message", [
    ((np.zeros(5, np.float32), 7), r"partition 1, row 7, column '0': .*shape"),
    (None, r"partition 1, row 7(, column '0')?: .*None"),
    (("text", 7), r"partition 1, row 7, column '0': .*text"),
])
def test_a_bad_row_fails_train_naming_partition_row_and_column(spark_local_cluster_4x1,
                                                               bad_row, message):
    data = [rows(0, 10), rows(10, 17) + [bad_row] + rows(18, 20)]
    rdd = spark_local_cluster_4x1.sparkContext.parallelize(data, 2).flatMap(lambda p: p)
    cluster = spark_cluster(spark_local_cluster_4x1)
    with pytest.raises(FeedJobFailed, match=message):
        cluster.train(rdd, num_epochs=1)
    cluster.shutdown(timeout=60)   # the cut epoch ends; the nodes return


def test_an_empty_dataset_is_refused_and_the_cluster_goes_on(spark_local_cluster_4x1, tmp_path):
    sc = spark_local_cluster_4x1.sparkContext
    cluster = spark_cluster(spark_local_cluster_4x1, args={"out": str(tmp_path), "name": "a"})
    with pytest.raises(ConfigError, match=r"train\(\) got 0 rows for 2 workers"):
        cluster.train(sc.parallelize([], 3), num_epochs=1)
    with pytest.raises(ConfigError, match=r"train\(\) got 1 rows for 2 workers"):
        cluster.train(sc.parallelize(rows(100, 101), 2), num_epochs=1)
    cluster.train(sc.parallelize(rows(0, 40), 4), num_epochs=1)
    cluster.shutdown(timeout=60)
    got = sorted(i for p in tmp_path.glob("*.json") for i in json.loads(p.read_text()))
    assert got == list(range(40))


def return_at_once(args, ctx):
    print("returning without reading", flush=True)


def test_a_map_fun_that_never_reads_its_feed_is_an_error(spark_local_cluster_4x1):
    rdd = spark_local_cluster_4x1.sparkContext.parallelize(rows(0, 400), 4)
    cluster = spark_cluster(spark_local_cluster_4x1, return_at_once)
    # The nodes return before or after their first records arrive (a race): either way the
    # error names the node and says why, from train() or at the latest from shutdown().
    try:
        cluster.train(rdd, num_epochs=1)
    except FeedJobFailed as exc:
        assert re.search(r"node worker:[01]@127.0.0.1.* returned from map_fun before train\(\) "
                         r"fed it any data", str(exc)), str(exc)
        cluster.shutdown(timeout=60)
        return
    except ClusterFailed as exc:
        error = exc
        with pytest.raises(ClusterFailed):
            cluster.shutdown(timeout=60)
    else:
        with pytest.raises(ClusterFailed) as failed:
            cluster.shutdown(timeout=60)
        error = failed.value
    first = error.failures[0]
    assert re.fullmatch(r"worker:[01]@127.0.0.1", first.node)
    assert "map_fun returned without reading feed 'input'" in "\n".join(first.log_tail)


def test_train_after_shutdown_is_refused(spark_local_cluster_4x1):
    cluster = spark_cluster(spark_local_cluster_4x1)
    cluster.shutdown(timeout=60)
    rdd = spark_local_cluster_4x1.sparkContext.parallelize(rows(0, 10), 2)
    with pytest.raises(ConfigError, match=r"train\(\) after shutdown\(\)"):
        cluster.train(rdd)


def test_num_ps_not_below_num_executors_is_refused(spark_local_cluster_4x1):
    with pytest.raises(ConfigError, match="num_ps=2 must be less than num_executors=2"):
        tfos.TFCluster.run(spark_local_cluster_4x1, read_all, None, num_executors=2, num_ps=2)


def test_two_clusters_at_once_keep_their_nodes_and_data_apart(spark_local_cluster_4x1,
                                                              tmp_path):
    sc = spark_local_cluster_4x1.sparkContext
    a = spark_cluster(spark_local_cluster_4x1, args={"out": str(tmp_path), "name": "a"}, nodes=1)
    b = spark_cluster(spark_local_cluster_4x1, args={"out": str(tmp_path), "name": "b"}, nodes=1)
    assert {n["pid"] for n in a.cluster_info}.isdisjoint(n["pid"] for n in b.cluster_info)
    errors = []

    def feed(cluster, start):
        try:
            cluster.train(sc.parallelize(rows(start, start + 300), 3), num_epochs=2)
            cluster.shutdown(timeout=120)
        except Exception as exc:   # reported below, on the test's thread
            errors.append(exc)

    threads = [threading.Thread(target=feed, args=(a, 0)),
               threading.Thread(target=feed, args=(b, 1000))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(240)
    assert not errors, errors
    got_a = json.loads((tmp_path / "a-0.json").read_text())
    got_b = json.loads((tmp_path / "b-0.json").read_text())
    assert sorted(got_a) == sorted(list(range(300)) * 2)
    assert sorted(got_b) == sorted(list(range(1000, 1300)) * 2)
