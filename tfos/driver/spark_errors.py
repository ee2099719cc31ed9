"""Reading Spark's errors: the informative head of a failed job, and whom it blames (driver).

A Spark job that failed raises a py4j error whose text holds JVM stack frames, the Python
traceback of the failed task, and Spark's own wording for which task failed. ``summarize``
keeps the head a person needs, the Python exception first; ``failed_partition`` reads the
partition number of the failed task (for the node stage, the node id).
"""
from __future__ import annotations

import re

# How Spark names the failed task of a stage: "ResultTask(17, 2)" or "Lost task 2.0 in stage".
_FAILED_TASK = re.compile(r"ResultTask\(\d+, (\d+)\)|Lost task (?=\d+\.\d+ in stage)(\d+)")
_PY_EXCEPTION = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Failed|Timeout|Exit|Interrupt)\b")
_JVM_FRAME = re.compile(r"^\s*(at [\w.$<>/]+\(.*\)|\.\.\. \d+ more)\s*$")


def failed_partition(summary: str) -> int | None:
    """The partition of the task that failed the job, when Spark's message says which."""
    match = _FAILED_TASK.search(summary)
    return int(match.group(1) or match.group(2)) if match else None


def summarize(exc: BaseException, max_lines: int = 25) -> str:
    """The informative head of a Spark/py4j error: messages and Python tracebacks, no JVM frames.

    When a Python task raised, its exception line comes first: it is the cause, and the
    traceback that leads to it can be longer than the head kept.
    """
    lines = [line for line in str(exc).splitlines()
             if line.strip() and not _JVM_FRAME.match(line)]
    cause = _python_exception(lines)
    head = "\n".join(lines[:max_lines]) or type(exc).__name__
    return f"{cause}\n{head}" if cause and cause not in lines[:max_lines] else head


def _python_exception(lines: list[str]) -> str | None:
    """The exception line that ends the first Python traceback in ``lines``, if any."""
    in_traceback = False
    for line in lines:
        if line.endswith("Traceback (most recent call last):"):
            in_traceback = True
        elif in_traceback and not line.startswith((" ", "\t")):
            if _PY_EXCEPTION.match(line):
                return line
            in_traceback = False
    return None
