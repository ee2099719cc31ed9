"""Roles, cluster specs and TF_CONFIG: pure functions, no Spark or TensorFlow import.

Used by the driver (to plan the cluster before launch) and by every node task (to derive its
own role from its barrier partition id and the endpoints gathered from its peers).

Node ids are the barrier partition ids ``0..n-1``. Roles are assigned in a fixed order: the
parameter servers first, then the chief (when ``master_node`` is set), then the workers, and
the evaluator last (when ``eval_node`` is set), so every node computes the same plan.
"""
from __future__ import annotations

import json
from dataclasses import dataclass

from tfos.core.errors import ConfigError

PS = "ps"
WORKER = "worker"
EVALUATOR = "evaluator"
MASTER_NODES = ("chief", "master")


@dataclass(frozen=True)
class Role:
    """One node's place in the cluster: its job name and index within that job."""

    node_id: int
    job_name: str
    task_index: int

    @property
    def label(self) -> str:
        return f"{self.job_name}:{self.task_index}"


def plan_roles(num_nodes: int, num_ps: int = 0, master_node: str | None = None,
               eval_node: bool = False) -> tuple[Role, ...]:
    """Assigns a role to every node id; raises ConfigError when no worker would be left."""
    if num_nodes < 1:
        raise ConfigError(f"num_executors={num_nodes}: a cluster needs at least one node")
    if num_ps < 0:
        raise ConfigError(f"num_ps={num_ps}: must be 0 or more")
    if master_node is not None and master_node not in MASTER_NODES:
        raise ConfigError(f"master_node={master_node!r}: use one of {MASTER_NODES} or None")
    reserved = num_ps + (1 if eval_node else 0)
    trainers = num_nodes - reserved
    if trainers < 1:
        raise ConfigError(
            f"num_executors={num_nodes} with num_ps={num_ps} and eval_node={eval_node} leaves no "
            f"node to train: raise num_executors to at least {reserved + 1} or lower num_ps")
    jobs = [PS] * num_ps
    if master_node:
        jobs.append(master_node)
        trainers -= 1
    jobs += [WORKER] * trainers
    if eval_node:
        jobs.append(EVALUATOR)
    counters: dict[str, int] = {}
    roles = []
    for node_id, job in enumerate(jobs):
        roles.append(Role(node_id, job, counters.get(job, 0)))
        counters[job] = counters.get(job, 0) + 1
    return tuple(roles)


def cluster_spec(roles: tuple[Role, ...], endpoints: list[str]) -> dict[str, list[str]]:
    """Maps job name to the ``host:port`` list TensorFlow expects (evaluator excluded, as in TF)."""
    if len(roles) != len(endpoints):
        raise ConfigError(f"{len(endpoints)} endpoints for {len(roles)} roles")
    spec: dict[str, list[str]] = {}
    for role in sorted(roles, key=lambda r: (r.job_name, r.task_index)):
        if role.job_name != EVALUATOR:
            spec.setdefault(role.job_name, []).append(endpoints[role.node_id])
    return spec


def tf_config(spec: dict[str, list[str]], role: Role) -> str:
    """The TF_CONFIG JSON for ``role`` in ``spec``."""
    return json.dumps({"cluster": spec,
                       "task": {"type": role.job_name, "index": role.task_index},
                       "environment": "cloud"})


def is_trainer(role: Role) -> bool:
    """The chief and the workers compute gradients (and receive fed data)."""
    return role.job_name == WORKER or role.job_name in MASTER_NODES


def num_trainers(roles: tuple[Role, ...]) -> int:
    """Nodes that compute gradients: TensorFlowOnSpark's ``num_workers``."""
    return sum(1 for r in roles if is_trainer(r))


def primary_node(roles: tuple[Role, ...]) -> Role:
    """The node that hosts TensorBoard and writes summaries: the chief, else worker 0."""
    for job in (*MASTER_NODES, WORKER):
        for role in roles:
            if role.job_name == job and role.task_index == 0:
                return role
    return roles[0]
