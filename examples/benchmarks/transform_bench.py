"""``TFModel.transform`` throughput beside a plain single-process ``model.predict``, in one run.

The same SavedModel (an MNIST-shaped MLP, 784 -> 256 -> 128 -> 10, or ``--model cnn``: the
mnist example's CNN) scores the same ``--rows`` MNIST-shaped rows (784 float32) three ways:

1. ``model.predict(x, batch_size=--batch)`` in this process, on a numpy array already in
   memory (the Keras model that was exported).
2. The SavedModel's ``serving_default`` signature called in this process on the same batches:
   what ``TFModel`` runs, without Spark.
3. Spark's own ceiling: the same DataFrame through ``mapInArrow`` with a function that hands
   every batch back unchanged, forced with the ``noop`` writer: what any Python transform that
   keeps the input columns pays to Spark before it computes anything.
4. ``TFModel.transform(df)`` over a cached DataFrame of the rows on ``--master`` (default
   ``local[2]``), forced with the ``noop`` writer: each Spark Python worker loads the SavedModel
   once; the first pass (cold: TensorFlow's import and the load included) and the best of
   ``--rounds`` warm passes are timed.

Rates are rows per second; "per core" divides each by the cores it ran on (this process:
TensorFlow's threads over every core of the machine; transform: Spark's task slots, which
share the same cores). A sample of transformed rows is compared with ``predict``'s output.

Usage:
    python examples/benchmarks/transform_bench.py [--rows 60000] [--batch 1000]
        [--master local[2]] [--partitions 4] [--rounds 2] [--model mlp|cnn]
Nothing is asserted: the script prints numbers only.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "mnist"))


def build_model(kind: str):
    import tensorflow as tf
    if kind == "cnn":
        import mnist_model
        return mnist_model.build_model()
    tf.keras.utils.set_random_seed(7)
    return tf.keras.Sequential([
        tf.keras.Input((784,), name="image"),
        tf.keras.layers.Dense(256, activation="relu"),
        tf.keras.layers.Dense(128, activation="relu"),
        tf.keras.layers.Dense(10)])


def timed(fn):
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=60_000)
    parser.add_argument("--batch", type=int, default=1000, help="rows per model call")
    parser.add_argument("--master", default="local[2]")
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=2, help="warm transform passes")
    parser.add_argument("--model", choices=("mlp", "cnn"), default="mlp")
    args = parser.parse_args()

    import numpy as np
    import tensorflow as tf
    from pyspark.sql import SparkSession
    from pyspark.sql import functions as F

    from tfos import compat
    from tfos.pipeline import TFModel

    model = build_model(args.model)
    export_dir = os.path.join(tempfile.mkdtemp(prefix="tfos-transform-bench-"), "model")
    compat.export_saved_model(model, export_dir, is_chief=True)

    spark = (SparkSession.builder.master(args.master).appName("tfos-transform-bench")
             .config("spark.driver.memory", "4g").config("spark.ui.enabled", "false")
             .getOrCreate())
    spark.sparkContext.setLogLevel("ERROR")
    df = spark.range(0, args.rows, 1, args.partitions).select(
        "id", F.transform(F.sequence(F.lit(1), F.lit(784)),
                          lambda i: F.rand(11) * i / 784).cast("array<float>").alias("image")
    ).cache()
    assert df.count() == args.rows
    table = df.orderBy("id").toArrow()
    x = np.asarray(table.column("image").combine_chunks().flatten(), np.float32).reshape(-1, 784)
    cores = os.cpu_count()
    slots = spark.sparkContext.defaultParallelism

    model.predict(x[:args.batch], batch_size=args.batch, verbose=0)   # warm-up
    predict_s, expected = timed(lambda: model.predict(x, batch_size=args.batch, verbose=0))
    signature = tf.saved_model.load(export_dir).signatures["serving_default"]

    def call_signature():
        return [signature(image=tf.constant(x[i:i + args.batch]))
                for i in range(0, len(x), args.batch)]
    call_signature()
    signature_s, _ = timed(call_signature)

    def unchanged(batches):
        yield from batches
    ceiling = df.mapInArrow(unchanged, df.schema)

    def run_ceiling():
        ceiling.write.format("noop").mode("overwrite").save()
    run_ceiling()
    ceiling_s = min(timed(run_ceiling)[0] for _ in range(args.rounds))

    scorer = TFModel().setExportDir(export_dir).setInputMapping({"image": "image"}) \
        .setOutputMapping({"output_0": "logits"}).setBatchSize(args.batch)
    scored = scorer.transform(df)

    def run_transform():
        scored.write.format("noop").mode("overwrite").save()
    cold_s, _ = timed(run_transform)
    warm_s = min(timed(run_transform)[0] for _ in range(args.rounds))
    sample = scored.where(F.col("id") < 200).orderBy("id").select("logits").collect()
    drift = float(np.max(np.abs(np.array([r.logits for r in sample]) - expected[:200])))

    rows = args.rows
    predict_rate = rows / predict_s
    print(f"\n{rows:,} rows of 784 float32, batch {args.batch}, model {args.model}, "
          f"{cores} cores, Spark {args.master} ({slots} task slots, {args.partitions} "
          "partitions)\n")
    print(f"{'path':<44} {'seconds':>8} {'rows/s':>10} {'per core':>9} {'vs predict':>11}")
    for name, seconds, used in (
            ("model.predict, one process", predict_s, cores),
            ("SavedModel signature, one process", signature_s, cores),
            ("Spark's ceiling: mapInArrow, rows unchanged", ceiling_s, slots),
            ("TFModel.transform, warm (best of rounds)", warm_s, slots),
            ("TFModel.transform, cold (first pass)", cold_s, slots)):
        rate = rows / seconds
        per_core_ratio = (rate / used) / (predict_rate / cores)
        print(f"{name:<44} {seconds:>8.2f} {rate:>10,.0f} {rate / used:>9,.0f} "
              f"{rate / predict_rate:>10.2f}x  (per core {per_core_ratio:.2f}x)")
    print(f"\nlargest difference between transform's and predict's logits (200 rows): "
          f"{drift:.2e}")
    spark.stop()


if __name__ == "__main__":
    main()
