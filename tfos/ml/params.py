"""TensorFlowOnSpark's Spark ML parameters: ``Has*`` mixins, ``Namespace`` and ``TFParams``.

Every ``Has<Name>`` mixin holds one Spark ML ``Param`` with TensorFlowOnSpark's name (the
``args`` attribute a TF function reads, e.g. ``batch_size``) and its ``set<Name>``/``get<Name>``
accessors. ``TFParams.merge_args_params()`` lays the parameters over the stage's own arguments
(``self.args``, a ``Namespace``): that merged namespace is what the TF function receives.
"""
from __future__ import annotations

import argparse
import copy

from pyspark.ml.param import Param, Params, TypeConverters

from tfos.core.config import InputMode
from tfos.core.errors import ConfigError


def _to_dict(value) -> dict:
    """A mapping parameter's value (column -> tensor, tensor -> column), as a plain dict."""
    try:
        return dict(value)
    except (TypeError, ValueError):
        raise TypeError(f"expected a mapping such as {{'column': 'tensor'}}, got "
                        f"{type(value).__name__} {value!r}") from None


def _to_input_mode(value) -> int:
    try:
        return int(InputMode(value))
    except ValueError:
        raise TypeError(f"input_mode={value!r}: use tfos.InputMode.SPARK or "
                        "tfos.InputMode.TENSORFLOW") from None


def _to_protocol(value) -> str:
    if value not in ("grpc", "rdma"):
        raise TypeError(f"protocol={value!r}: use 'grpc' or 'rdma'")
    return value


def _to_optional_string(value) -> str | None:
    return None if value is None else TypeConverters.toString(value)


def _mixin(accessor: str, name: str, doc: str, converter) -> type:
    """``Has<accessor>``: a Params class with ``name`` and ``set<accessor>``/``get<accessor>``."""
    def setter(self, value):
        return self._set(**{name: value})

    def getter(self):
        return self.getOrDefault(name)

    setter.__name__, getter.__name__ = f"set{accessor}", f"get{accessor}"
    setter.__doc__, getter.__doc__ = f"Sets ``{name}``: {doc}.", f"``{name}``: {doc}."
    return type(f"Has{accessor}", (Params,), {
        "__module__": __name__, "__doc__": f"Mixin for the ``{name}`` param: {doc}.",
        name: Param(Params._dummy(), name, doc, typeConverter=converter),
        setter.__name__: setter, getter.__name__: getter})


# The TFEstimator's parameters (the cluster, the training and the data).
HasBatchSize = _mixin("BatchSize", "batch_size", "rows per batch", TypeConverters.toInt)
HasClusterSize = _mixin("ClusterSize", "cluster_size", "nodes in the TF cluster",
                        TypeConverters.toInt)
HasNumPS = _mixin("NumPS", "num_ps", "parameter servers among the nodes", TypeConverters.toInt)
HasDriverPSNodes = _mixin("DriverPSNodes", "driver_ps_nodes",
                          "run the parameter servers on the driver (not supported by tfos)",
                          TypeConverters.toBoolean)
HasMasterNode = _mixin("MasterNode", "master_node",
                       "job name of the chief node ('chief'), or None for workers only",
                       _to_optional_string)
HasInputMode = _mixin("InputMode", "input_mode",
                      "where the nodes' data comes from: InputMode.SPARK (fed) or "
                      "InputMode.TENSORFLOW (TFRecords written to tfrecord_dir)", _to_input_mode)
HasProtocol = _mixin("Protocol", "protocol", "how the nodes exchange tensors: grpc or rdma",
                     _to_protocol)
HasTensorboard = _mixin("Tensorboard", "tensorboard", "start TensorBoard beside the chief",
                        TypeConverters.toBoolean)
HasGraceSecs = _mixin("GraceSecs", "grace_secs",
                      "seconds to wait after the nodes finished, before stopping the cluster",
                      TypeConverters.toInt)
HasModelDir = _mixin("ModelDir", "model_dir", "directory of the model's checkpoints",
                     _to_optional_string)
HasExportDir = _mixin("ExportDir", "export_dir", "directory of the SavedModel",
                      _to_optional_string)
HasTFRecordDir = _mixin("TFRecordDir", "tfrecord_dir",
                        "directory the training DataFrame is written to as TFRecords "
                        "(InputMode.TENSORFLOW)", _to_optional_string)
HasEpochs = _mixin("Epochs", "epochs", "passes over the training data", TypeConverters.toInt)
HasSteps = _mixin("Steps", "steps", "most training steps (read by the TF function)",
                  TypeConverters.toInt)
HasReaders = _mixin("Readers", "readers", "reader threads (read by the TF function)",
                    TypeConverters.toInt)
# Both stages, and the TFModel's own.
HasInputMapping = _mixin("InputMapping", "input_mapping",
                         "input DataFrame column -> input tensor", _to_dict)
HasOutputMapping = _mixin("OutputMapping", "output_mapping",
                          "output tensor -> output DataFrame column", _to_dict)
HasSignatureDefKey = _mixin("SignatureDefKey", "signature_def_key",
                            "the SavedModel's signature to run", _to_optional_string)
HasTagSet = _mixin("TagSet", "tag_set", "comma-separated tags of the MetaGraph to load",
                   _to_optional_string)


class Namespace:
    """Arguments as attributes, from a dict, an ``argparse.Namespace``, another ``Namespace``
    or None (empty); a list is kept as ``argv`` (command-line arguments the TF function parses
    itself)."""

    argv: list | None = None

    def __init__(self, args=None):
        if isinstance(args, list):
            self.argv = list(args)
        elif isinstance(args, dict):
            self.__dict__.update(args)
        elif isinstance(args, (argparse.Namespace, Namespace)):
            self.__dict__.update(vars(args))
        elif args is not None:
            raise ConfigError(f"tf_args of type {type(args).__name__}: pass a dict, an "
                              "argparse.Namespace, a tfos Namespace or a list of arguments")

    def __iter__(self):
        return iter(self.argv if self.argv else [k for k in vars(self) if k != "argv"])

    def __contains__(self, name) -> bool:
        return name in list(self)

    def __eq__(self, other) -> bool:
        if self.argv:
            return self.argv == other or (isinstance(other, Namespace) and
                                          self.argv == other.argv)
        return isinstance(other, (Namespace, argparse.Namespace)) and vars(self) == vars(other)

    def __repr__(self) -> str:
        if self.argv:
            return repr(self.argv)
        items = ", ".join(f"{k}={v!r}" for k, v in sorted(vars(self).items()))
        return f"Namespace({items})"


class TFParams(Params):
    """A stage's arguments (``args``, a ``Namespace``) merged with its Spark ML parameters."""

    args: Namespace | None = None

    def merge_args_params(self) -> Namespace:
        """A copy of ``args`` with every parameter's value (set or default) as an attribute of
        the parameter's name: what the TF function receives."""
        merged = copy.copy(self.args) if self.args is not None else Namespace()
        for param in self.params:
            setattr(merged, param.name, self.getOrDefault(param))
        return merged
