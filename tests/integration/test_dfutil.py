"""TFRecords <-> DataFrames (tfos.dfutil) on a real local-cluster, both ways with TensorFlow."""
import datetime
import json
import os

import numpy as np
import pytest

import tfos
from tfos import dfutil

TFOS_ROW = ("text string", 1, [2, 3, 4, 5], -1.1, [-2.2, -3.3, -4.4, -5.5],
            bytearray(b"\xff\xfe\xfd\xfc"))


def check_tfos_row(row):
    assert row["a"] == "text string" and row["b"] == 1 and row["c"] == [2, 3, 4, 5]
    assert row["d"] == pytest.approx(-1.1, abs=1e-6)
    assert row["e"] == pytest.approx([-2.2, -3.3, -4.4, -5.5], abs=1e-6)
    assert row["f"] == bytearray(b"\xff\xfe\xfd\xfc")


def test_tensorflowonspark_round_trip_and_is_loaded(spark_local_cluster_4x1, tmp_path):
    spark = spark_local_cluster_4x1
    df = spark.createDataFrame([TFOS_ROW], list("abcdef"))
    out = str(tmp_path / "tfr")
    dfutil.saveAsTFRecords(df, out)
    loaded = dfutil.loadTFRecords(spark.sparkContext, out, binary_features=["f"])
    assert loaded.schema == df.schema                # the saved schema, exactly
    check_tfos_row(loaded.collect()[0])
    assert dfutil.isLoadedDF(loaded) and not dfutil.isLoadedDF(df)
    assert not dfutil.isLoadedDF(loaded.select("a"))
    # Files written by another tool have no saved schema: it is inferred (binary by hint).
    os.remove(os.path.join(out, dfutil.SCHEMA_FILE))
    inferred = dfutil.loadTFRecords(spark.sparkContext, out, binary_features=["f"])
    assert inferred.schema.simpleString() == ("struct<a:string,b:bigint,c:array<bigint>,"
                                              "d:double,e:array<double>,f:binary>")
    check_tfos_row(inferred.collect()[0])


def test_every_type_and_null_round_trips_and_tensorflow_reads_the_files(
        spark_local_cluster_4x1, tmp_path):
    spark = spark_local_cluster_4x1
    ddl = ("flag boolean, tiny tinyint, small smallint, i int, big bigint, f float, d double, "
           "s string, raw binary, day date, at timestamp, ints array<int>, floats array<float>, "
           "words array<string>, one array<bigint>, none array<double>")
    day, at = datetime.date(2026, 11, 29), datetime.datetime(2026, 11, 29, 23, 5, 7, 123456)
    rows = [(i % 2 == 0, -i, i * 300, i * 70000, i << 40, i / 4, i / 8, f"s{i}", bytes([i, 255]),
             day + datetime.timedelta(days=i), at + datetime.timedelta(seconds=i), [i, -i],
             [0.5 * i], [f"w{i}", "x"], [i], []) for i in range(40)]
    rows.append(tuple([None] * 16))                   # every column null
    df = spark.createDataFrame(rows, ddl).repartition(3)
    out = str(tmp_path / "all")
    dfutil.saveAsTFRecords(df, out)
    assert sorted(p for p in os.listdir(out) if not p.startswith("_")) == \
        [f"part-0000{i}.tfrecord" for i in range(3)]
    loaded = dfutil.loadTFRecords(spark, out)
    assert loaded.schema == df.schema
    assert sorted(loaded.collect(), key=str) == sorted(df.collect(), key=str)
    import tensorflow as tf
    records = list(tf.data.TFRecordDataset([os.path.join(out, f"part-0000{i}.tfrecord")
                                            for i in range(3)]))
    assert len(records) == 41
    parsed = [tf.train.Example.FromString(r.numpy()) for r in records]
    assert sorted(e.features.feature["big"].int64_list.value[0] for e in parsed
                  if "big" in e.features.feature) == [i << 40 for i in range(40)]


def sum_labels(args, ctx):
    feed = ctx.get_data_feed()
    total, count = 0.0, 0
    while (batch := feed.next_columns(16)) is not None and batch:
        total += float(np.sum(batch["label"]))
        count += len(batch["label"])
    with open(os.path.join(args["out"], f"{ctx.task_index}.json"), "w") as f:
        json.dump([count, total], f)


def test_tensorflow_written_records_load_and_feed_a_cluster(spark_local_cluster_4x1, tmp_path):
    import tensorflow as tf
    files = [str(tmp_path / f"tf-{i}.tfrecord") for i in range(2)]
    for i, path in enumerate(files):
        with tf.io.TFRecordWriter(path) as writer:
            for j in range(50):
                label = i * 50 + j
                feature = {"image": tf.train.Feature(float_list=tf.train.FloatList(
                               value=[label / 100] * 4)),
                           "label": tf.train.Feature(int64_list=tf.train.Int64List(
                               value=[label]))}
                writer.write(tf.train.Example(features=tf.train.Features(feature=feature))
                             .SerializeToString())
    df = dfutil.loadTFRecords(spark_local_cluster_4x1.sparkContext, str(tmp_path))
    assert df.schema.simpleString() == "struct<image:array<double>,label:bigint>"
    cluster = tfos.TFCluster.run(spark_local_cluster_4x1, sum_labels, {"out": str(tmp_path)},
                                 num_executors=2, input_mode=tfos.InputMode.SPARK,
                                 log_stream=None)
    cluster.train(df, num_epochs=1)
    cluster.shutdown(timeout=120)
    results = [json.loads(p.read_text()) for p in tmp_path.glob("*.json")]
    assert [count for count, _ in results] == [50, 50]
    assert sum(total for _, total in results) == sum(range(100))


def test_unsupported_columns_are_refused_by_name(spark_local_cluster_4x1, tmp_path):
    df = spark_local_cluster_4x1.createDataFrame([(1, {"k": 1})], "i int, m map<string,int>")
    with pytest.raises(tfos.ConfigError, match="column 'm' has type map<string,int>"):
        dfutil.saveAsTFRecords(df, str(tmp_path / "x"))


def test_writing_over_earlier_records_is_refused_or_replaces_them_all(spark_local_cluster_4x1,
                                                                      tmp_path):
    spark = spark_local_cluster_4x1
    out = str(tmp_path / "again")
    dfutil.saveAsTFRecords(spark.range(0, 30, numPartitions=3), out)
    (tmp_path / "again" / "_notes.txt").write_text("not ours")   # skipped on read
    with pytest.raises(tfos.ConfigError, match=r"already holds 4 TFRecord files .*"
                                               r"mode='overwrite'"):
        dfutil.saveAsTFRecords(spark.range(100, 102, numPartitions=1), out)
    # Fewer partitions than before: no part file of the earlier write may survive.
    dfutil.saveAsTFRecords(spark.range(100, 102, numPartitions=1), out, mode="overwrite")
    assert sorted(os.listdir(out)) == ["_notes.txt", dfutil.SCHEMA_FILE, "part-00000.tfrecord"]
    assert sorted(r.id for r in dfutil.loadTFRecords(spark, out).collect()) == [100, 101]
