"""TensorFlowOnSpark's ``TFNode`` helpers, for code moving over (runs in the TF node).

Exported as ``tfos.TFNode`` so ``TFNode.hdfs_path(ctx, path)`` keeps working.
"""
from __future__ import annotations


def hdfs_path(ctx, path: str) -> str:
    """``path`` qualified against the default filesystem; see ``NodeContext.absolute_path``."""
    return ctx.absolute_path(path)


def start_cluster_server(ctx, num_gpus: int = 0, rdma: bool = False):
    """``ctx.start_cluster_server``: returns ``(tf.train.ClusterSpec, server)``."""
    return ctx.start_cluster_server(num_gpus=num_gpus, rdma=rdma)
