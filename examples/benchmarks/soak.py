"""Soak: a long feed and many cluster start/stop cycles in ONE Spark application.

Looks for what only shows over time: memory that grows, threads or file descriptors that pile
up in the driver, TF node processes left behind. One Spark application (``--master``, default
the embedded ``local-cluster[3,1,1024]``: 3 executors of one core, two for the TF nodes, one
for the feed tasks) runs, in this order:

1. **Feed soak**: a cached RDD of ``--records`` small rows ``(id, float32[4] filled with id)``
   in ``--partitions`` partitions, fed with ``cluster.train(rdd, num_epochs=--epochs)`` to a
   2-node InputMode.SPARK cluster (one call, or one per ``--epochs-per-call`` epochs). Each
   node reads every epoch with ``feed.next_columns(..., within_epoch=True)``, checks every
   row's payload against its id, counts duplicates, and appends one JSON line per epoch to a
   file of its own (rows, id sum, a bitmap of the ids, its own RSS / fds / threads). The
   script then checks that every epoch gave every worker exactly ``records // 2`` records,
   none twice, none to both workers. Progress: one line per epoch, from tfos's INFO log line
   that announces it (``tfos.driver.feeder``), with a checkpoint of every process's memory.
2. **Start/stop cycles**: ``--cycles`` clusters of 3 nodes (InputMode.TENSORFLOW, a
   ``map_fun`` that returns at once and imports no TensorFlow), each started and shut down.
   After every cycle: the driver's threads and open fds, and the TF node / process-guard
   processes still alive. Every ``--checkpoint-every`` cycles: a memory checkpoint.

Memory is watched two ways. A sampler thread (every ``--interval`` s) reads with psutil the
RSS, threads and fds of every process of the application: the driver (this process), the
driver JVM (the ``SparkSubmit`` java child), the executor JVMs, the Python workers (each
executor's ``pyspark.daemon`` and its forked workers) and the TF nodes (``tfos.node.main``);
it keeps only per-phase peaks, so it holds no growing history. Checkpoints (at epoch starts,
every N cycles, before and after each phase) also run ``gc.collect()`` here and
``System.gc()`` in the driver JVM and record the JVM's heap in use
(``Runtime.totalMemory - freeMemory``), and the executor JVMs' heap in use after a full GC
(``jcmd PID GC.run`` / ``GC.heap_info``; ``--no-jcmd`` leaves them out): a JVM's RSS keeps
what its heap once grew to, the heap after GC is what it really holds.

Growth is measured from the first checkpoint after warm-up (the start of epoch 1; cycle
``--checkpoint-every``) to the last one (training done; the last cycle). Verdict: "flat" when
it is under 10 % of the warm-up value or under 50 MiB (``--flat-pct``, ``--flat-mib``); fds
and threads are flat when they grow by at most 2. Every loop is bounded by its count and by
``--time-limit`` (whole run): past it, running Spark jobs are cancelled, the phase stops with a
message and the report shows what was measured.

Spark settings beside the defaults: UI off, ``spark.locality.wait=0`` (the feed tasks all run on
the one executor without a node while most cached blocks live on the other two; waiting for
locality only delays them), barrier checks that fail fast; ``--conf KEY=VALUE`` adds more.

Leftover processes are found by a tag: every process of this application inherits the
environment variable ``TFOS_SOAK_TAG`` (the TF nodes also get it through ``env=``), so a node
that outlived its task and was re-parented away from the driver is still counted.

Usage (from the repository root, ``source scripts/env.sh`` first):
    .venv/bin/python examples/benchmarks/soak.py [--partitions 2000] [--epochs 20]
        [--cycles 50] [--records 10000] [--master 'local-cluster[3,1,1024]'] [--time-limit 5400]
Quick check: ``--partitions 100 --epochs 3 --cycles 5``. Nothing is asserted; the feed check
and the verdicts are printed. The nodes write to a local temporary directory, so the master
must run its executors on this machine (local-cluster, or a standalone cluster on this host).
"""
from __future__ import annotations

import argparse
import base64
import collections
import dataclasses
import gc
import json
import logging
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid

MiB = 1 << 20
LABEL = 30   # width of the report's first column
TAG_ENV = "TFOS_SOAK_TAG"
# Process groups of the application, in report order: label, and whether memory is reported.
GROUPS = {"driver": "driver (python)", "driver_jvm": "driver JVM", "executor_jvm":
          "executor JVMs", "py_worker": "Python workers", "node": "TF nodes",
          "guard": "process guards"}
# Spark's cached thread pools (ThreadUtils.newDaemonCachedThreadPool: at most 100 threads each,
# idle ones end after 60 s), as /proc shows their names: cut to 15 characters.
SPARK_POOLS = ("block-manager-a", "block-manager-s")
EPOCH_LINE = re.compile(r"^feed '(?P<feed>[^']*)' epoch (?P<epoch>\d+):")


def stamp(start: float) -> str:
    return f"[{time.monotonic() - start:7.1f}s]"


# -- processes ---------------------------------------------------------------------------------
def kind_of(cmdline: list[str]) -> str:
    """Which part of the application a process is, from its command line."""
    joined = " ".join(cmdline)
    if "CoarseGrainedExecutorBackend" in joined:
        return "executor_jvm"
    if "org.apache.spark.deploy.SparkSubmit" in joined:
        return "driver_jvm"
    if "pyspark.daemon" in joined or "pyspark.worker" in joined:
        return "py_worker"   # the daemon and its forked workers share its command line
    if "tfos.executor.process_guard" in joined:
        return "guard"       # before it execs its command
    if "tfos.node.main" in joined:
        return "node"
    return "other"


@dataclasses.dataclass
class Group:
    count: int = 0
    rss: int = 0
    rss_max: int = 0       # the largest single process
    fds: int = 0
    threads: int = 0

    def add(self, rss: int, fds: int, threads: int) -> None:
        self.count += 1
        self.rss += rss
        self.rss_max = max(self.rss_max, rss)
        self.fds += fds
        self.threads += threads


class ProcessTable:
    """The processes of this application, read with psutil (kinds cached per process)."""

    def __init__(self):
        import psutil
        self._psutil = psutil
        self.me = psutil.Process()
        self._kinds: dict[tuple[int, float], str] = {}

    def snapshot(self) -> dict[str, Group]:
        groups = collections.defaultdict(Group)
        for proc in [self.me] + self._children():
            try:
                kind = "driver" if proc.pid == self.me.pid else self._kind(proc)
                with proc.oneshot():
                    groups[kind].add(proc.memory_info().rss, proc.num_fds(), proc.num_threads())
            except self._psutil.Error:
                continue   # gone meanwhile
        return dict(groups)

    def _kind(self, proc) -> str:
        key = (proc.pid, proc.create_time())
        if key not in self._kinds:
            if len(self._kinds) > 50_000:
                self._kinds.clear()
            self._kinds[key] = kind_of(proc.cmdline())
        return self._kinds[key]

    def thread_names(self, kinds) -> dict[str, collections.Counter]:
        """Threads of each kind's processes by name (``/proc/PID/task/TID/comm``; Java names
        its native threads, cut to 15 characters), digits replaced by N."""
        census = collections.defaultdict(collections.Counter)
        for proc in [self.me] + self._children():
            try:
                kind = "driver" if proc.pid == self.me.pid else self._kind(proc)
                if kind not in kinds:
                    continue
                for tid in os.listdir(f"/proc/{proc.pid}/task"):
                    with open(f"/proc/{proc.pid}/task/{tid}/comm") as f:
                        census[kind][re.sub(r"\d+", "N", f.read().strip())] += 1
            except (self._psutil.Error, OSError):
                continue
        if "driver" in kinds:   # Python threads by their Python names, which comm lacks
            census["driver_py"] = collections.Counter(
                re.sub(r"[0-9a-f]{8}|\d+", "N", t.name) for t in threading.enumerate())
        return dict(census)

    def pids(self, kind: str) -> list[int]:
        pids = []
        for proc in self._children():
            try:
                if self._kind(proc) == kind:
                    pids.append(proc.pid)
            except self._psutil.Error:
                continue
        return pids

    def _children(self) -> list:
        try:
            return self.me.children(recursive=True)
        except self._psutil.Error:
            return []

    def tagged(self, tag: str, kinds=("node", "guard")) -> dict[str, int]:
        """Processes of the given kinds anywhere on the machine that carry our tag."""
        found = collections.Counter()
        for proc in self._psutil.process_iter(["pid", "cmdline"]):
            kind = kind_of(proc.info["cmdline"] or [])
            if kind not in kinds or proc.pid == self.me.pid:
                continue
            try:
                if proc.environ().get(TAG_ENV) == tag:
                    found[kind] += 1
            except self._psutil.Error:
                continue
        return dict(found)


class Sampler:
    """Background thread: every ``interval`` s, each group's totals; keeps per-phase peaks only.

    Bounded by ``max_samples`` and by the run's deadline."""

    def __init__(self, table: ProcessTable, interval: float, deadline: float,
                 max_samples: int = 200_000):
        self.table, self.interval, self.deadline = table, interval, deadline
        self.max_samples = max_samples
        self.phase = "setup"
        self.peaks: dict[str, dict[str, Group]] = collections.defaultdict(dict)
        self.load: dict[str, list[float]] = {}   # phase -> [min, max, sum, n]
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="soak-sampler", daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while (self.samples < self.max_samples and time.monotonic() < self.deadline
               and not self._stop.is_set()):
            self.record(self.phase, self.table.snapshot())
            self.samples += 1
            self._stop.wait(self.interval)

    def record(self, phase: str, snap: dict[str, Group]) -> None:
        peaks = self.peaks[phase]
        for kind, group in snap.items():
            peak = peaks.setdefault(kind, Group())
            peak.count = max(peak.count, group.count)
            peak.rss = max(peak.rss, group.rss)
            peak.rss_max = max(peak.rss_max, group.rss_max)
            peak.fds = max(peak.fds, group.fds)
            peak.threads = max(peak.threads, group.threads)
        load = os.getloadavg()[0]
        stats = self.load.setdefault(phase, [load, load, 0.0, 0])
        stats[0], stats[1] = min(stats[0], load), max(stats[1], load)
        stats[2] += load
        stats[3] += 1


@dataclasses.dataclass
class Checkpoint:
    label: str
    t: float
    groups: dict[str, Group]
    heap: int | None = None            # driver JVM heap in use after System.gc()
    load: float = 0.0
    threads: dict[str, collections.Counter] = dataclasses.field(default_factory=dict)
    executor_heap: int | None = None   # executor JVMs' heaps in use after a GC (sum, jcmd)


class Probe:
    """Takes checkpoints: a snapshot of every process, after a GC in the driver and its JVM."""

    def __init__(self, sc, table: ProcessTable, sampler: Sampler, jcmd: bool = True):
        self.sc, self.table, self.sampler = sc, table, sampler
        self.jcmd = jcmd and shutil.which("jcmd") is not None

    def heap_used(self) -> int | None:
        try:
            self.sc._jvm.System.gc()
            runtime = self.sc._jvm.java.lang.Runtime.getRuntime()
            return runtime.totalMemory() - runtime.freeMemory()
        except Exception:  # noqa: BLE001 - a stopped gateway only loses this number
            return None

    def executor_heaps(self) -> int | None:
        """Sum of the executor JVMs' heap in use after a full GC (``jcmd PID GC.run``, then
        ``GC.heap_info``); None without jcmd or when one cannot be read."""
        if not self.jcmd:
            return None
        total = 0
        for pid in self.table.pids("executor_jvm"):
            try:
                subprocess.run(["jcmd", str(pid), "GC.run"], capture_output=True, timeout=60)
                info = subprocess.run(["jcmd", str(pid), "GC.heap_info"], capture_output=True,
                                      text=True, timeout=60).stdout
            except (OSError, subprocess.TimeoutExpired):
                return None
            used = re.search(r"total \d+K, used (\d+)K", info)
            if not used:
                return None
            total += int(used[1]) * 1024
        return total

    def checkpoint(self, label: str) -> Checkpoint:
        gc.collect()
        heap = self.heap_used()
        executor_heap = self.executor_heaps()
        snap = self.table.snapshot()
        self.sampler.record(self.sampler.phase, snap)
        names = self.table.thread_names(("driver", "driver_jvm", "executor_jvm", "node"))
        return Checkpoint(label, time.monotonic(), snap, heap, os.getloadavg()[0], names,
                          executor_heap)


def describe(cp: Checkpoint) -> str:
    g = cp.groups
    parts = [f"driver {_mib(g, 'driver')}", f"driver JVM {_mib(g, 'driver_jvm')}"]
    if cp.heap is not None:
        parts[-1] += f" (heap {cp.heap / MiB:.0f})"
    parts += [f"executors {_count(g, 'executor_jvm')}x {_mib(g, 'executor_jvm')}"
              + (f" (heaps {cp.executor_heap / MiB:.0f})" if cp.executor_heap else ""),
              f"Python workers {_count(g, 'py_worker')}x {_mib(g, 'py_worker')}"]
    if "node" in g:
        parts.append(f"TF nodes {_count(g, 'node')}x {_mib(g, 'node')}")
    d = g.get("driver", Group())
    return (", ".join(parts) + f" MiB; driver {d.threads} threads {d.fds} fds; "
            f"load {cp.load:.1f}")


def _mib(groups, kind) -> str:
    return f"{groups[kind].rss / MiB:.0f}" if kind in groups else "-"


def _count(groups, kind) -> int:
    return groups[kind].count if kind in groups else 0


# -- what runs in the TF nodes -------------------------------------------------------------------
def check_feed(args, ctx):
    """map_fun of the feed soak: reads every epoch, checks each row, writes one line per epoch.

    A row is ``(id, float32[4] filled with id)``; ids are 0..records-1."""
    import numpy as np
    import psutil

    feed = ctx.get_data_feed()
    total = args["records"]
    me = psutil.Process()
    path = os.path.join(args["out"], f"{ctx.job_name}-{ctx.task_index}.jsonl")
    with open(path, "w") as out:
        for epoch in range(args["max_epochs"] + 1):   # bounded: the driver ends the feed
            seen = np.zeros(total, dtype=bool)
            rows = dups = bad = id_sum = 0
            while (batch := feed.next_columns(args["batch"], within_epoch=True)):
                ids, vectors = batch["0"], batch["1"]
                valid = (ids >= 0) & (ids < total) & np.all(vectors == ids[:, None], axis=1)
                bad += int((~valid).sum())
                ids = ids[valid]
                unique, counts = np.unique(ids, return_counts=True)
                dups += int(seen[unique].sum()) + int((counts - 1).sum())
                seen[unique] = True
                rows += len(batch["0"])
                id_sum += int(ids.sum())
            if batch is None and rows == 0:
                break   # the end of the data, after the last epoch
            with me.oneshot():
                usage = {"rss": me.memory_info().rss, "fds": me.num_fds(),
                         "threads": me.num_threads()}
            out.write(json.dumps({"epoch": epoch, "rows": rows, "sum": id_sum, "dups": dups,
                                  "bad": bad, "complete": batch is not None, **usage,
                                  "ids": base64.b64encode(np.packbits(seen)).decode()}) + "\n")
            out.flush()
            if batch is None:
                break


def return_at_once(args, ctx):
    """map_fun of the start/stop cycles: nothing to do, no TensorFlow import."""
    return ctx.task_index


# -- phase 1: feed soak --------------------------------------------------------------------------
class EpochLog(logging.Handler):
    """Turns tfos.driver.feeder's "feed 'input' epoch N: ..." INFO line into a progress callback."""

    def __init__(self, on_epoch):
        super().__init__(logging.INFO)
        self.on_epoch = on_epoch

    def emit(self, record: logging.LogRecord) -> None:
        match = EPOCH_LINE.match(record.getMessage())
        if match:
            self.on_epoch(int(match["epoch"]))


@dataclasses.dataclass
class PhaseResult:
    name: str
    checkpoints: list[Checkpoint] = dataclasses.field(default_factory=list)
    warm: int = 0                 # index of the first checkpoint after warm-up
    last: int = -1                # index of the last checkpoint of the steady part
    durations: list[float] = dataclasses.field(default_factory=list)   # per epoch / cycle
    per_step: list[dict] = dataclasses.field(default_factory=list)     # per cycle: fds, ...
    aborted: str | None = None
    error: str | None = None
    notes: list[str] = dataclasses.field(default_factory=list)


def make_rdd(sc, records: int, partitions: int):
    def rows(_index, ids):
        import numpy as np
        for i in ids:
            yield i, np.full(4, i, np.float32)

    rdd = sc.range(records, numSlices=partitions).mapPartitionsWithIndex(rows).cache()
    count = rdd.count()
    if count != records:
        raise RuntimeError(f"cached RDD has {count} rows, expected {records}")
    return rdd


def feed_soak(spark, args, probe: Probe, deadline: float, start: float, tag: str) -> PhaseResult:
    import tfos
    result = PhaseResult("feed soak")
    cps = result.checkpoints
    epoch_starts: dict[int, float] = {}

    def on_epoch(epoch: int) -> None:
        now = time.monotonic()
        if epoch - 1 in epoch_starts:
            result.durations.append(now - epoch_starts[epoch - 1])
        epoch_starts[epoch] = now
        cps.append(probe.checkpoint(f"epoch {epoch}"))
        took = f" (epoch {epoch - 1} took {result.durations[-1]:.1f}s)" if epoch else ""
        print(f"{stamp(start)} feed epoch {epoch + 1}/{args.epochs} begins{took}: "
              f"{describe(cps[-1])}", flush=True)

    handler = EpochLog(on_epoch)
    feed_log = logging.getLogger("tfos.driver.feeder")
    feed_log.addHandler(handler)
    feed_log.setLevel(logging.INFO)
    out = tempfile.mkdtemp(prefix="tfos-soak-")
    print(f"{stamp(start)} caching {args.records:,} records in {args.partitions:,} partitions",
          flush=True)
    rdd = make_rdd(spark.sparkContext, args.records, args.partitions)
    cps.append(probe.checkpoint("before"))
    print(f"{stamp(start)} before the cluster: {describe(cps[-1])}", flush=True)
    cluster = None
    watchdog = threading.Timer(max(0.0, deadline - time.monotonic()),
                               _abort_jobs, (spark.sparkContext, result, start))
    watchdog.daemon = True
    watchdog.start()
    try:
        cluster = tfos.TFCluster.run(
            spark, check_feed, {"records": args.records, "out": out, "batch": args.batch,
                                "max_epochs": args.epochs},
            num_executors=2, input_mode=tfos.InputMode.SPARK, log_stream=None,
            env={TAG_ENV: tag})
        cps.append(probe.checkpoint("cluster up"))
        print(f"{stamp(start)} cluster up: {describe(cps[-1])}", flush=True)
        per_call = args.epochs_per_call or args.epochs
        fed = 0
        t0 = time.monotonic()
        while fed < args.epochs and not result.aborted:
            n = min(per_call, args.epochs - fed)
            cluster.train(rdd, num_epochs=n, feed_timeout=args.feed_timeout)
            fed += n
        if epoch_starts:
            result.durations.append(time.monotonic() - epoch_starts[max(epoch_starts)])
        result.notes.append(f"{fed} epochs fed in {time.monotonic() - t0:.0f}s "
                            f"({fed * args.records / (time.monotonic() - t0):,.0f} records/s)")
        cps.append(probe.checkpoint("fed"))
        print(f"{stamp(start)} all {fed} epochs fed: {describe(cps[-1])}", flush=True)
        cluster.shutdown(timeout=max(60.0, min(300.0, deadline - time.monotonic())))
    except Exception as exc:  # noqa: BLE001 - reported, then phase 2 still runs
        result.error = f"{type(exc).__name__}: {exc}"
        print(f"{stamp(start)} feed soak failed: {result.error}", flush=True)
        if cluster is not None:
            try:
                cluster.shutdown(timeout=60)
            except Exception as again:  # noqa: BLE001
                result.notes.append(f"shutdown after the failure: {type(again).__name__}")
    finally:
        watchdog.cancel()
        feed_log.removeHandler(handler)
    cps.append(probe.checkpoint("after"))
    print(f"{stamp(start)} after shutdown: {describe(cps[-1])}", flush=True)
    result.notes.append(leftover_note(probe.table, tag))
    result.notes += verify_feed(out, args.records, args.epochs, workers=2)
    rdd.unpersist()
    labels = [cp.label for cp in cps]
    result.warm = labels.index("epoch 1") if "epoch 1" in labels else labels.index("before")
    result.last = labels.index("fed") if "fed" in labels else len(cps) - 1
    return result


def _abort_jobs(sc, result: PhaseResult, start: float) -> None:
    result.aborted = "--time-limit reached: Spark jobs cancelled"
    print(f"{stamp(start)} {result.aborted}", flush=True)
    sc.cancelAllJobs()


def verify_feed(out: str, records: int, epochs: int, workers: int) -> list[str]:
    """Every epoch: records // workers per worker, no duplicate, no record on two workers."""
    import numpy as np
    files = sorted(f for f in os.listdir(out) if f.endswith(".jsonl"))
    if len(files) != workers:
        return [f"feed check: {len(files)} node files in {out}, expected {workers}"]
    per_node = []
    for name in files:
        with open(os.path.join(out, name)) as f:
            per_node.append([json.loads(line) for line in f if line.strip()])
    expected = records // workers
    problems = []
    got_epochs = min(len(lines) for lines in per_node)
    if got_epochs != epochs or any(len(lines) != epochs for lines in per_node):
        problems.append(f"epochs seen per node {[len(x) for x in per_node]}, expected {epochs}")
    for epoch in range(got_epochs):
        lines = [node[epoch] for node in per_node]
        union = np.zeros(records, dtype=np.uint8)
        for name, line in zip(files, lines):
            bits = np.unpackbits(np.frombuffer(base64.b64decode(line["ids"]), np.uint8))[:records]
            ids = np.flatnonzero(bits)
            if line["rows"] != expected or line["dups"] or line["bad"] or \
                    int(ids.sum()) != line["sum"] or not line["complete"]:
                problems.append(f"epoch {epoch} {name}: rows {line['rows']} (expected {expected})"
                                f", duplicates {line['dups']}, wrong payload {line['bad']}, "
                                f"complete {line['complete']}")
            union += bits
        if union.max(initial=0) > 1:
            problems.append(f"epoch {epoch}: {int((union > 1).sum())} records reached two workers")
        if int(union.sum()) != expected * workers:
            problems.append(f"epoch {epoch}: {int(union.sum())} distinct records, expected "
                            f"{expected * workers}")
    if problems:
        return [f"feed check FAILED ({len(problems)} problems): " + "; ".join(problems[:8])]
    node_rss = [[line["rss"] / MiB for line in node] for node in per_node]
    node_fds = [[line["fds"] for line in node] for node in per_node]
    return [f"feed check OK: {got_epochs} epochs x {workers} workers, {expected:,} records each "
            "per epoch, no duplicate within or across workers, every payload matched its id",
            "TF nodes, own report at each epoch end (RSS MiB first->last, fds first->last): " +
            ", ".join(f"{n[:-6]} {r[0]:.0f}->{r[-1]:.0f}, {f[0]}->{f[-1]}"
                      for n, r, f in zip(files, node_rss, node_fds))]


def leftover_note(table: ProcessTable, tag: str) -> str:
    left = wait_gone(table, tag, 5.0)
    return "leftover TF node / guard processes after shutdown: " + (
        ", ".join(f"{n} {k}" for k, n in left.items()) if left else "none")


def wait_gone(table: ProcessTable, tag: str, timeout: float,
              kinds=("node", "guard")) -> dict[str, int]:
    """Tagged processes of ``kinds``, re-checked until none remain or ``timeout`` passes."""
    end = time.monotonic() + timeout
    left = table.tagged(tag, kinds)
    while left and time.monotonic() < end:
        time.sleep(0.25)
        left = table.tagged(tag, kinds)
    return left


# -- phase 2: start/stop cycles ------------------------------------------------------------------
def cycles(spark, args, probe: Probe, deadline: float, start: float, tag: str) -> PhaseResult:
    import tfos
    result = PhaseResult("start/stop cycles")
    cps = result.checkpoints
    cps.append(probe.checkpoint("cycle 0"))
    print(f"{stamp(start)} before the first cycle: {describe(cps[-1])}", flush=True)
    for cycle in range(1, args.cycles + 1):
        if time.monotonic() > deadline:
            result.aborted = f"--time-limit reached after {cycle - 1} cycles"
            print(f"{stamp(start)} {result.aborted}", flush=True)
            break
        t0 = time.monotonic()
        threads_before = probe.table.me.num_threads()
        try:
            cluster = tfos.TFCluster.run(spark, return_at_once, {}, num_executors=3,
                                         input_mode=tfos.InputMode.TENSORFLOW, log_stream=None,
                                         env={TAG_ENV: tag})
            cluster.shutdown(timeout=max(30.0, min(120.0, deadline - time.monotonic())))
        except Exception as exc:  # noqa: BLE001 - counted, the soak goes on
            result.error = f"cycle {cycle}: {type(exc).__name__}: {exc}"
            print(f"{stamp(start)} {result.error}", flush=True)
        result.durations.append(time.monotonic() - t0)
        at_once = probe.table.tagged(tag)
        later = wait_gone(probe.table, tag, 5.0) if at_once else {}
        me = probe.table.me
        step = {"cycle": cycle, "threads": me.num_threads(), "fds": me.num_fds(),
                "left_at_once": sum(at_once.values()), "left": sum(later.values())}
        # Threads that end just after shutdown() (grpc's grace, pool workers) are not kept:
        # up to 2 s for the count to fall back to what it was before the cycle.
        settle = time.monotonic() + 2.0
        while me.num_threads() > threads_before and time.monotonic() < settle:
            time.sleep(0.1)
        step["threads_settled"] = me.num_threads()
        result.per_step.append(step)
        print(f"{stamp(start)} cycle {cycle}/{args.cycles}: {result.durations[-1]:.1f}s, driver "
              f"{step['threads']} threads ({step['threads_settled']} 2 s later) {step['fds']} "
              f"fds, node processes left {step['left_at_once']} at shutdown / {step['left']} "
              "after 5 s", flush=True)
        if cycle == 1 or cycle % args.checkpoint_every == 0 or cycle == args.cycles:
            cps.append(probe.checkpoint(f"cycle {cycle}"))
            print(f"{stamp(start)} checkpoint after cycle {cycle}: {describe(cps[-1])}",
                  flush=True)
    labels = [cp.label for cp in cps]
    warm = f"cycle {args.checkpoint_every}"
    result.warm = labels.index(warm) if warm in labels and labels.index(warm) < len(cps) - 1 \
        else min(1, len(cps) - 1)
    result.last = len(cps) - 1
    return result


# -- report --------------------------------------------------------------------------------------
def growth_verdict(first: float, last: float, args, unit_mib: bool = True) -> str:
    growth = last - first
    if unit_mib:
        pct = 100.0 * growth / first if first else 0.0
        flat = growth < args.flat_mib * MiB or pct < args.flat_pct
        return f"{growth / MiB:+7.1f} MiB {pct:+6.1f}%  {'flat' if flat else 'GROWS'}"
    return f"{growth:+7d}          {'flat' if growth <= 2 else 'GROWS'}"


def print_phase(result: PhaseResult, peaks: dict[str, Group], args) -> None:
    cps = result.checkpoints
    print(f"\n== {result.name} ==")
    for note in result.notes:
        print(f"  {note}")
    if result.aborted:
        print(f"  ABORTED: {result.aborted}")
    if result.error:
        print(f"  ERROR: {result.error}")
    if len(cps) < 2:
        print("  not enough checkpoints for a table")
        return
    warm, last = cps[result.warm], cps[result.last]
    steady = cps[result.warm:result.last + 1]
    middle = steady[len(steady) // 2]
    cols = [("before", cps[0]), ("start", warm), ("middle", middle), ("end", last),
            ("after", cps[-1] if cps[-1] is not last else None)]
    print(f"  checkpoints: before = {cps[0].label}, start = {warm.label} (after warm-up), "
          f"middle = {middle.label}, end = {last.label}"
          + (f", after = {cps[-1].label}" if cols[-1][1] else ""))
    print(f"  {'MiB':{LABEL}s}" + "".join(f"{name:>8s}" for name, _ in cols)
          + f"{'peak':>8s}   growth start->end (verdict)")
    for kind, label in GROUPS.items():
        if not any(kind in cp.groups for cp in cps):
            continue
        cells = [f"{cp.groups[kind].rss / MiB:8.0f}" if cp and kind in cp.groups else f"{'-':>8s}"
                 for _, cp in cols]
        peak = peaks.get(kind)
        n = max((cp.groups[kind].count for cp in cps if kind in cp.groups), default=0)
        verdict = (growth_verdict(warm.groups[kind].rss, last.groups[kind].rss, args)
                   if kind in warm.groups and kind in last.groups else "")
        print(f"  {f'{label} RSS (n<={n})':{LABEL}s}" + "".join(cells)
              + f"{peak.rss / MiB if peak else 0:8.0f}   {verdict}")
    for attr, label in (("heap", "driver JVM heap after GC"),
                        ("executor_heap", "executor JVM heaps after GC")):
        if all(getattr(cp, attr) is not None for _, cp in cols if cp):
            cells = [f"{getattr(cp, attr) / MiB:8.0f}" if cp else f"{'-':>8s}" for _, cp in cols]
            verdict = growth_verdict(getattr(warm, attr), getattr(last, attr), args)
            print(f"  {label:{LABEL}s}" + "".join(cells) + f"{'':8s}   {verdict}")
    print(f"  {'count':{LABEL}s}" + "".join(f"{name:>8s}" for name, _ in cols) + f"{'peak':>8s}")
    for kind, label, attr in (("driver", "driver threads", "threads"),
                              ("driver", "driver fds", "fds"),
                              ("driver_jvm", "driver JVM threads", "threads"),
                              ("driver_jvm", "driver JVM fds", "fds"),
                              ("executor_jvm", "executor JVM threads", "threads"),
                              ("executor_jvm", "executor JVM fds", "fds"),
                              ("py_worker", "Python worker processes", "count"),
                              ("node", "TF node fds", "fds"),
                              ("node", "TF node threads", "threads")):
        if not any(kind in cp.groups for cp in cps):
            continue
        cells = [f"{getattr(cp.groups[kind], attr):8d}" if cp and kind in cp.groups
                 else f"{'-':>8s}" for _, cp in cols]
        peak = getattr(peaks[kind], attr) if kind in peaks else 0
        verdict = (growth_verdict(getattr(warm.groups[kind], attr),
                                  getattr(last.groups[kind], attr), args, unit_mib=False)
                   if kind in warm.groups and kind in last.groups else "")
        print(f"  {label:{LABEL}s}" + "".join(cells) + f"{peak:8d}   {verdict}")
    for kind, label in (("driver_jvm", "driver JVM threads, other"),
                        ("executor_jvm", "executor JVM threads, other")):
        if kind in warm.threads and kind in last.threads:
            cells = [f"{_other_threads(cp, kind):8d}" if cp and kind in cp.threads
                     else f"{'-':>8s}" for _, cp in cols]
            verdict = growth_verdict(_other_threads(warm, kind), _other_threads(last, kind),
                                     args, unit_mib=False)
            print(f"  {label:{LABEL}s}" + "".join(cells) + f"{'':8s}   {verdict}")
    print(f"    ('other': without Spark's cached pools {', '.join(SPARK_POOLS)}..., "
          "at most 100 threads each, idle ones end after 60 s)")
    print_thread_growth(warm, last)
    if result.durations:
        d = result.durations
        unit = "epoch" if result.name == "feed soak" else "cycle"
        print(f"  seconds per {unit}: first {d[0]:.1f}, median {statistics.median(d):.1f}, "
              f"last {d[-1]:.1f}, max {max(d):.1f} ({len(d)} {unit}s)")


def _other_threads(cp: Checkpoint, kind: str) -> int:
    return sum(n for name, n in cp.threads[kind].items() if not name.startswith(SPARK_POOLS))


def print_thread_growth(warm: Checkpoint, last: Checkpoint) -> None:
    """Which threads (by name) were added or ended between the two checkpoints."""
    for kind, label in (("driver_py", "driver Python"), ("driver", "driver (native)"),
                        ("driver_jvm", "driver JVM"), ("executor_jvm", "executor JVMs"),
                        ("node", "TF nodes")):
        before = warm.threads.get(kind, collections.Counter())
        after = last.threads.get(kind, collections.Counter())
        diff = {name: after[name] - before[name] for name in set(before) | set(after)
                if after[name] != before[name]}
        if diff:
            top = sorted(diff.items(), key=lambda item: -abs(item[1]))[:5]
            print(f"    threads {label}, start->end by name: "
                  + ", ".join(f"{name} {n:+d}" for name, n in top))


def print_cycles(result: PhaseResult) -> None:
    steps = result.per_step
    if not steps:
        return
    first, last = steps[0], steps[-1]
    print(f"  driver threads when shutdown() returned: first {first['threads']}, last "
          f"{last['threads']}, max {max(s['threads'] for s in steps)}; up to 2 s later: first "
          f"{first['threads_settled']}, last {last['threads_settled']}, max "
          f"{max(s['threads_settled'] for s in steps)}; driver fds: first {first['fds']}, last "
          f"{last['fds']}, max {max(s['fds'] for s in steps)}")
    print(f"  node / guard processes alive when shutdown() returned: "
          f"{sum(s['left_at_once'] for s in steps)} over {len(steps)} cycles; still alive 5 s "
          f"later: {sum(s['left'] for s in steps)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--partitions", type=int, default=2000)
    parser.add_argument("--records", type=int, default=10_000)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--epochs-per-call", type=int, default=0,
                        help="epochs per train() call (0: all in one call)")
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--cycles", type=int, default=50)
    parser.add_argument("--checkpoint-every", type=int, default=10)
    parser.add_argument("--master", default="local-cluster[3,1,1024]")
    parser.add_argument("--conf", action="append", default=[], metavar="KEY=VALUE",
                        help="extra Spark configuration (repeatable)")
    parser.add_argument("--time-limit", type=float, default=5400,
                        help="seconds for the whole run (default 5400)")
    parser.add_argument("--feed-timeout", type=float, default=600)
    parser.add_argument("--interval", type=float, default=0.5, help="sampler period, seconds")
    parser.add_argument("--flat-pct", type=float, default=10.0)
    parser.add_argument("--flat-mib", type=float, default=50.0)
    parser.add_argument("--no-jcmd", action="store_true",
                        help="no executor heap figures (they need jcmd and force a full GC)")
    parser.add_argument("--skip-feed", action="store_true")
    parser.add_argument("--skip-cycles", action="store_true")
    args = parser.parse_args()

    start = time.monotonic()
    deadline = start + args.time_limit
    load_start = os.getloadavg()
    tag = uuid.uuid4().hex[:12]
    os.environ[TAG_ENV] = tag   # inherited by the driver JVM, executors and their workers
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: "
                        "%(message)s")
    logging.getLogger().handlers[0].setLevel(logging.WARNING)
    # Watchdog of last resort: if a clean abort hangs, leave anyway.
    hard = threading.Timer(args.time_limit + 300, lambda: (
        print("soak: still running 300 s past --time-limit; exiting", flush=True),
        os._exit(3)))
    hard.daemon = True
    hard.start()

    from pyspark.sql import SparkSession

    from tfos.driver.preflight import BARRIER_FAIL_FAST
    print(f"{stamp(start)} Spark session on {args.master} (tag {tag}); load average "
          f"{load_start[0]:.2f} {load_start[1]:.2f} {load_start[2]:.2f} on {os.cpu_count()} cores",
          flush=True)
    builder = SparkSession.builder.master(args.master).appName("tfos-soak")
    # Feed tasks run on the one executor without a node, while 2/3 of the cached blocks live on
    # the other two: waiting for locality (3 s per level by default) only delays them.
    conf = {**BARRIER_FAIL_FAST, "spark.ui.enabled": "false", "spark.locality.wait": "0",
            "spark.ui.showConsoleProgress": "false", "spark.dynamicAllocation.enabled": "false"}
    conf.update(item.split("=", 1) for item in args.conf)
    for key, value in conf.items():
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel("ERROR")
    table = ProcessTable()
    results = []
    with Sampler(table, args.interval, deadline) as sampler:
        probe = Probe(spark.sparkContext, table, sampler, jcmd=not args.no_jcmd)
        try:
            if not args.skip_feed:
                sampler.phase = "feed soak"
                results.append(feed_soak(spark, args, probe, deadline, start, tag))
            if not args.skip_cycles:
                sampler.phase = "start/stop cycles"
                results.append(cycles(spark, args, probe, deadline, start, tag))
        finally:
            sampler.phase = "end"
            spark.stop()
    leftovers = wait_gone(table, tag, 15.0)
    app_left = wait_gone(table, tag, 15.0, kinds=("executor_jvm", "py_worker"))
    hard.cancel()

    phases = ([] if args.skip_feed else
              [f"feed {args.records:,} records in {args.partitions:,} partitions x "
               f"{args.epochs} epochs to 2 nodes"]) + \
        ([] if args.skip_cycles else [f"{args.cycles} start/stop cycles of 3 nodes"])
    print(f"\nSoak on {args.master}: {'; '.join(phases)}; {time.monotonic() - start:.0f}s in all")
    for result in results:
        print_phase(result, sampler.peaks.get(result.name, {}), args)
        if result.name == "start/stop cycles":
            print_cycles(result)
        stats = sampler.load.get(result.name)
        if stats:
            print(f"  load average (1 min) during the phase: min {stats[0]:.2f}, mean "
                  f"{stats[2] / stats[3]:.2f}, max {stats[1]:.2f} on {os.cpu_count()} cores "
                  f"({stats[3]} samples)")
    print(f"\nverdict thresholds: memory flat when growth start->end < {args.flat_pct:g} % of the "
          f"start value or < {args.flat_mib:g} MiB; counts flat when growth <= 2")
    print("after spark.stop(): TF node / guard processes of this application: "
          + (", ".join(f"{n} {k}" for k, n in leftovers.items()) if leftovers else "none")
          + "; executor JVMs / Python workers still alive: "
          + (", ".join(f"{n} {k}" for k, n in app_left.items()) if app_left else "none"))
    print(f"load average (1 min) at start / end: {load_start[0]:.2f} / {os.getloadavg()[0]:.2f}; "
          f"sampler: {sampler.samples} samples every {args.interval:g} s")


if __name__ == "__main__":
    main()
