"""How a node's tensors travel (``tfos.executor.transport``) and the driver's ``--rdma``
decisions (``tfos.driver.cluster.rdma_refusal``), over device trees made by the tests."""
import pytest

from rdma.devices import Gid, RdmaPort
from tfos.core.config import ClusterConfig
from tfos.driver.cluster import rdma_refusal
from tfos.executor.transport import choose_transport, nccl_environment


def test_without_rdma_tensors_take_grpc():
    chosen = choose_transport(False, "h")
    assert (chosen.name, chosen.description, chosen.nccl_env, chosen.problem) == (
        "grpc", "grpc", {}, "")


def test_rdma_without_a_device_is_a_problem_naming_the_host_and_the_root_cause(tmp_path):
    chosen = choose_transport(True, "10.1.2.3", str(tmp_path / "sysfs"), str(tmp_path / "dev"))
    assert chosen.name == "rdma" and not chosen.nccl_env
    assert chosen.problem.startswith("rdma=True (--rdma) on executor host 10.1.2.3: ")
    assert "(1) no RDMA device" in chosen.problem and "python -m rdma.check" in chosen.problem


def test_nccl_settings_for_an_infiniband_port():
    port = RdmaPort("mlx5_1", 2, "4: ACTIVE", "InfiniBand", gids=(Gid(0, "fe80::1", "", ""),))
    assert nccl_environment(port) == {"NCCL_IB_HCA": "=mlx5_1:2", "NCCL_NET": "IB",
                                      "NCCL_IB_DISABLE": "0"}


def test_nccl_settings_for_roce_pick_the_ipv4_roce_v2_gid_and_its_interface():
    gids = (Gid(0, "fe80:0000:0000:0000:0a00:27ff:fe4e:1c2d", "IB/RoCE v1", "eth1"),
            Gid(1, "fe80:0000:0000:0000:0a00:27ff:fe4e:1c2d", "RoCE v2", "eth1"),
            Gid(2, "0000:0000:0000:0000:0000:ffff:0a00:0005", "IB/RoCE v1", "eth1"),
            Gid(3, "0000:0000:0000:0000:0000:ffff:0a00:0005", "RoCE v2", "eth1"))
    env = nccl_environment(RdmaPort("rocep1s0", 1, "4: ACTIVE", "Ethernet", gids=gids))
    assert env["NCCL_IB_HCA"] == "=rocep1s0:1"
    assert env["NCCL_IB_GID_INDEX"] == "3" and env["NCCL_SOCKET_IFNAME"] == "eth1"
    # Without an IPv4-mapped one, the first RoCE v2 GID.
    env = nccl_environment(RdmaPort("rocep1s0", 1, "4: ACTIVE", "Ethernet", gids=gids[:2]))
    assert env["NCCL_IB_GID_INDEX"] == "1"


def test_the_driver_refuses_parameter_servers_and_checks_local_hosts(tmp_path):
    ps = rdma_refusal(ClusterConfig(num_executors=3, num_ps=1, rdma=True), "local[3]")
    assert "ParameterServerStrategy" in ps and "tfos.collective" in ps
    local = rdma_refusal(ClusterConfig(num_executors=2, rdma=True), "local-cluster[2,1,1024]",
                         str(tmp_path))
    assert "(1) no RDMA device" in local
    # On a cluster manager each executor host is checked by its own node tasks.
    assert rdma_refusal(ClusterConfig(num_executors=2, rdma=True), "spark://m:7077") == ""


def test_a_cpu_trainer_under_rdma_that_never_used_collectives_fails(launch_record):
    from tfos.node.context import NodeContext
    from tfos.node.main import rdma_unused

    def ctx(**fields):
        return NodeContext(launch_record(**{"num_workers": 2, "transport": "rdma", **fields}))
    message = rdma_unused(ctx(), gpus=[])
    assert "no GPU and never called tfos.collective.init(ctx)" in message
    assert "drop --rdma" in message
    assert rdma_unused(ctx(), gpus=["0"]) is None, "with GPUs NCCL took the RDMA port"
    assert rdma_unused(ctx(transport="grpc"), gpus=[]) is None
    assert rdma_unused(ctx(num_workers=1), gpus=[]) is None, "a lone worker exchanges nothing"
    assert rdma_unused(ctx(job_name="ps"), gpus=[]) is None


def test_a_cpu_trainer_under_rdma_cannot_build_multiworker_mirrored_strategy(launch_record):
    import tensorflow as tf

    from tfos.core.errors import ConfigError
    from tfos.node.context import NodeContext
    from tfos.node.main import refuse_cpu_strategies

    def ctx(**fields):
        return NodeContext(launch_record(**{"num_workers": 2, "transport": "rdma", **fields}))
    assert refuse_cpu_strategies(ctx(), gpus=["0"]) is None, "with GPUs NCCL has the RDMA port"
    assert refuse_cpu_strategies(ctx(transport="grpc"), gpus=[]) is None
    undo = refuse_cpu_strategies(ctx(), gpus=[])
    try:
        for strategy in (tf.distribute.MultiWorkerMirroredStrategy,
                         tf.distribute.experimental.MultiWorkerMirroredStrategy):
            with pytest.raises(ConfigError, match=r"no GPU, and MultiWorkerMirroredStrategy "
                                                  r"all-reduces on CPUs over TensorFlow's gRPC"):
                strategy()
    finally:
        undo()
