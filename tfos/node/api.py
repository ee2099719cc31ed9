"""TensorFlowOnSpark's ``TFNode`` helpers, for code moving over (runs in the TF node).

Exported as ``tfos.TFNode``: ``TFNode.DataFeed(ctx.mgr, ...)``, ``TFNode.hdfs_path(ctx, path)``,
``TFNode.start_cluster_server(ctx)`` and ``TFNode.release_port(ctx)`` keep working.
TensorFlowOnSpark's deprecated module functions (``next_batch``, ``batch_results``,
``terminate`` on a ``mgr``, which only raised there) are not provided.
"""
from __future__ import annotations

from tfos.core import paths


def DataFeed(mgr, train_mode: bool = True, qname_in: str = "input",  # noqa: N802 - TFoS's name
             qname_out: str = "output", input_mapping: dict | None = None):
    """The feed ``qname_in`` of this node (``ctx.get_data_feed``): ``next_batch``,
    ``batch_results`` (when ``train_mode`` is False), ``should_stop``, ``terminate``,
    ``done_feeding``. ``mgr`` is the node's ``ctx.mgr``."""
    return mgr.data_feed(train_mode, qname_in, qname_out, input_mapping)


def hdfs_path(ctx, path: str) -> str:
    """``path`` qualified against the node's default filesystem (``tfos.core.paths``).

    Needs only ``ctx.defaultFS`` and ``ctx.working_dir``, as TensorFlowOnSpark's did: a path
    with a scheme (``hdfs://``, ``s3a://``, ``file://``, ``viewfs://``...) is kept as it is;
    an absolute path gets the default filesystem; a relative one lands under ``/user/<user>``
    on a distributed filesystem, or under the working directory on a local one.
    """
    return paths.absolute_path(path, ctx.defaultFS, ctx.working_dir)


def start_cluster_server(ctx, num_gpus: int = 1, rdma: bool = False):
    """``ctx.start_cluster_server``: returns ``(tf.train.ClusterSpec, server)``."""
    return ctx.start_cluster_server(num_gpus=num_gpus, rdma=rdma)


def release_port(ctx) -> None:
    """``ctx.release_port()``: closes the port held for ``TFCluster.run(release_port=False)``."""
    ctx.release_port()
