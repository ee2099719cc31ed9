"""RDMA device discovery from sysfs (any side; no verbs library needed).

Lists the devices the kernel exposes under ``/sys/class/infiniband`` with their ports' state
and link layer, so ``--rdma`` can fail with an error that names what is missing instead of
falling back to TCP.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

SYSFS_ROOT = "/sys/class/infiniband"


@dataclass(frozen=True)
class Gid:
    index: int
    gid: str          # e.g. "fe80:0000:0000:0000:0a00:27ff:fe4e:1c2d"
    type: str         # "IB/RoCE v1", "RoCE v2", or "" when sysfs does not say
    netdev: str       # the Ethernet interface of a RoCE GID, "" for InfiniBand


@dataclass(frozen=True)
class RdmaPort:
    device: str
    port: int
    state: str        # e.g. "4: ACTIVE"
    link_layer: str   # "InfiniBand" or "Ethernet" (RoCE)
    phys_state: str = "unknown"   # e.g. "5: LinkUp"
    rate: str = "unknown"         # e.g. "100 Gb/sec (4X EDR)"
    gids: tuple[Gid, ...] = ()    # the GID table's entries in use

    @property
    def active(self) -> bool:
        return self.state.split(":")[-1].strip() == "ACTIVE"


def list_ports(root: str = SYSFS_ROOT) -> list[RdmaPort]:
    """Every port of every RDMA device under ``root``; empty when there is none."""
    ports = []
    if not os.path.isdir(root):
        return ports
    for device in sorted(os.listdir(root)):
        ports_dir = os.path.join(root, device, "ports")
        if not os.path.isdir(ports_dir):
            continue
        for port in sorted(os.listdir(ports_dir), key=lambda p: int(p) if p.isdigit() else 0):
            base = os.path.join(ports_dir, port)
            ports.append(RdmaPort(device, int(port), _read(base, "state"),
                                  _read(base, "link_layer"), _read(base, "phys_state"),
                                  _read(base, "rate"), _gids(base)))
    return ports


def _gids(port_dir: str) -> tuple[Gid, ...]:
    """The port's GID table entries that are set (sysfs lists every slot, unused ones zero)."""
    table = os.path.join(port_dir, "gids")
    if not os.path.isdir(table):
        return ()
    found = []
    for name in sorted(os.listdir(table), key=lambda n: int(n) if n.isdigit() else -1):
        gid = _read(table, name)
        if not name.isdigit() or gid == "unknown" or not gid.replace(":", "").strip("0"):
            continue
        attrs = os.path.join(port_dir, "gid_attrs")
        kind = _read(os.path.join(attrs, "types"), name)
        netdev = _read(os.path.join(attrs, "ndevs"), name)
        found.append(Gid(int(name), gid, "" if kind == "unknown" else kind,
                         "" if netdev == "unknown" else netdev))
    return tuple(found)


def missing_rdma(root: str = SYSFS_ROOT) -> str | None:
    """Why this host cannot do RDMA, or None when it has an active port."""
    ports = list_ports(root)
    if not ports:
        return (f"no RDMA device: {root} lists none (is the kernel's InfiniBand/RoCE driver "
                "loaded and the adapter present?)")
    if not any(p.active for p in ports):
        states = ", ".join(f"{p.device}/{p.port} {p.state}" for p in ports)
        return f"no active RDMA port: {states} (check the cable and the subnet manager)"
    return None


def _read(base: str, name: str) -> str:
    try:
        with open(os.path.join(base, name)) as f:
            return f.read().strip()
    except OSError:
        return "unknown"
