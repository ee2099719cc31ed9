"""InputMode.SPARK inference throughput: tfos beside Spark's ceiling and ``model.predict``, one run.

One Keras MLP (784 -> 256 -> 128 -> 10, weights drawn from a seeded numpy generator, nothing
downloaded) scores ``--records`` MNIST-shaped rows (784 float32 + an int64 label, default
60,000) on one Spark application (``--master``, default the embedded
``local-cluster[2,2,2048]``), the same data and helpers as ``feed_bench.py``:

1. tfos, RDD input: ``cluster.inference(rdd)`` on a 2-node cluster in InputMode.SPARK; each
   node's ``map_fun`` builds the model and loops ``feed.next_batch(--batch)`` ->
   ``model.predict_on_batch`` (as ``examples/mnist/mnist_inference.py`` does; ``--node_call
   function``: the model called in a ``tf.function``) -> ``feed.batch_results(logits)``. The
   action (a Python step pipelined after the results that counts them and keeps every
   ``--stride``-th) is timed from its start to its end.
2. tfos, DataFrame input: ``cluster.inference(df, output_schema="prediction array<float>")``,
   forced by one JVM aggregate (row count plus a sample of ``(image, prediction)``).
3. Spark's own ceiling for the same cached data (``feed_bench.spark_ceiling``: a Python job
   that only iterates the rows), and an inference-shaped ceiling: the same rows in, 10 floats
   per row handed back to the JVM and forced by the same action as the tfos row (RDD: a list
   per row; DataFrame: the input batches with a zero ``prediction`` column appended).
4. ``model.predict(x, batch_size=--batch)`` in one fresh process over the same rows already in
   a numpy array, with the nodes' Keras (``--keras``: tf-keras, tfos's default
   ``legacy_keras=True``, or Keras 3).

Each tfos pass's sampled predictions are compared with ``model.predict`` on the same rows
(``--tolerance``), and its row count with ``--records``: a wrong answer is reported as WRONG
beside its rate. The first tfos pass of each input is reported on its own (cold: the feed
tasks' Python workers import tfos); the warm rate is over ``--passes`` passes after it.

Where the time goes, for the warm passes: each node records, per batch, the seconds (and its
thread's CPU seconds) spent in ``next_batch``, in the model call and in ``batch_results``
(written to a trace file when the node shares this host's file system); the driver samples
with psutil the CPU seconds of every process of the application by role (JVMs, Python
workers, TF nodes) and, in the TF nodes, by thread (the map_fun's, TensorFlow's, the others,
and those that ended: the feed connections').

Usage:
    python examples/benchmarks/inference_bench.py [--records 60000] [--passes 3]
        [--batch 256] [--partitions 4] [--master local-cluster[2,2,2048]]
        [--keras tf-keras|keras3] [--node_call predict_on_batch|function] [--verbose]
Nothing is asserted: the script prints numbers only.
"""
from __future__ import annotations

import argparse
import functools
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import feed_bench
from feed_bench import MARK, READY, RECORD_BYTES, NodeLines, make_dataframe, make_rdd

SEED = 42
LAYERS = (784, 256, 128, 10)
FEEDS = {"rdd": {"image": "image", "label": "label"}, "df": {"image": "image"}}
OUTPUT_SCHEMA = "prediction array<float>"
THREADS = "<threads>"


# -- the model (built the same way in the TF nodes and in the predict process) ----------------
def build_model(seed: int):
    """The MLP with weights from ``numpy.random.default_rng(seed)``: the same in every process."""
    import numpy as np
    import tensorflow as tf
    model = tf.keras.Sequential([tf.keras.Input((LAYERS[0],))] + [
        tf.keras.layers.Dense(n, activation="relu" if i < len(LAYERS) - 2 else None)
        for i, n in enumerate(LAYERS[1:])])
    rng = np.random.default_rng(seed)
    model.set_weights([rng.normal(0, 1 / np.sqrt(w.shape[0]), w.shape).astype(np.float32)
                       if len(w.shape) == 2 else rng.uniform(-0.1, 0.1, w.shape).astype(np.float32)
                       for w in model.weights])
    return model


# -- what runs in the TF nodes -------------------------------------------------------------------
def predict_fun(args, ctx):
    """map_fun: one thread per inference feed, each predicting until the driver ends the data.

    An inference feed ends only at ``shutdown()``, so the RDD and DataFrame feeds are read side
    by side (the driver uses one at a time). Each batch's timings go to a trace file.
    """
    import threading

    import numpy as np
    if args["threads"]:
        import tensorflow as tf
        tf.config.threading.set_intra_op_parallelism_threads(args["threads"])
        tf.config.threading.set_inter_op_parallelism_threads(args["threads"])
    model = build_model(args["seed"])
    predict = model_call(model, args["call"])
    predict(np.zeros((args["batch"], LAYERS[0]), np.float32))   # traced once
    print(f"{MARK} " + json.dumps({"feed": READY}), flush=True)
    errors: list[BaseException] = []

    def serve(qname: str, mapping: dict) -> None:
        try:
            feed = ctx.get_data_feed(train_mode=False, qname_in=qname, input_mapping=mapping)
            trace = predict_feed(feed, predict, args["batch"])
            path = Path(args["trace_dir"]) / f"{qname}-{ctx.worker_num}.json"
            path.write_text(json.dumps(trace))
        except BaseException as exc:  # re-raised in map_fun's thread
            errors.append(exc)

    threads = [threading.Thread(target=serve, args=(q, m), name=f"predict-{q}")
               for q, m in args["feeds"].items()]
    for thread in threads:
        thread.start()
    # The driver's CPU sampler tells these threads from TensorFlow's and tfos's own.
    print(f"{MARK} " + json.dumps({"feed": THREADS, "tids": [t.native_id for t in threads]}),
          flush=True)
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]


def predict_feed(feed, predict, batch_size: int) -> list[list[float]]:
    """The inference loop. Per batch: wall clock when asked, got, predicted and replied, the
    rows, and this thread's CPU seconds in next_batch, ``predict`` and batch_results."""
    import numpy as np
    trace = []
    while not feed.should_stop():
        asked, cpu_asked = time.time(), time.thread_time()
        batch = feed.next_batch(batch_size)
        got, cpu_got = time.time(), time.thread_time()
        if not batch:
            continue
        logits = predict(batch["image"])
        predicted, cpu_predicted = time.time(), time.thread_time()
        feed.batch_results(np.asarray(logits))
        trace.append([asked, got, predicted, time.time(), len(logits), cpu_got - cpu_asked,
                      cpu_predicted - cpu_got, time.thread_time() - cpu_predicted])
    return trace


def model_call(model, how: str):
    """``predict_on_batch`` (what the project's mnist inference example calls), or the model
    called in a ``tf.function`` whose input signature takes any batch size (traced once)."""
    import numpy as np
    import tensorflow as tf
    if how == "predict_on_batch":
        return model.predict_on_batch
    call = tf.function(lambda x: model(x, training=False),
                       input_signature=[tf.TensorSpec((None, LAYERS[0]), tf.float32)])
    return lambda x: np.asarray(call(x))


# -- the timed actions ---------------------------------------------------------------------------
def every_nth(stride: int, index: int, rows):
    """Counts a partition's rows and keeps every ``stride``-th (executor side)."""
    n, kept = 0, []
    for row in rows:
        if n % stride == 0:
            kept.append(row)
        n += 1
    yield index, n, kept


def rdd_action(results, stride: int) -> dict:
    """Forces an RDD of results; returns its row count and per-partition sample."""
    parts = results.mapPartitionsWithIndex(functools.partial(every_nth, stride)).collect()
    return {"rows": sum(n for _, n, _ in parts),
            "sample": [row for _, _, kept in sorted(parts) for row in kept]}


def df_action(out, stride: int) -> dict:
    """Forces a DataFrame with a prediction column (one JVM aggregate); returns its row count
    and the ``(image, prediction)`` of the rows whose first pixel is below ``1 / stride``."""
    from pyspark.sql import functions as F
    picked = F.when(F.col("image")[0] < 1.0 / stride, F.struct("image", "prediction"))
    row = out.agg(F.count(F.lit(1)).alias("n"), F.collect_list(picked).alias("s")).first()
    return {"rows": row["n"], "sample": [(r["image"], r["prediction"]) for r in row["s"]]}


def zero_predictions(batches):
    """``mapInArrow`` of the DataFrame ceiling: each batch back with a zero prediction column."""
    import numpy as np
    import pyarrow as pa
    width = LAYERS[-1]
    for batch in batches:
        n = batch.num_rows
        values = pa.array(np.zeros(n * width, np.float32))
        offsets = pa.array(np.arange(0, (n + 1) * width, width, dtype=np.int32))
        yield batch.append_column("prediction", pa.ListArray.from_arrays(offsets, values))


def timed_passes(run, passes: int, cpu: CpuByRole | None = None) -> dict:
    """One cold pass, then ``passes`` warm ones: rates, the warm passes' window, each pass's
    result and, with ``cpu``, the CPU seconds by role over the warm passes."""
    runs, before = [], None
    for number in range(passes + 1):
        if number == 1 and cpu is not None:
            before = cpu.snapshot()
        start = time.time()
        result = run()
        runs.append({"start": start, "end": time.time(), **result})
    cold, warm = runs[0], runs[1:]
    return {"passes": runs, "cpu": cpu.delta(before) if before is not None else {},
            "cold": cold["rows"] / (cold["end"] - cold["start"]),
            "warm": sum(p["rows"] for p in warm) / sum(p["end"] - p["start"] for p in warm),
            "window": (warm[0]["start"], warm[-1]["end"])}


def ceilings(rdd, df, passes: int, stride: int) -> dict:
    """feed_bench's iterate-only ceiling, then the inference-shaped one (rows in, 10 floats
    per row back to the JVM, forced by the same action as the tfos pass)."""
    from pyspark.sql.types import StructType
    rates = feed_bench.spark_ceiling(rdd, df, passes)
    width = LAYERS[-1]
    schema = StructType(list(df.schema.fields) + list(StructType.fromDDL(OUTPUT_SCHEMA).fields))
    rates["rdd_back"] = timed_passes(
        lambda: rdd_action(rdd.map(lambda _: [0.0] * width), stride), passes)["warm"]
    rates["df_back"] = timed_passes(
        lambda: df_action(df.mapInArrow(zero_predictions, schema), stride), passes)["warm"]
    return rates


def measure_tfos(spark, rdd, df, args, trace_dir: str) -> dict:
    import tfos
    lines = NodeLines(args.verbose)
    cpu = CpuByRole()
    cluster = tfos.TFCluster.run(
        spark, predict_fun, {"seed": SEED, "batch": args.batch, "feeds": FEEDS,
                             "trace_dir": trace_dir, "threads": args.node_threads,
                             "call": args.node_call},
        num_executors=args.nodes, input_mode=tfos.InputMode.SPARK, log_stream=lines,
        legacy_keras=args.keras == "tf-keras", env={"TF_CPP_MIN_LOG_LEVEL": "2"})
    with cluster:
        lines.wait(READY, args.nodes, timeout=300)
        cpu.map_fun_tids = {t for r in lines.wait(THREADS, args.nodes, timeout=60)
                            for t in r["tids"]}
        results = {
            "rdd": timed_passes(lambda: rdd_action(cluster.inference(rdd, qname="rdd"),
                                                   args.stride), args.passes, cpu),
            "df": timed_passes(lambda: df_action(cluster.inference(
                df, qname="df", output_schema=OUTPUT_SCHEMA), args.stride), args.passes, cpu)}
        cluster.shutdown(timeout=300)
    for key, result in results.items():
        result["nodes"] = node_breakdown(trace_dir, key, result["window"])
    return results


# -- where the time goes -------------------------------------------------------------------------
def node_breakdown(trace_dir: str, qname: str, window) -> list[dict] | None:
    """Per node, over the warm passes: rows, and seconds waiting / predicting / replying."""
    files = sorted(Path(trace_dir).glob(f"{qname}-*.json"))
    if not files:
        return None
    nodes = []
    for path in files:
        batches = [b for b in json.loads(path.read_text()) if window[0] <= b[1] <= window[1]]
        if not batches:
            continue
        nodes.append({"node": path.stem.split("-")[-1], "batches": len(batches),
                      "rows": sum(b[4] for b in batches),
                      "wait": sum(b[1] - b[0] for b in batches),
                      "predict": sum(b[2] - b[1] for b in batches),
                      "reply": sum(b[3] - b[2] for b in batches),
                      "cpu": [sum(b[i] for b in batches) for i in (5, 6, 7)],
                      "span": batches[-1][3] - batches[0][1]})
    return nodes


class CpuByRole:
    """CPU seconds of this driver's process tree by role, between two psutil samples.

    Roles from the command line: the executor JVMs, the driver's JVM (in local-cluster it also
    runs the master and worker daemons), the TF node processes, the Python workers that run
    node tasks, the other Python workers (feed tasks, the action's Python steps), the PySpark
    daemons and this driver. A process that exits between the two samples is not counted.
    """

    MACHINE = "(machine, all processes)"
    NODE_THREADS = ("  map_fun's threads (predict loop)", "  TensorFlow's threads (tf_*)",
                    "  other live threads (feed endpoint, heartbeat, ...)",
                    "  ended threads (feed connections, one per partition)")

    def __init__(self):
        self.map_fun_tids: set[int] = set()

    def snapshot(self) -> dict:
        import psutil
        me = psutil.Process()
        info = {}
        for p in [me] + me.children(recursive=True):
            try:
                times = p.cpu_times()
                info[p.pid] = (p.ppid(), " ".join(p.cmdline()), times.user + times.system)
            except psutil.Error:
                continue
        node_workers = set()
        for ppid, cmd, _ in info.values():
            if "tfos.node.main" in cmd:
                while ppid in info and "pyspark" not in info[ppid][1]:
                    ppid = info[ppid][0]
                node_workers.add(ppid)
        roles = {pid: (_role(pid, info, me.pid, node_workers), secs)
                 for pid, (_, _, secs) in info.items()}
        for pid, (role, secs) in list(roles.items()):
            if role == "TF nodes":
                roles.update(self._node_threads(pid, secs))
        return {**roles, self.MACHINE: (self.MACHINE, _machine_busy())}

    def _node_threads(self, pid: int, process_secs: float) -> dict:
        """A TF node's CPU split by thread; what its live threads do not account for was
        spent by threads that have ended."""
        import psutil
        out, live = {}, 0.0
        try:
            threads = psutil.Process(pid).threads()
        except psutil.Error:
            return {}
        for t in threads:
            try:
                with open(f"/proc/{pid}/task/{t.id}/comm") as f:
                    name = f.read().strip()
            except OSError:
                continue
            kind = (0 if t.id in self.map_fun_tids else 1 if name.startswith("tf_") else 2)
            out[("thread", pid, t.id)] = (self.NODE_THREADS[kind], t.user_time + t.system_time)
            live += t.user_time + t.system_time
        out[("ended", pid)] = (self.NODE_THREADS[3], max(0.0, process_secs - live))
        return out

    def delta(self, before: dict) -> dict[str, float]:
        by_role: dict[str, float] = {}
        after = self.snapshot()
        for key, (role, secs) in after.items():
            by_role[role] = by_role.get(role, 0.0) + secs - before.get(key, (role, 0.0))[1]
        for key, (_, secs) in before.items():
            if key not in after and key[0] == "thread":   # ended: "ended" counts all its time
                ended = self.NODE_THREADS[3]
                by_role[ended] = by_role.get(ended, 0.0) - secs
        return by_role


def _role(pid: int, info: dict, me: int, node_workers: set) -> str:
    ppid, cmd, _ = info[pid]
    program = cmd.split(" ")[0]
    if pid == me:
        return "driver (Python)"
    if "CoarseGrainedExecutorBackend" in cmd:
        return "executor JVMs"
    if program == "java" or program.endswith("/java"):
        return "driver JVM"
    if "tfos.node.main" in cmd:
        return "TF nodes"
    if "pyspark.daemon" in cmd or "pyspark.worker" in cmd:
        if "pyspark.daemon" not in info.get(ppid, (0, "", 0))[1]:
            return "PySpark daemons"
        return ("node tasks' Python workers" if pid in node_workers
                else "Python workers (feed, action)")
    return "other"


def _machine_busy() -> float:
    """CPU seconds the whole machine spent busy since boot (/proc/stat)."""
    with open("/proc/stat") as f:
        fields = [int(v) for v in f.readline().split()[1:]]
    idle = fields[3] + fields[4]
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


# -- single-process model.predict, and the expected values of the samples --------------------
def predict_in_process(args, counts: list[int], samples: dict, tmp: str) -> dict:
    """Runs ``--predict`` in a fresh interpreter (TensorFlow stays out of the driver)."""
    import numpy as np
    inputs = Path(tmp) / "inputs.npz"
    np.savez(inputs, counts=np.asarray(counts), **{k: np.asarray(v, np.float32)
                                                   for k, v in samples.items()})
    out = subprocess.run([sys.executable, __file__, "--predict", str(inputs), "--batch",
                          str(args.batch), "--passes", str(args.passes)], capture_output=True,
                         text=True, timeout=900, env=keras_env(args.keras))
    if out.returncode != 0:
        raise RuntimeError(f"model.predict process: exit code {out.returncode}:\n{out.stderr}")
    result = json.loads(out.stdout.strip().splitlines()[-1])
    expected = np.load(Path(tmp) / "expected.npz")
    return {**result, "expected": {k: expected[k] for k in expected.files}}


def keras_env(keras: str) -> dict:
    """This environment with the Keras the nodes use (tfos sets TF_USE_LEGACY_KERAS=1 in the
    nodes unless TFCluster.run(legacy_keras=False))."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    env.pop("TF_USE_LEGACY_KERAS", None)
    if keras == "tf-keras":
        env["TF_USE_LEGACY_KERAS"] = "1"
    return env


def _predict_main(inputs: str, batch: int, passes: int) -> None:
    import numpy as np
    data = np.load(inputs)
    # The RDD's rows, regenerated exactly as make_rdd's executors made them (contiguous ids).
    x, first = [], 0
    for index, n in enumerate(data["counts"]):
        x.extend(image for image, _ in feed_bench.mnist_rows(1234, index,
                                                             range(first, first + int(n))))
        first += int(n)
    x = np.stack(x)
    model = build_model(SEED)
    model.predict(x[:batch], batch_size=batch, verbose=0)   # warm-up: builds the predict step
    start = time.time()
    for _ in range(passes):
        model.predict(x, batch_size=batch, verbose=0)
    rate = passes * len(x) / (time.time() - start)
    expected = {k: model.predict(data[k], batch_size=batch, verbose=0) if len(data[k]) else
                np.zeros((0, LAYERS[-1]), np.float32) for k in data.files if k != "counts"}
    np.savez(Path(inputs).with_name("expected.npz"), **expected)
    print(json.dumps({"rate": rate, "rows": len(x)}))


def check(tfos_result: dict, expected, records: int, tolerance: float) -> dict:
    """Row counts of every pass, and the largest difference of its sampled predictions."""
    import numpy as np
    worst, counts = 0.0, set()
    for p in tfos_result["passes"]:
        counts.add(p["rows"])
        got = np.asarray([pred for _, pred in p["sample_pairs"]], np.float32)
        if got.shape != expected.shape:
            worst = float("inf")
            continue
        worst = max(worst, float(np.max(np.abs(got - expected), initial=0.0)))
    sampled = len(expected)
    ok = counts == {records} and worst <= tolerance and sampled > 0
    return {"ok": ok, "counts": sorted(counts), "worst": worst, "sampled": sampled}


# -- report ------------------------------------------------------------------------------------
WIDTH = 62


def row(label: str, rate: float, note: str = "") -> None:
    print(f"{label:{WIDTH}s} {rate:12,.0f} {rate * RECORD_BYTES / 1e6:9,.1f}  {note}")


def print_report(args, tfos_rates, ceiling, predict, checks, load) -> None:
    print(f"\nInputMode.SPARK inference: {args.records:,} MNIST-shaped records "
          f"({RECORD_BYTES:,} B each), MLP {'-'.join(map(str, LAYERS))}, batch {args.batch}, "
          f"{args.partitions} partitions, {args.nodes} TF nodes, {args.master}, "
          f"warm = {args.passes} passes after a cold one, Keras: {args.keras}, node call: "
          f"{args.node_call}\n")
    print(f"{'path':{WIDTH}s} {'records/s':>12} {'MB/s':>9}")
    names = {"rdd": "RDD", "df": "DataFrame"}
    for key, label in names.items():
        r, c = tfos_rates[key], checks[key]
        verdict = (f"correct ({c['sampled']} rows sampled, max |diff| {c['worst']:.1e})"
                   if c["ok"] else f"WRONG: rows {c['counts']}, {c['sampled']} sampled, "
                   f"max |diff| {c['worst']:.1e}")
        row(f"tfos cluster.inference, {label}, warm", r["warm"], verdict)
        row(f"tfos cluster.inference, {label}, cold (first pass)", r["cold"])
    row("Spark ceiling, RDD (mapPartitions: iterate rows)", ceiling["rdd"])
    row("Spark ceiling, DataFrame (mapInArrow: iterate)", ceiling["df"])
    row("Spark ceiling, RDD (rows in, 10 floats per row out)", ceiling["rdd_back"])
    row("Spark ceiling, DataFrame (rows back + prediction column)", ceiling["df_back"])
    row(f"model.predict, one process ({args.keras}, batch {args.batch})", predict["rate"])

    print("\nratios: tfos warm rate")
    refs = (("/ Spark ceiling", "{}"), ("/ ceiling, rows back", "{}_back"))
    print(f"{'':26s}" + "".join(f"{name:>24s}" for name, _ in refs) + f"{'/ model.predict':>24s}")
    for key, label in names.items():
        warm = tfos_rates[key]["warm"]
        cells = [f"{warm / ceiling[k.format(key)]:.2f}x" for _, k in refs]
        cells.append(f"{warm / predict['rate']:.2f}x")
        print(f"{'tfos ' + label:26s}" + "".join(f"{c:>24s}" for c in cells))

    for key, label in names.items():
        print_breakdown(label, tfos_rates[key])
    print(f"\nload average (1 min) before / after: {load[0]:.2f} / {load[1]:.2f} on "
          f"{os.cpu_count()} cores")


def print_breakdown(label: str, result: dict) -> None:
    wall = result["window"][1] - result["window"][0]
    print(f"\nwhere the time goes, {label}, warm passes ({wall:.1f} s of wall clock):")
    nodes = result.get("nodes")
    if nodes is None:
        print("  nodes: no trace files (the nodes do not share this host's file system)")
    for n in nodes or []:
        rate = n["rows"] / n["span"] if n["span"] > 0 else 0
        print(f"  node {n['node']}: {n['rows']:,} rows in {n['batches']} batches, "
              f"{rate:,.0f} rows/s first->last batch; seconds in next_batch {n['wait']:.2f} "
              f"(CPU {n['cpu'][0]:.2f}), model call {n['predict']:.2f} "
              f"(CPU {n['cpu'][1]:.2f}), batch_results {n['reply']:.2f} (CPU {n['cpu'][2]:.2f})")
    if nodes:
        print("  (CPU: of the map_fun's thread only; the TF nodes' row below adds TensorFlow's "
              "pools and the feed endpoint's threads)")
    cpu = dict(result["cpu"])
    machine = cpu.pop(CpuByRole.MACHINE, None)
    threads = {name: cpu.pop(name, 0.0) for name in CpuByRole.NODE_THREADS}
    ours = sum(cpu.values())
    print("  CPU seconds by process role (share of the machine's "
          f"{os.cpu_count()} x {wall:.1f} s):")
    for role, secs in sorted(cpu.items(), key=lambda kv: -kv[1]):
        print(f"    {role:52s} {secs:7.2f} s  {secs / (wall * os.cpu_count()):6.1%}")
        if role == "TF nodes":
            for name, secs in threads.items():
                print(f"    {name:52s} {secs:7.2f} s")
    if machine is not None:
        print(f"    {'all of this application':52s} {ours:7.2f} s; the machine (every process, "
              f"other work included): {machine:.2f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=60_000)
    parser.add_argument("--passes", type=int, default=3, help="warm passes after the cold one")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--nodes", type=int, default=2)
    parser.add_argument("--master", default="local-cluster[2,2,2048]")
    parser.add_argument("--stride", type=int, default=97,
                        help="every stride-th row (about) is checked against model.predict")
    parser.add_argument("--tolerance", type=float, default=1e-5)
    parser.add_argument("--node_threads", type=int, default=0,
                        help="TensorFlow intra/inter-op threads in each node (0: its default, "
                        "one per core)")
    parser.add_argument("--keras", choices=("tf-keras", "keras3"), default="tf-keras",
                        help="the nodes' and model.predict's Keras (tf-keras: tfos's default, "
                        "legacy_keras=True)")
    parser.add_argument("--node_call", choices=("predict_on_batch", "function"),
                        default="predict_on_batch",
                        help="how a node calls the model on a batch (function: tf.function)")
    parser.add_argument("--verbose", action="store_true", help="echo the nodes' output")
    parser.add_argument("--predict", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.predict:
        _predict_main(args.predict, args.batch, args.passes)
        return

    load_before = os.getloadavg()[0]
    from pyspark import cloudpickle

    # feed_bench's data makers run on the executors, which cannot import it: ship it by value.
    cloudpickle.register_pickle_by_value(feed_bench)

    def step(what: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {what}", file=sys.stderr, flush=True)

    step(f"Spark session on {args.master}")
    spark = feed_bench.spark_session(args.master, "tfos-inference-bench")
    with tempfile.TemporaryDirectory(prefix="inference-bench-") as tmp:
        try:
            step("caching the RDD and the DataFrame")
            rdd = make_rdd(spark.sparkContext, args.records, args.partitions)
            df = make_dataframe(spark, args.records, args.partitions)
            parts = rdd.mapPartitionsWithIndex(
                functools.partial(every_nth, args.stride)).collect()
            counts = [n for _, n, _ in sorted(parts)]
            rdd_sample = [image for _, _, kept in sorted(parts) for image, _ in kept]
            step("Spark ceiling")
            ceiling = ceilings(rdd, df, args.passes, args.stride)
            step("tfos inference: RDD, then DataFrame")
            tfos_rates = measure_tfos(spark, rdd, df, args, tmp)
        finally:
            spark.stop()
        for p in tfos_rates["rdd"]["passes"]:
            p["sample_pairs"] = [(None, pred) for pred in p["sample"]]
        df_sample = tfos_rates["df"]["passes"][0]["sample"]
        for p in tfos_rates["df"]["passes"]:
            # The rows whose first pixel picked them: the same in every pass (cached data).
            p["sample_pairs"] = sorted(p["sample"], key=lambda pair: list(pair[0]))
        df_sample = [image for image, _ in sorted(df_sample, key=lambda pair: list(pair[0]))]
        step("model.predict in one process")
        predict = predict_in_process(args, counts, {"rdd": rdd_sample, "df": df_sample}, tmp)
    checks = {key: check(tfos_rates[key], predict["expected"][key], args.records,
                         args.tolerance) for key in ("rdd", "df")}
    print_report(args, tfos_rates, ceiling, predict, checks, (load_before, os.getloadavg()[0]))


if __name__ == "__main__":
    main()
