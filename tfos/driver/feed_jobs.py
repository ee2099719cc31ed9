"""The Spark jobs that feed a cluster: run, count, cancel (driver side).

``SparkFeedJobs`` is the only part of the data plane that talks to Spark: it runs the feed
tasks of ``tfos.executor.feed_task`` over an RDD (``mapPartitionsWithIndex``) or a DataFrame
(``mapInArrow``) under the cluster's feed job group, builds the lazy inference
transformations, and cancels the running job. ``tfos.driver.feeder.Feeder`` decides
what to feed; anything with these methods can run its jobs (the unit tests run the same feed
tasks in-process over lists).
"""
from __future__ import annotations

import dataclasses
import functools
import logging
import threading

from tfos.core.errors import ConfigError
from tfos.executor import feed_task
from tfos.executor.feed_task import FeedSpec

logger = logging.getLogger(__name__)
# After an interrupt, how long the cancelled job may take to end before the interrupt is raised.
CANCEL_WAIT_SECS = 15.0
# How long the first feed job waits for the warm-up jobs still running (then cancels them).
WARM_UP_WAIT_SECS = 60.0


def is_dataframe(data) -> bool:
    return hasattr(data, "mapInArrow")


# What train(vector_dtype=...) may name: the dtype Spark ML vector columns reach the nodes in.
VECTOR_DTYPES = ("float32", "float64")


def vectors_as(data, dtype: str):
    """``data`` with each Spark ML vector column (``VectorUDT``, dense or sparse rows) turned
    into ``array<float>`` in Spark (``vector_to_array``, in the executors' JVMs) when ``dtype``
    is ``"float32"``: half the bytes of the doubles a vector holds, through every step of the
    feed. ``"float64"`` keeps the vectors as they are (exact, and sparse rows travel sparse).
    Column names and order are kept; a frame without vector columns, and anything that is not
    a DataFrame (an RDD's rows are converted in the feed tasks), is returned as it is."""
    if dtype not in VECTOR_DTYPES:
        raise ConfigError(f"vector_dtype={dtype!r}: pass one of {', '.join(VECTOR_DTYPES)} (the "
                          "dtype Spark ML vector columns reach the nodes in)")
    if dtype == "float64" or not is_dataframe(data):
        return data
    from pyspark.sql.types import UserDefinedType
    udts = [field for field in data.schema.fields if isinstance(field.dataType, UserDefinedType)]
    if not udts:     # importing pyspark.ml takes 0.3 s: only a frame with a UDT column pays it
        return data
    from pyspark.ml.linalg import VectorUDT
    vectors = [field.name for field in udts if isinstance(field.dataType, VectorUDT)]
    if not vectors:
        return data
    from pyspark.ml.functions import vector_to_array
    return data.select([vector_to_array(data[name], dtype).alias(name) if name in vectors
                        else data[name] for name in data.columns])


def pickled_batches(rdd):
    """``rdd`` as the pickled batches of rows PySpark stores it in (an RDD of ``bytes``, one per
    batch), for the feed tasks to unpickle themselves (``tfos.core.pickled_rows``); None when
    its rows are not stored that way, or when it is a chain of Python transformations the feed
    task would run in the same process (reading its output as bytes would add a Python stage).
    A cached RDD, or one made by the JVM (``parallelize``), is read as bytes."""
    from pyspark.rdd import RDD, PipelinedRDD
    from pyspark.serializers import (
        AutoBatchedSerializer,
        BatchedSerializer,
        CloudPickleSerializer,
        NoOpSerializer,
        PickleSerializer,
    )
    if isinstance(rdd, PipelinedRDD) and rdd._is_pipelinable():
        return None
    jrdd = rdd._jrdd          # (first: building it may change the deserializer)
    stored = rdd._jrdd_deserializer
    if type(stored) not in (AutoBatchedSerializer, BatchedSerializer) or \
            type(stored.serializer) not in (CloudPickleSerializer, PickleSerializer):
        return None
    return RDD(jrdd, rdd.ctx, NoOpSerializer())


def _read_pickled(rdd, spec: FeedSpec):
    """``(rdd, spec)``, or its pickled batches and a spec that says so when it can be read that
    way (``pickled_batches``)."""
    batches = pickled_batches(rdd)
    return (rdd, spec) if batches is None else (batches, dataclasses.replace(spec, pickled=True))


class SparkFeedJobs:
    """Feed jobs of one cluster, under the Spark job group ``job_group``."""

    def __init__(self, sc, job_group: str):
        self._sc = sc
        self.job_group = job_group
        self._running = threading.Event()
        self._warm_up: threading.Thread | None = None

    def run(self, data, spec: FeedSpec, what: str,
            cancelled: threading.Event) -> BaseException | None:
        """Runs one epoch's feed job to its end; returns its error (None: it succeeded).

        The job runs in a thread of its own, under the feed job group, so ``cancel`` from any
        thread stops it; ``cancelled`` already set when it starts cancels it at once.
        """
        def job():
            if is_dataframe(data):
                data.mapInArrow(functools.partial(feed_task.train_arrow, spec),
                                "rows long").collect()
                return
            rows, row_spec = _read_pickled(data, spec)
            rows.mapPartitionsWithIndex(functools.partial(feed_task.train_rows,
                                                          row_spec)).collect()

        return self._in_job_thread(job, what, cancelled)

    def _in_job_thread(self, job, what: str,
                       cancelled: threading.Event) -> BaseException | None:
        """Runs ``job`` (Spark actions) in a thread under the feed job group; returns its error.

        The caller waits in ``join``, where Ctrl-C reaches it: the job is then cancelled and
        given ``CANCEL_WAIT_SECS`` to end before ``KeyboardInterrupt`` goes on up, so an
        interrupted ``train()`` leaves no feed job running behind it.
        """
        error: list[BaseException] = []

        def run():
            try:
                self._sc.setJobGroup(self.job_group, f"tfos {what}", interruptOnCancel=True)
                job()
            except BaseException as exc:  # handed to the caller
                error.append(exc)

        thread = threading.Thread(target=run, name="tfos-feed-job", daemon=True)
        self._running.set()
        try:
            thread.start()
            if cancelled.is_set():   # stopped while starting: cancel what just began
                self._sc.cancelJobGroup(self.job_group)
            thread.join()
        except KeyboardInterrupt:
            logger.warning("interrupted: cancelling the Spark job of %s", what)
            self._sc.cancelJobGroup(self.job_group)
            thread.join(CANCEL_WAIT_SECS)
            raise
        finally:
            self._running.clear()
        return error[0] if error else None

    def warm_up(self, tasks: int, session=None) -> threading.Thread | None:
        """Starts, in the background, jobs of ``tasks`` tiny tasks while the nodes are still
        starting TensorFlow, so that the first ``train()`` does not pay Spark's and Python's
        one-time costs: an RDD job (``feed_task.warm_up``) whose Python workers import the
        feed's modules, and, when the driver has a SparkSession (``session``), a
        ``mapInArrow`` job over a few rows (``feed_task.warm_up_arrow``).

        The second is for DataFrame feeds: Spark runs a DataFrame's Python functions in
        Python workers of their own (another daemon, not those of RDD tasks), and an
        application's first ``mapInArrow`` job loads its JVM classes and those workers'
        modules: 8.6 s and 16 s of CPU (5.5 in the driver's JVM, 5.7 in the executors', 4.4
        in the Python workers) on local-cluster[2,2] here, where the next such job took
        0.3-0.55 s. A DataFrame's first ``train()`` of 60,000 MNIST records took 6.0-6.6 s
        (its second 1.5-1.9 s); after the warm-up, 2.35 s.

        Best effort: a failure is only logged. The first feed job waits for the warm-up to end
        (``await_warm_up``), so the two never compete for the executors. Returns the thread.
        """
        if tasks < 1:
            return None

        def job():
            try:
                self._sc.setJobGroup(f"{self.job_group}-warm-up", "tfos: readying Python "
                                     "workers for the feed", interruptOnCancel=True)
                self._sc.parallelize(range(tasks), tasks).mapPartitionsWithIndex(
                    feed_task.warm_up).collect()
                if session is not None:
                    session.range(0, tasks, 1, tasks).mapInArrow(
                        feed_task.warm_up_arrow, "pid long").collect()
            except Exception as exc:  # noqa: BLE001 - best effort; Spark/py4j errors vary
                logger.info("readying Python workers for the feed failed (the feed tasks "
                            "import what they need themselves): %s", exc)

        thread = threading.Thread(target=job, name="tfos-feed-warm-up", daemon=True)
        thread.start()
        self._warm_up = thread
        return thread

    def await_warm_up(self) -> None:
        """Waits for the warm-up jobs to end (at most ``WARM_UP_WAIT_SECS``, then they are
        cancelled): a feed job beside them would share the executors' slots and CPUs."""
        thread = self._warm_up
        if thread is None or not thread.is_alive():
            return
        thread.join(WARM_UP_WAIT_SECS)
        if thread.is_alive():
            logger.info("the feed's warm-up jobs took over %.0f s: cancelled",
                        WARM_UP_WAIT_SECS)
            self._sc.cancelJobGroup(f"{self.job_group}-warm-up")
            thread.join(CANCEL_WAIT_SECS)

    def cancel(self) -> None:
        """Cancels the running feed job, if any."""
        if self._running.is_set():
            self._sc.cancelJobGroup(self.job_group)

    def inference(self, data, spec: FeedSpec, output_schema=None):
        """The lazy results of feeding ``data`` (see ``TFCluster.inference``)."""
        self.await_warm_up()
        if not is_dataframe(data):
            rows, row_spec = _read_pickled(data, spec)
            return rows.mapPartitionsWithIndex(functools.partial(feed_task.infer_rows, row_spec))
        from pyspark.sql.types import StructType
        out = output_schema if isinstance(output_schema, StructType) else \
            StructType.fromDDL(output_schema)
        schema = StructType(list(data.schema.fields) + list(out.fields))
        return data.mapInArrow(functools.partial(feed_task.infer_arrow, spec, schema), schema)
