"""``ClusterConfig``: every bad value raises ConfigError quoting it; good ones derive the roles."""
from __future__ import annotations

import dataclasses
import pickle

import pytest

from tfos.core.config import ClusterConfig, InputMode
from tfos.core.errors import ConfigError, TfosError
from tfos.core.topology import Role


@pytest.mark.parametrize("kwargs, quoted", [
    ({"num_executors": "2"}, "num_executors='2'"),
    ({"num_executors": 2.0}, "num_executors=2.0"),
    ({"num_executors": True}, "num_executors=True"),
    ({"num_executors": None}, "num_executors=None"),
    ({"num_executors": 0}, "num_executors=0"),
    ({"num_executors": 2, "num_ps": 2}, "num_ps=2"),
    ({"num_executors": 3, "num_ps": -1}, "num_ps=-1"),
    ({"num_executors": 2, "master_node": "boss"}, "master_node='boss'"),
    ({"num_executors": 2, "num_ps": 1, "eval_node": True}, "eval_node=True"),
    ({"num_executors": 2, "input_mode": 7}, "input_mode=7"),
    ({"num_executors": 2, "input_mode": "spark"}, "input_mode='spark'"),
    ({"num_executors": 2, "reservation_timeout": 0}, "reservation_timeout=0"),
    ({"num_executors": 2, "slot_wait_timeout": -5}, "slot_wait_timeout=-5"),
    ({"num_executors": 2, "heartbeat_interval": "1"}, "heartbeat_interval='1'"),
    ({"num_executors": 2, "heartbeat_timeout": None}, "heartbeat_timeout=None"),
    ({"num_executors": 2, "kill_grace": 0.0}, "kill_grace=0.0"),
    ({"num_executors": 2, "heartbeat_interval": 5, "heartbeat_timeout": 10},
     "heartbeat_timeout=10"),
    ({"num_executors": 2, "bind_all_interfaces": "yes"}, "bind_all_interfaces='yes'"),
    ({"num_executors": 2, "max_restarts": -1}, "max_restarts=-1"),
    ({"num_executors": 2, "feed_stall_timeout": 0}, "feed_stall_timeout=0"),
    ({"num_executors": 2, "max_restarts": 1, "input_mode": 1}, "max_restarts=1 with InputMode.SPARK"),
    ({"num_executors": 2, "release_port": 0}, "release_port=0"),
    ({"num_executors": 2, "barrier": False}, "barrier=False: the nodes of a TF cluster"),
    ({"num_executors": 2, "independent": True, "input_mode": 1}, "read their own data"),
])
def test_a_bad_value_raises_config_error_quoting_it(kwargs, quoted):
    with pytest.raises(ConfigError) as info:
        ClusterConfig(**kwargs)
    assert quoted in str(info.value)
    # ConfigError is both the library's base error and a ValueError, as callers may expect.
    assert isinstance(info.value, TfosError) and isinstance(info.value, ValueError)


@pytest.mark.parametrize("num_ps", ["1", 1.5])
def test_num_ps_of_the_wrong_type_raises_config_error(num_ps):
    with pytest.raises(ConfigError, match="num_ps="):
        ClusterConfig(num_executors=3, num_ps=num_ps)


def test_negative_log_tail_lines_raises_config_error():
    with pytest.raises(ConfigError, match="log_tail_lines=-1"):
        ClusterConfig(num_executors=2, log_tail_lines=-1)


def test_roles_are_derived_from_the_layout():
    config = ClusterConfig(num_executors=4, num_ps=1, master_node="chief", eval_node=False)
    assert config.roles == (Role(0, "ps", 0), Role(1, "chief", 0), Role(2, "worker", 0),
                            Role(3, "worker", 1))
    assert config.num_nodes == 4


def test_roles_cannot_be_passed_in():
    with pytest.raises(TypeError):
        ClusterConfig(num_executors=2, roles=())  # type: ignore[call-arg]


def test_input_mode_int_is_normalised_to_the_enum():
    config = ClusterConfig(num_executors=1, input_mode=1)
    assert config.input_mode is InputMode.SPARK


def test_env_is_normalised_to_a_tuple_of_string_pairs():
    config = ClusterConfig(num_executors=1, env={"OMP_NUM_THREADS": 2, "A": "b"})
    assert config.env == (("OMP_NUM_THREADS", "2"), ("A", "b"))
    assert ClusterConfig(num_executors=1, env=(("A", "1"), ("A", "2"))).env == (("A", "2"),)


def test_int_seconds_are_accepted():
    config = ClusterConfig(num_executors=1, heartbeat_interval=1, heartbeat_timeout=3)
    assert config.heartbeat_timeout == 3


def test_config_is_frozen():
    config = ClusterConfig(num_executors=2)
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.num_executors = 3  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.roles = ()  # type: ignore[misc]


def test_config_survives_a_pickle_round_trip():
    config = ClusterConfig(num_executors=5, num_ps=1, master_node="chief", eval_node=True,
                           input_mode=InputMode.TENSORFLOW, env={"X": "1"}, log_dir="/tmp/l")
    copy = pickle.loads(pickle.dumps(config))
    assert copy == config
    assert copy.roles == config.roles
    assert copy.roles[-1] == Role(4, "evaluator", 0)
    assert copy.input_mode is InputMode.TENSORFLOW


def test_config_survives_cloudpickle_as_spark_ships_it():
    from pyspark import cloudpickle
    config = ClusterConfig(num_executors=3, master_node="master")
    assert pickle.loads(cloudpickle.dumps(config)) == config
