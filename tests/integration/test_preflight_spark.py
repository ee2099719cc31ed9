"""Preflight: settings under which a cluster cannot run fail in seconds, saying what to change."""
import json

import pytest
from conftest import run_app


def outcome(result) -> dict:
    lines = [line for line in result.stdout.splitlines() if line.startswith("{")]
    assert lines, f"the app printed no outcome:\n{result.stdout}\n{result.stderr[-3000:]}"
    return json.loads(lines[-1])


def test_dynamic_allocation_is_refused():
    result = outcome(run_app("preflight_app.py", "local[2]", "2",
                             "spark.dynamicAllocation.enabled=true"))
    assert result["error"] == "PreflightError"
    assert "spark.dynamicAllocation.enabled=false" in result["message"]
    assert result["seconds"] < 5


def test_executors_with_another_tensorflow_are_refused(tmp_path):
    # The executors see a TensorFlow distribution of another version first on their path:
    # the nodes report it when they register and the driver refuses them.
    dist = tmp_path / "tensorflow-2.0.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: tensorflow\nVersion: 2.0.0\n")
    result = outcome(run_app("preflight_app.py", "local-cluster[2,1,1024]", "2",
                             f"spark.executorEnv.PYTHONPATH={tmp_path}"))
    assert result["error"] == "ClusterFailed"
    assert "TensorFlow 2.0.0" in result["message"]
    assert "install the same versions" in result["message"]
    assert result["seconds"] < 30


@pytest.mark.parametrize("nodes, message", [("0", "at least one node")])
def test_bad_cluster_size_is_a_config_error(nodes, message):
    result = outcome(run_app("preflight_app.py", "local[2]", nodes))
    assert result["error"] == "ConfigError"
    assert message in result["message"]


def test_spark_session_keeps_the_master_given_to_spark_submit():
    import os
    import subprocess

    from conftest import REPO, private_spark_home
    spark_home = private_spark_home()
    result = subprocess.run([os.path.join(spark_home, "bin", "spark-submit"), "--master", "local[2]",
                             str(REPO / "tests" / "integration" / "apps" / "master_app.py")],
                            capture_output=True, text=True, timeout=180,
                            env=dict(os.environ, SPARK_HOME=spark_home))
    assert "MASTER local[2]" in result.stdout, result.stderr[-3000:]
