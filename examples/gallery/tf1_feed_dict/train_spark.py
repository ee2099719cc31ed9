"""A TF1-style graph (``tf.compat.v1``: placeholders, ``sess.run(train_op, feed_dict=...)``), on
Spark with tfos, as TensorFlowOnSpark users ran it.

``train_tf.py`` with between-graph replication: a parameter server holds the variables, every
worker builds the same graph (``replica_device_setter`` puts the variables on the ps) and
trains asynchronously, and Spark feeds every worker its share of the training rows, which it
reads in batches with TensorFlowOnSpark's ``TFNode.DataFeed(ctx.mgr).next_batch(n)``
(InputMode.SPARK). ``diff train_tf.py train_spark.py`` shows what moving it over takes.

The task: three classes of points in 8 dimensions, split by a fixed linear rule.

Usage (from the repository root)::

    export SPARK_LOCAL_IP=127.0.0.1 PYSPARK_PYTHON=$PWD/.venv/bin/python
    python examples/gallery/tf1_feed_dict/train_spark.py --cluster_size 3 --num_ps 1 \\
        --master "local[4]" --rows 20000 --epochs 3
"""
import time

import numpy as np

import tfos
from tfos import TFNode

FEATURES, HIDDEN, CLASSES = 8, 16, 3


def make_points(rows, seed):
    """``rows`` points (float32, 8 features) and their class, from a fixed linear rule."""
    rule = np.random.default_rng(0).normal(0, 1, (FEATURES, CLASSES))
    points = np.random.default_rng(seed).normal(0, 1, (rows, FEATURES)).astype("float32")
    return points, np.argmax(points @ rule, axis=1).astype("int64")


def build_graph(tf1):
    """Placeholders, variables, loss, train op and accuracy, as TF1 code wrote them."""
    x = tf1.placeholder(tf1.float32, [None, FEATURES], name="x")
    y_ = tf1.placeholder(tf1.int64, [None], name="y_")
    w1 = tf1.get_variable("w1", [FEATURES, HIDDEN], initializer=tf1.glorot_uniform_initializer())
    b1 = tf1.get_variable("b1", [HIDDEN], initializer=tf1.zeros_initializer())
    w2 = tf1.get_variable("w2", [HIDDEN, CLASSES], initializer=tf1.glorot_uniform_initializer())
    b2 = tf1.get_variable("b2", [CLASSES], initializer=tf1.zeros_initializer())
    logits = tf1.matmul(tf1.nn.relu(tf1.matmul(x, w1) + b1), w2) + b2
    loss = tf1.losses.sparse_softmax_cross_entropy(y_, logits)
    global_step = tf1.train.get_or_create_global_step()
    train_op = tf1.train.AdamOptimizer(0.01).minimize(loss, global_step=global_step)
    accuracy = tf1.reduce_mean(tf1.cast(tf1.equal(tf1.argmax(logits, 1), y_), tf1.float32))
    return x, y_, loss, train_op, global_step, accuracy


def main_fun(args, ctx):
    # Runs on every node, with TF_CONFIG set by tfos.
    import tensorflow as tf
    tf1 = tf.compat.v1
    tf1.disable_eager_execution()
    tf1.set_random_seed(args.seed)

    cluster, server = ctx.start_cluster_server()
    if ctx.job_name == "ps":
        server.join()     # serves the variables; tfos stops it once the workers are done
        return

    # Between-graph replication: this worker's graph, its variables on the ps.
    worker = f"/job:worker/task:{ctx.task_index}"
    with tf1.device(tf1.train.replica_device_setter(worker_device=worker, cluster=cluster)):
        x, y_, loss, train_op, global_step, accuracy = build_graph(tf1)

    is_chief = ctx.task_index == 0                   # worker 0 initializes the variables
    config = tf1.ConfigProto(device_filters=["/job:ps", worker])   # no waiting for other workers
    if not is_chief:
        wait_for_chief(tf1, server.target, config)

    feed = TFNode.DataFeed(ctx.mgr)                  # this worker's rows, as Spark feeds them
    test_points, test_labels = make_points(2000, seed=12345)
    start, local_steps, rows = time.time(), 0, 0
    with tf1.train.MonitoredTrainingSession(master=server.target, is_chief=is_chief,
                                           config=config) as sess:
        while not feed.should_stop():                # until every epoch Spark feeds is read
            batch = feed.next_batch(args.batch_size)     # a list of (points, label) rows
            if not batch:
                continue
            points, labels = zip(*batch)
            _, step, batch_loss = sess.run([train_op, global_step, loss],
                                           feed_dict={x: points, y_: labels})
            local_steps, rows = local_steps + 1, rows + len(labels)
            if local_steps % args.log_every == 0:
                print(f"tf1_feed_dict: step {step}: loss {batch_loss:.4f}")
        test_accuracy = sess.run(accuracy, feed_dict={x: test_points, y_: test_labels})
    print(f"tf1_feed_dict: {local_steps} steps ({rows} rows) in {time.time() - start:.1f} s")
    print(f"tf1_feed_dict: test accuracy {test_accuracy:.4f} (chance about 0.33)")


def wait_for_chief(tf1, target, config):
    """Waits until the chief has initialized the variables on the ps. MonitoredTrainingSession
    waits too, but checks only every 30 s (its SessionManager's recovery_wait_secs)."""
    not_ready = tf1.report_uninitialized_variables()
    deadline = time.monotonic() + 300
    with tf1.Session(target, config=config) as sess:
        while len(sess.run(not_ready)):
            if time.monotonic() > deadline:
                raise TimeoutError("the chief did not initialize the variables within 300 s; "
                                   "see its output")
            time.sleep(0.2)


def point_rows(spark, rows, partitions, seed):
    """The training points as an RDD of (points, label) rows, made by Spark tasks."""
    per_partition = rows // partitions

    def partition_rows(index):
        points, labels = make_points(per_partition, seed + index)
        return zip(points, labels.tolist())

    return spark.sparkContext.parallelize(range(partitions), partitions).flatMap(partition_rows)


if __name__ == "__main__":
    parser = tfos.cli.argument_parser("TF1-style graph and feed_dict on Spark with tfos")
    parser.add_argument("--rows", type=int, default=20000, help="training points")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch_size", type=int, default=100)
    parser.add_argument("--log_every", type=int, default=100, help="print the loss every N steps")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--partitions", type=int, default=4)
    # ps:0, worker:0, worker:1; Spark feeds the workers (a task slot beside each for its feed).
    parser.set_defaults(cluster_size=3, num_ps=1, input_mode="spark")
    args = parser.parse_args()
    spark = tfos.cli.spark_session(args, app_name="tf1_feed_dict")

    # Cached: tfos counts every partition's rows once, then reads them every epoch.
    train_rdd = point_rows(spark, args.rows, args.partitions, args.seed).cache()
    cluster = tfos.TFCluster.run(spark, main_fun, args, num_executors=args.cluster_size,
                                 num_ps=args.num_ps, input_mode=tfos.InputMode.SPARK)
    cluster.train(train_rdd, num_epochs=args.epochs)
    cluster.shutdown()
    spark.stop()
