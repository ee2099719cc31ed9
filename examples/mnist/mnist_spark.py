"""Trains the MNIST example on a TensorFlow cluster that tfos starts on Spark executors (driver).

The training is ``mnist_tf.main_fun``, unchanged: tfos runs it in one process per node with
``TF_CONFIG`` set, so it picks its strategy itself. ``--num_ps 0`` (default) and
``--cluster_size 3`` give chief:0, worker:0, worker:1 under MultiWorkerMirroredStrategy;
``--num_ps 1`` gives ps:0, chief:0 (the coordinator), worker:0 under ParameterServerStrategy.
Every node's output reaches this driver's stderr prefixed ``[role:index@host]``.

With ``--input_mode spark`` the nodes read no training files: this driver loads the training
CSV shards into a DataFrame (``image`` array<float>, ``label`` long) and ``cluster.train`` feeds
it to the chief and workers, the same number of rows to each in every epoch.

Usage (from the repository root, after ``mnist_data_setup.py --output data/mnist``)::

    export SPARK_LOCAL_IP=127.0.0.1 PYSPARK_PYTHON=$PWD/.venv/bin/python
    python examples/mnist/mnist_spark.py --cluster_size 3 --data_dir data/mnist
    python examples/mnist/mnist_spark.py --cluster_size 3 --num_ps 1 --data_dir data/mnist
    python examples/mnist/mnist_spark.py --cluster_size 3 --input_mode spark --data_dir data/mnist
"""
import os
import time

from mnist_tf import add_arguments, main_fun

import tfos

NUM_PIXELS = 784


def absolute(path):
    """A local path made absolute: the nodes run in their executors' working directories."""
    return path if not path or "://" in path else os.path.abspath(path)


def spark_session(args, app_name):
    """tfos's session. In InputMode.SPARK a feed task runs beside every node, so the embedded
    local-cluster (no --master, not under spark-submit) gets two task slots per executor."""
    if args.input_mode == "spark" and args.master is None \
            and "PYSPARK_GATEWAY_PORT" not in os.environ:  # set by spark-submit and pyspark
        args.master = "local-cluster[%d,2,2048]" % args.cluster_size
    return tfos.cli.spark_session(args, app_name=app_name)


def mnist_dataframe(spark, data_dir, split):
    """The CSV shards of one split as a DataFrame of ``image`` (784 floats) and ``label``.

    Each line is split into one array rather than parsed as 785 CSV columns: the same values,
    and a plan Spark compiles and runs several times faster.
    """
    from pyspark.sql import functions as F
    values = F.split(F.col("value"), ",")
    lines = spark.read.option("pathGlobFilter", "*.csv").text(os.path.join(data_dir, split))
    return lines.select(F.slice(values, 2, NUM_PIXELS).cast("array<float>").alias("image"),
                        values[0].cast("long").alias("label"))


if __name__ == "__main__":
    parser = add_arguments(tfos.cli.argument_parser("MNIST on Spark with tfos"))
    args = parser.parse_args()
    if args.input_mode == "spark" and args.num_ps:
        parser.error("--input_mode spark feeds the chief and workers of "
                     "MultiWorkerMirroredStrategy: drop --num_ps")
    args.data_dir, args.model_dir, args.log_dir = (
        absolute(path) for path in (args.data_dir, args.model_dir, args.log_dir))
    spark = spark_session(args, app_name="mnist")
    # tfos ships main_fun's own module; the model module it imports travels like any --py-files.
    here = os.path.dirname(os.path.abspath(__file__))
    spark.sparkContext.addPyFile(os.path.join(here, "mnist_model.py"))
    start = time.time()
    cluster = tfos.TFCluster.run(spark, main_fun, args, num_executors=args.cluster_size,
                                 num_ps=args.num_ps, tensorboard=args.tensorboard,
                                 input_mode=tfos.cli.input_mode(args), log_dir=args.log_dir,
                                 master_node="chief", rdma=args.rdma)
    if args.tensorboard:
        print("TensorBoard: %s" % cluster.tensorboard_url(), flush=True)
    if args.input_mode == "spark":
        # Cached: tfos counts the rows of every partition once, then reads them every epoch.
        train_df = mnist_dataframe(spark, args.data_dir, "train").cache()
        cluster.train(train_df, num_epochs=args.epochs)
    cluster.shutdown()
    print("mnist: TF cluster ran %.1f s, from TFCluster.run to shutdown" % (time.time() - start))
    spark.stop()
