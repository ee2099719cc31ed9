"""TensorFlowOnSpark's Spark ML parameters (tfos.pipeline): Namespace, TFParams, Has* mixins.

No Spark session: Params are plain Python objects until a stage runs.
"""
import argparse

import pytest

import tfos
from tfos import pipeline
from tfos.pipeline import HasBatchSize, HasSteps, Namespace, TFEstimator, TFModel, TFParams


def test_namespace_from_every_kind_of_arguments():
    d = {"string": "foo", "integer": 1, "array": [1, 2, 3], "map": {"a": 1}}
    for source in (d, argparse.Namespace(**d), Namespace(d)):
        n = Namespace(source)
        assert (n.string, n.integer, n.array, n.map) == ("foo", 1, [1, 2, 3], {"a": 1})
        assert "string" in n and "extra" not in n and "argv" not in n
        assert sorted(n) == ["array", "integer", "map", "string"]
        assert n == Namespace(d) and n != Namespace({"string": "bar"})
    assert repr(Namespace({"b": 2, "a": "x"})) == "Namespace(a='x', b=2)"
    argv = ["--foo", "1", "--bar", "test"]
    n = Namespace(argv)
    assert n.argv == argv and list(n) == argv and n == argv and repr(n) == repr(argv)
    assert list(Namespace(None)) == [] and Namespace().argv is None
    with pytest.raises(tfos.ConfigError, match="tf_args of type int"):
        Namespace(3)


def test_merge_args_params_lays_every_param_over_a_copy_of_the_args():
    class Foo(TFParams, HasBatchSize, HasSteps):
        def __init__(self, args):
            super().__init__()
            self.args = args
            self._setDefault(steps=7)

    args = Namespace({"a": 1, "b": 2, "steps": 0})
    foo = Foo(args).setBatchSize(10)
    assert foo.merge_args_params() == Namespace({"a": 1, "b": 2, "batch_size": 10, "steps": 7})
    assert foo.setSteps(100).merge_args_params().steps == 100
    assert args == Namespace({"a": 1, "b": 2, "steps": 0})    # the stage's own args untouched


def test_every_tensorflowonspark_accessor_exists_with_its_default():
    estimator = TFEstimator(lambda args, ctx: None, {})
    defaults = {"InputMapping": {}, "ClusterSize": 1, "NumPS": 0, "DriverPSNodes": False,
                "MasterNode": "chief", "ModelDir": None, "ExportDir": None, "TFRecordDir": None,
                "BatchSize": 100, "Epochs": 1, "Steps": 1000, "Readers": 1,
                "Tensorboard": False, "GraceSecs": 0, "InputMode": tfos.InputMode.SPARK,
                "Protocol": "grpc"}
    for name, default in defaults.items():
        assert getattr(estimator, f"get{name}")() == default, name
    changed = {"InputMapping": {"c": "x"}, "ClusterSize": 3, "NumPS": 1, "MasterNode": None,
               "ModelDir": "/m", "ExportDir": "/e", "TFRecordDir": "/t", "BatchSize": 8,
               "Epochs": 2, "Steps": 5, "Readers": 2, "Tensorboard": True, "GraceSecs": 3,
               "InputMode": tfos.InputMode.TENSORFLOW, "Protocol": "rdma"}
    for name, value in changed.items():
        assert getattr(estimator, f"set{name}")(value) is estimator
        assert getattr(estimator, f"get{name}")() == value, name
    model = TFModel({"x": 1}).setTagSet("a,b").setSignatureDefKey("k").setOutputMapping(
        {"y": "out"})
    assert (model.getTagSet(), model.getSignatureDefKey(), model.getOutputMapping()) == \
        ("a,b", "k", {"y": "out"})
    assert model.merge_args_params().x == 1 and model.history is None
    assert set(pipeline.__all__) >= {"TFEstimator", "TFModel", "Namespace", "TFParams",
                                     "HasInputMapping", "HasTFRecordDir", "HasProtocol"}


@pytest.mark.parametrize("setter, value, fragment", [
    ("setInputMode", 5, "use tfos.InputMode.SPARK or tfos.InputMode.TENSORFLOW"),
    ("setProtocol", "verbs", "use 'grpc' or 'rdma'"),
    ("setInputMapping", ["x"], "expected a mapping"),
])
def test_bad_param_values_are_refused_when_set(setter, value, fragment):
    with pytest.raises(TypeError, match=fragment):
        getattr(TFEstimator(lambda args, ctx: None, {}), setter)(value)


def test_a_tf1_export_fn_is_refused_with_what_to_do_instead():
    with pytest.raises(tfos.ConfigError, match="tfos.compat.export_saved_model"):
        TFEstimator(lambda args, ctx: None, {}, export_fn=lambda args: None)
