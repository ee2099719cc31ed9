"""DataFrames of tensors on a real local-cluster: Spark ML vectors (dense and sparse rows) and
array<float> columns reach the TF nodes as fixed-shape 2-D tensors with every value in place."""
import os

import numpy as np
import pytest

import tfos

ROWS, SIZE, WIDTH = 120, 5, 3


# Each feed and the dtype its vector columns arrive in: train()'s default, and the exact one.
FEEDS = {"input": "float32", "exact": "float64"}


def read_tensors(args, ctx):
    """Reads each feed as tf.data batches, checks each tensor's dtype and shape, and saves what
    arrived for the driver to compare."""
    import tensorflow as tf
    names = ["id", "assembled", "made", "arr"]
    got = {}
    for qname, vector_dtype in FEEDS.items():
        feed = ctx.get_data_feed(qname_in=qname)
        for batch in feed.dataset(args["batch"], columns=names):
            ids, assembled, made, arr = batch
            rows = int(ids.shape[0])
            assert assembled.dtype == made.dtype == tf.as_dtype(vector_dtype), qname
            assert tuple(assembled.shape) == tuple(made.shape) == (rows, SIZE)
            assert arr.dtype == tf.float32 and tuple(arr.shape) == (rows, WIDTH)
            for name, tensor in zip(names, batch):
                got.setdefault(f"{qname}_{name}", []).append(tensor.numpy())
    np.savez(os.path.join(args["out"], f"{ctx.job_name}-{ctx.task_index}.npz"),
             **{name: np.concatenate(parts) for name, parts in got.items()})


def expected_rows():
    """Per id: the assembled inputs (one non-zero in every third row, which VectorAssembler
    stores sparse), a hand-made vector (sparse on odd ids) and an array<float>."""
    ids = np.arange(ROWS)
    inputs = np.arange(ROWS * SIZE, dtype=np.float64).reshape(ROWS, SIZE) + 1
    inputs[ids % 3 == 0] *= np.eye(SIZE)[ids[ids % 3 == 0] % SIZE]
    made = np.zeros((ROWS, SIZE))
    odd = ids % 2 == 1
    made[odd, ids[odd] % SIZE] = -ids[odd]
    made[~odd] = ids[~odd, None] + np.arange(SIZE) / 10
    arr = (ids[:, None] + np.arange(WIDTH) / 4).astype(np.float32)
    return ids, inputs, made, arr


def vectors_frame(spark):
    from pyspark.ml.feature import VectorAssembler
    from pyspark.ml.linalg import Vectors, VectorUDT
    from pyspark.sql import types as T
    ids, inputs, made, arr = expected_rows()

    def vector(i):
        if i % 2:
            return Vectors.sparse(SIZE, [i % SIZE], [made[i, i % SIZE]])
        return Vectors.dense(made[i])

    inputs_names = [f"x{j}" for j in range(SIZE)]
    schema = T.StructType([T.StructField("id", T.LongType()),
                           T.StructField("made", VectorUDT()),
                           T.StructField("arr", T.ArrayType(T.FloatType())),
                           *[T.StructField(n, T.DoubleType()) for n in inputs_names]])
    rows = [(int(i), vector(i), arr[i].tolist(), *inputs[i].tolist()) for i in ids]
    df = spark.createDataFrame(rows, schema).repartition(4, "id")
    return VectorAssembler(inputCols=inputs_names, outputCol="assembled").transform(df) \
        .select("id", "assembled", "made", "arr")


def test_vector_and_array_columns_arrive_as_fixed_shape_tensors(spark_local_cluster_4x1,
                                                                tmp_path):
    df = vectors_frame(spark_local_cluster_4x1).cache()
    kinds = {(type(r.assembled).__name__, type(r.made).__name__) for r in df.collect()}
    assert {k[0] for k in kinds} == {k[1] for k in kinds} == {"DenseVector", "SparseVector"}
    with tfos.TFCluster.run(spark_local_cluster_4x1, read_tensors,
                            {"out": str(tmp_path), "batch": 16}, num_executors=2,
                            input_mode=tfos.InputMode.SPARK, log_stream=None) as cluster:
        fed = cluster.train(df, 1)                               # vectors as float32
        exact = cluster.train(df, 1, qname="exact", vector_dtype="float64")
        with pytest.raises(tfos.ConfigError, match=r"vector_dtype='float16': pass one of "
                                                   r"float32, float64"):
            cluster.train(df, 1, qname="exact", vector_dtype="float16")
        cluster.shutdown(timeout=120)
    assert [e.per_worker for e in fed + exact] == [ROWS // 2] * 2
    parts = [np.load(p) for p in sorted(tmp_path.glob("*.npz"))]
    assert len(parts) == 2
    got = {name: np.concatenate([p[name] for p in parts]) for name in parts[0].files}
    ids, inputs, made, arr = expected_rows()
    for qname, vector_dtype in FEEDS.items():
        order = np.argsort(got[f"{qname}_id"])
        np.testing.assert_array_equal(got[f"{qname}_id"][order], ids)
        for name, want in (("assembled", inputs), ("made", made)):
            np.testing.assert_array_equal(got[f"{qname}_{name}"][order],
                                          want.astype(vector_dtype))
        np.testing.assert_array_equal(got[f"{qname}_arr"][order], arr)

