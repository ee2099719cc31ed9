"""tfos collectives: data-parallel training on every worker of a tfos cluster without a
``tf.distribute`` strategy, under Horovod's names (runs in the TF node process).

Each worker trains its own replica on its own part of the data; after every step the workers
average their gradients with one all-reduce, so the replicas stay identical. Plain Keras 3
``fit`` trains this way (it fails under TensorFlow's multi-worker strategies), so does tf-keras,
and so does a custom loop::

    import tfos.collective as hvd

    def main_fun(args, ctx):
        hvd.init(ctx)                                    # rank, size and peers from the cluster
        data = make_dataset().shard(hvd.size(), hvd.rank())
        model.compile(optimizer=hvd.DistributedOptimizer(keras.optimizers.Adam(1e-3)), ...)
        model.fit(data, epochs=3, callbacks=[hvd.BroadcastGlobalVariablesCallback(0),
                                            hvd.MetricAverageCallback()])

    TFCluster.run(sc, main_fun, args, num_executors=3, legacy_keras=False)   # Keras 3

The group is the cluster's chief and workers (rank 0 is the chief when there is one); ps and
evaluator nodes take no part. Its links form a ring over ``rdma.collective``: ``shm://``
between nodes on one host, ``tcp://`` (``rdma://`` with ``--rdma``) between hosts, set up on
each node's TF port (so do not also start a ``tf.distribute`` server in the same node). The
TensorFlow operations here are ``tf.numpy_function`` calls: they work eagerly and inside
``tf.function`` (Keras' compiled train step), not inside XLA (``jit_compile=True``).

Every rank must make the same collective calls in the same order: one that does not gets
``rdma.collective.CollectiveMismatch`` naming both ranks' calls, not a hang.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile

from tfos.collective import _group as _membership
from tfos.collective._tf import (
    BroadcastGlobalVariablesCallback,
    DistributedGradientTape,
    DistributedOptimizer,
    MetricAverageCallback,
    allgather,
    allreduce,
    barrier,
    broadcast,
    broadcast_variables,
    grouped_allreduce,
)
from tfos.core.errors import ConfigError

__all__ = ["init", "shutdown", "is_initialized", "joined", "rank", "size", "local_rank", "local_size",
           "transports", "Average", "Sum", "Min", "Max", "allreduce", "grouped_allreduce",
           "allgather", "broadcast", "barrier", "broadcast_variables",
           "DistributedGradientTape", "DistributedOptimizer", "BroadcastGlobalVariablesCallback",
           "MetricAverageCallback"]

logger = logging.getLogger(__name__)

# Reductions, under Horovod's names.
Average, Sum, Min, Max = "mean", "sum", "min", "max"

_lock, _state, _joined = _membership.lock, _membership.state, _membership.joined
_group = _membership.group


def init(ctx=None, timeout: float = 120.0, rdma: bool | None = None,
         secret: bytes | None = None) -> None:
    """Joins this process to its cluster's collective group (the chief and the workers).

    ``ctx`` is ``main_fun``'s context. Outside tfos (a plain TensorFlow script), leave it out:
    the cluster and this task come from ``TF_CONFIG`` and ``secret`` (at least 16 random bytes,
    the same in every process) authenticates the links. Returns once the ring is linked; the
    other members have ``timeout`` seconds to arrive. ``rdma``: links between hosts over
    ``rdma://`` (default: whatever ``TFCluster.run(rdma=...)`` chose); a host without a usable
    RDMA device raises ``rdma.errors.TransportUnavailable`` saying what is missing, it never
    falls back to TCP.
    """
    from rdma.collective import Group
    if ctx is None:
        spec, job, index = _from_tf_config()
        bind_all, transport = False, "grpc"
    else:
        spec, job, index = ctx.cluster_spec, ctx.job_name, ctx.task_index
        secret = getattr(ctx, "_secret", None)
        bind_all, transport = getattr(ctx, "_bind_all", False), getattr(ctx, "transport", "")
    if not secret:
        raise ConfigError("tfos.collective.init(): no secret to authenticate the links with; "
                          "pass the ctx tfos gave main_fun, or secret=<the same random bytes in "
                          "every process> with TF_CONFIG set")
    with _lock:
        if _state:
            return
        members = _members(spec)
        me = (job, index)
        if me not in members:
            raise ConfigError(
                f"tfos.collective.init() on {job}:{index}: only the chief and the workers "
                f"train with collectives ({len(members)} in this cluster); do not call it in "
                f"{job} nodes")
        use_rdma = transport == "rdma" if rdma is None else rdma
        addresses = ring_addresses([spec[j][i] for j, i in members], secret, use_rdma,
                                   bind_all=bind_all)
        rank = members.index(me)
        group = Group.join(rank, addresses, secret, timeout=timeout)
        hosts = [_host(spec[j][i]) for j, i in members]
        _state.update(group=group, hosts=hosts, addresses=addresses)
        _joined.set()
        logger.info("tfos.collective: rank %d of %d; receives over %s, sends to rank %d over %s",
                    rank, len(members), _scheme(addresses[rank]), (rank + 1) % len(members),
                    _scheme(addresses[(rank + 1) % len(members)]))


def _from_tf_config() -> tuple[dict, str, int]:
    try:
        config = json.loads(os.environ["TF_CONFIG"])
        return config["cluster"], config["task"]["type"], int(config["task"]["index"])
    except (KeyError, ValueError, TypeError) as exc:
        raise ConfigError(f"tfos.collective.init() without ctx reads the cluster from "
                          f"TF_CONFIG, which is missing or has no cluster/task ({exc!r}); pass "
                          "main_fun's ctx instead") from None


def ring_addresses(nodes: list[str], secret: bytes, rdma: bool = False,
                   bind_all: bool = False) -> list[str]:
    """Where each member of the ring listens, from its ``host:port`` alone (so every member
    computes the same list): on the Unix socket ``shm://`` names when the member before it is
    on the same host, else on its TF port over ``tcp://`` (``rdma://``)."""
    token = hashlib.sha256(b"tfos.collective" + secret).hexdigest()[:16]
    addresses = []
    for index, node in enumerate(nodes):
        host, port = _host(node), node.rsplit(":", 1)[1]
        if _host(nodes[index - 1]) == host:
            addresses.append(f"shm://{tempfile.gettempdir()}/tfos-{token}-{port}.sock")
        else:
            listen = ("::" if ":" in host else "0.0.0.0") if bind_all else host
            listen = f"[{listen}]" if ":" in listen else listen
            addresses.append(f"{'rdma' if rdma else 'tcp'}://{listen}:{port}")
    return addresses


def _members(cluster_spec: dict) -> list[tuple[str, int]]:
    return [(job, index) for job in ("chief", "master", "worker")
            for index in range(len(cluster_spec.get(job, [])))]


def _host(node: str) -> str:
    return node.rsplit(":", 1)[0].strip("[]")


def _scheme(address: str) -> str:
    return address.split("://", 1)[0] + "://"


def shutdown() -> None:
    """Leaves the group (at exit this happens by itself)."""
    with _lock:
        group = _state.pop("group", None)
        _state.clear()
    if group is not None:
        group.close()


def is_initialized() -> bool:
    return "group" in _state


def joined() -> bool:
    """Whether this process joined a group at some point (``init`` ran), even if it left."""
    return _joined.is_set()


def rank() -> int:
    """This worker's rank, 0 .. size()-1 (0: the chief, when the cluster has one)."""
    return _group().rank


def size() -> int:
    """How many workers train together."""
    return _group().size


def local_rank() -> int:
    """This worker's rank among the members on its own host."""
    hosts = _state_or_fail("hosts")
    return hosts[:rank()].count(hosts[rank()])


def local_size() -> int:
    hosts = _state_or_fail("hosts")
    return hosts.count(hosts[rank()])


def transports() -> dict:
    """The schemes of this rank's two links and how large all-reduces run: ``{"from_prev":
    "shm://", "to_next": "shm://", "allreduce": "shared-memory"}`` (every rank on one host) or
    ``"ring"`` (over the links)."""
    addresses = _state_or_fail("addresses")
    me = rank()
    return {"from_prev": _scheme(addresses[me]),
            "to_next": _scheme(addresses[(me + 1) % len(addresses)]),
            "allreduce": "shared-memory" if _group().shared_memory else "ring"}


def _state_or_fail(key: str):
    _group()
    return _state[key]

