"""A small CNN on CIFAR-shaped images (32x32x3, 10 classes), with plain TensorFlow.

The images are generated, nothing is downloaded: each class has its own colour pattern, and
every image is its class's pattern under strong noise, so a CNN must learn the patterns to
reach a high accuracy. ``train_spark.py`` is the same training on a tfos cluster, fed by
Spark; ``diff train_tf.py train_spark.py`` shows what moving it over takes.

Usage::

    python examples/gallery/cifar_cnn/train_tf.py --rows 4000 --epochs 3
"""
import argparse
import os
import time

import numpy as np

NUM_CLASSES = 10
SHAPE = (32, 32, 3)


def make_images(rows, seed):
    """``rows`` images (float32, 32x32x3) and their labels. The class patterns come from a fixed
    seed, so every caller (every Spark partition) draws from the same ten classes."""
    patterns = np.random.default_rng(0).uniform(-1, 1, (NUM_CLASSES, 4, 4, 3))
    patterns = patterns.repeat(8, axis=1).repeat(8, axis=2)         # 4x4 blocks -> 32x32
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, NUM_CLASSES, rows)
    images = patterns[labels] + rng.normal(0, 3.0, (rows,) + SHAPE)
    return images.astype("float32"), labels.astype("int64")


def build_model(tf):
    model = tf.keras.Sequential([
        tf.keras.Input(SHAPE),
        tf.keras.layers.Conv2D(16, 3, activation="relu"),
        tf.keras.layers.MaxPooling2D(),
        tf.keras.layers.Conv2D(32, 3, activation="relu"),
        tf.keras.layers.MaxPooling2D(),
        tf.keras.layers.Flatten(),
        tf.keras.layers.Dense(NUM_CLASSES),
    ])
    model.compile(optimizer=tf.keras.optimizers.Adam(0.002),
                  loss=tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
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
    images, labels = make_images(args.rows, args.seed)
    train = tf.data.Dataset.from_tensor_slices((images, labels)).shuffle(args.rows) \
        .batch(global_batch)

    start = time.time()
    model.fit(train, epochs=args.epochs, verbose=2)
    print(f"cifar_cnn: trained {args.epochs} epochs in {time.time() - start:.1f} s")

    test_images, test_labels = make_images(1000, seed=12345)
    _, accuracy = model.evaluate(test_images, test_labels, verbose=0)
    print(f"cifar_cnn: test accuracy {accuracy:.4f} (chance 0.10)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="CIFAR-shaped CNN with plain TensorFlow")
    parser.add_argument("--rows", type=int, default=4000, help="training images")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch_size", type=int, default=64, help="per worker")
    parser.add_argument("--seed", type=int, default=1)
    main_fun(parser.parse_args())
