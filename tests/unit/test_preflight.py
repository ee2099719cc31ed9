"""Task slots an application will have, read from its settings (``preflight.planned_slots``)."""
from __future__ import annotations

import os

import pytest

from tfos.driver.preflight import BARRIER_FAIL_FAST, planned_slots

CPUS = os.cpu_count() or 1


@pytest.mark.parametrize("master, instances, cores, cores_max, task_cpus, expected", [
    ("local", None, None, None, 1, 1),
    ("local[*]", None, None, None, 1, CPUS),
    ("local[4]", None, None, None, 1, 4),
    ("local[4, 3]", None, None, None, 1, 4),  # local[N, maxFailures]
    (" local[2] ", None, None, None, 1, 2),
    ("local-cluster[3,2,1024]", None, None, None, 1, 6),
    ("local-cluster[3,2,1024]", None, None, None, 2, 3),
    ("local-cluster[ 4 , 1 , 512 ]", None, None, None, 1, 4),
    ("local-cluster[2,3,1024]", None, None, None, 2, 2),  # 3 cores hold one 2-cpu task
    ("spark://master:7077", None, None, "8", 1, 8),
    ("spark://master:7077", None, None, "8", 2, 4),
    ("spark://master:7077", "3", "4", "100", 2, 6),  # instances x cores win over cores.max
    ("yarn", "3", "4", None, 1, 12),
    ("yarn", "3", "4", None, 2, 6),
    ("yarn", "2", "3", None, 2, 2),
    ("k8s://https://api:6443", "5", "1", None, 1, 5),
    ("yarn", None, None, None, 1, None),
    ("yarn", "3", None, None, 1, None),
    ("yarn", None, "4", "16", 1, None),  # cores.max only counts on standalone
    ("spark://master:7077", None, None, None, 1, None),
    ("mesos://m:5050", None, None, None, 1, None),
    ("", None, None, None, 1, None),
])
def test_planned_slots(master, instances, cores, cores_max, task_cpus, expected):
    assert planned_slots(master, instances, cores, cores_max, task_cpus) == expected


@pytest.mark.parametrize("master, expected", [("local[4]", 2), ("local[*]", CPUS // 2)])
def test_planned_slots_of_local_mode_divides_by_task_cpus(master, expected):
    assert planned_slots(master, None, None, None, 2) == expected


def test_barrier_fail_fast_settings_are_strings_for_the_session_builder():
    assert BARRIER_FAIL_FAST == {
        "spark.scheduler.barrier.maxConcurrentTasksCheck.interval": "1s",
        "spark.scheduler.barrier.maxConcurrentTasksCheck.maxFailures": "2",
    }
