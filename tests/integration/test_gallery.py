"""The gallery's examples (examples/gallery/*), each pair run end to end with tiny sizes: the
plain-TensorFlow script and its on-Spark version (``local[N]`` masters: one JVM, quick to
start), checked on what they print: a loss that fell, an accuracy above chance, the
micro-batches trained.

Ten script runs would take about three minutes one after another on 2 cores, most of it
starting JVMs and TensorFlow processes that wait on each other, so the module starts the runs
of the selected tests two at a time, longest first, as soon as it is set up; each test waits
for its own. Their processes carry a mark of their own (not the session's, which the
per-test leftover check would find while another test's run is still going), and the module
checks at its end that none of them outlived its run.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import psutil
import pytest
from conftest import REPO, SESSION_MARK, TFOS_PROCESS_MARKERS

GALLERY = REPO / "examples" / "gallery"
RUN_MARK = f"gallery-{uuid.uuid4().hex[:8]}"
CONCURRENT_RUNS = 2

# The scripts' arguments for each example, the longest runs first.
RUNS = {
    "streaming": {
        "train_spark.py": "--cluster_size 2 --master local[4] --micro_batches 3 "
                          "--rows_per_batch 1000",
        "train_tf.py": "--micro_batches 3 --rows_per_batch 1000"},
    "tf1_feed_dict": {
        "train_spark.py": "--cluster_size 3 --num_ps 1 --master local[4] --rows 2000 --epochs 1 "
                          "--log_every 5",
        "train_tf.py": "--rows 2000 --epochs 1 --log_every 5"},
    "parameter_server": {
        "train_spark.py": "--cluster_size 3 --num_ps 1 --master local[3] --epochs 2 "
                          "--steps_per_epoch 20 --rows 2000",
        "train_tf.py": "--num_workers 1 --num_ps 1 --epochs 2 --steps_per_epoch 20 --rows 2000"},
    "wide_deep": {
        "train_spark.py": "--cluster_size 2 --master local[4] --rows 2000 --epochs 2",
        "train_tf.py": "--rows 2000 --epochs 2"},
    "cifar_cnn": {
        "train_spark.py": "--cluster_size 2 --master local[4] --rows 1000 --epochs 2",
        "train_tf.py": "--rows 1000 --epochs 2"},
}


def run_script(example: str, script: str, arguments: str) -> str:
    # The driver JVM (in local[N], the executors too) lives about 20 s: with C1 alone its JIT
    # costs half the CPU (4-15 s less per run on 2 cores); nothing else changes.
    jvm_options = f"{os.environ.get('SPARK_SUBMIT_OPTS', '')} -XX:TieredStopAtLevel=1".strip()
    env = {**os.environ, SESSION_MARK: RUN_MARK, "SPARK_SUBMIT_OPTS": jvm_options}
    result = subprocess.run([sys.executable, str(GALLERY / example / script), *arguments.split()],
                            check=False, capture_output=True, text=True, timeout=300, cwd=REPO,
                            env=env)
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"{example}/{script} failed:\n{output[-5000:]}"
    return output


@pytest.fixture(scope="module")
def outputs(request):
    """``outputs[example][script]``: a future of that script's output (stdout + stderr)."""
    tests = {item.function.__name__ for item in request.session.items
             if item.module is request.module}
    selected = [example for example in RUNS if f"test_{example}" in tests]
    futures: dict[str, dict] = {example: {} for example in selected}
    with ThreadPoolExecutor(CONCURRENT_RUNS) as pool:
        for script in ("train_spark.py", "train_tf.py"):      # the longer runs first
            for example in selected:
                futures[example][script] = pool.submit(run_script, example, script,
                                                       RUNS[example][script])
        yield futures
    left = left_behind()
    assert not left, f"gallery processes left behind (killed): {left}"


def left_behind() -> list[str]:
    """The TF node, guard and TensorBoard processes of the gallery's runs still alive (after a
    bounded wait: their clean-up is asynchronous); killed."""
    deadline = time.monotonic() + 15
    while True:
        found = []
        for proc in psutil.process_iter(["cmdline"]):
            cmdline = " ".join(proc.info["cmdline"] or ())
            if any(marker in cmdline for marker in TFOS_PROCESS_MARKERS):
                try:
                    if proc.environ().get(SESSION_MARK) == RUN_MARK:
                        found.append(proc)
                except psutil.Error:
                    continue
        if not found or time.monotonic() > deadline:
            for proc in found:
                proc.kill()
            return [" ".join(p.info["cmdline"]) for p in found]
        time.sleep(0.5)


def output(outputs, example: str, script: str) -> str:
    text = outputs[example][script].result()
    # On the driver, the nodes show only their own lines: TensorFlow's C++ log lines (start-up,
    # rendezvous, session clean-up) are left off (they stay in the node log files).
    glog = re.findall(r"^\[\w+:\d+@[^\]]+\] [IWEF]\d{4} [\d:.]+ .*$", text, re.MULTILINE)
    assert not glog, glog
    return text


def numbers(pattern: str, text: str) -> list[float]:
    found = [float(n) for n in re.findall(pattern, text, re.MULTILINE)]
    assert found, f"no match for {pattern!r} in:\n{text[-4000:]}"
    return found


CHIEF = r"\[chief:0@[^\]]+\] "


def test_cifar_cnn(outputs):
    plain = output(outputs, "cifar_cnn", "train_tf.py")
    assert numbers(r"cifar_cnn: test accuracy ([0-9.]+)", plain)[0] > 0.3   # chance: 0.1
    spark = output(outputs, "cifar_cnn", "train_spark.py")
    losses = numbers(CHIEF + r"\d+/\d+ - .* loss: ([0-9.]+)", spark)
    assert len(losses) == 2 and losses[1] < losses[0]
    # Both nodes hold the same synchronously trained weights.
    accuracies = numbers(r"\[(?:chief|worker):0@[^\]]+\] cifar_cnn: test accuracy ([0-9.]+)",
                         spark)
    assert len(accuracies) == 2 and accuracies[0] == accuracies[1] > 0.2


def test_parameter_server(outputs):
    for script, prefix in (("train_tf.py", ""), ("train_spark.py", CHIEF)):
        text = output(outputs, "parameter_server", script)
        losses = re.findall(prefix + r"parameter_server: 2 epochs of 20 steps .* "
                            r"loss per epoch ([0-9.]+), ([0-9.]+)", text)
        assert len(losses) == 1 and float(losses[0][1]) < float(losses[0][0]), text[-4000:]
        assert numbers(prefix + r"parameter_server: test accuracy ([0-9.]+)", text)[0] > 0.7


def test_tf1_feed_dict(outputs):
    plain = output(outputs, "tf1_feed_dict", "train_tf.py")
    assert numbers(r"tf1_feed_dict: \d+ steps \((\d+) rows\)", plain) == [2000]
    assert numbers(r"tf1_feed_dict: test accuracy ([0-9.]+)", plain)[0] > 0.5  # chance: 1/3
    spark = output(outputs, "tf1_feed_dict", "train_spark.py")
    # Each of the 2 workers read its 1000 rows, in steps that advanced one global step.
    workers = r"\[worker:[01]@[^\]]+\] tf1_feed_dict: "
    assert numbers(workers + r"\d+ steps \((\d+) rows\)", spark) == [1000, 1000]
    assert max(numbers(workers + r"step (\d+):", spark)) >= 15
    # Asynchronous: a worker that finishes early evaluates a model trained less.
    assert max(numbers(workers + r"test accuracy ([0-9.]+)", spark)) > 0.5


def test_wide_deep(outputs):
    for script, prefix in (("train_tf.py", ""), ("train_spark.py", CHIEF)):
        text = output(outputs, "wide_deep", script)
        found = re.findall(prefix + r"wide_deep: test accuracy ([0-9.]+) \(always guessing "
                           r"the majority: ([0-9.]+)\)", text)
        assert len(found) == 1, text[-4000:]
        accuracy, majority = map(float, found[0])
        assert accuracy > majority + 0.05


def test_streaming(outputs):
    plain = output(outputs, "streaming", "train_tf.py")
    losses = numbers(r"streaming: micro-batch \d: loss ([0-9.]+)", plain)
    assert len(losses) == 3 and losses[-1] < losses[0]
    spark = output(outputs, "streaming", "train_spark.py")
    fed = numbers(r"^streaming: fed micro-batch (\d+) \(1000 rows\)$", spark)
    losses = numbers(CHIEF + r"streaming: micro-batch \d: loss ([0-9.]+)", spark)
    assert sorted(fed) == [0, 1, 2] and len(losses) == 3 and losses[-1] < losses[0]
