"""Which GPUs a TF node may use, from what Spark's resource scheduling gave its task (pure core).

Spark assigns GPUs to tasks when the application asks for them
(``spark.executor.resource.gpu.amount`` with a discovery script, and
``spark.task.resource.gpu.amount``); a node task reads its addresses from
``TaskContext.resources()["gpu"]``. ``node_gpus`` turns them into the node's
``CUDA_VISIBLE_DEVICES`` (set before TensorFlow is imported), so two nodes on one host never
share a GPU by accident.
"""
from __future__ import annotations

from tfos.core.errors import ConfigError
from tfos.core.topology import Role

GPU_SETTINGS = ("spark.executor.resource.gpu.amount (with "
                "spark.executor.resource.gpu.discoveryScript) and "
                "spark.task.resource.gpu.amount")


def node_gpus(role: Role, assigned: list[str] | None, num_gpus: int | None,
              cpu_roles: tuple[str, ...]) -> list[str] | None:
    """The GPU addresses of ``role``'s TF process; None leaves CUDA_VISIBLE_DEVICES unset.

    ``assigned``: what Spark gave the task (None: the application schedules no GPUs).
    ``num_gpus``: how many the node needs (None: all it was given). Roles in ``cpu_roles``
    (parameter servers by default) get none: an empty list hides every GPU from TensorFlow.
    Raises ConfigError when the node needs more than Spark gave it.
    """
    if role.job_name in cpu_roles:
        return []
    if num_gpus is None:
        return list(assigned) if assigned is not None else None
    if num_gpus == 0:
        return []
    given = list(assigned or ())
    if len(given) < num_gpus:
        return _too_few(role, given, num_gpus)
    return given[:num_gpus]


def _too_few(role: Role, given: list[str], num_gpus: int):
    have = f"{len(given)} ({', '.join(given)})" if given else "none"
    raise ConfigError(
        f"node {role.label} needs num_gpus={num_gpus} but Spark gave its task {have}: set "
        f"{GPU_SETTINGS} to at least {num_gpus}, or lower num_gpus (or keep this role off "
        "GPUs with cpu_roles)")
