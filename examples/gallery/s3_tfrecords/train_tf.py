"""Trains a small classifier on TFRecords in S3 (or a local directory) with plain TensorFlow.

``main_fun(args, ctx)`` is the whole training; ``train_spark.py`` runs the very same function
on every node of a tfos cluster. TensorFlow 2.21 cannot open ``s3://`` itself, so the files
are read with ``tfos.files.dataset``, a ``tf.data.Dataset`` like ``TFRecordDataset``'s: with
a ``ctx`` (on Spark) each worker reads only its own shard of the files, without one (here)
the one process reads them all.

Data: ``--make_data`` writes a synthetic binary classification (8 features, a linear rule)
as ``<data>/train/part-0000N.tfrecord`` and ``<data>/test/part-00000.tfrecord``, with
TensorFlow's own ``TFRecordWriter`` into a local directory, then ``tfos.files.upload_dir``.
``--model_dir`` (an S3 URI or a directory) gets the SavedModel the same way.

Usage (from the repository root)::

    python examples/gallery/s3_tfrecords/train_tf.py --local_s3 --make_data
    python examples/gallery/s3_tfrecords/train_tf.py --data s3://my-bucket/synthetic   # AWS
    python examples/gallery/s3_tfrecords/train_tf.py --data /tmp/synthetic --make_data
"""
import argparse
import contextlib
import os
import tempfile
import time

NUM_FEATURES = 8
SEED = 7


def add_arguments(parser):
    """The flags of this example; train_spark.py adds the same ones to tfos's parser."""
    parser.add_argument("--data", default=None,
                        help="a directory or URI (s3://, s3a://, hdfs://) holding train/ and "
                             "test/ (default with --local_s3: s3://tfos-demo/synthetic)")
    parser.add_argument("--make_data", action="store_true",
                        help="first write the synthetic data set to --data")
    parser.add_argument("--local_s3", action="store_true",
                        help="start a local S3 server (moto) for the run; implies --make_data")
    parser.add_argument("--num_files", type=int, default=4, help="training files to write")
    parser.add_argument("--records_per_file", type=int, default=1024)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--steps_per_epoch", type=int, default=32)
    parser.add_argument("--batch_size", type=int, default=64, help="per worker")
    parser.add_argument("--model_dir", help="where the chief puts the SavedModel (URI or dir)")
    return parser


def finish_arguments(args):
    """Defaults that depend on other flags."""
    if args.local_s3:
        args.make_data = True
        args.data = args.data or "s3://tfos-demo/synthetic"
    if not args.data:
        raise SystemExit("give --data (a directory or an s3:// URI), or --local_s3")
    return args


@contextlib.contextmanager
def data_store(args):
    """Starts the local S3 server when asked (its variables in this process's environment),
    writes the data when asked; yields the AWS variables the nodes need (empty: none)."""
    with contextlib.ExitStack() as stack:
        env = {}
        if args.local_s3:
            from local_s3 import local_s3
            env = stack.enter_context(local_s3())
            os.environ.update(env)
            print("s3_tfrecords: local S3 server at %s" % env["AWS_ENDPOINT_URL"], flush=True)
        if args.make_data:
            write_data(args.data, args.num_files, args.records_per_file)
        yield env


def write_data(uri, num_files, records_per_file):
    """Synthetic TFRecords of tf.train.Example (``x``: 8 floats, ``label``: 0 or 1) under
    ``uri``/train and ``uri``/test: written locally by TensorFlow, then copied up."""
    import numpy as np
    import tensorflow as tf

    import tfos
    rng = np.random.default_rng(SEED)
    weights = rng.normal(size=NUM_FEATURES)
    with tempfile.TemporaryDirectory(prefix="s3-tfrecords-") as local:
        for split, count in (("train", num_files), ("test", 1)):
            os.makedirs(os.path.join(local, split))
            for i in range(count):
                x = rng.normal(size=(records_per_file, NUM_FEATURES)).astype("float32")
                labels = (x @ weights > 0).astype("int64")
                path = os.path.join(local, split, "part-%05d.tfrecord" % i)
                with tf.io.TFRecordWriter(path) as writer:
                    for features, label in zip(x, labels):
                        writer.write(tf.train.Example(features=tf.train.Features(feature={
                            "x": tf.train.Feature(float_list=tf.train.FloatList(value=features)),
                            "label": tf.train.Feature(int64_list=tf.train.Int64List(
                                value=[label]))})).SerializeToString())
        written = tfos.files.upload_dir(local, uri)
    print("s3_tfrecords: wrote %d files to %s" % (len(written), uri), flush=True)


def build_model(tf):
    model = tf.keras.Sequential([tf.keras.layers.Input((NUM_FEATURES,)),
                                 tf.keras.layers.Dense(16, activation="relu"),
                                 tf.keras.layers.Dense(1, activation="sigmoid")])
    model.compile(optimizer=tf.keras.optimizers.Adam(0.01), loss="binary_crossentropy",
                  metrics=["accuracy"])
    return model


def record_parser(tf):
    """A record to ``(x, label)``. Not for AutoGraph: on Spark the nodes get this code pickled,
    without the source AutoGraph reads (and it has no Python control flow to convert)."""
    spec = {"x": tf.io.FixedLenFeature([NUM_FEATURES], tf.float32),
            "label": tf.io.FixedLenFeature([], tf.int64)}

    @tf.autograph.experimental.do_not_convert
    def parse(record):
        example = tf.io.parse_single_example(record, spec)
        return example["x"], example["label"]
    return parse


def main_fun(args, ctx):
    # TensorFlow starts here, after tfos has set TF_CONFIG (and Keras 2) in the node.
    os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
    import tensorflow as tf

    import tfos
    tf.keras.utils.set_random_seed(SEED)
    strategy = tf.distribute.MultiWorkerMirroredStrategy()   # one worker without TF_CONFIG
    is_chief = ctx is None or ctx.job_name == "chief"
    train = args.data.rstrip("/") + "/train"
    files = tfos.files.list_files(train)
    mine = tfos.files.worker_shard(files, ctx) if ctx is not None else files
    where = "%s:%d" % (ctx.job_name, ctx.task_index) if ctx is not None else "local"
    print("s3_tfrecords: %s reads %d of %d files: %s" % (
        where, len(mine), len(files), " ".join(os.path.basename(f) for f in mine)), flush=True)

    # This worker's shard (the whole set without ctx), repeated: every worker runs the same
    # steps per epoch even when shards differ in size.
    data = tfos.files.dataset(train, ctx, num_parallel_reads=2) \
        .map(record_parser(tf)).shuffle(2048, seed=SEED).repeat() \
        .batch(args.batch_size)
    with strategy.scope():
        model = build_model(tf)
    start = time.time()
    model.fit(data, epochs=args.epochs, steps_per_epoch=args.steps_per_epoch,
              verbose=2 if is_chief else 0)
    print("s3_tfrecords: trained %d epochs in %.1f s" % (args.epochs, time.time() - start))
    if args.model_dir:
        save(tf, model, args.model_dir, is_chief)
    if not is_chief:
        return {"files": mine}
    accuracy = evaluate(tf, model, args.data.rstrip("/") + "/test")
    print("test accuracy: %.4f" % accuracy, flush=True)
    return {"files": mine, "test_accuracy": accuracy}


def evaluate(tf, model, test_uri):
    """Accuracy on every test file, in this process alone (a plain copy of the model, so no
    other worker has to take part)."""
    import tfos
    local = build_model(tf)
    local.set_weights(model.get_weights())
    data = tfos.files.dataset(test_uri).map(record_parser(tf)).batch(256)
    return local.evaluate(data, verbose=0)[1]


def save(tf, model, model_dir, is_chief):
    """The SavedModel, written locally by TensorFlow, then copied to ``model_dir`` by the chief
    (every worker takes part in the save under MultiWorkerMirroredStrategy)."""
    import tfos
    with tempfile.TemporaryDirectory(prefix="s3-tfrecords-model-") as local:
        tfos.compat.export_saved_model(model, local, is_chief=is_chief)
        if is_chief:
            tfos.files.upload_dir(local, model_dir)
            print("s3_tfrecords: SavedModel copied to %s" % model_dir, flush=True)


if __name__ == "__main__":
    parser = add_arguments(argparse.ArgumentParser(description=__doc__.splitlines()[0]))
    args = finish_arguments(parser.parse_args())
    with data_store(args):
        main_fun(args, None)
