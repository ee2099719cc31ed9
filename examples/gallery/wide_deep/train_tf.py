"""Wide & deep on a table of string and numeric columns, with plain TensorFlow (and pandas).

The table is generated: an ``occupation`` and a ``city`` (strings), an ``age`` and weekly
``hours`` (numbers), and a 0/1 ``label`` that follows a fixed rule: each occupation and the
numbers move it a little, and a few (occupation, city) pairs move it a lot. The model learns
the pairs in its *wide* part (a hashed cross of the two strings, one-hot, into a linear unit)
and the rest in its *deep* part (embeddings of the strings and the scaled numbers through an
MLP). Keras preprocessing layers inside the model turn the raw columns into numbers, so the
same model takes the table's rows as they are. ``train_spark.py`` is the same training fed
from a Spark DataFrame; ``diff train_tf.py train_spark.py`` shows what moving it over takes.

Usage::

    python examples/gallery/wide_deep/train_tf.py --rows 20000 --epochs 3
"""
import argparse
import os
import time

import numpy as np
import pandas as pd

OCCUPATIONS = ["clerk", "driver", "engineer", "farmer", "nurse", "sales", "teacher", "writer"]
CITIES = ["Austin", "Berlin", "Cairo", "Delhi", "Lima", "Lyon", "Osaka", "Oslo", "Perth", "Quito"]
FEATURES = ["occupation", "city", "age", "hours"]


def make_table(rows, seed):
    """``rows`` rows of the table as a pandas DataFrame; the rule's weights are fixed (seed 0)."""
    rule = np.random.default_rng(0)
    occupation_weight = rule.normal(0, 0.5, len(OCCUPATIONS))
    pair_weight = rule.choice([-3.0, 0.0, 0.0, 3.0], (len(OCCUPATIONS), len(CITIES)))
    rng = np.random.default_rng(seed)
    occupation = rng.integers(0, len(OCCUPATIONS), rows)
    city = rng.integers(0, len(CITIES), rows)
    age = rng.uniform(18, 70, rows)
    hours = rng.uniform(10, 60, rows)
    logit = (occupation_weight[occupation] + pair_weight[occupation, city]
             + 0.05 * (age - 44) + 0.06 * (hours - 35) + rng.logistic(0, 0.5, rows))
    return pd.DataFrame({
        "occupation": np.array(OCCUPATIONS)[occupation], "city": np.array(CITIES)[city],
        "age": age.astype("float32"), "hours": hours.astype("float32"),
        "label": (logit > 0).astype("float32")})


def build_model(tf):
    layers = tf.keras.layers
    inputs = {"occupation": tf.keras.Input((), dtype="string", name="occupation"),
              "city": tf.keras.Input((), dtype="string", name="city"),
              "age": tf.keras.Input((), name="age"), "hours": tf.keras.Input((), name="hours")}
    occupation = layers.StringLookup(vocabulary=OCCUPATIONS)(inputs["occupation"])
    city = layers.StringLookup(vocabulary=CITIES)(inputs["city"])
    numbers = layers.Normalization(mean=[44.0, 35.0], variance=[225.0, 208.0])(
        tf.stack([inputs["age"], inputs["hours"]], axis=1))

    # Wide: the strings one-hot and their cross hashed into 256 one-hot bins, into one unit.
    wide = layers.Concatenate()([
        layers.CategoryEncoding(len(OCCUPATIONS) + 1, output_mode="one_hot")(occupation),
        layers.CategoryEncoding(len(CITIES) + 1, output_mode="one_hot")(city),
        layers.HashedCrossing(256, output_mode="one_hot")((inputs["occupation"], inputs["city"])),
    ])
    # Deep: embeddings of the strings and the scaled numbers, through an MLP.
    deep = layers.Concatenate()([layers.Embedding(len(OCCUPATIONS) + 1, 4)(occupation),
                                 layers.Embedding(len(CITIES) + 1, 4)(city), numbers])
    deep = layers.Dense(32, activation="relu")(deep)
    deep = layers.Dense(16, activation="relu")(deep)
    logit = layers.Add()([layers.Dense(1)(wide), layers.Dense(1)(deep)])

    model = tf.keras.Model(inputs, logit)
    model.compile(optimizer=tf.keras.optimizers.Adam(0.01),
                  loss=tf.keras.losses.BinaryCrossentropy(from_logits=True),
                  metrics=[tf.keras.metrics.BinaryAccuracy(threshold=0.0, name="accuracy")])
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
    table = make_table(args.rows, args.seed)
    train = tf.data.Dataset.from_tensor_slices((dict(table[FEATURES]), table["label"])) \
        .shuffle(args.rows).batch(global_batch)

    start = time.time()
    model.fit(train, epochs=args.epochs, verbose=2)
    print(f"wide_deep: trained {args.epochs} epochs in {time.time() - start:.1f} s")

    test = make_table(4000, seed=12345)
    _, accuracy = model.evaluate(dict(test[FEATURES]), test["label"], verbose=0)
    majority = max(test["label"].mean(), 1 - test["label"].mean())
    print(f"wide_deep: test accuracy {accuracy:.4f} (always guessing the majority: {majority:.4f})")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="Wide & deep on a table, plain TensorFlow")
    parser.add_argument("--rows", type=int, default=20000, help="training rows")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch_size", type=int, default=128, help="per worker")
    parser.add_argument("--seed", type=int, default=1)
    main_fun(parser.parse_args())
