"""GPUs through Spark's resource scheduling, on a local-cluster whose workers discover fake
GPUs (tests/integration/data/fake_gpus.sh, a template: one per worker, numbered 0, 1, 2)."""
import json
import os
import shutil
from pathlib import Path

import pytest

import tfos

DISCOVERY = Path(__file__).resolve().parent / "data" / "fake_gpus.sh"


@pytest.fixture(scope="module")
def spark_3_workers_1_fake_gpu_each(spark_sessions, tmp_path_factory):
    """Workers that discover one fake GPU each, numbered 0, 1, 2: the discovery script claims
    the first free number with mkdir (the workers run in the driver's JVM, which may predate
    this test, so the claims directory is written into the script, not passed in the
    environment)."""
    folder = tmp_path_factory.mktemp("fake-gpus")
    script = folder / "discover.sh"
    script.write_text(DISCOVERY.read_text().replace('${TFOS_FAKE_GPU_DIR:?}', str(folder)))
    script.chmod(0o755)
    yield spark_sessions.get("local-cluster[3,1,1024]", **{
        "spark.worker.resource.gpu.amount": "1",
        "spark.worker.resource.gpu.discoveryScript": str(script),
        "spark.executor.resource.gpu.amount": "1",
        "spark.task.resource.gpu.amount": "1"})
    spark_sessions.stop()   # the next test's application has no GPUs


def report_devices(args, ctx):
    with open(os.path.join(args["out"], f"{ctx.job_name}-{ctx.task_index}.json"), "w") as f:
        json.dump({"cuda": os.environ.get("CUDA_VISIBLE_DEVICES")}, f)


def test_each_node_sees_only_the_gpu_spark_gave_it_and_ps_none(spark_3_workers_1_fake_gpu_each,
                                                                tmp_path):
    cluster = tfos.TFCluster.run(spark_3_workers_1_fake_gpu_each, report_devices,
                                 {"out": str(tmp_path)}, num_executors=3, num_ps=1,
                                 log_stream=None)
    cluster.shutdown(timeout=120)
    seen = {p.stem: json.loads(p.read_text())["cuda"] for p in tmp_path.glob("*.json")}
    assert seen["ps-0"] == ""                                   # kept off GPUs
    workers = sorted(seen[name] for name in ("worker-0", "worker-1"))
    assert len(set(workers)) == 2 and set(workers) <= {"0", "1", "2"}   # distinct, Spark's


def test_a_node_needing_more_gpus_than_spark_gave_fails_with_the_settings(
        spark_3_workers_1_fake_gpu_each, tmp_path):
    with pytest.raises(tfos.ClusterFailed, match=r"needs num_gpus=2 but Spark gave its task 1 "
                                                 r"\(\d\): set spark.executor.resource.gpu"):
        cluster = tfos.TFCluster.run(spark_3_workers_1_fake_gpu_each, report_devices,
                                     {"out": str(tmp_path), "num_gpus": 2}, num_executors=2,
                                     log_stream=None)
        cluster.shutdown(timeout=120)
    assert not list(tmp_path.glob("*.json"))     # no TF process started


def count_gpus(args, ctx):
    import tensorflow as tf
    with open(os.path.join(args["out"], f"{ctx.job_name}-{ctx.task_index}.json"), "w") as f:
        json.dump({"cuda": os.environ.get("CUDA_VISIBLE_DEVICES"),
                   "gpus": len(tf.config.list_physical_devices("GPU"))}, f)


@pytest.mark.gpu
@pytest.mark.skipif(shutil.which("nvidia-smi") is None, reason="no NVIDIA GPU on this host")
def test_tensorflow_in_each_node_sees_exactly_its_real_gpu(spark_sessions, tmp_path):
    spark = spark_sessions.get("local-cluster[1,1,4096]", **{
        "spark.worker.resource.gpu.amount": "1",
        "spark.worker.resource.gpu.discoveryScript": str(DISCOVERY.parent / "nvidia_gpus.sh"),
        "spark.executor.resource.gpu.amount": "1", "spark.task.resource.gpu.amount": "1"})
    try:
        cluster = tfos.TFCluster.run(spark, count_gpus, {"out": str(tmp_path)}, num_executors=1,
                                     log_stream=None)
        cluster.shutdown(timeout=300)
    finally:
        spark_sessions.stop()
    (record,) = [json.loads(p.read_text()) for p in tmp_path.glob("*.json")]
    assert record["gpus"] == 1 and record["cuda"] is not None
