"""The mnist examples end to end: data setup, plain TF, on Spark (MWMS and PSS), inference on a
cluster and by independent instances (TFParallel), and as a Spark ML Pipeline.

Once the data is written, the module starts the script runs of the selected tests two at a
time, the longest first (conftest's ``BackgroundRuns``); each test waits for its own."""
import re
import subprocess
import sys

import pytest
from conftest import REPO, BackgroundRuns, selected_tests

MNIST = REPO / "examples" / "mnist"


def run(env, *argv, timeout=300):
    result = subprocess.run([sys.executable, *map(str, argv)], check=False, capture_output=True,
                            text=True, timeout=timeout, cwd=REPO, env=env)
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
    node_lines = re.findall(r"^\[(?:chief|worker|ps):\d+@[\w.-]+\] (.*)$", output, re.MULTILINE)
    assert node_lines, output[-4000:]
    foreign = [line for line in node_lines if not EXAMPLE_LINES.fullmatch(line)]
    assert not foreign, foreign


@pytest.fixture(scope="module")
def mnist_data(tmp_path_factory):
    out = tmp_path_factory.mktemp("mnist")
    run(None, MNIST / "mnist_data_setup.py", "--output", out, "--format", "both")
    return out


# With no ps, as scripts/run_example.sh runs it (executors of their own); the ps variant in
# one JVM (local[N] starts faster).
THREE_NODES = [(0, "local-cluster[3,1,1024]"), (1, "local[3]")]


def fed_then_inference(env, data, work):
    """Trains fed by Spark, then scores the test files with the saved model on a cluster and by
    independent instances: the three outputs."""
    model_dir = work / "model"
    # In one JVM each (local[N]: a slot per node, plus one for the feed tasks).
    trained = run(env, MNIST / "mnist_spark.py", "--cluster_size", 3, "--input_mode", "spark",
                  "--data_dir", data, "--model_dir", model_dir, "--master", "local[4]",
                  timeout=400)
    # Two nodes score the 359 test rows as well as three, with one TensorFlow start less.
    scored = run(env, MNIST / "mnist_inference.py", "--data_dir", data, "--model_dir", model_dir,
                 "--output", work / "predictions", "--cluster_size", 2, "--master", "local[3]",
                 timeout=400)
    parallel = run(env, MNIST / "mnist_parallel.py", "--data_dir", data, "--model_dir",
                   model_dir, "--output", work / "parallel", "--cluster_size", 2, "--master",
                   "local[2]", timeout=400)
    return trained, scored, parallel


def pipeline(env, data, work):
    """The pipeline example's output, and where it saved the fitted PipelineModel."""
    output = run(env, MNIST / "mnist_pipeline.py", "--cluster_size", 2, "--epochs", 3,
                 "--data_dir", data, "--export_dir", work / "export", "--save",
                 work / "pipeline", "--master", "local[3]", timeout=400)
    return output, work / "pipeline"


@pytest.fixture(scope="module")
def outputs(request, mnist_data, tmp_path_factory):
    """``outputs[test]``: a future of what the scripts of that test printed."""
    tests = selected_tests(request)
    futures = {}
    with BackgroundRuns() as runs:
        if "test_fed_by_spark_then_inference_on_the_saved_model" in tests:
            futures["fed"] = runs.submit(fed_then_inference, runs.env, mnist_data,
                                         tmp_path_factory.mktemp("fed"))
        if "test_pipeline_trains_with_tfestimator_then_scores_with_tfmodel" in tests:
            futures["pipeline"] = runs.submit(pipeline, runs.env, mnist_data,
                                              tmp_path_factory.mktemp("pipeline"))
        for num_ps, master in THREE_NODES:
            if f"test_on_spark_three_nodes[{num_ps}-{master}]" in tests:
                futures[num_ps, master] = runs.submit(
                    run, runs.env, MNIST / "mnist_spark.py", "--cluster_size", 3, "--num_ps",
                    num_ps, "--data_dir", mnist_data, "--master", master)
        if "test_plain_tensorflow" in tests:
            futures["plain"] = runs.submit(run, runs.env, MNIST / "mnist_tf.py", "--data_dir",
                                           mnist_data)
        yield futures


def test_plain_tensorflow(outputs):
    assert accuracy(outputs["plain"].result()) > 0.9


@pytest.mark.parametrize("num_ps, master", THREE_NODES)
def test_on_spark_three_nodes(outputs, num_ps, master):
    output = outputs[num_ps, master].result()
    assert accuracy(output, CHIEF) > 0.9
    assert_only_example_lines(output)   # what scripts/run_example.sh shows


def test_fed_by_spark_then_inference_on_the_saved_model(outputs):
    trained, scored, parallel = outputs["fed"].result()
    assert accuracy(trained, CHIEF) > 0.9
    found = re.findall(r"inference accuracy: ([0-9.]+)", scored)
    assert len(found) == 1 and float(found[0]) > 0.9, scored[-4000:]
    # The same model over the test files, by independent instances (TFParallel).
    assert len(re.findall(r"mnist: instance [01] scored \d+ rows", parallel)) == 2, \
        parallel[-4000:]
    found = re.findall(r"parallel inference accuracy: ([0-9.]+)", parallel)
    assert len(found) == 1 and float(found[0]) > 0.9, parallel[-4000:]


def test_pipeline_trains_with_tfestimator_then_scores_with_tfmodel(outputs):
    output, saved = outputs["pipeline"].result()
    epochs = re.findall(r"mnist: epoch (\d): loss [0-9.]+, accuracy [0-9.]+, val_loss [0-9.]+, "
                        r"val_accuracy ([0-9.]+)", output)
    assert [e for e, _ in epochs] == ["1", "2", "3"], output[-4000:]
    found = re.findall(r"pipeline accuracy: ([0-9.]+)", output)
    assert len(found) == 1 and float(found[0]) > 0.9, output[-4000:]
    # The last validation pass and the pipeline's scoring saw the same rows and model.
    assert abs(float(epochs[-1][1]) - float(found[0])) < 0.01
    assert (saved / "stages").is_dir()
