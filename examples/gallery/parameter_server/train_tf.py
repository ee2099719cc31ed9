"""ParameterServerStrategy with Keras ``model.fit``, with plain TensorFlow on one machine.

As in TensorFlow's own tutorial, the cluster runs inside this process: the parameter servers
and workers are ``tf.distribute.Server``s on free local ports, and this process is the
coordinator that runs ``model.fit``. The variables (an embedding table sharded across the
parameter servers, and a small MLP) live on the ps; the workers run the steps asynchronously.
``train_spark.py`` runs the same coordinator code on a tfos cluster whose ps and workers are
Spark executors; ``diff train_tf.py train_spark.py`` shows what moving it over takes.

The task: click or no click, from a category id (its own learnable bias) and four numbers.

Usage::

    python examples/gallery/parameter_server/train_tf.py --num_workers 2 --num_ps 1
"""
import argparse
import os
import socket
import time

import numpy as np

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


def main_fun(args):
    # tf-keras (Keras 2), as on the tfos nodes: Keras 3's fit fails under this strategy.
    os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
    # TensorFlow's INFO lines: every server prints its whole session config.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")
    import tensorflow as tf
    tf.keras.utils.set_random_seed(args.seed)

    # The coordinator: it places the variables on the ps and sends steps to the workers.
    resolver = in_process_cluster(tf, args.num_workers, args.num_ps)
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
          f"{time.time() - start:.1f} s (ps: {args.num_ps}, workers: {args.num_workers}); "
          f"loss per epoch {losses}")

    x, y = make_clicks(2000, seed=12345)
    accuracy = np.mean((model.predict(x, verbose=0)[:, 0] > 0) == y)
    print(f"parameter_server: test accuracy {accuracy:.4f} (chance about 0.5)")


def in_process_cluster(tf, num_workers, num_ps):
    """TensorFlow's tutorial cluster: ps and worker servers in this process, on free ports."""
    def free_port():
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return s.getsockname()[1]

    spec = tf.train.ClusterSpec({
        "worker": [f"127.0.0.1:{free_port()}" for _ in range(num_workers)],
        "ps": [f"127.0.0.1:{free_port()}" for _ in range(num_ps)]})
    # The tutorial's setting: every in-process server needs a thread of its own.
    config = tf.compat.v1.ConfigProto(inter_op_parallelism_threads=num_workers + num_ps + 1)
    for job, count in (("worker", num_workers), ("ps", num_ps)):
        for index in range(count):
            tf.distribute.Server(spec, job_name=job, task_index=index, config=config, start=True)
    return tf.distribute.cluster_resolver.SimpleClusterResolver(spec, rpc_layer="grpc")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="ParameterServerStrategy with plain TensorFlow")
    parser.add_argument("--num_workers", type=int, default=2)
    parser.add_argument("--num_ps", type=int, default=1)
    parser.add_argument("--rows", type=int, default=10000, help="examples per worker")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--steps_per_epoch", type=int, default=50)
    parser.add_argument("--batch_size", type=int, default=64, help="per step (one worker)")
    parser.add_argument("--seed", type=int, default=1)
    main_fun(parser.parse_args())
