"""A Spark application that starts a tfos cluster under the settings given on its command line.

Run by tests/integration/test_preflight.py as a process of its own, because each case needs a
SparkContext configured differently. Prints one JSON line: the error type, message and seconds.
"""
import json
import sys
import time

from pyspark.sql import SparkSession

import tfos


def idle(args, ctx):
    pass


def main() -> None:
    master, nodes, *settings = sys.argv[1:]
    builder = SparkSession.builder.master(master).appName("tfos-preflight")
    for setting in settings:
        key, value = setting.split("=", 1)
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    start = time.monotonic()
    outcome = {"error": None}
    try:
        tfos.TFCluster.run(spark, idle, None, num_executors=int(nodes), log_stream=None,
                           reservation_timeout=60).shutdown(timeout=60)
    except tfos.TfosError as exc:
        outcome = {"error": type(exc).__name__, "message": str(exc)}
    outcome["seconds"] = time.monotonic() - start
    print(json.dumps(outcome))
    spark.stop()


if __name__ == "__main__":
    main()
