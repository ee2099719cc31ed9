"""The gallery's S3 TFRecords example end to end: plain TensorFlow with the local S3 server it
starts itself, and on Spark (two nodes, a shard each) against this session's S3 server."""
import os
import re
import subprocess
import sys

from conftest import REPO
from s3_server import s3  # noqa: F401 - the fixture

GALLERY = REPO / "examples" / "gallery" / "s3_tfrecords"
SMALL = ("--records_per_file", "256", "--epochs", "2", "--steps_per_epoch", "16")


def run(*argv, timeout=300) -> str:
    result = subprocess.run([sys.executable, *map(str, argv)], capture_output=True, text=True,
                            timeout=timeout, cwd=REPO, env=dict(os.environ))
    assert result.returncode == 0, result.stderr[-4000:]
    return result.stdout + result.stderr


def accuracy(output: str, prefix: str = "") -> float:
    found = re.findall(re.escape(prefix) + r"test accuracy: ([0-9.]+)", output)
    assert len(found) == 1, output[-4000:]
    return float(found[0])


def test_plain_tensorflow_with_the_local_s3_server_it_starts():
    output = run(GALLERY / "train_tf.py", "--local_s3", *SMALL, "--model_dir",
                 "s3://tfos-demo/model")
    assert "s3_tfrecords: wrote 5 files to s3://tfos-demo/synthetic" in output
    assert "s3_tfrecords: local reads 4 of 4 files" in output
    assert "s3_tfrecords: SavedModel copied to s3://tfos-demo/model" in output
    assert accuracy(output) > 0.85


def test_on_spark_each_node_reads_its_own_shard(s3):  # noqa: F811
    output = run(GALLERY / "train_spark.py", "--data", s3.uri("gallery", "s3a"), "--make_data",
                 *SMALL, "--master", "local[2]")
    assert "s3_tfrecords: chief:0 read part-00000.tfrecord part-00002.tfrecord" in output
    assert "s3_tfrecords: worker:0 read part-00001.tfrecord part-00003.tfrecord" in output
    assert accuracy(output, "] ") > 0.85   # the chief's line, prefixed [chief:0@host]
