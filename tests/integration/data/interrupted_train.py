"""A driver script interrupted during train(), as a person at a terminal would (Ctrl-C to the
whole process group). Prints what happened; the test reads it. Usage: interrupted_train.py."""
import json
import sys
import time

import tfos


def slow_fun(args, ctx):
    """Reads its feed slowly until the feed ends; returns how many rows it read."""
    feed = ctx.get_data_feed()
    seen = 0
    while not feed.should_stop():
        batch = feed.next_batch(10)
        if batch and not seen:
            print("FIRST BATCH", flush=True)
        seen += len(batch)
        time.sleep(0.05)
    return seen


def image(i):
    """A row of one 8 KB array column."""
    import numpy as np
    return (np.full(2000, i, np.float32),)


if __name__ == "__main__":
    args = tfos.cli.argument_parser("interrupted train").parse_args(
        ["--cluster_size", "2", "--input_mode", "spark"])
    spark = tfos.cli.spark_session(args, app_name="interrupted-train")
    sc = spark.sparkContext
    # Small feed buffers: train() blocks on the slow readers instead of handing them it all.
    cluster = tfos.TFCluster.run(spark, slow_fun, None, 2, input_mode=tfos.InputMode.SPARK,
                                 log_stream=sys.stdout, feed_buffer_bytes=4 << 20)
    print("TRAINING", flush=True)
    started = time.monotonic()
    try:
        # 160 MB: far more than the buffers take in while the nodes read 200 rows/s each.
        rows = sc.range(20_000, numSlices=4).map(image)
        cluster.train(rows, num_epochs=1)
        print("NOT INTERRUPTED", flush=True)
    except KeyboardInterrupt:
        print(f"INTERRUPTED after {time.monotonic() - started:.1f} s", flush=True)
    # Spark's status tracker learns of a job's end from its listener bus, a moment later.
    deadline = time.monotonic() + 10
    while True:
        running = set(sc.statusTracker().getActiveJobsIds()) - set(
            sc.statusTracker().getJobIdsForGroup(cluster.job_group))
        if not running or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    print(f"OTHER JOBS RUNNING {sorted(running)}", flush=True)
    cluster.train(sc.range(40, numSlices=2).map(image), num_epochs=1)
    cluster.shutdown(timeout=120)
    print("RESULTS " + json.dumps(cluster.results), flush=True)
    spark.stop()
