"""Trains the MNIST example on a TensorFlow cluster that tfos starts on Spark executors (driver).

The training is ``mnist_tf.main_fun``, unchanged: tfos runs it in one process per node with
``TF_CONFIG`` set, so it picks its strategy itself. ``--num_ps 0`` (default) and
``--cluster_size 3`` give chief:0, worker:0, worker:1 under MultiWorkerMirroredStrategy;
``--num_ps 1`` gives ps:0, chief:0 (the coordinator), worker:0 under ParameterServerStrategy.
Every node's output reaches this driver's stderr prefixed ``[role:index@host]``.

Usage (from the repository root, after ``mnist_data_setup.py --output data/mnist``)::

    export SPARK_LOCAL_IP=127.0.0.1 PYSPARK_PYTHON=$PWD/.venv/bin/python
    python examples/mnist/mnist_spark.py --cluster_size 3 --data_dir data/mnist
    python examples/mnist/mnist_spark.py --cluster_size 3 --num_ps 1 --data_dir data/mnist
"""
import os

import tfos
from mnist_tf import add_arguments, main_fun


def absolute(path):
    """A local path made absolute: the nodes run in their executors' working directories."""
    return path if not path or "://" in path else os.path.abspath(path)


if __name__ == "__main__":
    args = add_arguments(tfos.cli.argument_parser("MNIST on Spark with tfos")).parse_args()
    args.data_dir, args.model_dir, args.log_dir = (
        absolute(path) for path in (args.data_dir, args.model_dir, args.log_dir))
    spark = tfos.cli.spark_session(args, app_name="mnist")
    # tfos ships main_fun's own module; the model module it imports travels like any --py-files.
    here = os.path.dirname(os.path.abspath(__file__))
    spark.sparkContext.addPyFile(os.path.join(here, "mnist_model.py"))
    cluster = tfos.TFCluster.run(spark, main_fun, args, num_executors=args.cluster_size,
                                 num_ps=args.num_ps, tensorboard=args.tensorboard,
                                 input_mode=tfos.InputMode.TENSORFLOW, log_dir=args.log_dir,
                                 master_node="chief", rdma=args.rdma)
    if args.tensorboard:
        print("TensorBoard: %s" % cluster.tensorboard_url(), flush=True)
    cluster.shutdown()
    spark.stop()
