"""TensorFlowOnSpark scripts with only the import renamed, on a real local-cluster."""
import json
import os

import tfos
from tfos import TFCluster, TFNode


def squares_fun(args, ctx):
    """TensorFlowOnSpark's inference loop, as its users wrote it, plus a look at the port."""
    port = ctx.tmp_socket.getsockname()[1]     # release_port=False: held until released
    TFNode.release_port(ctx)
    record = {"held": port, "address": ctx.cluster_spec[ctx.job_name][ctx.task_index],
              "released": ctx.tmp_socket is None}
    with open(os.path.join(args["out"], f"{ctx.job_name}-{ctx.task_index}.json"), "w") as f:
        json.dump(record, f)
    tf_feed = TFNode.DataFeed(ctx.mgr, False)
    while not tf_feed.should_stop():
        batch = tf_feed.next_batch(10)
        if len(batch) > 0:
            tf_feed.batch_results([x * x for x in batch])


def test_positional_run_datafeed_of_ctx_mgr_inference_and_a_held_port(spark_local_cluster_4x1,
                                                                       tmp_path):
    sc = spark_local_cluster_4x1.sparkContext
    cluster = TFCluster.run(sc, squares_fun, {"out": str(tmp_path)}, 2, 0, False,
                            TFCluster.InputMode.SPARK, None, False, None, 600,
                            ["input", "output", "error"], False, False)
    squares = cluster.inference(sc.parallelize(range(1000), 10)).collect()
    assert squares == [x * x for x in range(1000)] and sum(squares) == 332833500
    cluster.shutdown()
    records = [json.loads(p.read_text()) for p in sorted(tmp_path.glob("*.json"))]
    assert len(records) == 2
    for record in records:
        assert record["address"].endswith(f":{record['held']}") and record["released"]


def streaming_fun(args, ctx):
    """Reads its share of every micro-batch of a DStream, then returns."""
    feed = TFNode.DataFeed(ctx.mgr)
    ids = []
    while len(ids) < args["per_worker"] and not feed.should_stop():
        ids.extend(int(i) for i in feed.next_batch(10))
    with open(os.path.join(args["out"], f"{ctx.job_name}-{ctx.task_index}.json"), "w") as f:
        json.dump(ids, f)


def test_a_dstream_is_fed_until_the_nodes_finish_then_shutdown_stops_it(spark_local_cluster_4x1,
                                                                        tmp_path):
    from pyspark.streaming import StreamingContext
    sc = spark_local_cluster_4x1.sparkContext
    # Short micro-batches: once its queue is empty a queueStream's batches have no jobs, so a
    # graceful stop waits out spark.streaming.gracefulStopTimeout (10 batch intervals).
    ssc = StreamingContext(sc, 0.25)
    batches = [sc.parallelize(range(i * 40, (i + 1) * 40), 2) for i in range(3)]
    cluster = TFCluster.run(sc, streaming_fun, {"out": str(tmp_path), "per_worker": 60}, 2, 0,
                            input_mode=TFCluster.InputMode.SPARK)
    cluster.train(ssc.queueStream(batches), 1)
    ssc.start()
    cluster.shutdown(ssc, timeout=180)
    received = [json.loads(p.read_text()) for p in sorted(tmp_path.glob("*.json"))]
    assert [len(ids) for ids in received] == [60, 60]
    assert sorted(received[0] + received[1]) == list(range(120))


def failing_inference_fun(args, ctx):
    """Answers one batch, then fails with an error of its own."""
    tf_feed = TFNode.DataFeed(ctx.mgr, False)
    batch = tf_feed.next_batch(10)
    tf_feed.batch_results([x * x for x in batch])
    raise RuntimeError(f"model blew up on {ctx.job_name}:{ctx.task_index} (code 4711)")


def test_a_node_failing_during_lazy_inference_is_the_error_of_the_users_action(
        spark_local_cluster_4x1):
    import pytest
    sc = spark_local_cluster_4x1.sparkContext
    cluster = TFCluster.run(sc, failing_inference_fun, None, 2, 0, False,
                            TFCluster.InputMode.SPARK, log_stream=None)
    with pytest.raises(Exception) as raised:   # whatever Spark wraps it in
        cluster.inference(sc.parallelize(range(1000), 10)).collect()
    message = str(raised.value)
    assert "model blew up on worker:" in message and "(code 4711)" in message
    assert "RuntimeError" in message
    with pytest.raises(tfos.ClusterFailed, match="code 4711"):
        cluster.shutdown(timeout=60)


def instance_fun(args, ctx):
    """One independent instance: writes who it is and whether it was given a cluster, and
    returns its number and pid (a numpy integer, sent as a plain one)."""
    import numpy as np
    with open(os.path.join(args["out"], f"instance-{ctx.worker_num}.json"), "w") as f:
        json.dump({"num_workers": ctx.num_workers, "cluster_spec": ctx.cluster_spec,
                   "tf_config": os.environ.get("TF_CONFIG"), "pid": os.getpid()}, f)
    return {"worker_num": ctx.worker_num, "pid": np.int64(os.getpid())}


def test_tfparallel_runs_independent_instances_with_and_without_a_barrier(
        spark_local_cluster_4x1, tmp_path):
    import pytest

    from tfos import TFParallel
    sc = spark_local_cluster_4x1.sparkContext
    (tmp_path / "barrier").mkdir()
    (tmp_path / "waves").mkdir()
    returned = {
        "barrier": TFParallel.run(sc, instance_fun, {"out": str(tmp_path / "barrier")}, 3),
        "waves": TFParallel.run(sc, instance_fun, {"out": str(tmp_path / "waves")}, 6,
                                use_barrier=False)}
    for name, count in (("barrier", 3), ("waves", 6)):
        records = {p.stem: json.loads(p.read_text()) for p in (tmp_path / name).glob("*.json")}
        assert sorted(records) == [f"instance-{i}" for i in range(count)]
        assert all(r["num_workers"] == count and r["cluster_spec"] == {}
                   and r["tf_config"] is None for r in records.values())
        assert len({r["pid"] for r in records.values()}) == count
        # What each instance returned, in worker_num order.
        assert returned[name] == [{"worker_num": i, "pid": records[f"instance-{i}"]["pid"]}
                                  for i in range(count)]
    # More instances than the 4 task slots cannot start together.
    with pytest.raises(tfos.PreflightError, match="needs 5 task slots"):
        TFParallel.run(sc, instance_fun, {"out": str(tmp_path)}, 5)


# -- the Spark ML pipeline: TFEstimator trains, TFModel scores ----------------------------------
WEIGHTS = (3.14, 1.618)


def linear_model(tf):
    """y = w1 x1 + w2 x2, its inputs named x1 and x2 (the SavedModel's signature inputs)."""
    x1, x2 = tf.keras.Input((1,), name="x1"), tf.keras.Input((1,), name="x2")
    y = tf.keras.layers.Dense(1, use_bias=False)(tf.keras.layers.Concatenate()([x1, x2]))
    model = tf.keras.Model({"x1": x1, "x2": x2}, y)
    model.compile(tf.keras.optimizers.SGD(0.5), "mse")
    return model


def as_keras(tf, x1, x2, y):
    return {"x1": tf.cast(x1, tf.float32)[:, None], "x2": tf.cast(x2, tf.float32)[:, None]}, \
        tf.cast(y, tf.float32)


def fed_regression_fun(args, ctx):
    """TensorFlowOnSpark's pipeline training function, in TF 2: MultiWorkerMirroredStrategy,
    the columns fed through TFNode.DataFeed under the estimator's input_mapping, validated on
    the validation feed, exported by the chief."""
    import tensorflow as tf

    from tfos import compat
    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    with strategy.scope():
        model = linear_model(tf)

    def fed(qname):
        feed = TFNode.DataFeed(ctx.mgr, qname_in=qname, input_mapping=args.input_mapping)
        dataset = feed.dataset(args.batch_size * ctx.num_workers, ["x1", "x2", "y"])
        return dataset.map(lambda x1, x2, y: as_keras(tf, x1, x2, y))

    history = model.fit(fed("input"), validation_data=fed(args.validation_feed),
                        epochs=args.epochs, verbose=0)
    compat.export_saved_model(model, args.export_dir, is_chief=ctx.job_name == "chief")
    return history


def regression_frames(spark, rows=1000):
    import numpy as np
    rng = np.random.default_rng(1234)
    features = rng.random((rows, 2))
    labels = features @ np.array(WEIGHTS)
    df = spark.createDataFrame([(float(a), float(b), float(y))
                                for (a, b), y in zip(features, labels)], "a double, b double, "
                               "label double")
    train, validation = df.randomSplit([0.8, 0.2], seed=7)
    return train.withColumn("extra", train.a), validation


def test_tfestimator_trains_under_mwms_through_the_feed_and_tfmodel_predicts(
        spark_local_cluster_4x1, tmp_path):
    import pytest
    from pyspark.ml import Pipeline, PipelineModel

    from tfos.pipeline import TFEstimator, TFModel
    spark = spark_local_cluster_4x1
    train, validation = regression_frames(spark)
    estimator = TFEstimator(fed_regression_fun, {"note": "tf_args reach train_fn"},
                            log_stream=None) \
        .setInputMapping({"a": "x1", "b": "x2", "label": "y"}) \
        .setExportDir(str(tmp_path / "export")) \
        .setClusterSize(2) \
        .setBatchSize(10) \
        .setEpochs(3) \
        .setValidationData(validation)
    model = estimator.fit(train)
    assert isinstance(model, TFModel) and model.getExportDir() == str(tmp_path / "export")
    history = model.history           # the chief's Keras History, one value per epoch
    assert len(history["loss"]) == 3 and len(history["val_loss"]) == 3
    assert history["val_loss"][-1] < 1e-3 < history["loss"][0]
    # The label mapped at training is not a serving input: TFModel leaves it out.
    model.setOutputMapping({"output_0": "prediction"})
    # One partition: each scoring task loads TensorFlow and the SavedModel in its Python worker
    # (4 partitions by default here, most of them empty).
    test = spark.createDataFrame([(1.0, 1.0), (0.5, 0.0)], "a double, b double").coalesce(1)
    predictions = [r.prediction for r in model.transform(test).collect()]
    assert predictions[0] == pytest.approx(sum(WEIGHTS), abs=0.01)           # 4.758
    assert predictions[1] == pytest.approx(WEIGHTS[0] / 2, abs=0.01)
    # Both stages persist, in Pipelines; the estimator keeps its train_fn and tf_args.
    Pipeline(stages=[estimator]).save(str(tmp_path / "pipeline"))
    PipelineModel(stages=[model]).save(str(tmp_path / "model"))
    (loaded,) = Pipeline.load(str(tmp_path / "pipeline")).getStages()
    assert loaded.train_fn.__name__ == "fed_regression_fun"
    assert loaded.merge_args_params().note == "tf_args reach train_fn"
    assert loaded.extractParamMap() != {} and loaded.getEpochs() == 3 and \
        loaded.getInputMapping() == {"a": "x1", "b": "x2", "label": "y"}
    reloaded = PipelineModel.load(str(tmp_path / "model"))
    assert reloaded.stages[0].history == history
    assert [r.prediction for r in reloaded.transform(test).collect()] == predictions


def tfrecord_regression_fun(args, ctx):
    """InputMode.TENSORFLOW: the estimator wrote the columns as TFRecords; TF reads them."""
    import tensorflow as tf

    from tfos import compat

    def read(directory):
        spec = {name: tf.io.FixedLenFeature([], tf.float32) for name in ("a", "b", "label")}
        files = tf.io.gfile.glob(f"{directory}/part-*.tfrecord")
        return tf.data.TFRecordDataset(files).batch(args.batch_size).map(
            lambda records: tf.io.parse_example(records, spec)).map(
            lambda f: as_keras(tf, f["a"], f["b"], f["label"]))

    model = linear_model(tf)
    history = model.fit(read(args.tfrecord_dir), validation_data=read(args.validation_dir),
                        epochs=args.epochs, verbose=0)
    compat.export_saved_model(model, args.export_dir, is_chief=True)
    return history


def test_tfestimator_in_input_mode_tensorflow_writes_the_mapped_columns_as_tfrecords(
        spark_local_cluster_4x1, tmp_path, monkeypatch):
    import pytest

    from tfos import dfutil
    from tfos.pipeline import TFEstimator
    spark = spark_local_cluster_4x1
    train, validation = regression_frames(spark, rows=600)
    tfrecord_dir = str(tmp_path / "tfr")
    monkeypatch.chdir(tmp_path)      # relative paths are the driver's, not each executor's
    estimator = TFEstimator(tfrecord_regression_fun, {}, log_stream=None) \
        .setInputMapping({"a": "x1", "b": "x2", "label": "y"}) \
        .setInputMode(TFCluster.InputMode.TENSORFLOW) \
        .setTFRecordDir("tfr") \
        .setExportDir("export") \
        .setBatchSize(10) \
        .setEpochs(4) \
        .setValidationData(validation)
    # What is missing is said before any cluster starts.
    with pytest.raises(tfos.ConfigError, match=r"columns \['nope'\] that the training "):
        estimator.copy({estimator.input_mapping: {"nope": "x1"}}).fit(train)
    with pytest.raises(tfos.ConfigError, match=r"needs setTFRecordDir\(path\)"):
        estimator.copy({estimator.tfrecord_dir: None}).fit(train)
    model = estimator.fit(train)
    assert model.getExportDir() == str(tmp_path / "export")
    assert dfutil.loadTFRecords(spark, tfrecord_dir).columns == ["a", "b", "label"]
    assert dfutil.loadTFRecords(spark, tfrecord_dir + "_validation").count() == \
        validation.count()
    assert len(model.history["val_loss"]) == 4
    model = estimator.fit(train)      # again: the earlier TFRecords are replaced, not mixed in
    assert dfutil.loadTFRecords(spark, tfrecord_dir).count() == train.count()
    test = spark.createDataFrame([(1.0, 1.0)], "a double, b double").coalesce(1)
    (row,) = model.transform(test).collect()
    assert row.output_0 == pytest.approx(sum(WEIGHTS), abs=0.01)
