"""GPU assignment from what Spark gave a node's task (pure)."""
import pytest

from tfos import ConfigError
from tfos.core.config import ClusterConfig
from tfos.core.devices import node_gpus
from tfos.core.topology import Role

WORKER, PS, EVALUATOR = Role(1, "worker", 0), Role(0, "ps", 0), Role(2, "evaluator", 0)
CPU_ROLES = ClusterConfig(num_executors=1).cpu_roles


def test_a_node_uses_what_spark_gave_its_task():
    assert node_gpus(WORKER, ["2", "3"], None, CPU_ROLES) == ["2", "3"]
    assert node_gpus(WORKER, ["2", "3"], 1, CPU_ROLES) == ["2"]
    assert node_gpus(WORKER, ["2"], 0, CPU_ROLES) == []          # asked for none: all hidden


def test_without_gpu_scheduling_the_variable_is_left_alone():
    assert node_gpus(WORKER, None, None, CPU_ROLES) is None


def test_parameter_servers_and_chosen_roles_are_kept_off_gpus():
    assert CPU_ROLES == ("ps",)
    assert node_gpus(PS, ["0"], None, CPU_ROLES) == []
    assert node_gpus(EVALUATOR, ["1"], None, CPU_ROLES) == ["1"]
    assert node_gpus(EVALUATOR, ["1"], None, ("ps", "evaluator")) == []


@pytest.mark.parametrize("assigned, have", [(None, "none"), (["7"], "1 \\(7\\)")])
def test_a_node_that_needs_more_gpus_than_spark_gave_says_what_to_set(assigned, have):
    with pytest.raises(ConfigError, match=f"node worker:0 needs num_gpus=2 but Spark gave its "
                                          f"task {have}: set spark.executor.resource.gpu.amount"):
        node_gpus(WORKER, assigned, 2, CPU_ROLES)


@pytest.mark.parametrize("options, match", [
    ({"num_gpus": -1}, "num_gpus=-1"), ({"num_gpus": True}, "num_gpus=True"),
    ({"cpu_roles": ("ps", "gpu-worker")}, "are no roles"),
])
def test_gpu_options_are_checked(options, match):
    with pytest.raises(ConfigError, match=match):
        ClusterConfig(num_executors=2, **options)
