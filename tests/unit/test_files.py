"""``tfos.files``: listing, sharding and tf.data over local files and a real S3 server (moto),
and the Hadoop client's environment for HDFS (no HDFS server can run on this machine)."""
from __future__ import annotations

import io
import os
import stat

import pytest
from s3_server import s3  # noqa: F401 - the fixture

import tfos
from tfos import ConfigError, TFRecordError
from tfos.core import tfrecord
from tfos.node.context import NodeContext
from tfos.node.filesystems import errors_named, hadoop_environment, s3_options

files = tfos.files
RECORDS = {f"part-{i:05d}.tfrecord": [f"file{i}-record{j}".encode() * (j + 1) for j in range(7)]
           for i in range(5)}


def write_tfrecords(write, prefix: str) -> None:
    for name, records in RECORDS.items():
        write(f"{prefix}/{name}", b"".join(tfrecord.frame(r) for r in records))
    write(f"{prefix}/_SUCCESS", b"")          # Hadoop's marker: never listed
    write(f"{prefix}/.part-9.tmp", b"junk")   # nor a hidden file


def write_local(path: str, data: bytes) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)


def all_records() -> list[bytes]:
    return [r for name in sorted(RECORDS) for r in RECORDS[name]]


def node(launch_record, job: str, index: int, spec: dict, **fields) -> NodeContext:
    trainers = sum(len(spec.get(j, ())) for j in ("chief", "worker"))
    return NodeContext(launch_record(job_name=job, task_index=index, cluster_spec=spec,
                                     num_workers=trainers, **fields))


@pytest.fixture(scope="module")
def s3_records(s3):  # noqa: F811
    fs = s3.filesystem()
    write_tfrecords(lambda key, data: fs.pipe(f"{s3.bucket}/{key}", data), "records")
    return s3.uri("records")


@pytest.fixture
def local_records(tmp_path):
    write_tfrecords(lambda key, data: write_local(f"{tmp_path}/{key}", data), "records")
    return str(tmp_path / "records")


# -- listing ----------------------------------------------------------------------------------
def test_a_local_directory_lists_its_files_sorted_without_markers(local_records, monkeypatch):
    expected = [f"{local_records}/{name}" for name in sorted(RECORDS)]
    assert files.list_files(local_records) == expected
    assert files.list_files(f"{local_records}/part-0000[13].*") == [expected[1], expected[3]]
    assert files.list_files(expected[2]) == [expected[2]]
    assert files.list_files("file://" + local_records) == ["file://" + e for e in expected]
    monkeypatch.chdir(os.path.dirname(local_records))
    assert files.list_files("records") == expected      # relative: to the working directory


def test_with_ctx_a_relative_path_is_the_nodes(local_records, launch_record):
    ctx = NodeContext(launch_record(working_dir=os.path.dirname(local_records)))
    assert files.list_files("records/*.tfrecord", ctx)[0] == \
        f"file://{local_records}/part-00000.tfrecord"


def test_s3_lists_directories_globs_and_keeps_s3a(s3, s3_records):  # noqa: F811
    names = sorted(RECORDS)
    assert files.list_files(s3_records) == [f"{s3_records}/{n}" for n in names]
    assert files.list_files(s3.uri("records/*-0000[0-1].tfrecord", "s3a")) == \
        [s3.uri(f"records/{n}", "s3a") for n in names[:2]]
    assert files.list_files(s3.uri("**/part-00004.tfrecord")) == [f"{s3_records}/{names[4]}"]
    # A list is the union of its patterns.
    assert files.list_files([f"{s3_records}/{names[1]}", f"{s3_records}/part-0000[01]*"]) == \
        [f"{s3_records}/{n}" for n in names[:2]]


def test_missing_buckets_files_and_empty_globs_are_named(s3, tmp_path):  # noqa: F811
    with pytest.raises(ConfigError, match="there is no bucket 'no-such-bucket'"):
        files.list_files("s3://no-such-bucket/data")
    with pytest.raises(ConfigError, match="there is no bucket 'no-such-bucket'"):
        files.list_files("s3a://no-such-bucket/data/*.tfrecord")
    with pytest.raises(ConfigError, match="tfos-test/nothing/\\*: no files there"):
        files.list_files(s3.uri("nothing/*"))
    with pytest.raises(ConfigError, match="no such file, directory or bucket"):
        files.list_files(str(tmp_path / "absent"))
    with pytest.raises(ConfigError, match="no such file, directory or bucket"):
        files.list_files(s3.uri("absent.tfrecord"))


# -- sharding ---------------------------------------------------------------------------------
@pytest.mark.parametrize("count, shards", [(5, 1), (5, 2), (5, 5), (12, 4), (7, 3)])
def test_shards_are_disjoint_and_complete(count, shards):
    names = [f"f{i}" for i in range(count)]
    parts = [files.shard_files(names, shards, i) for i in range(shards)]
    assert sorted(n for part in parts for n in part) == sorted(names)
    assert len(set().union(*parts)) == count
    assert max(map(len, parts)) - min(map(len, parts)) <= 1


def test_a_shard_without_files_is_refused_with_the_counts_and_the_fix():
    with pytest.raises(ConfigError, match="3 files for 4 readers: reader 3 would get none.*"
                                          "at least 4 files.*or run fewer workers"):
        files.shard_files(["a", "b", "c"], 4, 3)
    with pytest.raises(ConfigError, match="0 <= index < num_shards"):
        files.shard_files(["a"], 1, 1)


def test_worker_shards_count_the_chief_then_the_workers(launch_record):
    spec = {"ps": ["p:1"], "chief": ["c:1"], "worker": ["w:1", "w:2"]}
    names = [f"f{i}" for i in range(6)]
    chief = node(launch_record, "chief", 0, spec, node_id=1)
    workers = [node(launch_record, "worker", i, spec, node_id=2 + i) for i in range(2)]
    assert [files.worker_shard(names, c) for c in (chief, *workers)] == \
        [["f0", "f3"], ["f1", "f4"], ["f2", "f5"]]
    # Without a chief (TFParallel's instances, master_node=None), workers from 0.
    alone = node(launch_record, "worker", 1, {"worker": ["w:1", "w:2"]}, node_id=1)
    assert files.worker_shard(names, alone) == ["f1", "f3", "f5"]
    with pytest.raises(ConfigError, match="ps:0 reads no shard.*shard=False"):
        files.worker_shard(names, node(launch_record, "ps", 0, spec))


# -- TFRecords --------------------------------------------------------------------------------
@pytest.mark.parametrize("where", ["local", "s3", "s3a"])
def test_tfrecords_read_back_whole_and_in_disjoint_worker_shards(
        where, local_records, s3_records, launch_record):
    import tensorflow as tf
    source = {"local": local_records, "s3": s3_records,
              "s3a": s3_records.replace("s3://", "s3a://")}[where]
    assert [bytes(r) for r in files.dataset(source).as_numpy_iterator()] == all_records()
    spec = {"chief": ["c:1"], "worker": ["w:1"]}
    shards = [list(files.dataset(source, node(launch_record, job, 0, spec),
                                 num_parallel_reads=2).as_numpy_iterator())
              for job in ("chief", "worker")]
    assert not set(shards[0]) & set(shards[1])
    assert sorted(shards[0] + shards[1]) == sorted(all_records())
    sharded = files.dataset(source, node(launch_record, "chief", 0, spec))
    assert sharded.options().experimental_distribute.auto_shard_policy == \
        tf.data.experimental.AutoShardPolicy.OFF


def test_a_corrupt_record_on_s3_fails_naming_the_file_and_offset(s3):  # noqa: F811
    import tensorflow as tf
    data = bytearray(b"".join(tfrecord.frame(b"x" * 100) for _ in range(3)))
    data[116 + 12 + 50] ^= 0xFF              # inside the second record's data
    s3.filesystem().pipe(f"{s3.bucket}/corrupt/a.tfrecord", bytes(data))
    with pytest.raises(tf.errors.OpError, match="corrupt/a.tfrecord: corrupt record data at "
                                                "byte 116 \\(CRC mismatch\\)"):
        list(files.dataset(s3.uri("corrupt")).as_numpy_iterator())


def test_chunked_reading_checks_as_record_by_record_reading_does():
    records = [bytes([i % 251]) * (i % 97) for i in range(500)]
    data = b"".join(tfrecord.frame(r) for r in records)
    chunks = list(tfrecord.read_record_chunks(io.BytesIO(data), "f", chunk_bytes=333))
    assert [r for chunk in chunks for r in chunk] == records and len(chunks) > 10
    # A record larger than a chunk is read whole.
    big = tfrecord.frame(b"y" * 5000)
    assert list(tfrecord.read_record_chunks(io.BytesIO(big), "f", 100)) == [[b"y" * 5000]]
    for cut in (3, 20):
        stream = io.BytesIO(data[:-cut])
        with pytest.raises(TFRecordError) as chunked:
            list(tfrecord.read_record_chunks(stream, "f", 333))
        with pytest.raises(TFRecordError) as plain:
            list(tfrecord.read_records(io.BytesIO(data[:-cut]), "f"))
        assert str(chunked.value) == str(plain.value)
    with pytest.raises(TFRecordError, match="f: corrupt record length at byte 0"):
        list(tfrecord.read_record_chunks(io.BytesIO(b"not a tfrecord file"), "f"))


# -- text, CSV, Parquet -----------------------------------------------------------------------
TEXT = b"first\r\nsecond\n\nlast without newline"


@pytest.mark.parametrize("where", ["local", "s3"])
def test_text_lines_are_tensorflows(where, s3, tmp_path):  # noqa: F811
    import tensorflow as tf
    local = tmp_path / "a.txt"
    local.write_bytes(TEXT)
    expected = list(tf.data.TextLineDataset(str(local)).as_numpy_iterator())
    assert expected == [b"first", b"second", b"", b"last without newline"]
    if where == "s3":
        s3.filesystem().pipe(f"{s3.bucket}/text/a.txt", TEXT)
        source = s3.uri("text")
    else:
        source = str(tmp_path)
    assert list(files.dataset(source, format="text").as_numpy_iterator()) == expected


@pytest.mark.parametrize("where", ["local", "s3"])
def test_csv_rows_come_as_typed_columns(where, s3, tmp_path):  # noqa: F811
    import tensorflow as tf
    text = [b"x,y,name\n1,2.5,foo\n3,4.5,bar\n", b"x,y,name\n5,6,baz\n"]   # 6: a double too
    if where == "s3":
        for i, data in enumerate(text):
            s3.filesystem().pipe(f"{s3.bucket}/csv/{i}.csv", data)
        source = s3.uri("csv/*.csv")
    else:
        for i, data in enumerate(text):
            (tmp_path / f"{i}.csv").write_bytes(data)
        source = str(tmp_path / "*.csv")
    data = files.dataset(source, format="csv")
    assert data.element_spec == {"x": tf.TensorSpec((), tf.int64),
                                 "y": tf.TensorSpec((), tf.float64),
                                 "name": tf.TensorSpec((), tf.string)}
    rows = list(data.as_numpy_iterator())
    assert [(r["x"], r["y"], r["name"]) for r in rows] == \
        [(1, 2.5, b"foo"), (3, 4.5, b"bar"), (5, 6.0, b"baz")]
    only = files.dataset(source, format="csv", columns=["name"])
    assert [r["name"] for r in only.as_numpy_iterator()] == [b"foo", b"bar", b"baz"]


def test_parquet_columns_vectors_and_what_is_refused(s3, launch_record):  # noqa: F811
    import pyarrow as pa
    import pyarrow.parquet as pq
    import tensorflow as tf
    fs = s3.filesystem()

    def put(key, table):
        with fs.open(f"{s3.bucket}/{key}", "wb") as out:
            pq.write_table(table, out)

    for i in range(2):
        put(f"parquet/part-{i}.parquet", pa.table({
            "image": pa.array([[float(i), 1.0, 2.0]] * 3, pa.list_(pa.float32())),
            "label": pa.array([i] * 3, pa.int64()), "id": [f"{i}-{j}" for j in range(3)]}))
    data = files.dataset(s3.uri("parquet"), format="parquet")
    assert data.element_spec["image"] == tf.TensorSpec((None,), tf.float32)
    rows = list(data.batch(6).as_numpy_iterator())[0]
    assert rows["image"].shape == (6, 3) and list(rows["label"]) == [0, 0, 0, 1, 1, 1]
    spec = {"chief": ["c:1"], "worker": ["w:1"]}
    shard = files.dataset(s3.uri("parquet"), node(launch_record, "worker", 0, spec),
                          format="parquet", columns=["id"])
    assert [r["id"] for r in shard.as_numpy_iterator()] == [b"1-0", b"1-1", b"1-2"]
    with pytest.raises(ConfigError, match="columns \\['nope'\\] are not in"):
        files.dataset(s3.uri("parquet"), format="parquet", columns=["nope"])
    put("nulls/a.parquet", pa.table({"v": pa.array([1, None], pa.int64())}))
    with pytest.raises(tf.errors.OpError, match="column 'v' holds 1 nulls"):
        list(files.dataset(s3.uri("nulls"), format="parquet").as_numpy_iterator())
    put("nested/a.parquet", pa.table({"m": pa.array([{"a": 1}], pa.struct([("a", pa.int64())]))}))
    with pytest.raises(ConfigError, match="column 'm' .* has type struct"):
        files.dataset(s3.uri("nested"), format="parquet")


def test_an_unknown_format_is_refused(local_records):
    with pytest.raises(ConfigError, match="format='json': use one of"):
        files.dataset(local_records, format="json")
    with pytest.raises(ConfigError, match="columns=\\['a'\\] with format='tfrecord'"):
        files.dataset(local_records, columns=["a"])


# -- writing, credentials, configuration ------------------------------------------------------
def test_a_checkpoint_saved_locally_goes_up_to_s3_and_comes_back(s3, tmp_path):  # noqa: F811
    import tensorflow as tf
    weights = tf.Variable([1.0, 2.0, 3.0])
    tf.train.Checkpoint(w=weights).save(str(tmp_path / "local" / "ckpt"))
    written = files.upload_dir(str(tmp_path / "local"), s3.uri("ckpt/run1", "s3a"))
    assert s3.uri("ckpt/run1/checkpoint", "s3a") in written
    files.download_dir(s3.uri("ckpt/run1"), str(tmp_path / "back"))
    restored = tf.Variable([0.0, 0.0, 0.0])
    tf.train.Checkpoint(w=restored).restore(tf.train.latest_checkpoint(str(tmp_path / "back")))
    assert list(restored.numpy()) == [1.0, 2.0, 3.0]
    # The same to a local directory (file://), e.g. shared storage every node mounts.
    local = files.upload_dir(str(tmp_path / "local"), f"file://{tmp_path}/copy")
    assert sorted(os.listdir(tmp_path / "copy")) == sorted(os.listdir(tmp_path / "local"))
    assert f"file://{tmp_path}/copy/checkpoint" in local
    with files.open(s3.uri("ckpt/note.txt"), "wb") as out:
        out.write(b"hello")
    with files.open(s3.uri("ckpt/note.txt")) as back:
        assert back.read() == b"hello"
    with pytest.raises(ConfigError, match="cannot read s3://tfos-test/absent: no such file"):
        files.download_dir(s3.uri("absent"), str(tmp_path / "none"))


def test_without_credentials_the_error_says_which_variables_to_set(s3, s3_records,  # noqa: F811
                                                                     monkeypatch):
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent")
    with pytest.raises(ConfigError, match="no AWS credentials.*AWS_ACCESS_KEY_ID and "
                                          "AWS_SECRET_ACCESS_KEY.*spark.executorEnv"):
        files.list_files(s3_records)


def test_an_endpoint_that_does_not_answer_is_named(s3, monkeypatch):  # noqa: F811
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")   # nothing listens there
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")                     # botocore: no retries
    with pytest.raises(ConfigError, match="the S3 endpoint does not answer .*check "
                                          "AWS_ENDPOINT_URL \\(http://127.0.0.1:9\\)"):
        files.list_files(s3.uri("records"))


def test_s3_settings_come_from_the_standard_variables():
    assert s3_options({}) == {"use_listings_cache": False}
    options = s3_options({"AWS_ACCESS_KEY_ID": "k", "AWS_SECRET_ACCESS_KEY": "s",
                          "AWS_ENDPOINT_URL": "http://all", "AWS_ENDPOINT_URL_S3": "http://s3",
                          "AWS_REGION": "eu-west-3", "AWS_DEFAULT_REGION": "us-east-1"})
    assert options["endpoint_url"] == "http://s3" and options["key"] == "k"
    assert options["client_kwargs"] == {"region_name": "eu-west-3"}


def test_the_service_specific_endpoint_variable_reaches_the_server(s3, s3_records,  # noqa: F811
                                                                    monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")   # nothing listens there
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", s3.endpoint)
    assert files.list_files(f"{s3_records}/part-00000.tfrecord")


def test_a_missing_package_is_named_with_the_install_command():
    with pytest.raises(ConfigError, match="cannot reach s3://b/k: .*pip install s3fs"):
        with errors_named("s3://b/k", "reach"):
            raise ImportError("Install s3fs to access S3", name="s3fs")


def test_tfos_files_is_the_node_module():
    import tfos.node.files
    assert tfos.files is tfos.node.files and "files" in dir(tfos)


# -- HDFS: the client's environment (no HDFS server here) ---------------------------------------
@pytest.fixture
def fake_installs(tmp_path):
    """A Hadoop tree (bin/hadoop printing a classpath, lib/native/libhdfs.so) and a JDK's
    bin/java, for PATH lookups."""
    hadoop = tmp_path / "hadoop-3.4.1"
    (hadoop / "lib" / "native").mkdir(parents=True)
    (hadoop / "lib" / "native" / "libhdfs.so").write_bytes(b"")
    script = hadoop / "bin" / "hadoop"
    script.parent.mkdir()
    script.write_text(f"#!/bin/sh\n[ \"$1 $2\" = 'classpath --glob' ] || exit 3\n"
                      f"echo {hadoop}/share/hadoop/common/a.jar:{hadoop}/etc/hadoop\n")
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    jdk = tmp_path / "jdk-17"
    (jdk / "bin").mkdir(parents=True)
    (jdk / "bin" / "java").write_text("#!/bin/sh\n")
    (jdk / "bin" / "java").chmod(0o755)
    return hadoop, jdk


def test_hadoop_home_gives_classpath_libhdfs_dir_and_java_home(fake_installs):
    hadoop, jdk = fake_installs
    env = hadoop_environment({"HADOOP_HOME": str(hadoop), "PATH": str(jdk / "bin")})
    assert env == {"CLASSPATH": f"{hadoop}/share/hadoop/common/a.jar:{hadoop}/etc/hadoop",
                   "ARROW_LIBHDFS_DIR": f"{hadoop}/lib/native", "JAVA_HOME": str(jdk)}
    # hadoop on PATH serves as well; variables already set are kept.
    env = hadoop_environment({"PATH": f"{hadoop}/bin:{jdk}/bin", "CLASSPATH": "/mine.jar",
                              "JAVA_HOME": "/opt/java"})
    assert env == {"ARROW_LIBHDFS_DIR": f"{hadoop}/lib/native"}


def test_no_hadoop_no_libhdfs_or_no_java_is_named(fake_installs, tmp_path):
    hadoop, jdk = fake_installs
    with pytest.raises(ConfigError, match="hdfs://nn/x: reading HDFS needs a Hadoop client on "
                                          "this host .*set HADOOP_HOME"):
        hadoop_environment({"PATH": str(jdk / "bin")}, "hdfs://nn/x")
    (hadoop / "lib" / "native" / "libhdfs.so").unlink()
    with pytest.raises(ConfigError, match=f"no libhdfs.so in {hadoop}/lib/native"):
        hadoop_environment({"HADOOP_HOME": str(hadoop), "PATH": str(jdk / "bin")})
    native = tmp_path / "native"
    native.mkdir()
    (native / "libhdfs.so").write_bytes(b"")
    with pytest.raises(ConfigError, match="no Java was found: set JAVA_HOME"):
        hadoop_environment({"CLASSPATH": "/x.jar", "ARROW_LIBHDFS_DIR": str(native),
                            "PATH": "/nonexistent"})
    broken = tmp_path / "broken"
    (broken / "bin").mkdir(parents=True)
    (broken / "bin" / "hadoop").write_text("#!/bin/sh\necho 'JAVA_HOME is not set' >&2\nexit 1\n")
    (broken / "bin" / "hadoop").chmod(0o755)
    with pytest.raises(ConfigError, match="classpath --glob` failed .*JAVA_HOME is not set"):
        hadoop_environment({"HADOOP_HOME": str(broken)})


def test_an_hdfs_uri_sets_up_the_client_and_names_what_failed(fake_installs, monkeypatch):
    hadoop, jdk = fake_installs
    for name in ("CLASSPATH", "ARROW_LIBHDFS_DIR", "JAVA_HOME"):
        monkeypatch.setenv(name, "")   # restored after the test, whatever the code sets
    monkeypatch.setenv("HADOOP_HOME", str(hadoop))
    # The fake libhdfs.so is empty: pyarrow's client gets as far as loading it.
    with pytest.raises(ConfigError, match="cannot reach hdfs://nn:8020/data: pyarrow's "
                                          "HadoopFileSystem failed .*libhdfs"):
        files.list_files("hdfs://nn:8020/data")
    assert os.environ["CLASSPATH"].startswith(f"{hadoop}/share")
    assert os.environ["ARROW_LIBHDFS_DIR"] == f"{hadoop}/lib/native"
    monkeypatch.delenv("HADOOP_HOME")
    monkeypatch.setenv("PATH", str(jdk / "bin"))
    for name in ("CLASSPATH", "ARROW_LIBHDFS_DIR"):
        monkeypatch.setenv(name, "")
    with pytest.raises(ConfigError, match="none was found: set HADOOP_HOME"):
        files.dataset("hdfs://nn:8020/data/*.tfrecord")

