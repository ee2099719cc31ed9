"""InputMode.SPARK feed throughput: tfos beside Spark, tf.data and TensorFlowOnSpark, in one run.

Same data shape for every row of the table: MNIST-shaped records (784 float32 + an int64 label,
3,144 bytes), ``--records`` of them (default 60,000), on one Spark application
(``--master``, default the embedded ``local-cluster[2,2,2048]``) with 2 TF nodes:

1. tfos, RDD input: a cached RDD of ``(np.float32[784], label)`` rows fed with
   ``cluster.train(rdd, num_epochs)``; each node reads ``feed.dataset(256, columns=...)``
   (tf.data, iterated eagerly) -- or ``feed.next_columns(256, within_epoch=True)`` with
   ``--consumer next_columns``.
2. tfos, DataFrame input: the same number of records as a cached DataFrame
   (``image array<float>, label long``, generated in the JVM), fed with ``cluster.train(df)``.
3. Spark's own ceiling for the same cached data: a job that only iterates the rows in Python
   (``rdd.mapPartitions(count)``, ``df.mapInArrow(count)``).
4. In-process tf.data: ``from_tensor_slices((x, y)).batch(256)`` in one process.
5. TensorFlowOnSpark 2.2.5 (InputMode.SPARK, same cluster shape), run by
   ``tfos_baseline_feed.py`` in a virtualenv of its own (``<repo>/.bench-venv-tfos``, created
   on first use; ``--skip-baseline`` leaves it out).

For tfos three rates are given: *driver* = records / seconds spent in ``train()``; *node* =
records / seconds from the first to the last batch any node took (the nodes time themselves
and print a line the driver reads from the forwarded node output); *end to end* = records /
seconds from the start of ``train()`` to the later of its return and the last batch taken.
The ratios and verdicts use the end-to-end rate, the strictest of the three.

Then a separate cluster of ONE node is fed about ``--memory_gb`` GB (the same cached RDD, in
as many epochs as it takes) with ``feed_buffer_bytes=--memory_buffer_mb``, and the peak RSS of
the node's TF process (its own ``ru_maxrss``) and of the executors' feeding Python workers
(sampled from the driver with psutil every 0.2 s) are printed beside the buffer size.

With ``--vectors`` (the default) it also feeds the same records as a DataFrame whose image column
is ``array<float>``, ``array<double>`` and a dense ``VectorUDT`` (fed as train() does by default,
as float32, and with ``vector_dtype="float64"``) in interleaved rounds, and prints each rate and
its ratio to ``array<float>``.

Usage:
    python examples/benchmarks/feed_bench.py [--records 60000] [--epochs 3] [--skip-baseline]
        [--master local-cluster[2,2,2048]] [--memory_gb 2] [--consumer dataset|next_columns]
        [--vectors | --no-vectors]
Nothing is asserted: the script prints numbers and verdicts only.
"""
from __future__ import annotations

import argparse
import collections
import json
import math
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

RECORD_BYTES = 784 * 4 + 8          # float32[784] + int64 label
REPO = Path(__file__).resolve().parents[2]
BASELINE_VENV = REPO / ".bench-venv-tfos"
BASELINE_SCRIPT = Path(__file__).resolve().parent / "tfos_baseline_feed.py"
BASELINE_PACKAGES = ["tensorflowonspark==2.2.5", "pyspark==4.3.0", "tensorflow-cpu==2.21.0",
                     "numpy"]
MARK = "FEEDBENCH"
AGAIN = "-again"     # the feed of an input's second train() on the same cluster
READY = "<ready>"
NODE_LINE = re.compile(r"^\[(?P<label>[^\]]+)\] " + MARK + r" (?P<json>\{.*\})\s*$")


# -- data --------------------------------------------------------------------------------------
def mnist_rows(seed: int, index: int, ids):
    """``(np.float32[784], label)`` rows for the ids of one partition, made on the executor."""
    import numpy as np
    rng = np.random.default_rng(seed + index)
    for i in ids:
        yield rng.random(784, dtype=np.float32), int(i % 10)


def make_rdd(sc, records: int, partitions: int):
    seed = 1234
    rdd = sc.range(records, numSlices=partitions).mapPartitionsWithIndex(
        lambda index, ids: mnist_rows(seed, index, ids)).cache()
    assert rdd.count() == records
    return rdd


def make_dataframe(spark, records: int, partitions: int):
    from pyspark.sql import functions as F
    df = spark.range(0, records, 1, partitions).select(
        F.array_repeat(F.rand(7).cast("float"), 784).alias("image"),
        (F.col("id") % 10).alias("label")).cache()
    assert df.count() == records
    return df


# -- what runs in the TF nodes -------------------------------------------------------------------
def consume(args, ctx):
    """map_fun: reads each feed for its epochs, timing the first to the last batch.

    Prints one ``FEEDBENCH {json}`` line per feed; the driver reads it from the node output.
    """
    import resource

    import psutil
    import tensorflow as tf  # noqa: F401 - imported before any timing starts

    status_peaks = StatusPeaks("self").start() if args.get("rss_detail") else None
    # The driver starts feeding once every node got here (TF imported, about to read).
    print(f"{MARK} " + json.dumps({"feed": READY}), flush=True)
    for qname, epochs, columns in args["feeds"]:
        feed = ctx.get_data_feed(qname_in=qname)
        rss_start = psutil.Process().memory_info().rss
        status_start = read_status("/proc/self/status") if status_peaks else {}
        rows, first, last = 0, None, None
        if args["consumer"] == "dataset":
            dataset = feed.dataset(args["batch"], columns=columns)
            for _ in range(epochs):
                for _, label in dataset:
                    last = time.time()
                    first = first or last
                    rows += int(label.shape[0])
        else:
            ended = 0
            while ended < epochs:
                batch = feed.next_columns(args["batch"], within_epoch=True)
                if batch is None:
                    break
                if not batch:
                    ended += 1
                    continue
                last = time.time()
                first = first or last
                rows += len(batch[columns[-1]])
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        detail = {}
        if status_peaks:
            detail = {**status_peaks.peaks,
                      **{name + "_start": value for name, value in status_start.items()}}
        print(f"{MARK} " + json.dumps({"feed": qname, "rows": rows, "first": first, "last": last,
                                       "rss_start": rss_start, "maxrss": peak, **detail}),
              flush=True)
    # Return only once the driver ends the data (at shutdown): when one worker returns from
    # map_fun, the driver cancels the feed jobs still running for the others (see README).
    for qname, _, _ in args["feeds"]:
        while ctx.get_data_feed(qname_in=qname).next_columns(args["batch"]) is not None:
            pass


class StatusPeaks:
    """Peak RssAnon / RssShmem of one process from /proc/<pid>/status, sampled in a thread.

    Shared-memory pages (the shm:// rings a feed connection maps) are RssShmem; the feed
    buffer, numpy copies and TensorFlow's own memory are RssAnon.
    """

    FIELDS = ("RssAnon", "RssShmem")

    def __init__(self, pid, interval: float = 0.1):
        self.path = f"/proc/{pid}/status"
        self.interval = interval
        self.peaks = {name: 0 for name in self.FIELDS}

    def start(self) -> "StatusPeaks":
        threading.Thread(target=self._run, daemon=True, name="status-peaks").start()
        return self

    def _run(self) -> None:
        while self.sample():
            time.sleep(self.interval)

    def sample(self) -> bool:
        values = read_status(self.path)
        for name, value in values.items():
            self.peaks[name] = max(self.peaks[name], value)
        return bool(values)


def read_status(path: str) -> dict[str, int]:
    """The RSS fields of a /proc/<pid>/status file, in bytes ({} when it is gone)."""
    try:
        with open(path) as f:
            lines = f.read().splitlines()
    except OSError:
        return {}
    return {name: int(rest.split()[0]) * 1024 for name, _, rest in
            (line.partition(":") for line in lines) if name in StatusPeaks.FIELDS}


class NodeLines:
    """``log_stream`` for TFCluster.run: keeps the nodes' FEEDBENCH lines, waits for them."""

    def __init__(self, echo: bool):
        self._echo = echo
        self._cond = threading.Condition()
        self.reports: list[dict] = []
        self.tail: collections.deque[str] = collections.deque(maxlen=200)

    def write(self, text: str) -> int:
        for line in text.splitlines():
            match = NODE_LINE.match(line)
            with self._cond:
                self.tail.append(line)
                if match:
                    self.reports.append({"node": match["label"], **json.loads(match["json"])})
                    self._cond.notify_all()
            if self._echo:
                sys.stderr.write(line + "\n")
        return len(text)

    def flush(self) -> None:
        pass

    def wait(self, feed: str, nodes: int, timeout: float) -> list[dict]:
        with self._cond:
            self._cond.wait_for(lambda: len(self.of(feed)) >= nodes, timeout)
            found = self.of(feed)
        if len(found) < nodes:
            raise RuntimeError(f"only {len(found)} of {nodes} nodes reported feed {feed!r} within "
                               f"{timeout:.0f}s; last node output:\n" + "\n".join(self.tail))
        return found

    def of(self, feed: str) -> list[dict]:
        return [r for r in self.reports if r["feed"] == feed]


# -- measurements ------------------------------------------------------------------------------
def measure_tfos(spark, inputs: dict, args, twice: bool = False) -> dict:
    """One 2-node cluster; each input in turn (the next starts once the nodes drained the last).
    ``twice``: each input is fed a second time too, its rates under the name + ``AGAIN``."""
    import tfos
    lines = NodeLines(args.verbose)
    # Twice: the cluster's first train() of an input, then the same again (what streaming
    # micro-batches and later calls see: connections and tf.data warm).
    agains = ("", AGAIN) if twice else ("",)
    feeds = [[name + again, args.epochs, columns] for name, (_, columns, *_) in inputs.items()
             for again in agains]
    results = {}
    cluster = tfos.TFCluster.run(
        spark, consume, {"feeds": feeds, "batch": args.batch, "consumer": args.consumer},
        num_executors=args.nodes, input_mode=tfos.InputMode.SPARK, log_stream=lines,
        env={"TF_CPP_MIN_LOG_LEVEL": "2"})
    with cluster:
        lines.wait(READY, args.nodes, timeout=300)
        for name, (data, _, *options) in inputs.items():
            for again in agains:
                results[name + again] = timed_train(cluster, data, name + again, args.epochs,
                                                    lines, args.nodes,
                                                    **(options[0] if options else {}))
        cluster.shutdown(timeout=300)
    return results


def timed_train(cluster, data, qname: str, epochs: int, lines: NodeLines, nodes: int,
                **train_options) -> dict:
    start = time.time()
    cluster.train(data, num_epochs=epochs, qname=qname, **train_options)
    end = time.time()
    reports = lines.wait(qname, nodes, timeout=600)
    rows = sum(r["rows"] for r in reports)
    first = min(r["first"] for r in reports if r["first"])
    last = max(r["last"] for r in reports if r["last"])
    return {"rows": rows, "driver": rows / (end - start), "node": rows / (last - first),
            "e2e": rows / (max(end, last) - start), "train_secs": end - start, "reports": reports}


def spark_ceiling(rdd, df, epochs: int) -> dict:
    """Rows/s of jobs that only iterate the cached rows in Python (no feeding at all)."""
    def count_arrow(batches):
        import pyarrow as pa
        yield pa.record_batch({"n": pa.array([sum(b.num_rows for b in batches)], pa.int64())})

    def rdd_pass():
        return rdd.mapPartitions(lambda it: [sum(1 for _ in it)]).sum()

    def df_pass():
        return sum(row.n for row in df.mapInArrow(count_arrow, "n long").collect())

    rdd_pass(), df_pass()   # warm-up (JIT, Python workers), untimed
    rates = {}
    start = time.time()
    rows = sum(rdd_pass() for _ in range(epochs))
    rates["rdd"] = rows / (time.time() - start)
    start = time.time()
    rows = sum(df_pass() for _ in range(epochs))
    rates["df"] = rows / (time.time() - start)
    return rates


def inprocess_tfdata(records: int, epochs: int, batch: int) -> dict:
    """Runs ``--inprocess`` in a fresh interpreter (TensorFlow stays out of the driver)."""
    out = subprocess.run([sys.executable, __file__, "--inprocess", str(records), str(epochs),
                          str(batch)], capture_output=True, text=True, timeout=600,
                         env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))
    if out.returncode != 0:
        return {"error": f"exit code {out.returncode}: {out.stderr.strip().splitlines()[-1:]}"}
    return json.loads(out.stdout.strip().splitlines()[-1])


def _inprocess_main(records: int, epochs: int, batch: int) -> None:
    import numpy as np
    import tensorflow as tf
    rng = np.random.default_rng(1234)
    x = rng.random((records, 784), dtype=np.float32)
    y = np.arange(records, dtype=np.int64) % 10
    dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(batch)
    for _ in dataset.take(1):
        pass  # warm-up: builds the pipeline once
    start = time.time()
    rows = 0
    for _ in range(epochs):
        for _, label in dataset:
            rows += int(label.shape[0])
    print(json.dumps({"rows": rows, "rate": rows / (time.time() - start)}))


# -- DataFrames of tensors: a dense VectorUDT column beside array<float> (--vectors) ------------
VECTOR_FEEDS = (  # qname, label, bytes of a record fed (784 values + an int64 label)
    ("vec_array_float", "array<float>", 784 * 4 + 8),
    ("vec_array_double", "array<double>", 784 * 8 + 8),
    ("vec_vector", "VectorUDT, dense (fed as float32, the default)", 784 * 4 + 8),
    ("vec_vector_f64", "VectorUDT, dense, vector_dtype='float64'", 784 * 8 + 8))
# train() options of a layout (the same cached vector frame, fed exact).
VECTOR_OPTIONS = {"vec_vector_f64": {"vector_dtype": "float64"}}
VECTOR_ROUNDS = 3


def make_vector_frames(spark, records: int, partitions: int) -> dict:
    """The same records as array<float>, array<double> and a dense Spark ML vector (VectorUDT
    holds float64), cached; the vector frame is fed twice: as train() converts it by default
    (to float32, in Spark) and with ``vector_dtype="float64"`` (the doubles as they are)."""
    from pyspark.ml.functions import array_to_vector
    from pyspark.sql import functions as F
    pixels = spark.range(0, records, 1, partitions).select(
        F.array_repeat(F.rand(7), 784).alias("pixels"), (F.col("id") % 10).alias("label"))
    array_double = pixels.select(F.col("pixels").alias("image"), "label").cache()
    array_float = pixels.select(F.col("pixels").cast("array<float>").alias("image"),
                                "label").cache()
    vector = pixels.select(array_to_vector("pixels").alias("image"), "label").cache()
    for frame in (array_float, array_double, vector):
        assert frame.count() == records
    return dict(zip([qname for qname, _, _ in VECTOR_FEEDS],
                    (array_float, array_double, vector, vector)))


def measure_vectors(spark, args) -> None:
    """Feeds the frames one epoch at a time, in ``VECTOR_ROUNDS`` rounds (each in a rotated
    order, all through one 2-node cluster), so a busy machine's swings hit every layout alike;
    prints the median rates and the median of each round's ratios."""
    frames = make_vector_frames(spark, args.records, args.partitions)
    qnames = list(frames)
    feeds = {}
    for r in range(VECTOR_ROUNDS):
        for qname in qnames[r % len(qnames):] + qnames[:r % len(qnames)]:
            feeds[f"{qname}_{r}"] = (frames[qname], ["image", "label"],
                                     VECTOR_OPTIONS.get(qname, {}))
    try:
        rates = measure_tfos(spark, feeds, argparse.Namespace(**{**vars(args), "epochs": 1}))
    finally:
        for frame in frames.values():   # the vector frame twice: unpersist is idempotent
            frame.unpersist()
    print_vectors(args, {qname: [rates[f"{qname}_{r}"] for r in range(VECTOR_ROUNDS)]
                         for qname in qnames})


def print_vectors(args, rounds: dict) -> None:
    import statistics
    median = statistics.median
    print(f"\nDataFrames of tensors: {args.records:,} records (image: 784 values, label), "
          f"{VECTOR_ROUNDS} rounds of one epoch per layout, batch {args.batch}, {args.nodes} TF "
          f"nodes, {args.master}; medians over the rounds\n")
    print(f"{'image column':48s} {'end to end rec/s':>17} {'node rec/s':>11} {'MB/s':>7}")
    for qname, label, size in VECTOR_FEEDS:
        e2e = median(r["e2e"] for r in rounds[qname])
        node = median(r["node"] for r in rounds[qname])
        print(f"{label:48s} {e2e:17,.0f} {node:11,.0f} {e2e * size / 1e6:7,.1f}")
    base = rounds["vec_array_float"]
    ratios = {}
    for qname, label, _ in VECTOR_FEEDS[1:]:
        each = [r["e2e"] / b["e2e"] for r, b in zip(rounds[qname], base)]
        ratios[qname] = median(each)
        print(f"{label + ' / array<float>':64s} {ratios[qname]:6.2f}x (rounds: "
              + ", ".join(f"{x:.2f}" for x in each) + ")")
    ratio = ratios["vec_vector"]
    print(f"{'target VectorUDT / array<float> >= 0.7x (end to end):':64s} {ratio:6.2f}x -> "
          f"{'met' if ratio >= 0.7 else 'NOT met'}", flush=True)


# -- memory: one node, about memory_gb GB fed -------------------------------------------------
class WorkerSampler:
    """Samples, from the driver, the RSS of the executors' Python workers every 0.2 s.

    Only descendants of this driver process count. A worker with a ``tfos.node.main``
    descendant runs a node task; the other forked workers are the feed tasks' workers.
    """

    def __init__(self, interval: float = 0.2, max_secs: float = 900):
        self.interval, self.max_secs = interval, max_secs
        self.feed_peak: dict[int, int] = {}
        self.feed_shmem_peak = 0
        self.feed_first: dict[int, int] = {}
        self.node_worker_peak: dict[int, int] = {}
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="rss-sampler")

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        import psutil
        me = psutil.Process()
        deadline = time.monotonic() + self.max_secs
        while not self._stop.is_set() and time.monotonic() < deadline:
            try:
                self._sample(me.children(recursive=True))
            except psutil.Error:
                pass
            self.samples += 1
            self._stop.wait(self.interval)

    def _sample(self, procs) -> None:
        import psutil
        info = {}
        for p in procs:
            try:
                info[p.pid] = (p.ppid(), " ".join(p.cmdline()), p.memory_info().rss)
            except psutil.Error:
                continue
        is_worker = {pid: "pyspark.daemon" in cmd or "pyspark.worker" in cmd
                     for pid, (_, cmd, _) in info.items()}
        runs_node = set()
        for pid, (ppid, cmd, _) in info.items():
            if "tfos.node.main" in cmd:
                while ppid in info and not is_worker[ppid]:
                    ppid = info[ppid][0]
                runs_node.add(ppid)
        for pid, (ppid, _, rss) in info.items():
            if not is_worker[pid] or not is_worker.get(ppid, False):
                continue  # not a forked worker (the daemon's parent is the executor JVM)
            peaks = self.node_worker_peak if pid in runs_node else self.feed_peak
            peaks[pid] = max(peaks.get(pid, 0), rss)
            if pid not in runs_node:
                self.feed_first.setdefault(pid, rss)
                shmem = read_status(f"/proc/{pid}/status").get("RssShmem", 0)
                self.feed_shmem_peak = max(self.feed_shmem_peak, shmem)


def measure_memory(spark, rdd, args) -> dict:
    import tfos
    per_epoch = args.records * RECORD_BYTES
    epochs = max(1, math.ceil(args.memory_gb * 1e9 / per_epoch))
    lines = NodeLines(args.verbose)
    buffer_bytes = args.memory_buffer_mb << 20
    cluster = tfos.TFCluster.run(
        spark, consume, {"feeds": [["mem", epochs, ["0", "1"]]], "batch": args.batch,
                         "consumer": args.consumer, "rss_detail": True},
        num_executors=1, input_mode=tfos.InputMode.SPARK, log_stream=lines,
        feed_buffer_bytes=buffer_bytes, env={"TF_CPP_MIN_LOG_LEVEL": "2"})
    with cluster, WorkerSampler() as sampler:
        lines.wait(READY, 1, timeout=300)
        result = timed_train(cluster, rdd, "mem", epochs, lines, 1)
        cluster.shutdown(timeout=300)
    report = result["reports"][0]
    return {"epochs": epochs, "bytes": result["rows"] * RECORD_BYTES, "rate": result["e2e"],
            "buffer": buffer_bytes, "node_peak": report["maxrss"],
            "node_start": report["rss_start"], "samples": sampler.samples,
            "node_anon": report.get("RssAnon"), "node_shmem": report.get("RssShmem"),
            "node_anon_start": report.get("RssAnon_start"),
            "node_shmem_start": report.get("RssShmem_start"),
            "feed_shmem": sampler.feed_shmem_peak,
            "feed_peak": max(sampler.feed_peak.values(), default=None),
            "feed_first": max(sampler.feed_first.values(), default=None),
            "feed_workers": len(sampler.feed_peak),
            "node_worker_peak": max(sampler.node_worker_peak.values(), default=None)}


# -- TensorFlowOnSpark baseline ------------------------------------------------------------------
def run_baseline(args) -> dict:
    """Creates (or reuses) the baseline venv and runs tfos_baseline_feed.py in it."""
    python = BASELINE_VENV / "bin" / "python"
    if not python.exists() or subprocess.run(
            [str(python), "-c", "import tensorflowonspark, pyspark, tensorflow"],
            capture_output=True).returncode != 0:
        print(f"creating {BASELINE_VENV} ({' '.join(BASELINE_PACKAGES)}; a few minutes)...",
              file=sys.stderr, flush=True)
        steps = [[sys.executable, "-m", "venv", "--clear", str(BASELINE_VENV)],
                 [str(python), "-m", "pip", "install", "-q", *BASELINE_PACKAGES]]
        for step in steps:
            out = subprocess.run(step, capture_output=True, text=True, timeout=1800)
            if out.returncode != 0:
                return {"error": f"{' '.join(step[:4])}... failed: " + _last_error(out.stderr)}
    env = dict(os.environ, SPARK_LOCAL_IP=os.environ.get("SPARK_LOCAL_IP", "127.0.0.1"),
               PYSPARK_PYTHON=str(python), TF_CPP_MIN_LOG_LEVEL="2")
    # A private SPARK_HOME over the baseline venv's pyspark keeps Spark's work dirs in the venv.
    home = subprocess.run(["bash", str(REPO / "scripts" / "spark_home.sh")], capture_output=True,
                          text=True, env=dict(env, VENV=str(BASELINE_VENV),
                                              TFOS_SPARK_HOME=str(BASELINE_VENV / "spark-home")))
    if home.returncode == 0:
        env["SPARK_HOME"] = home.stdout.strip().splitlines()[-1]
    else:
        env.pop("SPARK_HOME", None)
    command = [str(python), str(BASELINE_SCRIPT), "--records", str(args.baseline_records),
               "--epochs", str(args.baseline_epochs), "--batch", str(args.batch),
               "--partitions", str(args.partitions), "--nodes", str(args.nodes),
               "--master", args.master]
    # Its own process group: on a timeout its Spark JVMs and TF processes go with it.
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env, start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=args.baseline_timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        return {"error": f"did not finish within {args.baseline_timeout}s"}
    lines = [ln for ln in stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        return {"error": f"exit code {proc.returncode}: " + _last_error(stderr)}
    return json.loads(lines[-1])


def _last_error(stderr: str) -> str:
    lines = [ln for ln in stderr.strip().splitlines() if ln.strip()
             and not ln.startswith(("WARNING: Location", "I0000", "W0000"))]
    return " | ".join(lines[-3:]) if lines else "no output"


# -- report ------------------------------------------------------------------------------------
WIDTH = 56


def fmt_rate(rate) -> str:
    return f"{rate:12,.0f} {rate * RECORD_BYTES / 1e6:9,.1f}" if rate else f"{'-':>12} {'-':>9}"


def row(label: str, rate=None, text: str | None = None) -> None:
    print(f"{label:{WIDTH}s} {text if text is not None else fmt_rate(rate)}")


def print_report(args, tfos_rates, ceiling, tfdata, baseline, memory, load) -> None:
    print(f"\nInputMode.SPARK feed throughput: {args.records:,} MNIST-shaped records "
          f"({RECORD_BYTES:,} B each) x {args.epochs} epochs, batch {args.batch}, "
          f"{args.partitions} partitions, {args.nodes} TF nodes, {args.master}, "
          f"tfos consumer: {args.consumer}\n")
    print(f"{'path':{WIDTH}s} {'records/s':>12} {'MB/s':>9}")
    names = {"rdd": "RDD", "df": "DataFrame"}
    for key, label in names.items():
        r = tfos_rates[key]
        row(f"tfos feed, {label}, driver (train())", r["driver"])
        row(f"tfos feed, {label}, node (first->last batch)", r["node"])
        row(f"tfos feed, {label}, end to end", r["e2e"])
        row("  the same train() again, end to end", tfos_rates[key + AGAIN]["e2e"])
    row("Spark ceiling, RDD (mapPartitions: iterate rows)", ceiling["rdd"])
    row("Spark ceiling, DataFrame (mapInArrow: iterate)", ceiling["df"])
    label = f"in-process tf.data (from_tensor_slices, batch {args.batch})"
    row(label, tfdata.get("rate"), tfdata.get("error"))
    if baseline is None:
        row("tensorflowonspark 2.2.5", text="skipped (--skip-baseline)")
    elif "error" in baseline:
        row("tensorflowonspark 2.2.5", text=f"cannot report: {baseline['error']}")
    else:
        row("tensorflowonspark 2.2.5, driver (train())", baseline["driver_rate"])
        row("tensorflowonspark 2.2.5, node (first->last batch)", baseline["node_rate"])
        print(f"  (tensorflowonspark fed {baseline['records']:,} records x "
              f"{baseline['epochs']} epoch(s), same cluster shape, separate Spark application)")

    base = baseline.get("driver_rate") if baseline and "error" not in baseline else None
    local = tfdata.get("rate")
    refs = (("tensorflowonspark", base), ("in-process tf.data", local))
    print("\nratios: tfos end-to-end rate (node-side rate in parentheses)")
    print(f"{'':26s}" + "".join(f"{'/ ' + name:>24s}" for name, _ in refs)
          + f"{'/ Spark ceiling':>24s}")
    for key, label in names.items():
        r = tfos_rates[key]
        cells = [_ratio(r, ref) for _, ref in refs] + [_ratio(r, ceiling[key])]
        print(f"{'tfos ' + label:26s}" + "".join(f"{c:>24s}" for c in cells))
    for key, label in names.items():
        cells = [f"{ceiling[key] / ref:.2f}x" if ref else "n/a" for _, ref in refs]
        print(f"{'Spark ceiling ' + label:26s}" + "".join(f"{c:>24s}" for c in cells))
    print()
    epochs = f"{args.epochs} epoch{'s' if args.epochs != 1 else ''}"
    for key, label in names.items():     # the headline: what Spark itself hands to Python
        target = f"target tfos / Spark ceiling >= 0.7x, {label}, {epochs}:"
        ratio = tfos_rates[key]["e2e"] / ceiling[key]
        print(f"{target:52s} {ratio:8.2f}x -> {'met' if ratio >= 0.7 else 'NOT met'}")
        again = tfos_rates[key + AGAIN]["e2e"] / ceiling[key]
        print(f"{'  the same train() again on the cluster:':52s} {again:8.2f}x -> "
              f"{'met' if again >= 0.7 else 'NOT met'}")
    for name, ref, goal in (("tensorflowonspark", base, 100), ("in-process tf.data", local, 0.7)):
        for key, label in names.items():
            target = f"target tfos / {name} >= {goal:g}x, {label}:"
            if not ref:
                print(f"{target:52s} not measured")
                continue
            ratio = tfos_rates[key]["e2e"] / ref
            print(f"{target:52s} {ratio:8.2f}x -> {'met' if ratio >= goal else 'NOT met'}")

    if memory:
        print_memory(args, memory)
    print(f"\nload average (1 min) before / after: {load[0]:.2f} / {load[1]:.2f} on "
          f"{os.cpu_count()} cores")


def _ratio(rates: dict, ref) -> str:
    return f"{rates['e2e'] / ref:.2f}x ({rates['node'] / ref:.2f}x)" if ref else "n/a"


def print_memory(args, m: dict) -> None:
    mib = 1 << 20
    print(f"\nmemory, one node: {m['bytes'] / 1e9:.2f} GB fed ({m['epochs']} epochs of "
          f"{args.records:,} records) at {m['rate']:,.0f} records/s, "
          f"feed_buffer_bytes = {m['buffer'] / mib:.0f} MiB")
    detail = ""
    if m.get("node_anon") is not None:
        detail = (f"; anonymous {m['node_anon_start'] / mib:.0f} -> {m['node_anon'] / mib:.0f} "
                  f"MiB, shared memory {m['node_shmem_start'] / mib:.0f} -> "
                  f"{m['node_shmem'] / mib:.0f} MiB")
    print(f"  TF node process, peak RSS (ru_maxrss)     {m['node_peak'] / mib:6.0f} MiB  "
          f"(RSS {m['node_start'] / mib:.0f} MiB when feeding began: "
          f"+{(m['node_peak'] - m['node_start']) / mib:.0f} MiB{detail})")
    if m["feed_peak"]:
        print(f"  feeding Python worker, peak RSS (psutil)  {m['feed_peak'] / mib:6.0f} MiB  "
              f"(max over {m['feed_workers']} worker processes, first seen at "
              f"{m['feed_first'] / mib:.0f} MiB; peak shared memory "
              f"{m['feed_shmem'] / mib:.0f} MiB; {m['samples']} samples, every 0.2 s)")
    else:
        print("  feeding Python worker: not seen by the sampler")
    if m["node_worker_peak"]:
        peak = m["node_worker_peak"] / mib
        print(f"  node task's Python worker, peak RSS       {peak:6.0f} MiB  "
              "(supervises the TF process)")


def spark_session(master: str, name: str):
    """The benchmarks' Spark application: ``master``, fail-fast barrier stages, reused Python
    workers, no UI, no dynamic allocation; Spark on loopback unless the environment says."""
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    from pyspark.sql import SparkSession

    from tfos.driver.preflight import BARRIER_FAIL_FAST
    builder = SparkSession.builder.master(master).appName(name)
    for key, value in {**BARRIER_FAIL_FAST, "spark.python.worker.reuse": "true",
                       "spark.ui.enabled": "false", "spark.ui.showConsoleProgress": "false",
                       "spark.dynamicAllocation.enabled": "false"}.items():
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel("ERROR")
    return spark


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=60_000)
    parser.add_argument("--epochs", type=int, default=3, help="epochs fed by tfos (default 3)")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--nodes", type=int, default=2)
    parser.add_argument("--master", default="local-cluster[2,2,2048]")
    parser.add_argument("--consumer", choices=("dataset", "next_columns"), default="dataset")
    parser.add_argument("--skip-baseline", action="store_true")
    parser.add_argument("--baseline-records", type=int, default=None,
                        help="records fed to TensorFlowOnSpark (default --records)")
    parser.add_argument("--baseline-epochs", type=int, default=1)
    parser.add_argument("--baseline-timeout", type=int, default=900)
    parser.add_argument("--memory_gb", type=float, default=2.0,
                        help="GB fed through one node for the memory figures (0: skip)")
    parser.add_argument("--memory_buffer_mb", type=int, default=64)
    parser.add_argument("--vectors", action=argparse.BooleanOptionalAction, default=True,
                        help="also feed image as a dense VectorUDT vs array<float> (default on)")
    parser.add_argument("--verbose", action="store_true", help="echo the nodes' output")
    parser.add_argument("--inprocess", nargs=3, type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.inprocess:
        _inprocess_main(*args.inprocess)
        return
    args.baseline_records = args.baseline_records or args.records

    load_before = os.getloadavg()[0]
    def step(what: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {what}", file=sys.stderr, flush=True)

    step("in-process tf.data")
    tfdata = inprocess_tfdata(args.records, args.epochs, args.batch)
    step(f"Spark session on {args.master}")
    spark = spark_session(args.master, "tfos-feed-bench")
    memory = None
    try:
        step("caching the RDD and the DataFrame")
        rdd = make_rdd(spark.sparkContext, args.records, args.partitions)
        df = make_dataframe(spark, args.records, args.partitions)
        step("Spark ceiling")
        ceiling = spark_ceiling(rdd, df, args.epochs)
        step("tfos feed: RDD twice, then DataFrame twice")
        tfos_rates = measure_tfos(spark, {"rdd": (rdd, ["0", "1"]),
                                          "df": (df, ["image", "label"])}, args, twice=True)
        if args.vectors:
            step("tfos feed: DataFrame array<float>, then dense VectorUDT (--vectors)")
            measure_vectors(spark, args)
        if args.memory_gb > 0:
            step(f"tfos memory: ~{args.memory_gb} GB through one node")
            memory = measure_memory(spark, rdd, args)
    finally:
        spark.stop()
    baseline = None
    if not args.skip_baseline:
        step("tensorflowonspark 2.2.5 baseline")
        baseline = run_baseline(args)
    print_report(args, tfos_rates, ceiling, tfdata, baseline, memory,
                 (load_before, os.getloadavg()[0]))


if __name__ == "__main__":
    main()
