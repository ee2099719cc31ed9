"""``TFCluster``: start a TensorFlow cluster on Spark executors and stop it (driver side).

``TFCluster.run`` (1) validates the configuration and runs the preflight checks, (2) starts the
cluster's control service with a fresh secret, (3) submits the node stage, one barrier task
per node, from a background thread under its own Spark job group, and (4) returns once every
node has registered. ``shutdown`` waits for the nodes that run to completion, stops the ones
that only serve (parameter servers), and cancels the job group, so no process is left behind.
A node failure stops the whole cluster within seconds and is raised, root cause first.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import logging
import os
import secrets
import sys
import threading
from typing import Any, Callable, TextIO

from tfos.core import auth
from tfos.core.config import ClusterConfig, InputMode
from tfos.core.errors import ClusterFailed, ConfigError, NodeFailed, TfosError
from tfos.core.runtime import python_version, tensorflow_version
from tfos.driver import console, interrupts, preflight, progress, spark_errors
from tfos.driver.cluster_state import ClusterState
from tfos.driver.control_service import ControlService
from tfos.driver.feed_jobs import SparkFeedJobs, vectors_as
from tfos.driver.feeder import Feeder
from tfos.executor.node_task import NodeStageSpec, node_partition

logger = logging.getLogger(__name__)

DEFAULT_SHUTDOWN_TIMEOUT = 24 * 3600.0
# At most this many tasks ready the executors' Python workers for the feed (one per slot the
# nodes leave free, see SparkFeedJobs.warm_up).
MAX_WARM_UP_TASKS = 256


class TFCluster:
    """A running TF cluster; create it with :meth:`TFCluster.run`."""

    # TensorFlowOnSpark's scripts name it through the class: TFCluster.InputMode.SPARK.
    InputMode = InputMode

    def __init__(self, sc, config: ClusterConfig, state: ClusterState, service: ControlService,
                 cluster_id: str | None = None):
        self.sc = sc
        self.config = config
        self.state = state
        self.cluster_id = cluster_id or secrets.token_hex(4)
        self.job_group = f"tfos-{self.cluster_id}"
        self._service = service
        self._job_thread: threading.Thread | None = None
        self._spec: NodeStageSpec | None = None
        self._feeder: Feeder | None = None   # InputMode.SPARK
        self._warm_up: threading.Thread | None = None   # its job readying feed workers
        self._closed = threading.Event()
        self._lifecycle = threading.Lock()   # a restart's relaunch, or the final stop
        self._shutdown_done = False
        # The live view while run/train/shutdown wait (drawn on terminals and notebooks only).
        self._display = progress.ProgressDisplay(state, None, None)

    @classmethod
    def run(cls, sc, map_fun: Callable[[Any, Any], Any], tf_args: Any, num_executors: int,
            num_ps: int = 0, tensorboard: bool = False,
            input_mode: InputMode = InputMode.TENSORFLOW, log_dir: str | None = None,
            driver_ps_nodes: bool = False, master_node: str | None = None,
            reservation_timeout: float = 120.0, queues=None, eval_node: bool = False,
            release_port: bool = True, *, log_stream: TextIO | None = sys.stderr,
            **options) -> "TFCluster":
        """Starts ``map_fun(tf_args, ctx)`` on ``num_executors`` TF nodes; returns once all run.

        ``sc`` is a SparkContext or a (classic) SparkSession. The TensorFlowOnSpark arguments
        keep their meaning; ``driver_ps_nodes`` is not supported (parameter servers run on
        executors) and ``queues`` is accepted and ignored (feeds are created when first used);
        ``release_port=False`` gives each TF process its reserved port as ``ctx.tmp_socket``
        until it calls ``ctx.release_port()``. ``log_stream`` receives the nodes' output
        lines prefixed ``[role:index@host]``, TensorFlow's start-up noise left out (None: none
        on the driver); every line goes to the node's log file in ``node_log_dir`` (printed at
        start) either way. Further keyword ``options`` are fields of ``tfos.ClusterConfig``
        (``node_log_dir``, ``show_tf_noise``, ``driver_host``, ``env``, ``legacy_keras``,
        ``heartbeat_timeout``, ...). While the cluster lives, Ctrl-C (SIGINT) in the driver
        cancels the other Spark jobs (a feed) and raises ``KeyboardInterrupt``, sparing the
        node stage (``tfos.driver.interrupts``).
        """
        spark_session = _active_session(sc)
        sc = spark_context(sc)
        if log_dir and "://" not in log_dir and not os.path.isabs(log_dir):
            # Relative to where the user stands, not to each executor's working directory.
            log_dir = os.path.abspath(log_dir)
        if driver_ps_nodes:
            raise ConfigError("driver_ps_nodes=True: tfos runs parameter servers on executors "
                              "only; drop the argument and count them in num_executors")
        unknown = set(options) - set(ClusterConfig.__dataclass_fields__) - {"roles"}
        if unknown or "roles" in options:
            raise ConfigError(f"unknown TFCluster.run options {sorted(unknown or {'roles'})}; "
                              f"valid ones: {sorted(set(ClusterConfig.__dataclass_fields__) - {'roles'})}")
        if "num_gpus" not in options:   # TensorFlowOnSpark's tf_args.num_gpus
            options["num_gpus"] = _tf_args_gpus(tf_args)
        config = ClusterConfig(num_executors=num_executors, num_ps=num_ps,
                               master_node=master_node, eval_node=eval_node,
                               input_mode=input_mode, tensorboard=tensorboard, log_dir=log_dir,
                               reservation_timeout=reservation_timeout,
                               release_port=release_port, **options)
        if config.rdma:
            refusal = rdma_refusal(config, sc.master)
            if refusal:
                raise ConfigError(refusal)
        payload = pickle_map_fun(map_fun, tf_args)
        cluster: TFCluster | None = None
        cluster_id = secrets.token_hex(4)
        node_log_dir = config.node_log_dir or console.default_log_dir(cluster_id)
        state = ClusterState(config, driver_versions=(python_version(), tensorflow_version()),
                             log_stream=log_stream, log_dir=node_log_dir,
                             on_failure=lambda: cluster is not None and cluster._on_failure())
        held = {c.cluster_id: _slots_with_feed(c.config) for c in cls.running() if c.sc is sc}
        preflight.check(sc, config, slots_needed=_slots_with_feed(config), held=held,
                        note=state.output.note)
        state.output.note(f"cluster {cluster_id}: each node's complete output goes to "
                          f"{node_log_dir}/<job>-<index>.log")
        host = config.driver_host or sc.getConf().get("spark.driver.host")
        secret = auth.new_secret()
        service = ControlService(state, secret, host,
                                 bind_all=config.bind_all_interfaces).start()
        cluster = cls(sc, config, state, service, cluster_id)
        kind = None if config.quiet else progress.display_kind(log_stream)
        cluster._display = progress.ProgressDisplay(state, log_stream, kind, sc)
        with _live_lock:
            _live[cluster_id] = cluster
        interrupts.protect(sc, cluster.job_group)   # Ctrl-C stops the work, not the cluster
        if config.input_mode == InputMode.SPARK:
            cluster._feeder = Feeder(config, state, secret, service.address,
                                     SparkFeedJobs(sc, f"{cluster.job_group}-feed"))
        cluster._spec = NodeStageSpec(config, service.address, secret, payload, default_fs(sc))
        threading.Thread(target=cluster._watch_liveness,
                         name=f"tfos-watchdog-{cluster.cluster_id}", daemon=True).start()
        try:
            with cluster._display.showing(f"starting {config.num_nodes} TF nodes"):
                cluster._launch(cluster._spec)
        except BaseException:
            cluster._stop_everything()
            raise
        if cluster._feeder is not None and config.barrier:
            # The slots the nodes left free are where the feed tasks will run.
            cluster._warm_up = cluster._feeder.jobs.warm_up(
                min(MAX_WARM_UP_TASKS, sc.defaultParallelism - config.num_nodes),
                spark_session)
        return cluster

    # -- launch ---------------------------------------------------------------------------
    def _launch(self, spec: NodeStageSpec) -> None:
        self._job_thread = threading.Thread(target=self._run_node_job, args=(spec,),
                                            name=f"tfos-nodes-{self.cluster_id}", daemon=True)
        self._job_thread.start()
        if not self.config.barrier:
            return   # its nodes start as slots free up: shutdown() waits for them to finish
        self.state.wait_registered(self.config.reservation_timeout)
        logger.info("TF cluster %s is up: %s", self.cluster_id,
                    ", ".join(n.label for n in self.state.nodes.values()))

    def _restart(self) -> None:
        """Runs every node again after a failure (max_restarts); the nodes resume from their
        checkpoints. Old nodes are gone first; a new secret shuts out any late message."""
        with self._lifecycle:   # shutdown waits for a relaunch, or prevents it
            self._restart_locked()

    def _restart_locked(self) -> None:
        state = self.state
        failure = state.failures[0] if state.failures else None
        try:
            if self._job_thread is not None and self._job_thread.is_alive():
                raise TfosError("the failed run's Spark job did not end, so its nodes may still "
                                "hold executors")
            if self._closed.is_set():
                raise TfosError("the cluster was shut down")
            secret = auth.new_secret()
            self._service.rekey(secret)
            self._spec = dataclasses.replace(self._spec, secret=secret,
                                             restart=state.restart_count + 1)
            logger.warning("restart %d of the TF cluster after: %s", self._spec.restart, failure)
            state.begin_restart()
            # A lost executor may still be coming back: wait for the slots like the first run.
            preflight.check(self.sc, self.config, slots_needed=_slots_needed(self.config))
            self._launch(self._spec)
        except TfosError as exc:
            state.give_up_restart(NodeFailed(
                "cluster restart", self.sc.getConf().get("spark.master", "?"),
                f"could not restart after {failure}: {exc}"))
            self._stop_nodes()

    def _run_node_job(self, spec: NodeStageSpec) -> None:
        failure = None
        try:
            self.sc.setJobGroup(self.job_group, f"tfos cluster {self.cluster_id}: "
                                f"{self.config.num_nodes} TF nodes", interruptOnCancel=True)
            rdd = self.sc.parallelize(range(self.config.num_nodes), self.config.num_nodes)
            if self.config.barrier:
                rdd = rdd.barrier()
            rdd.mapPartitions(functools.partial(node_partition, spec)).collect()
        except Exception as exc:  # any Spark/py4j failure of the node job
            if not self.state.stop_requested:
                failure = self._node_job_failure(spark_errors.summarize(exc))
        self.state.end_job(failure)

    def _node_job_failure(self, summary: str) -> NodeFailed:
        """The node job's failure, blamed on the node whose task failed when Spark says which
        (the node stage's partition number is the node id)."""
        partition = spark_errors.failed_partition(summary)
        node = self.state.nodes.get(partition) if partition is not None else None
        if node is None:
            if "cancel" in summary.lower():
                summary = ("it was cancelled from outside tfos (sc.cancelAllJobs(), a cancel of "
                           f"job group {self.job_group!r}, or Ctrl-C in a thread other than the "
                           f"main one); Spark said: {summary}")
            return NodeFailed(f"the Spark job running the TF nodes (job group "
                              f"{self.job_group!r})", "", summary)
        cause = next((line.strip() for line in summary.splitlines()
                      if "ExecutorLostFailure" in line or "Reason:" in line), summary)
        return NodeFailed(node.label, node.host, f"its Spark task failed: {cause}", None,
                          tuple(node.tail))

    def _watch_liveness(self) -> None:
        while not self._closed.wait(self.config.heartbeat_interval):
            self.state.check_liveness()

    def _on_failure(self) -> None:
        # Called under the state's lock: hand the clean-up to a thread of its own.
        threading.Thread(target=self._after_failure, name=f"tfos-stop-{self.cluster_id}",
                         daemon=True).start()

    def _after_failure(self) -> None:
        self._stop_nodes()
        if self.state.restarting:
            self._restart()

    def _stop_nodes(self) -> None:
        """Orders every node to stop, then cancels the Spark job if it has not ended."""
        self.state.request_stop()
        if self._feeder is not None:
            self._feeder.cancel()
        grace = self.config.kill_grace + 3 * self.config.heartbeat_interval + 2
        if self.state.lost_node:
            # The lost node's task will never end its part of the job: waiting for the job is
            # waiting for the cancel. Give the others time to stop their TF processes only.
            grace = self.config.kill_grace + self.config.heartbeat_interval + 1
        if self._job_thread is not None:
            self._job_thread.join(grace)
            if self._job_thread.is_alive():
                logger.warning("TF nodes did not stop within %.0fs; cancelling Spark job group %s",
                               grace, self.job_group)
                self.sc.cancelJobGroup(self.job_group)
                self._job_thread.join(grace)

    def _stop_everything(self) -> None:
        self._closed.set()
        with self._lifecycle:
            self._stop_nodes()
        if self._feeder is not None:
            self._feeder.close()
        self._service.stop()
        self.state.output.close()
        interrupts.release(self.job_group)
        with _live_lock:
            _live.pop(self.cluster_id, None)

    # -- public ---------------------------------------------------------------------------
    def train(self, dataRDD, num_epochs: int = 1, feed_timeout: float = 600.0,
              qname: str = "input", vector_dtype: str = "float32"):
        """Feeds ``dataRDD`` (an RDD, a DataFrame or a Spark Streaming DStream) to the chief and
        workers for ``num_epochs``.

        The data is read once per epoch (no counting pass; caching it only saves recomputing it
        in later epochs), and every worker gets the same number of records in each epoch: fewer
        records than there are workers are left out to keep them equal
        (``tfos.core.feed_plan``), none reaches two workers. May be called again to feed more
        epochs or other data; the nodes' ``DataFeed`` sees one stream of epochs on feed
        ``qname``. Returns, once every epoch was
        taken in (or early when the nodes stop consuming), a list with one
        ``EpochFed(feed, epoch, per_worker, dropped, seconds)`` per epoch fed. A DStream is fed
        as it arrives: each non-empty micro-batch for ``num_epochs`` epochs (stop it with
        ``shutdown(ssc)``); then nothing is returned. Unlike TensorFlowOnSpark,
        ``num_epochs=0`` is refused rather than read as 10.

        A DataFrame's Spark ML vector columns (``VectorUDT``) reach the nodes as
        ``(rows, size)`` arrays of ``vector_dtype``: ``"float32"`` (the default, TensorFlow's
        and Keras's float; converted in Spark, so half the bytes of the vectors' doubles are
        fed) or ``"float64"`` (the vectors' own doubles, exact).
        """
        feeder = self._spark_feeder("train")
        dataRDD = vectors_as(dataRDD, vector_dtype)
        if _is_dstream(dataRDD):
            dataRDD.foreachRDD(lambda rdd: rdd.isEmpty() or feeder.train(
                rdd, num_epochs, feed_timeout, qname))
            return
        epochs = f"{num_epochs} epoch{'s' if num_epochs != 1 else ''}"
        with self._display.showing(f"feeding {qname!r}, {epochs}"):
            return feeder.train(dataRDD, num_epochs, feed_timeout, qname)

    def inference(self, dataRDD, feed_timeout: float = 600.0, qname: str = "input",
                  output_schema=None):
        """Results of the nodes' ``batch_results`` for every row of ``dataRDD``, in row order.

        An RDD gives an RDD of results; a DataFrame gives a DataFrame of its columns plus the
        ``output_schema`` columns (e.g. ``"prediction float"``). Lazy, like any Spark
        transformation: the rows are fed when the result is computed.
        """
        return self._spark_feeder("inference").inference(dataRDD, feed_timeout, qname,
                                                         output_schema)

    def _spark_feeder(self, what: str):
        if self._feeder is None:
            raise ConfigError(f"{what}() needs a cluster started with "
                              "input_mode=tfos.InputMode.SPARK")
        if self._shutdown_done:
            raise ConfigError(f"{what}() after shutdown(): start a new cluster with TFCluster.run")
        return self._feeder

    @property
    def cluster_info(self) -> list[dict]:
        """One dict per node: id, job name, task index, host, TF port, process id, state and
        the transport its tensors take ("grpc", or "rdma (<device>:<port>, ...)")."""
        return [{"executor_id": n.role.node_id, "worker_num": n.role.node_id,
                 "job_name": n.role.job_name, "task_index": n.role.task_index,
                 "host": n.host, "port": n.tf_port, "addr": f"{n.host}:{n.tf_port}",
                 "pid": n.pid, "state": n.state.value if n.state else None,
                 "transport": n.transport}
                for n in self.state.nodes.values()]

    @classmethod
    def running(cls) -> list["TFCluster"]:
        """The clusters this driver started and has not shut down yet, oldest first (e.g. the
        one a notebook cell started before it was run again)."""
        with _live_lock:
            return list(_live.values())

    @property
    def results(self) -> dict[str, Any]:
        """What ``map_fun`` returned on each node that returned a value, by node (``"chief:0"``,
        ``"worker:1"``): JSON-like values as they arrived, a Keras ``History`` as its
        ``history`` dict (a node prints why a value could not be sent)."""
        return {n.role.label: json.loads(n.result) for n in self.state.nodes.values()
                if n.result is not None}

    @property
    def restarts(self) -> list[tuple]:
        """The failures that made the driver restart the cluster (max_restarts), oldest first:
        one tuple of ``NodeFailed`` per restart."""
        return list(self.state.past_failures)

    def tensorboard_url(self, timeout: float = 60.0) -> str | None:
        """TensorBoard's URL once it serves (None when started without ``tensorboard``)."""
        if not self.config.tensorboard:
            return None
        with self.state.changed:
            self.state.changed.wait_for(lambda: "tensorboard" in self.state.services
                                        or self.state.failures, timeout)
            return self.state.services.get("tensorboard")

    def shutdown(self, ssc=None, grace_secs: float = 0,
                 timeout: float | None = DEFAULT_SHUTDOWN_TIMEOUT):
        """Waits for the nodes to finish, stops the servers, releases the executors.

        Waits up to ``timeout`` seconds (None or -1: no limit) for every chief, worker and
        evaluator to return from ``map_fun`` (ps nodes, and any node blocked in
        ``server.join()``, only serve and are stopped), then ``grace_secs`` more (e.g. for
        TensorBoard), then stops the cluster. With a Spark Streaming context ``ssc`` (a DStream
        being fed by ``train``), the stream keeps feeding until the nodes have finished, then
        ``ssc`` is stopped gracefully (the SparkContext stays). Raises ClusterFailed when a node
        failed, first failure first.
        """
        if self._shutdown_done:
            return
        self._shutdown_done = True
        if timeout is not None and timeout < 0:
            timeout = None   # TensorFlowOnSpark's "no limit"
        try:
            with self._display.showing("waiting for the nodes to finish (shutdown)"):
                if ssc is not None:
                    self.state.wait_finished(timeout)
                    ssc.stop(stopSparkContext=False, stopGraceFully=True)
                if self._feeder is not None:
                    self._feeder.end_of_data()
                self.state.wait_finished(timeout)
            if grace_secs > 0:
                self._closed.wait(grace_secs)
        finally:
            self._stop_everything()
        if self.state.failures:
            raise ClusterFailed(f"the TF cluster failed: {self.state.failures[0]}",
                                tuple(self.state.failures))

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            self.shutdown()
        else:
            self._shutdown_done = True
            self._stop_everything()


def _slots_needed(config: ClusterConfig) -> int:
    """Task slots the nodes need at once: all of them in a barrier stage, else one."""
    return config.num_nodes if config.barrier else 1


def _slots_with_feed(config: ClusterConfig) -> int:
    """The nodes' slots, plus one for a feed task in InputMode.SPARK (beside the nodes')."""
    return _slots_needed(config) + (1 if config.input_mode == InputMode.SPARK else 0)


# The clusters started and not yet shut down in this driver, by id.
_live: dict[str, "TFCluster"] = {}
_live_lock = threading.Lock()


def _tf_args_gpus(tf_args) -> int | None:
    """``tf_args.num_gpus`` (argparse) or ``tf_args["num_gpus"]`` (a dict), when an int."""
    value = tf_args.get("num_gpus") if isinstance(tf_args, dict) else \
        getattr(tf_args, "num_gpus", None)
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _is_dstream(data) -> bool:
    from pyspark.streaming import DStream
    return isinstance(data, DStream)


def _active_session(sc_or_session):
    """The SparkSession ``TFCluster.run`` was given, else the driver's active one (None when it
    has only a SparkContext: nothing of Spark SQL is started for the feed's warm-up)."""
    if hasattr(sc_or_session, "sparkContext"):
        return sc_or_session
    from pyspark.sql import SparkSession
    try:
        return SparkSession.getActiveSession()
    except Exception as exc:  # noqa: BLE001 - best effort (py4j errors vary)
        logger.info("no active SparkSession for the feed's warm-up: %s", exc)
        return None


def spark_context(sc_or_session):
    """The SparkContext of a SparkContext or a classic SparkSession."""
    sc = getattr(sc_or_session, "sparkContext", sc_or_session)
    try:
        sc._jsc  # noqa: B018 - only classic (JVM-backed) contexts have one
    except Exception:
        raise ConfigError("tfos needs a classic SparkSession or SparkContext; Spark Connect "
                          "sessions cannot run barrier jobs. Build the session without "
                          "spark.remote / SPARK_REMOTE") from None
    return sc


def rdma_refusal(config: ClusterConfig, master: str,
                 sysfs_root: str | None = None) -> str:
    """Why ``rdma=True`` cannot be honoured, decided before any node starts ("" when it can
    go ahead; each executor host is checked again by its node tasks, see
    ``tfos.executor.transport``). tfos never falls back to TCP on its own."""
    if config.num_ps:
        return ("rdma=True (--rdma) with num_ps > 0: ParameterServerStrategy moves tensors over "
                "TensorFlow's gRPC (TCP) only, it has no RDMA path. Train with tfos.collective "
                "(DistributedOptimizer, any worker count, rdma:// between hosts) and num_ps=0, "
                "or drop --rdma")
    if master.startswith("local"):   # the executors run on this very host
        return rdma_unavailable(sysfs_root)
    return ""


def rdma_unavailable(sysfs_root: str | None = None) -> str:
    """Why this host cannot run ``--rdma`` (``python -m rdma.check``'s explanation, root cause
    first), or "" when it can."""
    from rdma import check, devices
    report = check.check(sysfs_root or devices.SYSFS_ROOT)
    if not report.problems:
        return ""
    return (f"rdma=True (--rdma): {report.explanation()}. Run python -m rdma.check on each "
            "host for the details, or drop --rdma to use TensorFlow's gRPC transport")


def default_fs(sc) -> str:
    return sc._jsc.hadoopConfiguration().get("fs.defaultFS") or "file:///"


def pickle_map_fun(map_fun, tf_args) -> bytes:
    """Pickles ``(map_fun, tf_args)`` for the TF nodes, naming the culprit when it cannot.

    A function from a user module that executors cannot import (a script beside the driver's
    main file, say) is pickled by value, so migrated scripts need no ``--py-files``.
    """
    from pyspark import cloudpickle
    module = sys.modules.get(getattr(map_fun, "__module__", None) or "")
    by_value = module is not None and _is_user_module(module)
    if by_value:
        cloudpickle.register_pickle_by_value(module)
    try:
        return cloudpickle.dumps((map_fun, tf_args))
    except Exception as exc:
        raise ConfigError(
            f"map_fun {getattr(map_fun, '__qualname__', map_fun)!r} or its args cannot be "
            f"pickled for the TF nodes: {type(exc).__name__}: {exc}. Define map_fun at module "
            "level and keep SparkContext, sessions, locks and open files out of what it "
            "captures") from None
    finally:
        if by_value:
            cloudpickle.unregister_pickle_by_value(module)


def _is_user_module(module) -> bool:
    path = getattr(module, "__file__", None)
    if module.__name__ == "__main__" or not path:
        return False  # __main__ is pickled by value already; builtins have no file
    parts = os.path.abspath(path).split(os.sep)
    return ("site-packages" not in parts and "dist-packages" not in parts
            and not module.__name__.startswith(("tfos.", "pyspark.")))
