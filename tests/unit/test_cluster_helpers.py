"""Driver-side helpers of ``tfos.driver.cluster`` that need no Spark: pickling ``map_fun`` for the
nodes, telling user modules from installed ones, and summarising Spark errors."""
from __future__ import annotations

import importlib.util
import os
import pickle
import subprocess
import sys
import threading
import types

import pytest

from tfos.core import topology
from tfos.core.errors import ConfigError
from tfos.driver.cluster import _is_user_module, pickle_map_fun
from tfos.driver.spark_errors import summarize as summarize_spark_error


def test_pickle_map_fun_names_a_function_that_captures_a_lock():
    lock = threading.Lock()

    def train_with_lock(args, ctx):
        with lock:
            return args

    with pytest.raises(ConfigError) as info:
        pickle_map_fun(train_with_lock, {"epochs": 1})
    message = str(info.value)
    assert "train_with_lock" in message
    assert "lock" in message.lower()
    assert "Define map_fun at module level" in message


def test_pickle_map_fun_names_unpicklable_args():
    def train(args, ctx):
        return args

    with pytest.raises(ConfigError, match="train"):
        pickle_map_fun(train, {"handle": threading.Lock()})


def test_pickle_map_fun_round_trips_a_closure():
    scale = 3

    def train(args, ctx):
        return args * scale

    map_fun, args = pickle.loads(pickle_map_fun(train, 5))
    assert map_fun(args, None) == 15


def _load_module_from(path, name):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def test_a_function_of_a_user_module_is_pickled_by_value(tmp_path):
    """Executors need not import the script's own modules (no --py-files for migrated code)."""
    source = tmp_path / "tfos_test_user_script.py"
    source.write_text("FACTOR = 7\n\ndef train(args, ctx):\n    return args * FACTOR\n")
    module = _load_module_from(source, "tfos_test_user_script")
    try:
        assert _is_user_module(module)
        payload = pickle_map_fun(module.train, 6)
    finally:
        del sys.modules["tfos_test_user_script"]
    # A fresh interpreter that cannot import the module still runs the function.
    check = ("import pickle, sys; fun, args = pickle.loads(sys.stdin.buffer.read()); "
             "print(fun(args, None))")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    result = subprocess.run([sys.executable, "-c", check], input=payload, capture_output=True,
                            cwd="/", env=env, timeout=60)
    assert result.returncode == 0, result.stderr.decode()
    assert result.stdout.decode().strip() == "42"
    # And the registration was undone: the module is not left registered by value.
    from pyspark import cloudpickle
    assert "tfos_test_user_script" not in cloudpickle.list_registry_pickle_by_value()


def test_installed_and_library_modules_are_not_user_modules():
    import grpc
    import pyspark.sql

    main = types.ModuleType("__main__")
    main.__file__ = "/home/me/train.py"
    assert not _is_user_module(main)           # __main__ is pickled by value already
    assert not _is_user_module(sys)            # built in: no file
    assert not _is_user_module(pyspark.sql)    # site-packages
    assert not _is_user_module(grpc)           # site-packages
    assert not _is_user_module(topology)       # tfos itself
    assert _is_user_module(sys.modules[__name__])  # this test file: a user module


JVM_ERROR = """An error occurred while calling o87.collectAndServe.
: org.apache.spark.SparkException: Job aborted due to stage failure: Could not recover from a failed barrier ResultStage.
\tat org.apache.spark.scheduler.DAGScheduler.failJobAndIndependentStages(DAGScheduler.scala:2898)
\tat org.apache.spark.scheduler.DAGScheduler.$anonfun$abortStage$2(DAGScheduler.scala:2834)
\tat scala.collection.immutable.List.foreach(List.scala:334)
Caused by: org.apache.spark.api.python.PythonException: Traceback (most recent call last):
  File "/opt/spark/python/pyspark/worker.py", line 1247, in main
    process()
ValueError: executor ran out of patience

        at org.apache.spark.api.python.BasePythonRunner$ReaderIterator.handlePythonException(PythonRunner.scala:572)
\tat java.base/java.lang.Thread.run(Thread.java:1583)
"""


def test_summarize_spark_error_drops_jvm_frames_and_keeps_the_story():
    summary = summarize_spark_error(RuntimeError(JVM_ERROR))
    lines = summary.splitlines()
    assert not [line for line in lines if line.lstrip().startswith("at ")]
    assert "org.apache.spark.SparkException: Job aborted" in lines[1]
    assert lines[0].startswith("An error occurred while calling")
    assert "Caused by: org.apache.spark.api.python.PythonException: Traceback" in summary
    assert '  File "/opt/spark/python/pyspark/worker.py", line 1247, in main' in lines
    assert lines[-1] == "ValueError: executor ran out of patience"
    assert "" not in lines


def test_summarize_spark_error_keeps_the_head_when_long():
    exc = RuntimeError("\n".join(f"line {i}" for i in range(100)))
    assert summarize_spark_error(exc, max_lines=3) == "line 0\nline 1\nline 2"


def test_summarize_spark_error_of_an_empty_error_names_its_type():
    class Py4JNetworkError(Exception):
        pass

    assert summarize_spark_error(Py4JNetworkError()) == "Py4JNetworkError"
    assert summarize_spark_error(RuntimeError("\n\tat a.b(C.java:1)\n")) == "RuntimeError"


def test_summarize_spark_error_puts_a_deep_python_exception_first():
    traceback = [f'  File "/x/mod{i}.py", line {i}, in f{i}\n    call{i}()' for i in range(30)]
    exc = RuntimeError("An error occurred while calling o1.collect.\nTraceback (most recent call "
                       "last):\n" + "\n".join(traceback)
                       + "\ntfos.core.errors.FeedDataError: partition 1, row 7: bad\n\tat a.b(C.java:1)")
    summary = summarize_spark_error(exc, max_lines=5)
    lines = summary.splitlines()
    assert lines[0] == "tfos.core.errors.FeedDataError: partition 1, row 7: bad"
    assert lines[1] == "An error occurred while calling o1.collect."
    assert len(lines) == 6
