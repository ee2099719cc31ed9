"""Role plans, cluster specs and TF_CONFIG (``tfos.core.topology``), read back as TensorFlow would."""
from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tfos.core.errors import ConfigError
from tfos.core.topology import (
    Role,
    cluster_spec,
    num_trainers,
    plan_roles,
    primary_node,
    tf_config,
)


def labels(roles):
    return [(r.node_id, r.label) for r in roles]


@pytest.mark.parametrize("args, expected", [
    ((1,), ["worker:0"]),
    ((3,), ["worker:0", "worker:1", "worker:2"]),
    ((1, 0, "chief"), ["chief:0"]),
    ((3, 0, "chief"), ["chief:0", "worker:0", "worker:1"]),
    ((3, 0, "master"), ["master:0", "worker:0", "worker:1"]),
    ((4, 1, "chief"), ["ps:0", "chief:0", "worker:0", "worker:1"]),
    ((5, 2, None), ["ps:0", "ps:1", "worker:0", "worker:1", "worker:2"]),
    ((2, 0, "chief", True), ["chief:0", "evaluator:0"]),
    ((5, 1, "chief", True), ["ps:0", "chief:0", "worker:0", "worker:1", "evaluator:0"]),
    ((3, 1, None, True), ["ps:0", "worker:0", "evaluator:0"]),
])
def test_plan_assigns_ps_then_chief_then_workers_then_evaluator(args, expected):
    roles = plan_roles(*args)
    assert labels(roles) == list(enumerate(expected))


@pytest.mark.parametrize("args, quoted", [
    ((0,), "num_executors=0"),
    ((-2,), "num_executors=-2"),
    ((3, -1), "num_ps=-1"),
    ((2, 2), "num_executors=2 with num_ps=2"),
    ((3, 3, "chief"), "num_ps=3"),
    ((2, 1, None, True), "at least 3"),
    ((1, 0, None, True), "leaves no node to train"),
    ((3, 0, "boss"), "master_node='boss'"),
    ((3, 0, "Chief"), "master_node='Chief'"),
])
def test_plan_rejects_clusters_without_a_trainer_or_with_bad_arguments(args, quoted):
    with pytest.raises(ConfigError) as info:
        plan_roles(*args)
    assert quoted in str(info.value)


@given(num_nodes=st.integers(1, 12), num_ps=st.integers(0, 4),
       master=st.sampled_from([None, "chief", "master"]), eval_node=st.booleans())
def test_every_valid_plan_is_dense_and_consistent(num_nodes, num_ps, master, eval_node):
    try:
        roles = plan_roles(num_nodes, num_ps, master, eval_node)
    except ConfigError:
        assert num_nodes - num_ps - eval_node < 1
        return
    assert [r.node_id for r in roles] == list(range(num_nodes))
    by_job: dict[str, list[int]] = {}
    for role in roles:
        by_job.setdefault(role.job_name, []).append(role.task_index)
    for indices in by_job.values():
        assert indices == list(range(len(indices)))
    assert len(by_job.get("ps", [])) == num_ps
    assert (roles[-1].job_name == "evaluator") == eval_node
    assert len(by_job.get("evaluator", [])) == int(eval_node)
    if master:
        assert by_job[master] == [0]
    assert num_trainers(roles) == num_nodes - num_ps - int(eval_node)


def test_cluster_spec_groups_by_job_and_excludes_the_evaluator():
    roles = plan_roles(5, 1, "chief", True)
    endpoints = [f"10.0.0.{i}:{2220 + i}" for i in range(5)]
    assert cluster_spec(roles, endpoints) == {
        "ps": ["10.0.0.0:2220"],
        "chief": ["10.0.0.1:2221"],
        "worker": ["10.0.0.2:2222", "10.0.0.3:2223"],
    }


def test_cluster_spec_orders_each_job_by_task_index_not_node_id():
    roles = (Role(0, "worker", 2), Role(1, "worker", 0), Role(2, "ps", 0), Role(3, "worker", 1))
    spec = cluster_spec(roles, ["a:1", "b:2", "c:3", "d:4"])
    assert spec == {"worker": ["b:2", "d:4", "a:1"], "ps": ["c:3"]}


def test_cluster_spec_rejects_a_wrong_number_of_endpoints():
    with pytest.raises(ConfigError, match="1 endpoints for 2 roles"):
        cluster_spec(plan_roles(2), ["a:1"])


def test_tf_config_reads_back_as_tensorflow_parses_it():
    roles = plan_roles(4, 1, "chief")
    spec = cluster_spec(roles, ["h0:1", "h1:2", "h2:3", "h3:4"])
    for role in roles:
        parsed = json.loads(tf_config(spec, role))
        assert parsed == {"cluster": spec,
                          "task": {"type": role.job_name, "index": role.task_index},
                          "environment": "cloud"}
    # The task address TF derives must be this node's own endpoint.
    worker1 = roles[3]
    parsed = json.loads(tf_config(spec, worker1))
    assert parsed["cluster"][parsed["task"]["type"]][parsed["task"]["index"]] == "h3:4"


def test_tf_config_of_the_evaluator_names_it_but_keeps_it_out_of_the_cluster():
    roles = plan_roles(3, 0, "chief", True)
    spec = cluster_spec(roles, ["h0:1", "h1:2", "h2:3"])
    parsed = json.loads(tf_config(spec, roles[2]))
    assert parsed["task"] == {"type": "evaluator", "index": 0}
    assert "evaluator" not in parsed["cluster"]
    assert "h2:3" not in json.dumps(parsed["cluster"])


@pytest.mark.parametrize("args, trainers", [
    ((1,), 1), ((3, 0, "chief"), 3), ((4, 1, "chief"), 3), ((5, 1, "chief", True), 3),
    ((3, 2), 1), ((2, 0, "master", True), 1),
])
def test_num_trainers_counts_chief_and_workers_only(args, trainers):
    assert num_trainers(plan_roles(*args)) == trainers


@pytest.mark.parametrize("args, primary", [
    ((4, 1, "chief", True), Role(1, "chief", 0)),
    ((3, 1, "master"), Role(1, "master", 0)),
    ((4, 2), Role(2, "worker", 0)),
    ((2, 0, None, True), Role(0, "worker", 0)),
])
def test_primary_node_is_the_chief_else_worker_0(args, primary):
    assert primary_node(plan_roles(*args)) == primary


def test_role_label_is_job_and_index():
    assert Role(7, "worker", 3).label == "worker:3"
