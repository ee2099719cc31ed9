"""Trains a small CNN on MNIST-shaped data with plain TensorFlow: no Spark needed.

``main_fun(args, ctx)`` is the whole training. Run as a script it is called once with
``ctx=None``; ``mnist_spark.py`` runs the very same function on every node of a tfos cluster.
The strategy follows ``TF_CONFIG``, whoever set it (you, or tfos on a Spark executor):

* no ``TF_CONFIG``: one process, MultiWorkerMirroredStrategy with a single worker;
* a cluster of ``chief``/``worker`` tasks: MultiWorkerMirroredStrategy, every task trains;
* a cluster with a ``ps`` job: ParameterServerStrategy; the ``chief`` is the coordinator that
  runs ``model.fit``, the ``worker`` and ``ps`` tasks only serve (``server.join()``).

With ``--input_mode spark`` (a tfos flag: ``mnist_spark.py --input_mode spark``) the training
rows come from Spark instead of the files: tfos feeds every chief and worker its share of a
DataFrame through ``ctx.get_data_feed()``, read here as a ``tf.data.Dataset``
(MultiWorkerMirroredStrategy only).

At the end the chief evaluates the trained weights on the whole test set, prints one line
``test accuracy: 0.XXXX`` and, with ``--model_dir``, saves a SavedModel there.

Usage (after ``python examples/mnist/mnist_data_setup.py --output data/mnist``)::

    python examples/mnist/mnist_tf.py --data_dir data/mnist --epochs 3
"""
import argparse
import importlib.util
import json
import os
import shutil
import tempfile
import time

SEED = 42


def add_arguments(parser):
    """The flags of this example; mnist_spark.py adds the same ones to the tfos parser."""
    parser.add_argument("--data_dir", default="data/mnist",
                        help="output of mnist_data_setup.py (default: %(default)s)")
    parser.add_argument("--format", choices=["tfrecord", "csv"], default="tfrecord",
                        help="which of the written shards to read (default: %(default)s)")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch_size", type=int, default=32,
                        help="batch size per worker (replica); a synchronous step of N workers "
                        "takes N times as many images (default: %(default)s)")
    parser.add_argument("--model_dir", help="where the chief saves the trained model (SavedModel)")
    return parser


def main_fun(args, ctx):
    # TensorFlow is imported here, not at the top: it must start after TF_CONFIG and
    # TF_USE_LEGACY_KERAS are in the environment, and the Spark driver importing this module
    # for main_fun has no use for it.
    os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")  # warnings, not TensorFlow's INFO chatter
    import mnist_model
    import tensorflow as tf

    tf_config = json.loads(os.environ.get("TF_CONFIG") or "{}")
    cluster, task = tf_config.get("cluster", {}), tf_config.get("task", {})
    task_type, task_index = task.get("type"), task.get("index", 0)
    use_ps = bool(cluster.get("ps"))
    if use_ps and task_type in ("worker", "ps"):
        return _serve(tf, ctx)
    if task_type == "evaluator":
        print("mnist: the chief evaluates at the end of training; nothing to do on an evaluator")
        return
    is_chief = task_type in (None, "chief") or (task_type == "worker" and task_index == 0
                                                and "chief" not in cluster)

    tf.keras.utils.set_random_seed(SEED)
    resolver = tf.distribute.cluster_resolver.TFConfigClusterResolver()
    if use_ps:
        strategy = tf.distribute.experimental.ParameterServerStrategy(resolver)
    else:
        strategy = tf.distribute.MultiWorkerMirroredStrategy(cluster_resolver=resolver)

    with strategy.scope():
        model = mnist_model.build_model()
    global_batch_size = args.batch_size * strategy.num_replicas_in_sync
    if getattr(args, "input_mode", "tensorflow") == "spark":
        # tfos feeds this worker its share of a Spark DataFrame, epoch by epoch.
        train_input, steps_per_epoch = _fed_dataset(tf, ctx, global_batch_size), None
        source = "rows fed by Spark"
    else:
        train_files = mnist_model.list_files(args.data_dir, "train", args.format)

        def train_dataset(input_context):
            # Each worker reads its own share (whole files when they divide evenly, else
            # records), repeated: steps_per_epoch ends every epoch, so all workers run the same
            # number of steps.
            return mnist_model.make_dataset(
                train_files, args.batch_size, shuffle=True, repeat=True, seed=SEED,
                shard=(input_context.num_input_pipelines, input_context.input_pipeline_id))

        train_input = tf.keras.utils.experimental.DatasetCreator(train_dataset)
        steps_per_epoch = -(-mnist_model.count_records(train_files) // global_batch_size)
        source = "%d %s files, %d steps per epoch" % (len(train_files), args.format,
                                                      steps_per_epoch)
    print("mnist: %s on %s:%d, %s" % (
        "ParameterServerStrategy" if use_ps else "MultiWorkerMirroredStrategy",
        task_type or "local", task_index, source))
    # TensorBoard summaries from the chief: into tfos's log directory (--tensorboard, --log_dir)
    # on Spark, into --log_dir when run alone.
    log_dir = ctx.log_dir if ctx is not None else getattr(args, "log_dir", None)
    callbacks = _tensorboard(tf, log_dir) if is_chief and log_dir else []
    if ctx is not None:   # epoch, step and loss in the driver's progress display
        callbacks.append(ctx.progress_callback())
    start = time.time()
    model.fit(train_input, epochs=args.epochs, steps_per_epoch=steps_per_epoch,
              callbacks=callbacks, verbose=2 if is_chief else 0)
    print("mnist: trained %d epochs in %.1f s" % (args.epochs, time.time() - start))

    if args.model_dir:
        _save(model, args.model_dir, is_chief, use_ps)
    if is_chief:
        print("test accuracy: %.4f" % _evaluate(model, args, mnist_model))


def _fed_dataset(tf, ctx, global_batch_size):
    """InputMode.SPARK: the (image, label) batches tfos feeds this worker, one epoch per pass.

    Every worker already holds its own, equally large share, so tf.distribute must not shard it
    again (its default would keep 1/N of each worker's rows). Keras takes a dataset's batch as
    the global batch and cuts it into one slice per replica of the cluster; with sharding off a
    worker runs each slice as a step, so global batches give every replica ``--batch_size``
    rows per step, as the files do.
    """
    feed = ctx.get_data_feed(train_mode=True, qname_in="input")
    dataset = feed.dataset(global_batch_size, columns=["image", "label"])
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
    return dataset.with_options(options)


def _serve(tf, ctx):
    """Serves this task's TensorFlow server to the ParameterServerStrategy coordinator, forever."""
    if ctx is not None:
        _, server = ctx.start_cluster_server()
    else:
        resolver = tf.distribute.cluster_resolver.TFConfigClusterResolver()
        server = tf.distribute.Server(resolver.cluster_spec(), job_name=resolver.task_type,
                                      task_index=resolver.task_id,
                                      protocol=resolver.rpc_layer or "grpc", start=True)
    server.join()


def _tensorboard(tf, log_dir):
    if importlib.util.find_spec("tensorboard") is None:
        print("mnist: no summaries in %s: TensorBoard is not installed (pip install tensorboard)"
              % log_dir)
        return []
    return [tf.keras.callbacks.TensorBoard(log_dir)]


def _save(model, model_dir, is_chief, use_ps):
    """Saves on the chief. Under MultiWorkerMirroredStrategy every worker must take part in the
    save, so the others write to a throw-away directory."""
    if is_chief:
        model.save(model_dir)
        print("mnist: saved the model to %s" % model_dir)
    elif not use_ps:
        scratch = tempfile.mkdtemp(prefix="mnist-worker-model-")
        try:
            model.save(scratch)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)


def _evaluate(model, args, mnist_model):
    """Accuracy of the trained weights on the whole test set, computed in this process alone
    (a plain copy of the model, so no other worker has to take part)."""
    local = mnist_model.build_model()
    local.set_weights(model.get_weights())
    test_files = mnist_model.list_files(args.data_dir, "test", args.format)
    _, accuracy = local.evaluate(mnist_model.make_dataset(test_files, 256), verbose=0)
    return accuracy


if __name__ == "__main__":
    parser = add_arguments(argparse.ArgumentParser(description="MNIST with plain TensorFlow"))
    parser.add_argument("--log_dir", help="TensorBoard log directory (tfos's flags have one too)")
    main_fun(parser.parse_args(), None)
