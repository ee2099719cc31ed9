"""Checks that the Spark application can host the cluster, before anything launches (driver).

Barrier stages need every node's slot at once, so a cluster larger than the application's
task slots, or an application under dynamic allocation, would otherwise hang or retry for
minutes. Each check fails in seconds with an error that says what to change.
"""
from __future__ import annotations

import logging
import os
import re
import threading
import time

from tfos.core.config import ClusterConfig
from tfos.core.errors import PreflightError
from tfos.driver.cluster_state import NOTE_AFTER, NOTE_EVERY

logger = logging.getLogger(__name__)

# Spark settings that make an impossible barrier stage fail in ~2 s instead of retrying ~10 min.
# They are read when the SparkContext starts: pass them to the session builder.
BARRIER_FAIL_FAST = {
    "spark.scheduler.barrier.maxConcurrentTasksCheck.interval": "1s",
    "spark.scheduler.barrier.maxConcurrentTasksCheck.maxFailures": "2",
}


def check(sc, config: ClusterConfig, slots_needed: int,
          held: dict[str, int] | None = None, note=None) -> int:
    """Runs every check; returns the number of task slots found. ``held``: the task slots the
    application's running tfos clusters keep busy, by cluster id (until their shutdown).
    ``note(text)``: where a long wait for executors says what it waits for."""
    conf = sc.getConf()
    if conf.get("spark.dynamicAllocation.enabled", "false").lower() == "true":
        raise PreflightError(
            "spark.dynamicAllocation.enabled=true: TF nodes are a barrier stage, which needs a "
            "fixed set of executors. Start the application with "
            "--conf spark.dynamicAllocation.enabled=false and --num-executors "
            f"{config.num_nodes} (or spark.executor.instances)")
    master = conf.get("spark.master", "")
    task_cpus = int(conf.get("spark.task.cpus", "1"))
    planned = planned_slots(master, conf.get("spark.executor.instances"),
                            conf.get("spark.executor.cores"), conf.get("spark.cores.max"),
                            task_cpus)
    if planned is not None and planned < slots_needed:
        raise PreflightError(_too_few(slots_needed, planned, master, config))
    busy = sum((held or {}).values())
    if busy and planned is not None and planned - busy < slots_needed:
        # Those slots free up only when the other clusters shut down: failing now beats
        # waiting out the reservation timeout.
        clusters = ", ".join(f"{cid} ({n} slots)" for cid, n in held.items())
        raise PreflightError(
            f"the cluster needs {slots_needed} task slots at once but tfos clusters still running "
            f"in this application hold {busy} of the {planned} ({clusters}): shut them down "
            "first (cluster.shutdown(); tfos.TFCluster.running() lists them), or give the "
            "application more executors or cores")
    return _wait_for_slots(sc, slots_needed + busy, config, note)


def planned_slots(master: str, instances: str | None, cores: str | None,
                  cores_max: str | None, task_cpus: int) -> int | None:
    """Task slots the application will have, when its settings say so; None when unknown."""
    match = re.fullmatch(r"local(?:\[(\*|\d+)(?:,\s*\d+)?\])?", master.strip())
    if match:
        n = match.group(1)
        cores = (os.cpu_count() or 1) if n == "*" else int(n or 1)
        return cores // task_cpus
    match = re.fullmatch(r"local-cluster\[\s*(\d+)\s*,\s*(\d+)\s*,\s*\d+\s*\]", master.strip())
    if match:
        return int(match.group(1)) * (int(match.group(2)) // task_cpus)
    if instances and cores:
        return int(instances) * (int(cores) // task_cpus)
    if cores_max and master.startswith("spark://"):
        if cores:
            return (int(cores_max) // int(cores)) * (int(cores) // task_cpus)
        return int(cores_max) // task_cpus
    return None


def available_slots(sc) -> int:
    jsc = sc._jsc.sc()
    profile = jsc.resourceProfileManager().defaultResourceProfile()
    return int(jsc.maxNumConcurrentTasks(profile))


def _wait_for_slots(sc, needed: int, config: ClusterConfig, note=None) -> int:
    # Executors register asynchronously and Spark exposes no event to Python for it, so this
    # checks the count at a short interval, bounded by slot_wait_timeout.
    start = time.monotonic()
    deadline = start + config.slot_wait_timeout
    next_note = start + NOTE_AFTER
    tick = threading.Event()
    slots = available_slots(sc)
    while slots < needed:
        if note is not None and time.monotonic() >= next_note:
            note(f"waiting for executors: {slots} of the {needed} task slots so far "
                 f"({time.monotonic() - start:.0f} s, at most {config.slot_wait_timeout:.0f} s: "
                 "slot_wait_timeout)")
            next_note += NOTE_EVERY
        if time.monotonic() >= deadline:
            master = sc.getConf().get("spark.master", "")
            raise PreflightError(_too_few(needed, slots, master, config, waited=True))
        tick.wait(0.25)
        slots = available_slots(sc)
    return slots


def _too_few(needed: int, have: int, master: str, config: ClusterConfig,
             waited: bool = False) -> str:
    when = f" after waiting {config.slot_wait_timeout:.0f}s for executors" if waited else ""
    feed = needed - config.num_nodes
    why = f"{config.num_nodes} TF nodes, one barrier task each"
    if feed:
        why += (f", plus {feed} for the feed tasks that stream Spark data into them "
                "(InputMode.SPARK: executors need a free slot beside the nodes' own)")
    return (f"the cluster needs {needed} task slots at once ({why}) but the Spark application "
            f"({master}) has {have}{when}. "
            "Give it more executors or cores (--num-executors / spark.executor.instances, "
            "spark.executor.cores, spark.cores.max; local-cluster[N,cores,mem] or local[N] when "
            "embedded), or ask for fewer nodes")
