"""The driver's Feeder without Spark: real feed servers, a real control plane, and the feed
tasks Spark would run, run here in-process over lists of partitions."""
from __future__ import annotations

import json
import subprocess
import sys
import threading

import numpy as np
import pytest

from tfos import FeedDataError, FeedFailed, FeedJobFailed
from tfos.core import messages as m
from tfos.core.config import ClusterConfig, InputMode
from tfos.core.feed_plan import BALANCE_ROWS
from tfos.driver.feeder import Feeder
from tfos.executor import feed_task
from tfos.node.data_feed import DataFeed
from tfos.node.feed_server import FeedServer

HOST = "127.0.0.1"


class Partitions(list):
    """A dataset of partitions (lists of rows), as the feed jobs below take it."""

    is_cached = False


class InProcessFeedJobs:
    """Runs feed jobs like ``SparkFeedJobs``, one task per partition, in this process. A
    failed task makes the job fail with an opaque error, as Spark's would read to Python."""

    job_group = "tfos-test-feed"

    def __init__(self):
        self.cancels = 0
        self.jobs = 0

    def run(self, data, spec, what, cancelled):
        self.jobs += 1
        try:
            for index, partition in enumerate(data):
                list(feed_task.train_rows(spec, index, iter(partition)))
        except Exception as exc:  # noqa: BLE001 - what Spark hands back is not the task's type
            return RuntimeError(f"Job aborted due to stage failure: {type(exc).__name__}")
        return None

    def cancel(self):
        self.cancels += 1

    def inference(self, data, spec, output_schema):
        """The results of every partition's inference, in order (Spark's job is lazy; this
        one runs at once)."""
        return [value for index, partition in enumerate(data)
                for chunk in feed_task.infer_partition(spec, index, iter(partition))
                for value in chunk["0"]]


def rows(start: int, stop: int) -> list:
    return [(np.full(3, i, np.float32), i) for i in range(start, stop)]


class Worker:
    """A fed node's feed endpoint and a reader recording the ids of each epoch it reads."""

    def __init__(self, tmp_path, node_id: int, secret: bytes):
        self.server = FeedServer([f"tcp://{HOST}:0", f"shm://{tmp_path}/feed-{node_id}.sock"],
                                 secret, 8 << 20)
        self.epochs: list[list[int]] = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self):
        feed = DataFeed(self.server.queue("input"), timeout=60)
        while True:
            ids = []
            while (batch := feed.next_columns(5, within_epoch=True)):
                ids.extend(int(i) for i in batch["1"])
            if batch is None:
                return
            self.epochs.append(ids)


@pytest.fixture
def fed_cluster(control_plane, tmp_path):
    """Two fed workers (node 0 and 1) with their endpoints known to the driver's state, and a
    Feeder running its jobs in-process."""
    from rdma import peer
    plane = control_plane(ClusterConfig(num_executors=2, input_mode=InputMode.SPARK))
    workers = [Worker(tmp_path, i, plane.secret) for i in range(2)]
    for node_id, worker in enumerate(workers):
        addresses = [peer.advertise(a, HOST) for a in worker.server.addresses]
        plane.state.service_url(m.ServiceUrl(node_id, "feed", json.dumps(addresses)))
    jobs = InProcessFeedJobs()
    feeder = Feeder(plane.config, plane.state, plane.secret, plane.address, jobs)
    yield feeder, workers, jobs
    feeder.close()
    for worker in workers:
        worker.server.close()


def finish(feeder, workers):
    feeder.end_of_data()
    for worker in workers:
        worker.reader.join(30)
        assert not worker.reader.is_alive()


def test_every_worker_gets_the_same_share_of_each_epoch_and_no_record_twice(fed_cluster):
    feeder, workers, jobs = fed_cluster
    data = Partitions([rows(0, 7), [], rows(7, 20), rows(20, 25)])   # 25 rows, 2 workers
    fed = feeder.train(data, num_epochs=2, feed_timeout=30, qname="input")
    finish(feeder, workers)
    assert jobs.jobs == 2              # one pass over the data per epoch, no counting pass
    assert [(f.feed, f.epoch) for f in fed] == [("input", 0), ("input", 1)]
    for epoch in range(2):
        shares = [worker.epochs[epoch] for worker in workers]
        per_worker, dropped = fed[epoch].per_worker, fed[epoch].dropped
        assert [len(s) for s in shares] == [per_worker] * 2
        union = shares[0] + shares[1]
        assert len(set(union)) == len(union) and set(union) <= set(range(25))   # none twice
        assert dropped == 25 - len(union) < 2 * BALANCE_ROWS        # reported, and bounded


def test_bad_data_is_known_by_its_report_not_by_the_text_of_the_job_error(fed_cluster):
    feeder, workers, jobs = fed_cluster
    data = Partitions([rows(0, 10), rows(10, 13) + [(np.zeros(5, np.float32), 13)] + rows(14, 20)])
    with pytest.raises(FeedJobFailed, match=r"FeedDataError: partition 1, row 3, column '0'"):
        feeder.train(data, num_epochs=1, feed_timeout=30, qname="input")
    assert jobs.cancels == 1           # the report stopped the job at once
    assert feeder._rejected == {}      # and was used up by the epoch it was about
    # The failed epoch was cut on every worker, so none waits for records that never come;
    # the cluster can be fed again.
    feeder.train(Partitions([rows(100, 104)]), num_epochs=1, feed_timeout=30, qname="input")
    finish(feeder, workers)
    assert all(len(worker.epochs) == 2 for worker in workers)
    assert sorted(workers[0].epochs[1] + workers[1].epochs[1]) == [100, 101, 102, 103]


def test_a_feed_task_reports_bad_data_to_the_driver_through_the_control_service(fed_cluster):
    feeder, _workers, _jobs = fed_cluster
    reports = []
    feeder.state.on_feed_data_rejected = reports.append
    spec = feed_task.FeedSpec("input", 4, (), feeder._secret, None,
                              driver_address=feeder._driver_address)
    feed_task.report_data_error(spec, 2, FeedDataError("partition 2, row 0: bad"))
    assert reports == [m.FeedDataRejected("input", 4, 2, "partition 2, row 0: bad")]


def test_missing_feed_endpoints_fail_with_the_nodes_named(control_plane):
    plane = control_plane(ClusterConfig(num_executors=2, input_mode=InputMode.SPARK))
    plane.state.service_url(m.ServiceUrl(0, "feed", json.dumps([f"tcp://{HOST}:1"])))
    feeder = Feeder(plane.config, plane.state, plane.secret, plane.address, InProcessFeedJobs())
    with pytest.raises(FeedJobFailed, match=r"nodes worker:1@\? did not open their feed within"):
        feeder.train(Partitions([rows(0, 4)]), num_epochs=1, feed_timeout=0.2, qname="input")


def test_a_feed_task_of_an_epoch_the_driver_is_not_feeding_gets_no_workers(fed_cluster):
    feeder, workers, _jobs = fed_cluster
    feeder.train(Partitions([rows(0, 4)]), num_epochs=1, feed_timeout=30, qname="input")
    endpoints = feeder.endpoints(10)
    stale = feed_task.FeedSpec("input", 7, endpoints, feeder._secret, True,
                               lease_address=feeder._leases.address)
    with pytest.raises(FeedFailed, match=r"partition 2, rows 0-0: the driver gave no workers "
                                         r"for them: feed 'input' epoch 7 is not being fed now"):
        feed_task.feed_training_partition(stale, 2, rows(0, 3))
    orphan = feed_task.FeedSpec("input", 0, endpoints, feeder._secret, True)
    with pytest.raises(FeedFailed, match="feeding 2 workers needs the driver's lease endpoint"):
        feed_task.feed_training_partition(orphan, 0, rows(0, 3))
    finish(feeder, workers)


def test_a_node_no_inference_row_reached_stops_reading_even_if_it_starts_after_the_end(
        fed_cluster):
    feeder, workers, _jobs = fed_cluster

    def serve(worker):
        feed = DataFeed(worker.server.queue("predict"), train_mode=False, timeout=30)
        while not feed.should_stop():
            batch = feed.next_batch(4)
            if batch:
                feed.batch_results([2 * row[1] for row in batch])
    server = threading.Thread(target=serve, args=(workers[0],), daemon=True)
    server.start()
    # One partition: all its rows go to worker 0, none to worker 1.
    results = feeder.inference(Partitions([rows(0, 10)]), feed_timeout=30, qname="predict")
    assert results == [2 * i for i in range(10)]
    finish(feeder, workers)
    server.join(30)
    assert not server.is_alive()
    # Worker 1's map_fun opens the feed only now, after the driver ended every feed: it sees
    # the end at once instead of waiting for rows of an epoch it never heard of.
    late = DataFeed(workers[1].server.queue("predict"), train_mode=False, timeout=30)
    assert late.next_batch(4) == [] and late.should_stop()


def test_vector_dtype_is_checked_and_only_dataframes_are_converted():
    from tfos import ConfigError
    from tfos.driver.feed_jobs import vectors_as
    rows = [(np.zeros(3), 1)]
    assert vectors_as(rows, "float32") is rows and vectors_as(rows, "float64") is rows
    with pytest.raises(ConfigError, match=r"vector_dtype='float16': pass one of float32, "
                                          r"float64 \(the dtype Spark ML vector columns"):
        vectors_as(rows, "float16")


def test_a_dataframe_without_udt_columns_is_fed_without_importing_spark_ml():
    """pyspark.ml takes 0.3 s to import: a first train() of a frame without vectors skips it."""
    code = """if True:
        import sys
        from pyspark.sql.types import ArrayType, FloatType, LongType, StructField, StructType
        from tfos.driver.feed_jobs import vectors_as

        class Frame:           # what vectors_as reads of a DataFrame
            schema = StructType([StructField("x", ArrayType(FloatType())),
                                 StructField("y", LongType())])

            def mapInArrow(self, function, schema):
                raise AssertionError("no conversion expected")

        frame = Frame()
        assert vectors_as(frame, "float32") is frame
        print("pyspark.ml" in sys.modules)
    """
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"
