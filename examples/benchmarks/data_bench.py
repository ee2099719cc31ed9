"""Reading TFRecords with ``tfos.files`` beside TensorFlow's own reader, locally and from S3.

Writes ``--mb`` MB of TFRecords (``--record_bytes`` per record, MNIST-sized by default) to a
local directory and to a local S3 server (moto, in a process of its own: the gallery's
``local_s3.py``), then reads them all, each way ``--repeats`` times in turn, and prints the
median records/s and MB/s of each beside ``tf.data.TFRecordDataset`` on the local files:

* ``tf.data.TFRecordDataset`` on the local files: the baseline;
* ``tfos.files.dataset`` on the same local files (TensorFlow's reader underneath);
* ``tfos.files.dataset`` on S3, one file at a time and ``--parallel`` files at once;
* the S3 server's own ceiling: every object fetched whole, nothing parsed (s3fs ``cat``).

Usage::

    python examples/benchmarks/data_bench.py                 # 256 MB
    python examples/benchmarks/data_bench.py --mb 8 --repeats 1
"""
import argparse
import os
import statistics
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "gallery", "s3_tfrecords"))   # local_s3.py


def write_files(local_dir, s3_fs, s3_dir, mb, record_bytes, num_files, seed=0):
    """The same TFRecord files locally and on S3; returns the record count and bytes."""
    import numpy as np

    from tfos.core import tfrecord
    rng = np.random.default_rng(seed)
    per_file = max(1, mb * 2**20 // (record_bytes + 16) // num_files)
    total = 0
    for i in range(num_files):
        data = b"".join(tfrecord.frame(rng.bytes(record_bytes)) for _ in range(per_file))
        name = "part-%05d.tfrecord" % i
        with open(os.path.join(local_dir, name), "wb") as out:
            out.write(data)
        s3_fs.pipe("%s/%s" % (s3_dir, name), data)
        total += len(data)
    return per_file * num_files, total


def count(dataset, batch=256):
    return sum(int(b.shape[0]) for b in dataset.batch(batch))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=int, default=256)
    parser.add_argument("--record_bytes", type=int, default=3144)
    parser.add_argument("--files", type=int, default=8)
    parser.add_argument("--parallel", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from local_s3 import local_s3

    with local_s3("bench") as env, tempfile.TemporaryDirectory(prefix="data-bench-") as local:
        os.environ.update(env)
        import s3fs
        import tensorflow as tf

        import tfos
        s3_fs = s3fs.S3FileSystem(endpoint_url=env["AWS_ENDPOINT_URL"], key="demo",
                                  secret="demo")
        records, size = write_files(local, s3_fs, "bench/data", args.mb, args.record_bytes,
                                    args.files)
        local_files = sorted(os.path.join(local, n) for n in os.listdir(local))
        remote = "s3://bench/data"
        ways = {
            "tf.data.TFRecordDataset, local": lambda: count(tf.data.TFRecordDataset(
                local_files, num_parallel_reads=args.parallel)),
            "tfos.files.dataset, local": lambda: count(tfos.files.dataset(
                local, num_parallel_reads=args.parallel)),
            "tfos.files.dataset, S3, 1 file at a time": lambda: count(tfos.files.dataset(
                remote)),
            "tfos.files.dataset, S3, %d files at once" % args.parallel: lambda: count(
                tfos.files.dataset(remote, num_parallel_reads=args.parallel)),
            "S3 server ceiling (whole objects, no parsing)": lambda: records if sum(
                len(v) for v in s3_fs.cat(s3_fs.ls("bench/data")).values()) == size else 0,
        }
        seconds = {name: [] for name in ways}
        for _ in range(args.repeats):
            for name, read in ways.items():   # in turn, so a slow moment hits every way
                start = time.perf_counter()
                got = read()
                seconds[name].append(time.perf_counter() - start)
                assert got == records, (name, got, records)
    print("data_bench: %d records of %d bytes in %d files, %.1f MB; median of %d runs"
          % (records, args.record_bytes, args.files, size / 1e6, args.repeats))
    baseline = statistics.median(seconds["tf.data.TFRecordDataset, local"])
    for name, runs in seconds.items():
        median = statistics.median(runs)
        print("  %-48s %10.0f records/s %8.1f MB/s  %5.2fx baseline"
              % (name, records / median, size / 1e6 / median, baseline / median))


if __name__ == "__main__":
    main()
