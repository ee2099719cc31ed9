"""The Spark jobs that feed a cluster: run, count, cancel (driver side).

``SparkFeedJobs`` is the only part of the data plane that talks to Spark: it runs the feed
tasks of ``tfos.executor.feed_task`` over an RDD (``mapPartitionsWithIndex``) or a DataFrame
(``mapInArrow``) under the cluster's feed job group, counts partitions, builds the lazy
inference transformations, and cancels the running job. ``tfos.driver.feeder.Feeder`` decides
what to feed; anything with these methods can run its jobs (the unit tests run the same feed
tasks in-process over lists).
"""
from __future__ import annotations

import functools
import threading

from tfos.executor import feed_task
from tfos.executor.feed_task import FeedSpec


def is_dataframe(data) -> bool:
    return hasattr(data, "mapInArrow")


class SparkFeedJobs:
    """Feed jobs of one cluster, under the Spark job group ``job_group``."""

    def __init__(self, sc, job_group: str):
        self._sc = sc
        self.job_group = job_group
        self._running = threading.Event()

    def count(self, data) -> list[int]:
        """The rows of every partition of ``data``."""
        if is_dataframe(data):
            # Counted in the JVM: sending the columns to Python costs as much as feeding them.
            from pyspark.sql import functions as F
            counts = [0] * data.rdd.getNumPartitions()
            for row in data.groupBy(F.spark_partition_id().alias("p")).count().collect():
                counts[row["p"]] = row["count"]
            return counts
        return data.mapPartitions(feed_task.count_rows).collect()

    def run(self, data, spec: FeedSpec, what: str,
            cancelled: threading.Event) -> BaseException | None:
        """Runs one epoch's feed job to its end; returns its error (None: it succeeded).

        The job runs in a thread of its own, under the feed job group, so ``cancel`` from any
        thread stops it; ``cancelled`` already set when it starts cancels it at once.
        """
        error: list[BaseException] = []

        def job():
            try:
                self._sc.setJobGroup(self.job_group, f"tfos {what}", interruptOnCancel=True)
                if is_dataframe(data):
                    data.mapInArrow(functools.partial(feed_task.train_arrow, spec),
                                    "rows long").collect()
                else:
                    data.mapPartitionsWithIndex(
                        functools.partial(feed_task.train_rows, spec)).collect()
            except BaseException as exc:  # handed to the caller
                error.append(exc)

        thread = threading.Thread(target=job, name="tfos-feed-job", daemon=True)
        self._running.set()
        try:
            thread.start()
            if cancelled.is_set():   # stopped while starting: cancel what just began
                self._sc.cancelJobGroup(self.job_group)
            thread.join()
        finally:
            self._running.clear()
        return error[0] if error else None

    def cancel(self) -> None:
        """Cancels the running feed job, if any."""
        if self._running.is_set():
            self._sc.cancelJobGroup(self.job_group)

    def inference(self, data, spec: FeedSpec, output_schema=None):
        """The lazy results of feeding ``data`` (see ``TFCluster.inference``)."""
        if not is_dataframe(data):
            return data.mapPartitionsWithIndex(functools.partial(feed_task.infer_rows, spec))
        from pyspark.sql.types import StructType
        out = output_schema if isinstance(output_schema, StructType) else \
            StructType.fromDDL(output_schema)
        schema = StructType(list(data.schema.fields) + list(out.fields))
        return data.mapInArrow(functools.partial(feed_task.infer_arrow, spec, schema), schema)
