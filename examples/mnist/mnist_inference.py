"""Predicts the digit of every test image with a trained model, on a tfos cluster (driver).

The test CSV shards become a DataFrame (``image`` array<float>, ``label`` long); a cluster in
InputMode.SPARK loads the model a training run saved (``mnist_spark.py --model_dir``) on every
chief and worker, and ``cluster.inference`` feeds the rows to them, partition by partition, and
returns them in order with a ``prediction`` column. The labels and predictions (not the 784
pixels) are written to ``--output``; the accuracy is then computed from that output in Spark.

Usage (from the repository root)::

    export SPARK_LOCAL_IP=127.0.0.1 PYSPARK_PYTHON=$PWD/.venv/bin/python
    python examples/mnist/mnist_spark.py --input_mode spark --data_dir data/mnist \\
        --model_dir runs/mnist-model
    python examples/mnist/mnist_inference.py --data_dir data/mnist --model_dir runs/mnist-model \\
        --output runs/mnist-predictions
"""
import os
import time

from mnist_spark import absolute, mnist_dataframe, spark_session

import tfos


def main_fun(args, ctx):
    """Runs on every chief and worker: predicts the rows fed to it until the feed ends."""
    os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")
    import numpy as np
    import tensorflow as tf

    model = tf.keras.models.load_model(args.model_dir)
    # input_mapping: each batch as {"image": array[rows, 784]} rather than a list of rows.
    feed = ctx.get_data_feed(train_mode=False, input_mapping={"image": "image"})
    rows = 0
    while not feed.should_stop():
        batch = feed.next_batch(args.batch_size)
        if batch:
            logits = model.predict_on_batch(batch["image"])
            feed.batch_results(np.argmax(logits, axis=1))
            rows += len(logits)
    print("mnist: predicted %d rows" % rows)


def accuracy(spark, path, fmt):
    """The share of rows of the written predictions whose prediction is their label."""
    from pyspark.sql import functions as F
    df = spark.read.parquet(path) if fmt == "parquet" else \
        spark.read.csv(path, header=True, schema="label long, prediction long")
    row = df.agg(F.avg((F.col("label") == F.col("prediction")).cast("double")).alias("accuracy"),
                 F.count("*").alias("rows")).first()
    return row["accuracy"], row["rows"]


if __name__ == "__main__":
    parser = tfos.cli.argument_parser("MNIST inference on Spark with tfos")
    parser.set_defaults(input_mode="spark")
    parser.add_argument("--data_dir", default="data/mnist",
                        help="output of mnist_data_setup.py; its test split is scored "
                        "(default: %(default)s)")
    parser.add_argument("--model_dir", required=True,
                        help="the model a training run saved (mnist_spark.py --model_dir)")
    parser.add_argument("--output", required=True,
                        help="where to write label and prediction of every test row")
    parser.add_argument("--output_format", choices=["csv", "parquet"], default="csv")
    parser.add_argument("--batch_size", type=int, default=256, help="rows per prediction call")
    args = parser.parse_args()
    if args.input_mode != "spark" or args.num_ps:
        parser.error("inference is fed by Spark to chief and workers: drop --input_mode "
                     "tensorflow and --num_ps")
    args.data_dir, args.model_dir, args.output = (
        absolute(path) for path in (args.data_dir, args.model_dir, args.output))
    if "://" not in args.model_dir and not os.path.isdir(args.model_dir):
        parser.error("no model in %s: train one first, e.g. mnist_spark.py --input_mode spark "
                     "--model_dir %s" % (args.model_dir, args.model_dir))

    spark = spark_session(args, app_name="mnist-inference")
    start = time.time()
    cluster = tfos.TFCluster.run(spark, main_fun, args, num_executors=args.cluster_size,
                                 input_mode=tfos.InputMode.SPARK, master_node="chief",
                                 log_dir=args.log_dir)
    started = time.time()
    test_df = mnist_dataframe(spark, args.data_dir, "test")
    predictions = cluster.inference(test_df, output_schema="prediction long")
    writer = predictions.select("label", "prediction").write.mode("overwrite")
    if args.output_format == "parquet":
        writer.parquet(args.output)
    else:
        writer.csv(args.output, header=True)
    scored = time.time()
    rate, rows = accuracy(spark, args.output, args.output_format)
    print("inference accuracy: %.4f (%d rows, written to %s)" % (rate, rows, args.output))
    cluster.shutdown()
    print("mnist: cluster start %.1f s, inference and write %.1f s, shutdown %.1f s" % (
        started - start, scored - started, time.time() - scored))
    spark.stop()
