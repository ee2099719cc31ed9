"""Batch inference over files with independent TF instances: ``tfos.TFParallel`` (driver).

TensorFlowOnSpark's ``TFParallel`` pattern: each of ``--cluster_size`` instances loads the
model a training run saved (``mnist_spark.py --model_dir``), scores its own share of the test
TFRecord shards (shard i of n: every n-th file), and writes its predictions as a CSV shard; the
driver then reads them all back with Spark and prints the accuracy. No TF cluster, no feeding:
every instance reads its files itself.

Usage (from the repository root)::

    export SPARK_LOCAL_IP=127.0.0.1 PYSPARK_PYTHON=$PWD/.venv/bin/python
    python examples/mnist/mnist_spark.py --data_dir data/mnist --model_dir runs/mnist-model
    python examples/mnist/mnist_parallel.py --data_dir data/mnist --model_dir runs/mnist-model \\
        --output runs/mnist-parallel
"""
import os

from mnist_inference import accuracy
from mnist_spark import absolute, spark_session

import tfos


def main_fun(args, ctx):
    """One instance: scores every ctx.num_workers-th test shard, starting at its own."""
    os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")
    import mnist_model
    import numpy as np
    import tensorflow as tf

    files = mnist_model.list_files(args.data_dir, "test", "tfrecord")[ctx.worker_num::
                                                                       ctx.num_workers]
    model = tf.keras.models.load_model(args.model_dir)
    os.makedirs(args.output, exist_ok=True)
    rows = 0
    with open(os.path.join(args.output, f"part-{ctx.worker_num:05d}.csv"), "w") as out:
        out.write("label,prediction\n")
        for images, labels in mnist_model.make_dataset(files, args.batch_size):
            predictions = np.argmax(model.predict_on_batch(images), axis=1)
            out.writelines(f"{label},{prediction}\n"
                           for label, prediction in zip(labels.numpy(), predictions))
            rows += len(predictions)
    print("mnist: instance %d scored %d rows of %d files" % (ctx.worker_num, rows, len(files)))


if __name__ == "__main__":
    parser = tfos.cli.argument_parser("MNIST batch inference with independent TF instances")
    parser.add_argument("--data_dir", default="data/mnist",
                        help="output of mnist_data_setup.py; its test split is scored")
    parser.add_argument("--model_dir", required=True, help="a model saved by mnist_spark.py")
    parser.add_argument("--output", required=True, help="directory for the prediction CSVs")
    parser.add_argument("--batch_size", type=int, default=256)
    args = parser.parse_args()
    for name in ("data_dir", "model_dir", "output"):
        setattr(args, name, absolute(getattr(args, name)))
    spark = spark_session(args, app_name="mnist-parallel")
    here = os.path.dirname(os.path.abspath(__file__))
    spark.sparkContext.addPyFile(os.path.join(here, "mnist_model.py"))
    tfos.TFParallel.run(spark, main_fun, args, args.cluster_size)
    share, rows = accuracy(spark, args.output, "csv")
    print("mnist: parallel inference accuracy: %.4f over %d rows" % (share, rows))
    spark.stop()
