"""MNIST as a Spark ML Pipeline: ``TFEstimator`` trains on a tfos cluster, ``TFModel`` scores
(driver).

TensorFlowOnSpark's pipeline pattern. ``Pipeline([TFEstimator]).fit(train_df)`` starts a
cluster of ``--cluster_size`` nodes (chief and workers, MultiWorkerMirroredStrategy), feeds them
the training DataFrame's ``image`` and ``label`` columns for ``--epochs`` epochs, with the test
DataFrame as validation data after each epoch, and the chief exports a SavedModel to
``--export_dir``. The fitted ``PipelineModel`` then scores the test DataFrame without any
cluster: each Spark Python worker loads the SavedModel once and runs it over Arrow batches.
The Keras history comes back with the model; the accuracy is computed in Spark.

Usage (from the repository root, after ``mnist_data_setup.py --output data/mnist``)::

    export SPARK_LOCAL_IP=127.0.0.1 PYSPARK_PYTHON=$PWD/.venv/bin/python
    python examples/mnist/mnist_pipeline.py --cluster_size 2 --data_dir data/mnist \\
        --export_dir runs/mnist-export --save runs/mnist-pipeline
"""
import os
import time

from mnist_spark import absolute, mnist_dataframe, spark_session

import tfos
from tfos.pipeline import TFEstimator


def train_fun(args, ctx):
    """Runs on every chief and worker: trains on the fed rows, the chief exports the model."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")
    import mnist_model
    import tensorflow as tf

    from tfos import TFNode, compat
    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    with strategy.scope():
        model = mnist_model.build_model()
    # Keras takes a fed dataset's batch as the global batch (see mnist_tf._fed_dataset).
    global_batch_size = args.batch_size * ctx.num_workers

    def fed(qname):
        feed = TFNode.DataFeed(ctx.mgr, qname_in=qname, input_mapping=args.input_mapping)
        return feed.dataset(global_batch_size, ["image", "label"])

    validation = fed(args.validation_feed) if args.validation_feed else None
    is_chief = ctx.job_name == "chief"
    history = model.fit(fed("input"), validation_data=validation, epochs=args.epochs,
                        verbose=2 if is_chief else 0)
    compat.export_saved_model(model, args.export_dir, is_chief=is_chief)
    return history


def accuracy(scored):
    """The share of rows whose highest logit is at their label."""
    from pyspark.sql import functions as F
    predicted = F.array_position("logits", F.array_max("logits")) - 1
    row = scored.agg(F.avg((predicted == F.col("label")).cast("double")).alias("accuracy"),
                     F.count("*").alias("rows")).first()
    return row["accuracy"], row["rows"]


if __name__ == "__main__":
    from pyspark.ml import Pipeline
    parser = tfos.cli.argument_parser("MNIST as a Spark ML Pipeline with tfos")
    parser.set_defaults(input_mode="spark", cluster_size=2)
    parser.add_argument("--data_dir", default="data/mnist",
                        help="output of mnist_data_setup.py (default: %(default)s)")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch_size", type=int, default=32,
                        help="batch size per worker (default: %(default)s)")
    parser.add_argument("--export_dir", default="runs/mnist-export",
                        help="where the chief exports the SavedModel (default: %(default)s)")
    parser.add_argument("--save", help="also save the fitted PipelineModel here")
    args = parser.parse_args()
    if args.num_ps:
        parser.error("TFEstimator feeds the chief and workers of MultiWorkerMirroredStrategy: "
                     "drop --num_ps")
    args.data_dir, args.export_dir = absolute(args.data_dir), absolute(args.export_dir)
    spark = spark_session(args, app_name="mnist_pipeline")
    here = os.path.dirname(os.path.abspath(__file__))
    spark.sparkContext.addPyFile(os.path.join(here, "mnist_model.py"))
    train_df = mnist_dataframe(spark, args.data_dir, "train")
    test_df = mnist_dataframe(spark, args.data_dir, "test")

    # The estimator's train_fn gets these tf_args merged with its params (args.epochs, ...).
    estimator = TFEstimator(train_fun, {}, log_dir=absolute(args.log_dir)) \
        .setInputMapping({"image": "image", "label": "label"}) \
        .setClusterSize(args.cluster_size) \
        .setTensorboard(args.tensorboard) \
        .setProtocol("rdma" if args.rdma else "grpc") \
        .setEpochs(args.epochs) \
        .setBatchSize(args.batch_size) \
        .setExportDir(args.export_dir) \
        .setValidationData(test_df)
    start = time.time()
    fitted = Pipeline(stages=[estimator]).fit(train_df)
    model = fitted.stages[-1]
    print("mnist: fitted in %.1f s" % (time.time() - start))
    for epoch, values in enumerate(zip(*model.history.values()), 1):
        print("mnist: epoch %d: %s" % (epoch, ", ".join(
            "%s %.4f" % (name, value) for name, value in zip(model.history, values))))

    # No cluster from here on: the SavedModel scores the DataFrame in Spark's Python workers.
    # Its signature takes "image" (the label mapped for training is left out); its one output,
    # the ten logits, becomes the "logits" column.
    model.setOutputMapping({"output_0": "logits"})
    start = time.time()
    value, rows = accuracy(fitted.transform(test_df))
    print("mnist: scored %d test rows in %.1f s" % (rows, time.time() - start))
    print("pipeline accuracy: %.4f" % value)
    if args.save:
        fitted.write().overwrite().save(absolute(args.save))
        print("mnist: PipelineModel saved to %s" % absolute(args.save))
    spark.stop()
