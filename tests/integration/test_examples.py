"""The mnist examples end to end: data setup, plain TF, on Spark (MWMS and PSS), inference on a
cluster and by independent instances (TFParallel), and as a Spark ML Pipeline."""
import os
import re
import subprocess
import sys

import pytest
from conftest import REPO

MNIST = REPO / "examples" / "mnist"


def run(*argv, timeout=300):
    result = subprocess.run([sys.executable, *map(str, argv)], capture_output=True, text=True,
                            timeout=timeout, cwd=REPO, env=dict(os.environ))
    assert result.returncode == 0, result.stderr[-4000:]
    return result.stdout + result.stderr


CHIEF = r"\[chief:0@[\w.-]+\] "   # the chief's lines (host 127.0.0.1, or localhost in local[N])


def accuracy(output: str, prefix: str = "") -> float:
    found = re.findall(prefix + r"test accuracy: ([0-9.]+)", output)
    assert len(found) == 1, output[-4000:]
    return float(found[0])


# What the mnist example itself prints on a node (its own lines and Keras' verbose=2 ones);
# anything else from a node (TensorFlow's start-up noise) must stay off the driver's stream.
EXAMPLE_LINES = re.compile(r"mnist: .*|Epoch \d+/\d+|\d+/\d+ - .*|test accuracy: [0-9.]+|"
                           r"tfos: SavedModel exported to .*")


def assert_only_example_lines(output: str):
    node_lines = re.findall(r"^\[(?:chief|worker|ps):\d+@[\w.-]+\] (.*)$", output, re.M)
    assert node_lines, output[-4000:]
    foreign = [line for line in node_lines if not EXAMPLE_LINES.fullmatch(line)]
    assert not foreign, foreign


@pytest.fixture(scope="module")
def mnist_data(tmp_path_factory):
    out = tmp_path_factory.mktemp("mnist")
    run(MNIST / "mnist_data_setup.py", "--output", out, "--format", "both")
    return out


def test_plain_tensorflow(mnist_data):
    assert accuracy(run(MNIST / "mnist_tf.py", "--data_dir", mnist_data)) > 0.9


# With no ps, as scripts/run_example.sh runs it (executors of their own); the ps variant in
# one JVM (local[N] starts faster).
@pytest.mark.parametrize("num_ps, master", [(0, "local-cluster[3,1,1024]"), (1, "local[3]")])
def test_on_spark_three_nodes(mnist_data, num_ps, master):
    output = run(MNIST / "mnist_spark.py", "--cluster_size", 3, "--num_ps", num_ps,
                 "--data_dir", mnist_data, "--master", master)
    assert accuracy(output, CHIEF) > 0.9
    assert_only_example_lines(output)   # what scripts/run_example.sh shows


def test_fed_by_spark_then_inference_on_the_saved_model(mnist_data, tmp_path):
    model_dir = tmp_path / "model"
    # In one JVM each (local[N]: a slot per node, plus one for the feed tasks).
    output = run(MNIST / "mnist_spark.py", "--cluster_size", 3, "--input_mode", "spark",
                 "--data_dir", mnist_data, "--model_dir", model_dir, "--master", "local[4]",
                 timeout=400)
    assert accuracy(output, CHIEF) > 0.9
    output = run(MNIST / "mnist_inference.py", "--data_dir", mnist_data, "--model_dir", model_dir,
                 "--output", tmp_path / "predictions", "--master", "local[4]", timeout=400)
    found = re.findall(r"inference accuracy: ([0-9.]+)", output)
    assert len(found) == 1 and float(found[0]) > 0.9, output[-4000:]
    # The same model over the test files, by independent instances (TFParallel).
    output = run(MNIST / "mnist_parallel.py", "--data_dir", mnist_data, "--model_dir", model_dir,
                 "--output", tmp_path / "parallel", "--cluster_size", 2, "--master", "local[2]",
                 timeout=400)
    assert len(re.findall(r"mnist: instance [01] scored \d+ rows", output)) == 2, output[-4000:]
    found = re.findall(r"parallel inference accuracy: ([0-9.]+)", output)
    assert len(found) == 1 and float(found[0]) > 0.9, output[-4000:]


def test_pipeline_trains_with_tfestimator_then_scores_with_tfmodel(mnist_data, tmp_path):
    output = run(MNIST / "mnist_pipeline.py", "--cluster_size", 2, "--epochs", 3,
                 "--data_dir", mnist_data, "--export_dir", tmp_path / "export",
                 "--save", tmp_path / "pipeline", "--master", "local[3]", timeout=400)
    epochs = re.findall(r"mnist: epoch (\d): loss [0-9.]+, accuracy [0-9.]+, val_loss [0-9.]+, "
                        r"val_accuracy ([0-9.]+)", output)
    assert [e for e, _ in epochs] == ["1", "2", "3"], output[-4000:]
    found = re.findall(r"pipeline accuracy: ([0-9.]+)", output)
    assert len(found) == 1 and float(found[0]) > 0.9, output[-4000:]
    # The last validation pass and the pipeline's scoring saw the same rows and model.
    assert abs(float(epochs[-1][1]) - float(found[0])) < 0.01
    assert (tmp_path / "pipeline" / "stages").is_dir()
