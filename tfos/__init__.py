"""tfos: TensorFlow on Apache Spark.

Public API (TensorFlowOnSpark's names): ``TFCluster.run``, ``InputMode``, ``TFNode``; the
configuration object ``ClusterConfig``; the errors under ``TfosError``; ``cli`` for the
command-line flags every script shares.

This module is imported by every process, TF nodes and Spark Python workers included, so it
loads only the pure core at once; the driver's names (``TFCluster``, ``cli``) and the node's
(``NodeContext``, ``TFNode``) are imported on first use. A TF node thus never loads pyspark,
grpc's server or the driver's code.

Packages, by the process they run in (imports point only downwards in this list):
``tfos.driver`` (the Spark driver), ``tfos.executor`` (tasks in Spark Python workers) and
``tfos.node`` (the TF processes) side by side, ``tfos.core`` (pure, every side), then ``rdma``.
"""
import importlib

from tfos.core.config import ClusterConfig, InputMode
from tfos.core.errors import (
    AuthenticationError,
    ClusterFailed,
    ConfigError,
    DriverUnreachable,
    FeedDataError,
    FeedError,
    FeedFailed,
    FeedJobFailed,
    FeedUsageError,
    NodeFailed,
    PreflightError,
    ProtocolError,
    ReservationTimeout,
    ShutdownTimeout,
    TfosError,
    TFRecordError,
)

__version__ = "0.1.0"

# Public name -> (module, attribute or None for the module itself), imported on first use.
_LAZY = {
    "TFCluster": ("tfos.driver.cluster", "TFCluster"),
    "cli": ("tfos.driver.cli", None),
    "NodeContext": ("tfos.node.context", "NodeContext"),
    "TFNode": ("tfos.node.api", None),
    "compat": ("tfos.compat", None),
    "TFParallel": ("tfos.driver.parallel", None),
    "dfutil": ("tfos.dfutil", None),
    "pipeline": ("tfos.pipeline", None),
    "files": ("tfos.node.files", None),
}

__all__ = ["TFCluster", "InputMode", "TFNode", "TFParallel", "ClusterConfig", "NodeContext",
           "cli", "compat", "dfutil", "pipeline",
           "TfosError", "ConfigError", "PreflightError", "ReservationTimeout", "ClusterFailed",
           "NodeFailed", "ShutdownTimeout", "AuthenticationError", "ProtocolError",
           "FeedJobFailed", "FeedDataError", "FeedFailed", "FeedError", "FeedUsageError",
           "DriverUnreachable", "TFRecordError"]


def __getattr__(name: str):
    try:
        module_name, attribute = _LAZY[name]
    except KeyError:
        raise AttributeError(f"module 'tfos' has no attribute {name!r}") from None
    module = importlib.import_module(module_name)
    value = module if attribute is None else getattr(module, attribute)
    globals()[name] = value   # later lookups skip this function
    return value


def __dir__():
    return sorted(set(globals()) | set(_LAZY))
