"""``TFParallel.run``: independent single-node TF instances, one per executor (driver side).

TensorFlowOnSpark's ``TFParallel``: each instance runs ``map_fn(tf_args, ctx)`` on its own,
without ``TF_CONFIG`` or peers (batch inference over files, say); ``ctx.worker_num`` (0..n-1)
and ``ctx.num_workers`` tell it which share is its own. The instances are nodes of a
``TFCluster`` with ``independent=True``: started, supervised and cleaned up the same way, their
output forwarded to the driver and a failure raised root cause first. With ``use_barrier`` they
start together as one barrier stage (more instances than task slots is an error at once);
without it they run as slots free up, in waves.
"""
from __future__ import annotations

from typing import Any, Callable

from tfos.driver.cluster import TFCluster


def run(sc, map_fn: Callable[[Any, Any], Any], tf_args: Any, num_executors: int,
        use_barrier: bool = True, **options) -> list:
    """Runs ``map_fn(tf_args, ctx)`` as ``num_executors`` independent TF instances; returns
    when all have returned, with what each returned (by ``ctx.worker_num``; None where it
    returned nothing; see ``TFCluster.results``). Keyword ``options`` are ``TFCluster.run``'s
    (``log_stream``, ``num_gpus``, ``env``, ...)."""
    timeout = options.pop("timeout", None)
    cluster = TFCluster.run(sc, map_fn, tf_args, num_executors, independent=True,
                            barrier=use_barrier, **options)
    cluster.shutdown(timeout=timeout)
    results = cluster.results
    return [results.get(role.label) for role in cluster.config.roles]
