"""ParameterServerStrategy with Keras ``model.fit``, on Spark with tfos.

``train_tf.py`` on a tfos cluster: Spark executors run the parameter servers and the workers
(they start their ``tf.distribute.Server`` and serve), and the chief is the coordinator that
runs the very same ``model.fit``. The data is generated on the workers, as in ``train_tf.py``
(InputMode.TENSORFLOW: Spark only hosts the cluster; under this strategy the workers run
steps the coordinator sends them, so there is no training loop to feed).
``diff train_tf.py train_spark.py`` shows what moving it over takes.

The task: click or no click, from a category id (its own learnable bias) and four numbers.

Usage (from the repository root)::

    export SPARK_LOCAL_IP=127.0.0.1 PYSPARK_PYTHON=$PWD/.venv/bin/python
    python examples/gallery/parameter_server/train_spark.py --cluster_size 4 --num_ps 1 \\
        --master "local[4]"
"""
import time

import numpy as np

import tfos

CATEGORIES = 100


def make_clicks(rows, seed):
    """``rows`` examples: a category id, four features and a 0/1 label from a fixed rule."""
    category_bias = np.random.default_rng(0).normal(0, 2, CATEGORIES)
    weights = np.array([1.5, -2.0, 1.0, 0.5])
    rng = np.random.default_rng(seed)
    category = rng.integers(0, CATEGORIES, rows)
    features = rng.normal(0, 1, (rows, 4))
    label = features @ weights + category_bias[category] > 0
    return {"category": category.astype("int64"), "features": features.astype("float32")}, \
        label.astype("float32")


def build_model(tf):
    category = tf.keras.Input((), dtype="int64", name="category")
    features = tf.keras.Input((4,), name="features")
    embedded = tf.keras.layers.Embedding(CATEGORIES, 4)(category)
    hidden = tf.keras.layers.Dense(16, activation="relu")(
        tf.keras.layers.Concatenate()([embedded, features]))
    model = tf.keras.Model([category, features], tf.keras.layers.Dense(1)(hidden))
    model.compile(optimizer=tf.keras.optimizers.Adam(0.01),
                  loss=tf.keras.losses.BinaryCrossentropy(from_logits=True),
                  steps_per_execution=10)
    return model


def main_fun(args, ctx):
    # Runs on every node, with TF_CONFIG and TF_USE_LEGACY_KERAS=1 set by tfos.
    import tensorflow as tf
    if ctx.job_name in ("ps", "worker"):
        # They only serve; tfos stops them at shutdown, once the chief has returned.
        _, server = ctx.start_cluster_server()
        server.join()
        return
    tf.keras.utils.set_random_seed(args.seed)

    # The coordinator (the chief): it places the variables on the ps and sends steps to the
    # workers. The resolver is the cluster tfos started: ps, chief and workers.
    resolver = ctx.cluster_resolver()
    num_workers = len(ctx.cluster_spec["worker"])
    strategy = tf.distribute.experimental.ParameterServerStrategy(
        resolver, variable_partitioner=tf.distribute.experimental.partitioners
        .MinSizePartitioner(min_shard_bytes=256, max_shards=args.num_ps))
    with strategy.scope():
        model = build_model(tf)

    def dataset_fn(input_context):
        # Called for each worker, with its own seed; the dataset runs on that worker.
        x, y = make_clicks(args.rows, args.seed + input_context.input_pipeline_id)
        return tf.data.Dataset.from_tensor_slices((x, y)).shuffle(args.rows).repeat() \
            .batch(args.batch_size).prefetch(2)

    start = time.time()
    history = model.fit(tf.keras.utils.experimental.DatasetCreator(dataset_fn),
                        epochs=args.epochs, steps_per_epoch=args.steps_per_epoch, verbose=0)
    losses = ", ".join(f"{loss:.3f}" for loss in history.history["loss"])
    print(f"parameter_server: {args.epochs} epochs of {args.steps_per_epoch} steps in "
          f"{time.time() - start:.1f} s (ps: {args.num_ps}, workers: {num_workers}); "
          f"loss per epoch {losses}")

    x, y = make_clicks(2000, seed=12345)
    accuracy = np.mean((model.predict(x, verbose=0)[:, 0] > 0) == y)
    print(f"parameter_server: test accuracy {accuracy:.4f} (chance about 0.5)")


if __name__ == "__main__":
    parser = tfos.cli.argument_parser("ParameterServerStrategy on Spark with tfos")
    parser.add_argument("--rows", type=int, default=10000, help="examples per worker")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--steps_per_epoch", type=int, default=50)
    parser.add_argument("--batch_size", type=int, default=64, help="per step (one worker)")
    parser.add_argument("--seed", type=int, default=1)
    parser.set_defaults(cluster_size=4, num_ps=1)   # ps, chief (coordinator), 2 workers
    args = parser.parse_args()
    spark = tfos.cli.spark_session(args, app_name="parameter_server")
    cluster = tfos.TFCluster.run(spark, main_fun, args, num_executors=args.cluster_size,
                                 num_ps=args.num_ps, master_node="chief")
    cluster.shutdown()
    spark.stop()
