"""InputMode.TENSORFLOW from S3: two nodes on a real Spark each read their own shard of the
TFRecords on a local S3 server (moto) through ``tfos.files`` and train together."""
import numpy as np
import pytest
from s3_server import s3  # noqa: F401 - the fixture

import tfos
from tfos.core import tfrecord

FILES, PER_FILE = 4, 64


def write_examples(s3):  # noqa: F811
    """y = 3x - 1 as tf.train.Examples with an ``id``, ``PER_FILE`` per file."""
    fs = s3.filesystem()
    rng = np.random.default_rng(0)
    for f in range(FILES):
        x = rng.uniform(-1, 1, PER_FILE)
        records = [tfrecord.encode_example({"id": ("int64", [f * PER_FILE + i]),
                                            "x": ("float", [x[i]]),
                                            "y": ("float", [3 * x[i] - 1])})
                   for i in range(PER_FILE)]
        fs.pipe(f"{s3.bucket}/train/part-{f:05d}.tfrecord",
                b"".join(tfrecord.frame(r) for r in records))
    return s3.uri("train", scheme="s3a")   # Hadoop's scheme, as Spark jobs write it


def train_from_s3(args, ctx):
    import tensorflow as tf

    import tfos
    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    spec = {name: tf.io.FixedLenFeature([], dtype)
            for name, dtype in (("id", tf.int64), ("x", tf.float32), ("y", tf.float32))}
    data = tfos.files.dataset(args["data"], ctx, num_parallel_reads=2) \
        .map(lambda record: tf.io.parse_single_example(record, spec))
    ids = [int(row["id"]) for row in data.as_numpy_iterator()]   # what this node reads
    with strategy.scope():
        model = tf.keras.Sequential([tf.keras.layers.Input((1,)), tf.keras.layers.Dense(1)])
        model.compile(optimizer=tf.keras.optimizers.SGD(0.1), loss="mse")
    # Shards may differ in length: repeat, and let every worker take the same steps.
    pairs = data.map(lambda row: (tf.reshape(row["x"], [1]), row["y"])).repeat().batch(16)
    history = model.fit(pairs, epochs=4, steps_per_epoch=8, verbose=0)
    return {"files": tfos.files.worker_shard(tfos.files.list_files(args["data"]), ctx),
            "ids": ids, "loss": history.history["loss"],
            "weights": [float(w) for w in np.concatenate([v.numpy().ravel()
                                                          for v in model.weights])]}


@pytest.fixture
def spark_local_2(spark_sessions):
    """Embedded Spark, ``local[2]``: two task slots in the driver's JVM (the quickest start)."""
    return spark_sessions.get("local[2]")


def test_two_workers_train_on_disjoint_shards_of_tfrecords_on_s3(spark_local_2, s3):  # noqa: F811
    data = write_examples(s3)
    # The nodes find the server through the standard AWS variables of their environment.
    with tfos.TFCluster.run(spark_local_2, train_from_s3, {"data": data},
                            num_executors=2, master_node="chief", env=s3.env) as cluster:
        cluster.shutdown(timeout=300)
    results = cluster.results
    chief, worker = results["chief:0"], results["worker:0"]
    assert chief["files"] == [f"{data}/part-00000.tfrecord", f"{data}/part-00002.tfrecord"]
    assert worker["files"] == [f"{data}/part-00001.tfrecord", f"{data}/part-00003.tfrecord"]
    assert not set(chief["ids"]) & set(worker["ids"])
    assert sorted(chief["ids"] + worker["ids"]) == list(range(FILES * PER_FILE))
    for result in (chief, worker):
        assert result["loss"][-1] < 0.05 * result["loss"][0], result["loss"]
    np.testing.assert_allclose(chief["weights"], worker["weights"], rtol=1e-5)
