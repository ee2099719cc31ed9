"""tfos: TensorFlow on Apache Spark.

Public API (TensorFlowOnSpark's names): ``TFCluster.run``, ``InputMode``, ``TFNode``; the
configuration object ``ClusterConfig``; the errors under ``TfosError``; ``cli`` for the
command-line flags every script shares.
"""
from tfos import node_api as TFNode  # noqa: N812 - TensorFlowOnSpark's public name
from tfos import cli
from tfos.cluster import TFCluster
from tfos.config import ClusterConfig, InputMode
from tfos.context import NodeContext
from tfos.errors import (AuthenticationError, ClusterFailed, ConfigError, NodeFailed,
                         PreflightError, ProtocolError, ReservationTimeout, ShutdownTimeout,
                         TfosError)

__version__ = "0.1.0"

__all__ = ["TFCluster", "InputMode", "TFNode", "ClusterConfig", "NodeContext", "TfosError",
           "ConfigError", "PreflightError", "ReservationTimeout", "ClusterFailed", "NodeFailed",
           "ShutdownTimeout", "AuthenticationError", "ProtocolError"]
