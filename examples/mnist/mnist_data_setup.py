"""Writes MNIST-shaped training and test data for the mnist examples, offline.

Runs on the machine you launch it from (no Spark, no network). Each record is one 28x28
grayscale image as 784 floats in [0, 1] plus an integer label 0-9, so the model code is the same
whichever source is used:

* default: scikit-learn's bundled ``load_digits`` (1,797 8x8 images that ship inside the
  package), upscaled 3x to 24x24 and padded to 28x28, split train/test with a fixed seed;
* ``--mnist_dir DIR``: the real MNIST, from the standard idx files
  (``train-images-idx3-ubyte[.gz]``, ``train-labels-idx1-ubyte[.gz]``,
  ``t10k-images-idx3-ubyte[.gz]``, ``t10k-labels-idx1-ubyte[.gz]``) or from ``mnist.npz``
  (``x_train``, ``y_train``, ``x_test``, ``y_test``) found in DIR; its own 60k/10k split is kept.

Output layout under ``--output`` (shards named ``part-NNNNN.<ext>``)::

    train/part-00000.tfrecord ...   tf.train.Example: image = float_list[784], label = int64
    train/part-00000.csv ...        no header; label first, then the 784 pixel values
    test/...                        the same for the test split

Usage::

    python examples/mnist/mnist_data_setup.py --output data/mnist
    python examples/mnist/mnist_data_setup.py --mnist_dir ~/mnist --output data/mnist-full
"""
import argparse
import gzip
import os
import sys

import numpy as np

IMAGE_SIZE = 28
NUM_PIXELS = IMAGE_SIZE * IMAGE_SIZE


def load_digits_28x28(test_fraction, seed):
    """Returns ``(x_train, y_train, x_test, y_test)`` from scikit-learn's 8x8 digits."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    # Pixel values are 0..16; 3x nearest-neighbour upscaling gives 24x24, padding 2 on each side
    # centres the digit in a 28x28 frame as MNIST does.
    images = np.kron(digits.images / 16.0, np.ones((3, 3)))
    images = np.pad(images, ((0, 0), (2, 2), (2, 2)))
    x = images.reshape(len(images), NUM_PIXELS).astype(np.float32)
    y = digits.target.astype(np.int64)
    order = np.random.default_rng(seed).permutation(len(x))
    num_test = int(round(len(x) * test_fraction))
    test, train = order[:num_test], order[num_test:]
    return x[train], y[train], x[test], y[test]


def _find(directory, name):
    """The path of MNIST file ``name`` in ``directory``, gzipped or not, '-idx' or '.idx' named."""
    for candidate in (name, name.replace("-idx", ".idx")):
        for suffix in ("", ".gz"):
            path = os.path.join(directory, candidate + suffix)
            if os.path.exists(path):
                return path
    raise FileNotFoundError("neither %s[.gz] nor mnist.npz in %s: --mnist_dir needs the standard "
                            "MNIST idx files or mnist.npz" % (name, directory))


def _read_idx(path):
    """Reads one idx file (the format MNIST is distributed in): magic, dims, then uint8 data."""
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
        data = f.read()
    if data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise ValueError("%s is not an unsigned-byte idx file (header %r)" % (path, data[:4]))
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim))
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def load_mnist(directory):
    """Returns ``(x_train, y_train, x_test, y_test)`` from real MNIST files in ``directory``."""
    npz = os.path.join(directory, "mnist.npz")
    if os.path.exists(npz):
        with np.load(npz) as f:
            arrays = f["x_train"], f["y_train"], f["x_test"], f["y_test"]
    else:
        arrays = [
            _read_idx(_find(directory, "train-images-idx3-ubyte")),
            _read_idx(_find(directory, "train-labels-idx1-ubyte")),
            _read_idx(_find(directory, "t10k-images-idx3-ubyte")),
            _read_idx(_find(directory, "t10k-labels-idx1-ubyte")),
        ]
    x_train, y_train, x_test, y_test = arrays
    to_floats = lambda x: (x.reshape(len(x), NUM_PIXELS) / 255.0).astype(np.float32)  # noqa: E731
    return to_floats(x_train), y_train.astype(np.int64), to_floats(x_test), y_test.astype(np.int64)


def write_tfrecords(path, x, y):
    import tensorflow as tf

    with tf.io.TFRecordWriter(path) as writer:
        for image, label in zip(x, y):
            example = tf.train.Example(features=tf.train.Features(feature={
                "image": tf.train.Feature(float_list=tf.train.FloatList(value=image)),
                "label": tf.train.Feature(int64_list=tf.train.Int64List(value=[label])),
            }))
            writer.write(example.SerializeToString())


def write_csv(path, x, y):
    rows = np.concatenate([y[:, None].astype(np.float64), x.astype(np.float64)], axis=1)
    # %.7g round-trips these float32 values closely enough; labels come out as plain integers.
    np.savetxt(path, rows, fmt=["%d"] + ["%.7g"] * NUM_PIXELS, delimiter=",")


def write_split(directory, x, y, formats, num_shards, seed):
    """Shuffles one split and writes it as ``num_shards`` shards per format; returns the paths."""
    os.makedirs(directory, exist_ok=True)
    order = np.random.default_rng(seed).permutation(len(x))
    written = []
    for shard, indices in enumerate(np.array_split(order, num_shards)):
        for fmt in formats:
            path = os.path.join(directory, "part-%05d.%s" % (shard, fmt))
            (write_tfrecords if fmt == "tfrecord" else write_csv)(path, x[indices], y[indices])
            written.append((path, len(indices)))
    return written


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--output", default="data/mnist",
                        help="output directory (default: %(default)s)")
    parser.add_argument("--mnist_dir", help="directory with real MNIST idx files or mnist.npz "
                        "(default: scikit-learn's bundled 8x8 digits, upscaled)")
    parser.add_argument("--format", choices=["tfrecord", "csv", "both"], default="both")
    parser.add_argument("--num_shards", type=int, default=4, help="shards per split and format")
    parser.add_argument("--test_fraction", type=float, default=0.2,
                        help="test share of the digits data (real MNIST keeps its own split)")
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args(argv)
    if args.num_shards < 1:
        parser.error("--num_shards must be at least 1, got %d" % args.num_shards)
    if not 0.0 < args.test_fraction < 1.0:
        parser.error("--test_fraction must be between 0 and 1, got %s" % args.test_fraction)
    return args


def main(argv=None):
    args = parse_args(argv)
    if args.mnist_dir:
        try:
            x_train, y_train, x_test, y_test = load_mnist(os.path.expanduser(args.mnist_dir))
        except (OSError, ValueError) as exc:
            sys.exit("mnist_data_setup: %s" % exc)
        source = "MNIST from %s" % args.mnist_dir
    else:
        x_train, y_train, x_test, y_test = load_digits_28x28(args.test_fraction, args.seed)
        source = "scikit-learn digits (8x8 upscaled to 28x28)"
    formats = ["tfrecord", "csv"] if args.format == "both" else [args.format]
    print("source: %s; %d train / %d test images" % (source, len(x_train), len(x_test)))
    for split, x, y in (("train", x_train, y_train), ("test", x_test, y_test)):
        directory = os.path.join(args.output, split)
        for path, count in write_split(directory, x, y, formats, args.num_shards, args.seed):
            print("wrote %s (%d records)" % (path, count))
    print("done: %s" % os.path.abspath(args.output))


if __name__ == "__main__":
    main()
