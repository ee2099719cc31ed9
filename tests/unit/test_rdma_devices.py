"""RDMA device discovery over a sysfs tree made by the test, and the --rdma refusal."""
import os

import pytest

from rdma import devices
from tfos.driver.cluster import rdma_unavailable


def make_port(root, device, port, state, link_layer="InfiniBand"):
    base = root / device / "ports" / str(port)
    base.mkdir(parents=True)
    (base / "state").write_text(state + "\n")
    (base / "link_layer").write_text(link_layer + "\n")


def test_no_sysfs_tree_means_no_device(tmp_path):
    assert devices.list_ports(str(tmp_path / "absent")) == []
    assert "no RDMA device" in devices.missing_rdma(str(tmp_path / "absent"))


def test_ports_are_listed_with_state_and_link_layer(tmp_path):
    make_port(tmp_path, "mlx5_0", 1, "4: ACTIVE", "Ethernet")
    make_port(tmp_path, "mlx5_0", 2, "1: DOWN")
    ports = devices.list_ports(str(tmp_path))
    assert [(p.device, p.port, p.active, p.link_layer) for p in ports] == [
        ("mlx5_0", 1, True, "Ethernet"), ("mlx5_0", 2, False, "InfiniBand")]
    assert devices.missing_rdma(str(tmp_path)) is None


def test_only_down_ports_are_named(tmp_path):
    make_port(tmp_path, "mlx4_0", 1, "1: DOWN")
    assert devices.missing_rdma(str(tmp_path)) == (
        "no active RDMA port: mlx4_0/1 1: DOWN (check the cable and the subnet manager)")


def test_rdma_refusal_names_what_is_missing_root_cause_first(tmp_path):
    message = rdma_unavailable(str(tmp_path))
    assert message.startswith("rdma=True (--rdma): --rdma cannot run on host ")
    assert "(1) no RDMA device" in message and "drop --rdma" in message
    assert "python -m rdma.check" in message
    make_port(tmp_path, "mlx5_0", 1, "4: ACTIVE")
    # With a device the refusal names the next thing missing (if any), never "no RDMA device".
    assert "no RDMA device" not in rdma_unavailable(str(tmp_path))


@pytest.mark.skipif(not devices.list_ports(), reason="this host has no RDMA device")
@pytest.mark.rdma
def test_this_hosts_devices_are_readable():
    assert all(os.path.isdir(os.path.join(devices.SYSFS_ROOT, p.device)) for p in devices.list_ports())
