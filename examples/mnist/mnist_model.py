"""Model and input pipeline shared by the mnist examples; runs inside a TensorFlow node.

Imported by ``mnist_tf.main_fun`` on every node (and by the plain script), never by the Spark
driver. Records are what ``mnist_data_setup.py`` writes: 784 floats in [0, 1] plus an int label,
as TFRecord (``*.tfrecord``) or CSV (``*.csv``) shards.
"""
import glob
import os

# tf.keras must be Keras 2 (tf-keras): Keras 3's fit fails under MultiWorkerMirroredStrategy and
# ParameterServerStrategy. The variable only counts if it is set before TensorFlow is imported.
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

import tensorflow as tf  # noqa: E402

NUM_PIXELS = 784
NUM_CLASSES = 10
FORMATS = ("tfrecord", "csv")

if not tf.keras.__name__.startswith("tf_keras"):
    raise ImportError(
        "tf.keras is %s, these examples need Keras 2: install tf-keras and set "
        "TF_USE_LEGACY_KERAS=1 before tensorflow is first imported" % tf.keras.__name__)


def build_model(learning_rate=0.002):
    """A small CNN: about 60k parameters, >= 0.95 on the digits data after 3 epochs."""
    model = tf.keras.Sequential([
        tf.keras.Input((NUM_PIXELS,), name="image"),   # the SavedModel's input name
        tf.keras.layers.Reshape((28, 28, 1)),
        tf.keras.layers.Conv2D(16, 3, activation="relu"),
        tf.keras.layers.MaxPooling2D(),
        tf.keras.layers.Conv2D(32, 3, activation="relu"),
        tf.keras.layers.MaxPooling2D(),
        tf.keras.layers.Flatten(),
        tf.keras.layers.Dense(64, activation="relu"),
        tf.keras.layers.Dense(NUM_CLASSES),
    ])
    model.compile(
        optimizer=tf.keras.optimizers.Adam(learning_rate),
        loss=tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"])
    return model


def list_files(data_dir, split, fmt):
    """The sorted shards of one split (``train`` or ``test``) in one format; never empty."""
    if fmt not in FORMATS:
        raise ValueError("format must be one of %s, got %r" % (FORMATS, fmt))
    pattern = os.path.join(data_dir, split, "*." + fmt)
    files = sorted(glob.glob(pattern))
    if not files:
        raise FileNotFoundError(
            "no files match %s: run mnist_data_setup.py --output %s first" % (pattern, data_dir))
    return files


def _parse_tfrecords(serialized):
    features = tf.io.parse_example(serialized, {
        "image": tf.io.FixedLenFeature([NUM_PIXELS], tf.float32),
        "label": tf.io.FixedLenFeature([], tf.int64),
    })
    return features["image"], features["label"]


def _parse_csv(lines):
    columns = tf.io.decode_csv(lines, record_defaults=[[0]] + [[0.0]] * NUM_PIXELS)
    return tf.stack(columns[1:], axis=1), tf.cast(columns[0], tf.int64)


def make_dataset(files, batch_size, shuffle=False, repeat=False, shard=None, seed=None):
    """A ``tf.data.Dataset`` of ``(images[batch, 784], labels[batch])`` batches from ``files``.

    ``shard=(num_shards, index)`` keeps only this reader's share: whole files when they divide
    evenly among the shards (so every reader gets as many batches), else every num_shards-th
    record. Leave it None when a strategy shards the dataset itself (auto-sharding).
    """
    fmt = "csv" if files[0].endswith(".csv") else "tfrecord"
    dataset = tf.data.Dataset.from_tensor_slices(files)
    by_file = shard is not None and len(files) % shard[0] == 0
    if by_file:
        dataset = dataset.shard(*shard)
    if shuffle:
        dataset = dataset.shuffle(len(files), seed=seed)
    reader = tf.data.TextLineDataset if fmt == "csv" else tf.data.TFRecordDataset
    dataset = dataset.interleave(reader, cycle_length=min(len(files), 4),
                                 num_parallel_calls=tf.data.AUTOTUNE)
    if shard is not None and not by_file:
        dataset = dataset.shard(*shard)
    if shuffle:
        dataset = dataset.shuffle(10000, seed=seed)
    if repeat:
        dataset = dataset.repeat()
    # Parse whole batches at once: one decode_csv / parse_example call per batch, not per record.
    dataset = dataset.batch(batch_size)
    dataset = dataset.map(_parse_csv if fmt == "csv" else _parse_tfrecords,
                          num_parallel_calls=tf.data.AUTOTUNE)
    return dataset.prefetch(tf.data.AUTOTUNE)


def count_records(files):
    """Number of records in ``files`` (one quick pass; MNIST's 60k take about a second)."""
    reader = tf.data.TextLineDataset if files[0].endswith(".csv") else tf.data.TFRecordDataset
    return int(reader(files).reduce(tf.constant(0, tf.int64), lambda n, _: n + 1))
