"""Training from Spark Structured Streaming with tfos: one ``cluster.train`` per micro-batch.

``train_tf.py`` on a tfos cluster, fed by a stream. Numbered events land as files in a
directory, ``--rows_per_batch`` to a file; a streaming query reads them one file per
micro-batch, ``mapInPandas`` turns the numbers into the same features and targets as in
``train_tf.py``, and ``foreachBatch`` hands each micro-batch to ``cluster.train(batch_df,
num_epochs=1)``: every node gets an equal share of it and fits on it, under
MultiWorkerMirroredStrategy. With ``Trigger.AvailableNow`` the query stops by itself once the
``--micro_batches`` files are processed; then the driver shuts the cluster down.
``diff train_tf.py train_spark.py`` shows what moving it over takes.

(Spark Streaming's older DStream API works too, as in TensorFlowOnSpark:
``cluster.train(dstream)``, then ``cluster.shutdown(ssc)``.)

Usage (from the repository root)::

    export SPARK_LOCAL_IP=127.0.0.1 PYSPARK_PYTHON=$PWD/.venv/bin/python
    python examples/gallery/streaming/train_spark.py --cluster_size 2 --master "local[4]" \\
        --micro_batches 5 --rows_per_batch 2000
"""
import os
import tempfile
import time

import numpy as np
import pandas as pd

import tfos

FREQUENCIES = np.array([0.7, 1.3, 2.9, 4.1])
WEIGHTS = np.array([2.0, -3.0, 1.0, 0.5])


def make_examples(values):
    """Features (float32, 4) and target of the examples numbered ``values``."""
    x = np.sin(np.outer(np.asarray(values, dtype="float64"), FREQUENCIES))
    y = x @ WEIGHTS + 1.5 * x[:, 0] * x[:, 1]
    return x.astype("float32"), y.astype("float32")


def build_model(tf):
    model = tf.keras.Sequential([
        tf.keras.Input((len(FREQUENCIES),)),
        tf.keras.layers.Dense(32, activation="relu"),
        tf.keras.layers.Dense(1),
    ])
    model.compile(optimizer=tf.keras.optimizers.Adam(0.01), loss="mse")
    return model


def main_fun(args, ctx):
    # Runs on every node, with TF_CONFIG and TF_USE_LEGACY_KERAS=1 set by tfos.
    import tensorflow as tf
    tf.keras.utils.set_random_seed(args.seed)

    # Every node is a worker of one synchronous strategy (tfos wrote TF_CONFIG).
    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    with strategy.scope():
        model = build_model(tf)

    # Every cluster.train(batch_df, num_epochs=1) on the driver is one epoch of this feed:
    # each pass of the dataset reads this node's share of the next micro-batch.
    global_batch = args.batch_size * strategy.num_replicas_in_sync
    train = ctx.get_data_feed().dataset(global_batch, columns=["x", "y"])
    start = time.time()
    for micro_batch in range(args.micro_batches):
        loss = model.fit(train, epochs=1, verbose=0).history["loss"][0]
        print(f"streaming: micro-batch {micro_batch}: loss {loss:.4f}")
    print(f"streaming: trained {args.micro_batches} micro-batches in {time.time() - start:.1f} s")


def example_rows(frames):
    """mapInPandas: the stream's numbered rows in, their features and target out."""
    for frame in frames:
        x, y = make_examples(frame["value"])
        yield pd.DataFrame({"x": list(x), "y": y})


def train_on_stream(spark, cluster, args, landing_dir):
    """Feeds the cluster one micro-batch at a time; returns when the stream is processed."""
    # What arrives: numbered events, one file of --rows_per_batch per micro-batch (here all
    # written up front; in production, files landing from elsewhere, or Kafka).
    events = spark.range(args.micro_batches * args.rows_per_batch,
                         numPartitions=args.micro_batches).withColumnRenamed("id", "value")
    events.write.parquet(os.path.join(landing_dir, "events"))

    stream = spark.readStream.schema("value long").option("maxFilesPerTrigger", 1) \
        .parquet(os.path.join(landing_dir, "events"))
    examples = stream.mapInPandas(example_rows, "x array<float>, y float")

    def train_micro_batch(batch_df, batch_id):      # runs on the driver, once per micro-batch
        batch_df.persist()                           # tfos reads it twice: count, then feed
        rows = batch_df.count()
        if rows >= args.cluster_size:                # train() needs a row for every worker
            cluster.train(batch_df, num_epochs=1)
            print(f"streaming: fed micro-batch {batch_id} ({rows} rows)", flush=True)
        batch_df.unpersist()

    # availableNow: every file there now, one per micro-batch, then the query stops by itself.
    # For an endless stream leave the trigger out and call query.stop() when it should end.
    query = examples.writeStream.foreachBatch(train_micro_batch).trigger(availableNow=True) \
        .option("checkpointLocation", os.path.join(landing_dir, "checkpoint")).start()
    query.awaitTermination()


if __name__ == "__main__":
    parser = tfos.cli.argument_parser("Training from Spark Structured Streaming with tfos")
    parser.add_argument("--micro_batches", type=int, default=5)
    parser.add_argument("--rows_per_batch", type=int, default=2000)
    parser.add_argument("--batch_size", type=int, default=32, help="per worker")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--landing_dir", help="where each run makes the directory its stream's "
                        "files land in (default: the system's temporary directory; on a "
                        "cluster, one that every executor reads)")
    # chief:0 and worker:0. Spark feeds them: without --master, tfos's embedded local-cluster
    # then gives every executor a second task slot, for the feed task beside its node.
    parser.set_defaults(cluster_size=2, input_mode="spark")
    args = parser.parse_args()
    spark = tfos.cli.spark_session(args, app_name="streaming")

    cluster = tfos.TFCluster.run(spark, main_fun, args, num_executors=args.cluster_size,
                                 input_mode=tfos.InputMode.SPARK, master_node="chief")
    with tempfile.TemporaryDirectory(prefix="streaming-", dir=args.landing_dir) as landing_dir:
        train_on_stream(spark, cluster, args, landing_dir)
    cluster.shutdown()
    spark.stop()
