"""``python -m rdma.check`` over device trees made by the test: what it lists, and what it says
is missing for ``--rdma``, root cause first."""
import json
import os
import resource
import subprocess
import sys

import pytest

from rdma import check, devices

GID_V2 = "0000:0000:0000:0000:0000:ffff:0a00:0005"


def roce_device(root, net, device="mlx5_0", mtu=9000):
    port = root / device / "ports" / "1"
    (port / "gids").mkdir(parents=True)
    (port / "gid_attrs" / "types").mkdir(parents=True)
    (port / "gid_attrs" / "ndevs").mkdir(parents=True)
    for name, value in {"state": "4: ACTIVE", "phys_state": "5: LinkUp",
                        "link_layer": "Ethernet", "rate": "100 Gb/sec (4X EDR)"}.items():
        (port / name).write_text(value + "\n")
    (port / "gids" / "0").write_text("fe80:0000:0000:0000:0a00:27ff:fe4e:1c2d\n")
    (port / "gids" / "1").write_text(GID_V2 + "\n")
    (port / "gids" / "2").write_text("0000:0000:0000:0000:0000:0000:0000:0000\n")   # unused
    (port / "gid_attrs" / "types" / "0").write_text("IB/RoCE v1\n")
    (port / "gid_attrs" / "types" / "1").write_text("RoCE v2\n")
    (port / "gid_attrs" / "ndevs" / "1").write_text("eth1\n")
    (net / "eth1").mkdir(parents=True)
    (net / "eth1" / "mtu").write_text(f"{mtu}\n")


def test_no_device_is_the_first_problem_and_the_command_exits_1(tmp_path):
    report = check.check(str(tmp_path / "sysfs"), str(tmp_path / "dev"))
    assert not report.usable and report.ports == []
    assert report.problems[0].startswith("no RDMA device")
    assert "no verbs device files" in report.problems[1]
    text = check.format_report(report)
    assert "  no RDMA device" in text and "--rdma cannot run on this host:" in text
    result = subprocess.run([sys.executable, "-m", "rdma.check", "--sysfs",
                             str(tmp_path / "sysfs"), "--dev", str(tmp_path / "dev")],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 1 and "1. no RDMA device" in result.stdout


def test_a_roce_port_is_listed_with_rate_gids_and_mtu_from_its_interface(tmp_path):
    roce_device(tmp_path / "sysfs", tmp_path / "net")
    report = check.check(str(tmp_path / "sysfs"), str(tmp_path / "dev"), str(tmp_path / "net"))
    (entry,) = report.ports
    assert entry.port.rate == "100 Gb/sec (4X EDR)" and entry.port.phys_state == "5: LinkUp"
    assert [(g.index, g.type, g.netdev) for g in entry.port.gids] == [
        (0, "IB/RoCE v1", ""), (1, "RoCE v2", "eth1")]
    assert entry.mtu == "4096 (from eth1's MTU 9000)"
    text = check.format_report(report)
    assert f"GID[1] {GID_V2} (RoCE v2, eth1)" in text
    # The device is there: what is missing now starts with the verbs device files.
    assert not any("no RDMA device" in p for p in report.problems)
    assert report.problems[0].startswith(f"no verbs device files {tmp_path}/dev/uverbs*: "
                                         "load the ib_uverbs module")


def test_a_1500_byte_interface_gives_a_1024_byte_rdma_mtu(tmp_path):
    roce_device(tmp_path / "sysfs", tmp_path / "net", mtu=1500)
    report = check.check(str(tmp_path / "sysfs"), str(tmp_path / "dev"), str(tmp_path / "net"))
    assert report.ports[0].mtu.startswith("1024 ")


def test_device_files_without_access_are_named(tmp_path, monkeypatch):
    (tmp_path / "dev").mkdir()
    (tmp_path / "dev" / "uverbs0").write_text("")
    monkeypatch.setattr(check.os, "access", lambda path, mode: False)
    report = check.check(str(tmp_path / "sysfs"), str(tmp_path / "dev"))
    assert any("no read/write access to" in p and "uverbs0" in p for p in report.problems)


def test_a_low_memlock_limit_is_a_problem_with_the_fix(monkeypatch):
    monkeypatch.setattr(resource, "getrlimit", lambda which: (8192 * 1024, 8192 * 1024))
    (problem,) = check._memlock_problem()
    assert problem.startswith("the locked-memory limit is 8192 KiB") and "ulimit -l" in problem
    monkeypatch.setattr(resource, "getrlimit",
                        lambda which: (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
    assert check._memlock_problem() == []


def test_everything_present_means_usable(tmp_path, monkeypatch):
    roce_device(tmp_path / "sysfs", tmp_path / "net")
    (tmp_path / "dev").mkdir()
    (tmp_path / "dev" / "uverbs0").write_text("")
    monkeypatch.setattr(check, "_find_verbs_library", lambda: "libibverbs.so.1")
    monkeypatch.setattr(check, "_memlock_problem", lambda: [])
    monkeypatch.setattr(check.importlib.util, "find_spec", lambda name: object())
    report = check.check(str(tmp_path / "sysfs"), str(tmp_path / "dev"), str(tmp_path / "net"))
    assert report.usable and report.explanation() == ""
    assert check.format_report(report).endswith("--rdma can run on this host.")
    assert json.loads(json.dumps(report.as_dict()))["ports"][0]["gids"][1]["type"] == "RoCE v2"


@pytest.mark.skipif(bool(devices.list_ports()), reason="this host has RDMA devices")
def test_on_this_host_the_command_says_why_not():
    result = subprocess.run([sys.executable, "-m", "rdma.check", "--json"],
                            capture_output=True, text=True, timeout=60)
    report = json.loads(result.stdout)
    assert result.returncode == 1 and not report["usable"]
    assert report["problems"][0].startswith("no RDMA device")


def test_a_pyverbs_that_finds_no_device_at_all_falls_back_to_sysfs(tmp_path):
    """Debian's pyverbs raises from get_device_list() where the kernel has no RDMA (found on a
    cloud image's root): the check says what is missing instead of a traceback."""
    package = tmp_path / "site" / "pyverbs"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "pyverbs_error.py").write_text(
        "class PyverbsError(Exception):\n    pass\n\n\n"
        "class PyverbsRDMAError(PyverbsError):\n    pass\n")
    (package / "device.py").write_text(
        "from pyverbs.pyverbs_error import PyverbsRDMAError\n\n\n"
        "class Context:\n    pass\n\n\n"
        "def get_device_list():\n"
        "    raise PyverbsRDMAError('Failed to get devices list. Errno: 38, Function not "
        "implemented')\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path / "site"),
                                                       os.environ.get("PYTHONPATH", "")]))
    result = subprocess.run([sys.executable, "-m", "rdma.check", "--sysfs",
                             str(tmp_path / "sysfs"), "--dev", str(tmp_path / "dev")],
                            capture_output=True, text=True, timeout=60, env=env)
    assert "Traceback" not in result.stderr, result.stderr
    assert result.returncode == 1 and "1. no RDMA device" in result.stdout
