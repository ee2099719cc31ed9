"""Training on data that arrives in chunks (micro-batches), with plain TensorFlow.

The examples are numbered 0, 1, 2, ...; example ``v`` has features ``sin(v * f)`` for a few
fixed frequencies ``f`` and a target from a fixed rule, so any stretch of numbers is fresh
data from the same distribution. Here the chunks are made in a loop and the model is fitted
on each as it comes. ``train_spark.py`` trains the same model on the same examples as they
arrive from Spark Structured Streaming, one ``cluster.train`` per micro-batch;
``diff train_tf.py train_spark.py`` shows what moving it over takes.

Usage::

    python examples/gallery/streaming/train_tf.py --micro_batches 5 --rows_per_batch 2000
"""
import argparse
import os
import time

import numpy as np

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


def main_fun(args):
    # tf-keras (Keras 2), as on the tfos nodes: Keras 3's fit fails under multi-worker strategies.
    os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
    import tensorflow as tf
    tf.keras.utils.set_random_seed(args.seed)

    # One worker here; the same strategy spans every worker of a cluster (TF_CONFIG).
    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    with strategy.scope():
        model = build_model(tf)

    global_batch = args.batch_size * strategy.num_replicas_in_sync
    start = time.time()
    for micro_batch in range(args.micro_batches):
        first = micro_batch * args.rows_per_batch    # the next chunk of examples arrives
        x, y = make_examples(np.arange(first, first + args.rows_per_batch))
        train = tf.data.Dataset.from_tensor_slices((x, y)).batch(global_batch)
        loss = model.fit(train, epochs=1, verbose=0).history["loss"][0]
        print(f"streaming: micro-batch {micro_batch}: loss {loss:.4f}")
    print(f"streaming: trained {args.micro_batches} micro-batches in {time.time() - start:.1f} s")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="Training on chunks, plain TensorFlow")
    parser.add_argument("--micro_batches", type=int, default=5)
    parser.add_argument("--rows_per_batch", type=int, default=2000)
    parser.add_argument("--batch_size", type=int, default=32, help="per worker")
    parser.add_argument("--seed", type=int, default=1)
    main_fun(parser.parse_args())
