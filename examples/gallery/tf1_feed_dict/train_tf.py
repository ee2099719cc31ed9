"""A TF1-style graph (``tf.compat.v1``: placeholders, ``sess.run(train_op, feed_dict=...)``), with
plain TensorFlow in one process.

The way TensorFlow 1 code trained: build a graph of placeholders and variables, then feed numpy
batches into ``MonitoredTrainingSession.run``. ``train_spark.py`` is the same graph as
TensorFlowOnSpark users ran it: between-graph replication (a parameter server holds the
variables, every worker builds the graph and trains asynchronously) with the batches fed by
Spark (``TFNode.DataFeed(ctx.mgr).next_batch``). ``diff train_tf.py train_spark.py`` shows what
moving it over takes.

The task: three classes of points in 8 dimensions, split by a fixed linear rule.

Usage::

    python examples/gallery/tf1_feed_dict/train_tf.py --rows 20000 --epochs 3
"""
import argparse
import os
import time

import numpy as np

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


def main_fun(args):
    # TensorFlow's INFO and WARNING lines: a distributed TF1 session prints many, all harmless.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf
    tf1 = tf.compat.v1
    tf1.disable_eager_execution()
    tf1.set_random_seed(args.seed)

    x, y_, loss, train_op, global_step, accuracy = build_graph(tf1)

    all_points, all_labels = make_points(args.rows, args.seed)
    test_points, test_labels = make_points(2000, seed=12345)
    start, local_steps, rows = time.time(), 0, 0
    with tf1.train.MonitoredTrainingSession() as sess:
        for _ in range(args.epochs):
            for i in range(0, args.rows, args.batch_size):
                points = all_points[i:i + args.batch_size]
                labels = all_labels[i:i + args.batch_size]
                _, step, batch_loss = sess.run([train_op, global_step, loss],
                                               feed_dict={x: points, y_: labels})
                local_steps, rows = local_steps + 1, rows + len(labels)
                if local_steps % args.log_every == 0:
                    print(f"tf1_feed_dict: step {step}: loss {batch_loss:.4f}")
        test_accuracy = sess.run(accuracy, feed_dict={x: test_points, y_: test_labels})
    print(f"tf1_feed_dict: {local_steps} steps ({rows} rows) in {time.time() - start:.1f} s")
    print(f"tf1_feed_dict: test accuracy {test_accuracy:.4f} (chance about 0.33)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="TF1-style graph and feed_dict, plain TensorFlow")
    parser.add_argument("--rows", type=int, default=20000, help="training points")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch_size", type=int, default=100)
    parser.add_argument("--log_every", type=int, default=100, help="print the loss every N steps")
    parser.add_argument("--seed", type=int, default=1)
    main_fun(parser.parse_args())
