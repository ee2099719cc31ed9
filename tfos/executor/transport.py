"""Which way a node's tensors travel, decided by its node task on the node's own host.

Without ``rdma``: TensorFlow's gRPC runtime (and ``tfos.collective`` over ``shm://`` within a
host, ``tcp://`` between hosts). With ``TFCluster.run(rdma=True)`` (``--rdma``) the host must
pass ``python -m rdma.check``, else the node fails before TensorFlow starts, with that check's
explanation, root cause first: tfos never falls back to TCP on its own. Then:

=================================  ==========================================================
what the node trains with          what ``--rdma`` gives it
=================================  ==========================================================
``tfos.collective`` (any device)   ``rdma://`` links between hosts, ``shm://`` within a host
MultiWorkerMirroredStrategy, GPUs  NCCL over the RDMA port: ``NCCL_IB_HCA``, the RoCE GID
                                   index and interface, ``NCCL_NET=IB`` (no socket fallback)
MultiWorkerMirroredStrategy, CPUs  refused: its CPU all-reduce is gRPC over TCP
ParameterServerStrategy            refused before start (the driver): gRPC over TCP only
=================================  ==========================================================
"""
from __future__ import annotations

from dataclasses import dataclass, field

from rdma import check, devices


@dataclass(frozen=True)
class Transport:
    name: str                  # "grpc" or "rdma" (tfos.core.launch.TRANSPORTS)
    description: str           # for cluster_info and the driver's notes
    nccl_env: dict[str, str] = field(default_factory=dict)   # for GPU nodes (MWMS + NCCL)
    problem: str = ""          # why the node cannot start (rdma asked for, not usable here)


def choose_transport(rdma: bool, host: str, sysfs_root: str = devices.SYSFS_ROOT,
           dev_root: str = check.DEV_ROOT, net_root: str = check.NET_ROOT) -> Transport:
    if not rdma:
        return Transport("grpc", "grpc")
    report = check.check(sysfs_root, dev_root, net_root)
    if report.problems:
        return Transport("rdma", "rdma (unusable)", problem=(
            f"rdma=True (--rdma) on executor host {host}: {report.explanation()}. Run python "
            "-m rdma.check there for the details, or drop --rdma"))
    port = next(p.port for p in report.ports if p.port.active)
    nccl = nccl_environment(port)
    return Transport("rdma", f"rdma ({port.device}:{port.port}, {port.link_layer}, "
                             f"{port.rate})", nccl)


def nccl_environment(port: devices.RdmaPort) -> dict[str, str]:
    """NCCL's settings for ``port``: the adapter and port, and on RoCE the GID (RoCE v2, an
    IPv4-mapped address when there is one) and its interface for NCCL's bootstrap."""
    env = {"NCCL_IB_HCA": f"={port.device}:{port.port}", "NCCL_NET": "IB",
           "NCCL_IB_DISABLE": "0"}
    if port.link_layer == "Ethernet":
        v2 = [g for g in port.gids if g.type == "RoCE v2"] or list(port.gids)
        ipv4 = [g for g in v2 if g.gid.startswith("0000:0000:0000:0000:0000:ffff:")]
        gid = (ipv4 or v2 or [None])[0]
        if gid is not None:
            env["NCCL_IB_GID_INDEX"] = str(gid.index)
            if gid.netdev:
                env["NCCL_SOCKET_IFNAME"] = gid.netdev
    return env
