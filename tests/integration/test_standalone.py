"""A tfos cluster on a Spark standalone cluster (master + 2 workers) from scripts/."""
import json
import subprocess

import pytest
from conftest import REPO
from test_strategies import mwms_fit

import tfos

SCRIPT = str(REPO / "scripts" / "spark_standalone.sh")


@pytest.fixture(scope="module")
def standalone_master():
    started = subprocess.run(["bash", SCRIPT, "start", "--workers", "2", "--cores", "1",
                              "--memory", "2g"], capture_output=True, text=True, timeout=180)
    assert started.returncode == 0, started.stderr
    try:
        yield started.stdout.strip()
    finally:
        subprocess.run(["bash", SCRIPT, "stop"], capture_output=True, timeout=120)


@pytest.fixture
def spark_standalone_2_workers(spark_sessions, standalone_master):
    return spark_sessions.get(standalone_master, **{"spark.executor.cores": "1",
                                                    "spark.executor.memory": "1g",
                                                    "spark.cores.max": "2"})


@pytest.mark.standalone
def test_multi_worker_training_on_a_standalone_cluster(spark_standalone_2_workers, tmp_path):
    with tfos.TFCluster.run(spark_standalone_2_workers, mwms_fit, {"out": str(tmp_path)},
                            num_executors=2, master_node="chief") as cluster:
        cluster.shutdown(timeout=300)
    records = {p.stem: json.loads(p.read_text()) for p in tmp_path.glob("*.json")}
    assert set(records) == {"chief-0", "worker-0"}
    assert records["chief-0"]["weights"] == pytest.approx(records["worker-0"]["weights"])
    assert records["chief-0"]["replicas"] == 2


@pytest.mark.standalone
def test_standalone_refuses_a_cluster_larger_than_cores_max(spark_standalone_2_workers):
    with pytest.raises(tfos.PreflightError, match="needs 3 task slots"):
        tfos.TFCluster.run(spark_standalone_2_workers, mwms_fit, None, num_executors=3)
