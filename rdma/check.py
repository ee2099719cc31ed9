"""``python -m rdma.check``: can ``--rdma`` run on this host, and if not, what exactly is missing.

Lists the RDMA devices with their ports (state, physical state, link layer, rate, MTU, GIDs),
then checks, root cause first, everything the RDMA transport needs: an active port, the
kernel's user-space verbs device files (``/dev/infiniband/uverbs*``), libibverbs (rdma-core),
a locked-memory limit that lets it register buffers, and tfos's compiled transport
(``rdma._core``). Device facts come from pyverbs (the distribution's ``python3-pyverbs``) when
it is importable, which also tells each port's active MTU; otherwise from sysfs, where a RoCE
port's MTU follows its Ethernet interface's.

``check()`` returns a ``Report``; ``--rdma`` is refused with ``Report.explanation()`` before
any node starts. Exit status of the command: 0 when ``--rdma`` can run, 1 when not.
"""
from __future__ import annotations

import argparse
import ctypes.util
import dataclasses
import glob
import importlib.util
import json
import os
import resource
import socket
import sys
from dataclasses import dataclass, field

from rdma import devices

DEV_ROOT = "/dev/infiniband"
NET_ROOT = "/sys/class/net"
# Bytes of locked memory the transport registers at least (its rings and staging buffers).
MIN_MEMLOCK = 64 << 20
IB_MTUS = (256, 512, 1024, 2048, 4096)


@dataclass(frozen=True)
class Port:
    port: devices.RdmaPort
    mtu: str            # active MTU, e.g. "4096", or why it is unknown


@dataclass
class Report:
    host: str
    source: str                                   # "pyverbs" or "sysfs"
    ports: list[Port] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)   # root cause first

    @property
    def usable(self) -> bool:
        return not self.problems

    def explanation(self) -> str:
        """Why ``--rdma`` cannot run here, root cause first (empty when it can)."""
        if self.usable:
            return ""
        steps = "; ".join(f"({i}) {p}" for i, p in enumerate(self.problems, 1))
        return f"--rdma cannot run on host {self.host}: {steps}"

    def as_dict(self) -> dict:
        return {"host": self.host, "source": self.source, "usable": self.usable,
                "ports": [{**dataclasses.asdict(p.port), "mtu": p.mtu} for p in self.ports],
                "problems": self.problems}


def check(sysfs_root: str = devices.SYSFS_ROOT, dev_root: str = DEV_ROOT,
          net_root: str = NET_ROOT) -> Report:
    """What this host has for RDMA and what ``--rdma`` would still need."""
    mtus, source = _pyverbs_mtus()
    report = Report(socket.gethostname(), source)
    for port in devices.list_ports(sysfs_root):
        mtu = mtus.get((port.device, port.port)) or _sysfs_mtu(port, net_root)
        report.ports.append(Port(port, mtu))
    missing = devices.missing_rdma(sysfs_root)
    if missing:
        report.problems.append(missing)
    report.problems += _missing_device_files(dev_root, bool(report.ports))
    if _find_verbs_library() is None:
        report.problems.append(
            "libibverbs (rdma-core) is not installed: apt install libibverbs1 ibverbs-providers "
            "(Debian, Ubuntu) or dnf install rdma-core (RHEL, Rocky)")
    report.problems += _memlock_problem()
    if importlib.util.find_spec("rdma._core") is None:
        report.problems.append(
            "tfos's compiled transport rdma._core is not built: reinstall tfos with a C "
            "compiler present (pip install tfos builds it)")
    return report


def _find_verbs_library() -> str | None:
    return ctypes.util.find_library("ibverbs")


def _missing_device_files(dev_root: str, have_device: bool) -> list[str]:
    files = sorted(glob.glob(os.path.join(dev_root, "uverbs*")))
    if not files:
        hint = "load the ib_uverbs module (modprobe ib_uverbs)" if have_device else \
            "they come with an RDMA device and the ib_uverbs module"
        return [f"no verbs device files {dev_root}/uverbs*: {hint}; in a container, pass "
                f"--device={dev_root}"]
    denied = [f for f in files if not os.access(f, os.R_OK | os.W_OK)]
    if denied:
        return [f"no read/write access to {', '.join(denied)}: add the user to the group "
                "that owns them (often 'rdma') or fix the udev rule"]
    return []


def _memlock_problem() -> list[str]:
    soft, _hard = resource.getrlimit(resource.RLIMIT_MEMLOCK)
    if soft == resource.RLIM_INFINITY or soft >= MIN_MEMLOCK:
        return []
    return [f"the locked-memory limit is {soft // 1024} KiB, below the {MIN_MEMLOCK >> 20} MiB "
            "RDMA buffers need registered: raise it (ulimit -l unlimited; 'memlock' in "
            "/etc/security/limits.conf; docker run --ulimit memlock=-1; LimitMEMLOCK= for a "
            "systemd service such as a Spark worker)"]


def _pyverbs_mtus() -> tuple[dict[tuple[str, int], str], str]:
    """Each port's active MTU from pyverbs, when it is importable."""
    try:
        from pyverbs.device import Context, get_device_list
        from pyverbs.pyverbs_error import PyverbsError
    except ImportError:
        return {}, "sysfs"
    try:
        found = get_device_list()
    except PyverbsError:
        # No device at all (ENOSYS where the kernel has no RDMA): sysfs says what is missing.
        return {}, "sysfs"
    mtus = {}
    for dev in found:
        name = dev.name.decode() if isinstance(dev.name, bytes) else str(dev.name)
        try:
            with Context(name=name) as ctx:
                for port in range(1, ctx.query_device().phys_port_cnt + 1):
                    code = ctx.query_port(port).active_mtu
                    mtus[(name, port)] = str(IB_MTUS[code - 1]) if 1 <= code <= 5 else "?"
        except Exception as exc:  # noqa: BLE001 - pyverbs raises its own types; report them
            mtus[(name, 1)] = f"unknown (pyverbs could not open {name}: {exc})"
    return mtus, "pyverbs"


def _sysfs_mtu(port: devices.RdmaPort, net_root: str) -> str:
    """A RoCE port's active MTU: the largest IB MTU that fits its Ethernet interface's."""
    netdev = next((g.netdev for g in port.gids if g.netdev), "")
    if port.link_layer != "Ethernet" or not netdev:
        return "unknown (install pyverbs to see it)"
    try:
        with open(os.path.join(net_root, netdev, "mtu")) as f:
            eth = int(f.read().strip())
    except (OSError, ValueError):
        return "unknown"
    fitting = [m for m in IB_MTUS if m <= eth]
    return f"{fitting[-1]} (from {netdev}'s MTU {eth})" if fitting else f"below 256 ({netdev})"


def format_report(report: Report) -> str:
    lines = [f"RDMA on host {report.host} (device facts from {report.source}):"]
    if not report.ports:
        lines.append("  no RDMA device")
    for entry in report.ports:
        p = entry.port
        lines.append(f"  {p.device} port {p.port}: {p.state}, {p.phys_state}, {p.link_layer}, "
                     f"{p.rate}, MTU {entry.mtu}")
        for gid in p.gids:
            extra = ", ".join(x for x in (gid.type, gid.netdev) if x)
            lines.append(f"    GID[{gid.index}] {gid.gid}" + (f" ({extra})" if extra else ""))
    if report.usable:
        lines.append("--rdma can run on this host.")
    else:
        lines.append("--rdma cannot run on this host:")
        lines += [f"  {i}. {problem}" for i, problem in enumerate(report.problems, 1)]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m rdma.check", description=__doc__.split(
        "\n")[0])
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument("--sysfs", default=devices.SYSFS_ROOT, help=argparse.SUPPRESS)
    parser.add_argument("--dev", default=DEV_ROOT, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    report = check(args.sysfs, args.dev)
    print(json.dumps(report.as_dict(), indent=2) if args.json else format_report(report))
    return 0 if report.usable else 1


if __name__ == "__main__":
    sys.exit(main())
