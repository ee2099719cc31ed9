"""The image test's tfos job (driver): 2 TF nodes fed by Spark (InputMode.SPARK) on the
standalone cluster that the image's units started inside the built root.

run_units.py runs it inside the root as the ``spark`` user from a login shell (so with the
image's /etc/profile.d/tfos.sh). The RDD holds ``--records`` rows ``(x, y, id)`` with
``y = 3x + 1``; each node fits ``w, b`` by gradient descent on the rows it is fed and returns,
per epoch, the ids it saw. The driver writes what every node returned to ``--result`` (JSON);
tests/ami/test_chroot.py checks it.
"""
import argparse
import json
import os
import time

import tfos


def main_fun(args, ctx):
    """One node: trains y = w x + b on its feed; returns the ids seen in each epoch."""
    import tensorflow as tf

    feed = ctx.get_data_feed()
    w, b = tf.Variable(0.0), tf.Variable(0.0)
    epochs, loss = [], None
    while True:
        ids = []
        while (batch := feed.next_columns(args["batch"], within_epoch=True)):
            x = tf.constant(batch["0"], tf.float32)
            y = tf.constant(batch["1"], tf.float32)
            with tf.GradientTape() as tape:
                loss = tf.reduce_mean((w * x + b - y) ** 2)
            dw, db = tape.gradient(loss, [w, b])
            w.assign_sub(args["learning_rate"] * dw)
            b.assign_sub(args["learning_rate"] * db)
            ids.extend(int(i) for i in batch["2"])
        if batch is None:
            break
        epochs.append(ids)
    return {"epochs": epochs, "loss": None if loss is None else float(loss), "w": float(w),
            "b": float(b), "tensorflow": tf.__version__, "cwd": os.getcwd()}


def rows(records, seed=7):
    import random
    rng = random.Random(seed)
    for i in range(records):
        x = rng.uniform(-1.0, 1.0)
        yield (x, 3.0 * x + 1.0, i)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--master", required=True)
    parser.add_argument("--records", type=int, default=400)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--partitions", type=int, default=8)
    parser.add_argument("--result", required=True)
    options = parser.parse_args()
    start = time.monotonic()
    spark = tfos.cli.spark_session(
        argparse.Namespace(master=options.master, cluster_size=2, input_mode="spark"),
        app_name="tfos-ami-test", executor_memory_mb=1024,
        # Two executors of 2 cores on the one worker: a TF node and its feed task each.
        conf={"spark.executor.cores": "2", "spark.cores.max": "4"})
    sc = spark.sparkContext
    data = sc.parallelize(list(rows(options.records)), options.partitions)
    cluster = tfos.TFCluster.run(sc, main_fun, {"batch": 10, "learning_rate": 0.5},
                                 num_executors=2, input_mode=tfos.InputMode.SPARK)
    cluster.train(data, num_epochs=options.epochs)
    cluster.shutdown()
    result = {"records": options.records, "epochs": options.epochs, "nodes": cluster.results,
              "spark": spark.version, "master": sc.master,
              "seconds": round(time.monotonic() - start, 1)}
    spark.stop()
    with open(options.result, "w") as f:
        json.dump(result, f)
    print("ami_job: %d records, %d epochs, nodes %s, %.1f s"
          % (options.records, options.epochs, sorted(result["nodes"]), result["seconds"]))


if __name__ == "__main__":
    main()
