"""Seconds from launch to the first training step on every node: tfos vs. bare processes.

For a 3-node MultiWorkerMirroredStrategy cluster (chief + 2 workers) this measures, in one run
and alternating the two launchers round by round on the same machine:

- tfos: from ``TFCluster.run()`` on an already running Spark application (local-cluster) to
  the first ``train_batch_begin`` of every node;
- bare: from starting the same three TF processes by hand (``TF_CONFIG`` set, no Spark) to
  the same event.

Usage: python examples/benchmarks/startup_bench.py [--rounds 3] [--cluster_size 3]
Target: tfos within 3 s of the bare figure.
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time


def main_fun(args, ctx):
    """Builds a small model under MWMS and records when the first training step begins."""
    import numpy as np
    import tensorflow as tf

    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    with strategy.scope():
        model = tf.keras.Sequential([tf.keras.layers.Input((8,)), tf.keras.layers.Dense(1)])
        model.compile(optimizer="sgd", loss="mse")
    data = tf.data.Dataset.from_tensor_slices(
        (np.zeros((64, 8), "float32"), np.zeros((64, 1), "float32"))).repeat().batch(16)
    task = json.loads(os.environ["TF_CONFIG"])["task"]
    out = os.path.join(args["out"], f"{task['type']}-{task['index']}.json")

    class FirstStep(tf.keras.callbacks.Callback):
        def on_train_batch_begin(self, batch, logs=None):
            if batch == 0 and not os.path.exists(out):
                with open(out, "w") as f:
                    json.dump({"first_step": time.time()}, f)

    model.fit(data, epochs=1, steps_per_epoch=2, verbose=0, callbacks=[FirstStep()])


def _first_steps(out_dir: str, start: float) -> dict[str, float]:
    steps = {}
    for name in sorted(os.listdir(out_dir)):
        with open(os.path.join(out_dir, name)) as f:
            steps[name[:-5]] = json.load(f)["first_step"] - start
    return steps


def run_tfos(spark, size: int) -> dict[str, float]:
    import tfos
    with tempfile.TemporaryDirectory() as out:
        start = time.time()
        cluster = tfos.TFCluster.run(spark, main_fun, {"out": out}, num_executors=size,
                                     master_node="chief", log_stream=None)
        cluster.shutdown(timeout=300)
        return _first_steps(out, start)


def run_bare(size: int) -> dict[str, float]:
    ports = free_ports(size)
    spec = {"chief": [f"127.0.0.1:{ports[0]}"],
            "worker": [f"127.0.0.1:{p}" for p in ports[1:]]}
    tasks = [("chief", 0)] + [("worker", i) for i in range(size - 1)]
    with tempfile.TemporaryDirectory() as out:
        start = time.time()
        procs = []
        for job, index in tasks:
            env = dict(os.environ, TF_USE_LEGACY_KERAS="1", TF_CONFIG=json.dumps(
                {"cluster": spec, "task": {"type": job, "index": index}}))
            procs.append(subprocess.Popen([sys.executable, __file__, "--bare_node", out], env=env,
                                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        codes = [p.wait(timeout=300) for p in procs]
        if any(codes):
            raise RuntimeError(f"bare TF processes failed with exit codes {codes}")
        return _first_steps(out, start)


def free_ports(n: int) -> list[int]:
    """``n`` TCP ports free on 127.0.0.1 now (for TF_CONFIG; also used by collective_bench)."""
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--cluster_size", type=int, default=3)
    parser.add_argument("--bare_node", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.bare_node:
        main_fun({"out": args.bare_node}, None)
        return

    import tfos
    spark = tfos.cli.spark_session(argparse.Namespace(cluster_size=args.cluster_size, master=None),
                                   app_name="startup-bench")
    spark.sparkContext.setLogLevel("ERROR")
    run_tfos(spark, args.cluster_size)  # warm-up: executors' first Python workers, page cache
    results = {"tfos": [], "bare": []}
    for round_no in range(args.rounds):
        for name, launch in (("bare", lambda: run_bare(args.cluster_size)),
                             ("tfos", lambda: run_tfos(spark, args.cluster_size))):
            steps = launch()
            results[name].append(steps)
            print(f"round {round_no + 1} {name:4s}: " +
                  "  ".join(f"{node} {secs:5.2f}s" for node, secs in steps.items()), flush=True)
    spark.stop()

    nodes = sorted(results["tfos"][0])
    print("\nseconds from launch to first training step (median of "
          f"{args.rounds} rounds, {args.cluster_size}-node MWMS cluster)")
    print(f"{'node':10s} {'tfos':>7s} {'bare':>7s} {'tfos-bare':>10s}")
    worst = 0.0
    for node in nodes:
        tfos_s = statistics.median(r[node] for r in results["tfos"])
        bare_s = statistics.median(r[node] for r in results["bare"])
        worst = max(worst, tfos_s - bare_s)
        print(f"{node:10s} {tfos_s:7.2f} {bare_s:7.2f} {tfos_s - bare_s:+10.2f}")
    verdict = "within" if worst <= 3.0 else "NOT within"
    print(f"\nworst overhead {worst:+.2f}s: {verdict} the 3 s target")


if __name__ == "__main__":
    main()
