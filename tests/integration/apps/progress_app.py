"""A two-node cluster fed by Spark, for a test that runs it on a terminal (a pty): tfos's
progress display, node lines above it, Spark's own console progress bar switched on."""
import sys

import numpy as np
from pyspark.sql import SparkSession

import tfos


def main_fun(args, ctx):
    feed = ctx.get_data_feed()
    rows = 0
    while not feed.should_stop():
        batch = feed.next_batch(50)
        rows += len(batch)
        ctx.report_progress(epoch=1, step=rows // 50, loss=1.0 / (1 + rows))
    print(f"read {rows} rows")


if __name__ == "__main__":
    spark = (SparkSession.builder.master("local[3]").appName("tfos-progress")
             .config("spark.ui.showConsoleProgress", "true").getOrCreate())
    data = spark.sparkContext.parallelize([(np.ones(4, np.float32), 1.0)] * 2000, 4)
    cluster = tfos.TFCluster.run(spark, main_fun, {}, 2, input_mode=tfos.InputMode.SPARK,
                                 log_stream=sys.stderr)
    cluster.train(data.map(lambda row: row), num_epochs=3)
    cluster.shutdown()
    print("APP DONE", flush=True)
    spark.stop()
