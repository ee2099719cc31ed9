"""Trains ``train_tf.main_fun`` on a TF cluster that tfos starts on Spark (driver side).

InputMode.TENSORFLOW: Spark only hosts the nodes (chief:0 and worker:0 by default); each
reads its own shard of the TFRecord files in S3 through ``tfos.files`` and they train
together under MultiWorkerMirroredStrategy. The nodes find S3 through the standard AWS
variables: this script hands the ones set here to them (``TFCluster.run(env=...)``); on a
real cluster you may set them as ``spark.executorEnv.*`` instead.

Usage (from the repository root)::

    python examples/gallery/s3_tfrecords/train_spark.py --local_s3
    python examples/gallery/s3_tfrecords/train_spark.py --data s3a://my-bucket/synthetic
"""
import os
import time

from train_tf import add_arguments, data_store, finish_arguments, main_fun

import tfos

AWS_VARIABLES = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN",
                 "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_REGION", "AWS_DEFAULT_REGION")


def absolute(path):
    """A local path made absolute: the nodes run in their executors' working directories."""
    return path if not path or "://" in path else os.path.abspath(path)


if __name__ == "__main__":
    parser = add_arguments(tfos.cli.argument_parser("TFRecords in S3, on Spark with tfos"))
    parser.set_defaults(cluster_size=2)
    args = finish_arguments(parser.parse_args())
    args.data, args.model_dir = absolute(args.data), absolute(args.model_dir)
    with data_store(args) as local_env:
        env = {name: os.environ[name] for name in AWS_VARIABLES if name in os.environ}
        env.update(local_env)
        spark = tfos.cli.spark_session(args, app_name="s3_tfrecords")
        start = time.time()
        cluster = tfos.TFCluster.run(spark, main_fun, args, num_executors=args.cluster_size,
                                     master_node="chief", env=env,
                                     input_mode=tfos.InputMode.TENSORFLOW)
        cluster.shutdown()
        for node, result in sorted(cluster.results.items()):
            print("s3_tfrecords: %s read %s" % (node, " ".join(os.path.basename(f)
                                                                for f in result["files"])))
        print("s3_tfrecords: TF cluster ran %.1f s, from TFCluster.run to shutdown"
              % (time.time() - start))
        spark.stop()
