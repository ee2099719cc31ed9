"""TensorFlowOnSpark 2.2.5, InputMode.SPARK: feed throughput of MNIST-shaped records.

The baseline half of ``feed_bench.py``, which runs this script in a virtualenv of its own
(tensorflowonspark==2.2.5, pyspark==4.3.0, tensorflow-cpu==2.21.0: tfos is not installed there)
and reads the one JSON line it prints last. It can also be run by hand from such a venv:

    python examples/benchmarks/tfos_baseline_feed.py --records 60000 --epochs 1

A cached RDD of ``(np.float32[784], label)`` rows is fed with ``cluster.train(rdd, num_epochs)``
to a 2-node TFoS cluster on ``local-cluster[2,2,2048]`` with ``spark.python.worker.reuse=true``
(TFoS finds its node's queue manager through the reused Python worker). Each node reads
``DataFeed.next_batch(batch)`` until the feed ends and writes, into a scratch directory, the
rows it took and the wall-clock times of its first and last batch.
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import sys
import tempfile
import time


def mnist_rows(seed: int, index: int, ids):
    """``(np.float32[784], label)`` rows for the ids of one partition, generated on the executor."""
    import numpy as np
    rng = np.random.default_rng(seed + index)
    for i in ids:
        yield rng.random(784, dtype=np.float32), int(i % 10)


def consume(args, ctx):
    """TFoS map_fun: reads the feed until it ends; records the rows and the first/last batch."""
    from tensorflowonspark import TFNode
    feed = TFNode.DataFeed(ctx.mgr, train_mode=True)
    rows, first, last = 0, None, None
    while not feed.should_stop():
        batch = feed.next_batch(args["batch"])
        if batch:
            last = time.time()
            first = first or last
            rows += len(batch)
    with open(os.path.join(args["out"], f"node-{ctx.worker_num}.json"), "w") as f:
        json.dump({"node": f"{ctx.job_name}:{ctx.task_index}", "rows": rows,
                   "first": first, "last": last}, f)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=60_000)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--nodes", type=int, default=2)
    parser.add_argument("--master", default="local-cluster[2,2,2048]")
    args = parser.parse_args()

    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    import tensorflowonspark
    from pyspark.sql import SparkSession
    from tensorflowonspark import TFCluster

    spark = (SparkSession.builder.master(args.master).appName("tfos-baseline-feed")
             .config("spark.python.worker.reuse", "true")
             .config("spark.ui.enabled", "false")
             .config("spark.ui.showConsoleProgress", "false")
             .config("spark.dynamicAllocation.enabled", "false")
             .getOrCreate())
    sc = spark.sparkContext
    sc.setLogLevel("ERROR")
    seed = 1234
    rdd = sc.range(args.records, numSlices=args.partitions).mapPartitionsWithIndex(
        lambda index, ids: mnist_rows(seed, index, ids)).cache()
    assert rdd.count() == args.records
    with tempfile.TemporaryDirectory(prefix="tfos-baseline-") as out:
        cluster = TFCluster.run(sc, consume, {"batch": args.batch, "out": out}, args.nodes, 0,
                                input_mode=TFCluster.InputMode.SPARK)
        start = time.time()
        cluster.train(rdd, num_epochs=args.epochs)
        train_secs = time.time() - start
        cluster.shutdown(timeout=600)
        nodes = []
        for path in sorted(glob.glob(os.path.join(out, "node-*.json"))):
            with open(path) as f:
                nodes.append(json.load(f))
    spark.stop()

    fed = args.records * args.epochs
    rows = sum(n["rows"] for n in nodes)
    firsts = [n["first"] for n in nodes if n["first"]]
    lasts = [n["last"] for n in nodes if n["last"]]
    span = (max(lasts) - min(firsts)) if firsts else None
    print(json.dumps({
        "tensorflowonspark": tensorflowonspark.__version__, "master": args.master,
        "records": args.records, "epochs": args.epochs, "records_fed": fed,
        "rows_received": rows, "train_secs": train_secs, "driver_rate": fed / train_secs,
        "node_rate": rows / span if span else None, "nodes": nodes}), flush=True)


if __name__ == "__main__":
    main()
