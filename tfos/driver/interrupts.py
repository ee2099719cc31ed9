"""Ctrl-C in a script stops the work at hand, not the TF clusters (driver).

PySpark's SparkContext handles SIGINT by cancelling every job of the application and raising
``KeyboardInterrupt``. For tfos that takes the node stage down with the feed job: a user who
interrupts a long ``train()`` loses the cluster. While a tfos cluster lives, its node stage is
protected: SIGINT cancels every other active job (a feed, a count, the user's own), then
raises ``KeyboardInterrupt`` as PySpark's handler does, and the cluster stays up for the next
``train()`` or ``shutdown()``. The handler is installed by the first live cluster (from the main
thread only: Python delivers signals there) and the one it replaced is put back when the last
cluster is shut down.

In a Jupyter kernel the kernel's own handler raises ``KeyboardInterrupt`` during a cell and
cancels no job; the feeder's own clean-up then stops the feed job.
"""
from __future__ import annotations

import logging
import signal
import threading

from py4j.protocol import Py4JError

logger = logging.getLogger(__name__)
_lock = threading.Lock()
_protected: dict[str, object] = {}    # node stage job group -> its SparkContext
_previous = None                      # the handler ours replaced, while ours is installed


def protect(sc, job_group: str) -> None:
    """Keeps the jobs of ``job_group`` (a cluster's node stage) alive through Ctrl-C."""
    global _previous
    with _lock:
        _protected[job_group] = sc
        if _previous is not None or threading.current_thread() is not threading.main_thread():
            return
        try:
            _previous = signal.signal(signal.SIGINT, _on_sigint)
        except ValueError:    # not the main interpreter: signals are not ours to handle
            _previous = None


def release(job_group: str) -> None:
    """The cluster of ``job_group`` is shut down; the last one puts the old handler back."""
    global _previous
    with _lock:
        _protected.pop(job_group, None)
        if _protected or _previous is None:
            return
        if threading.current_thread() is threading.main_thread() and \
                signal.getsignal(signal.SIGINT) is _on_sigint:
            signal.signal(signal.SIGINT, _previous)
            _previous = None


def cancel_unprotected() -> list[int]:
    """Cancels every active Spark job outside the protected node stages; returns their ids."""
    with _lock:
        contexts = {id(sc): sc for sc in _protected.values()}
        groups = list(_protected)
    cancelled = []
    for sc in contexts.values():
        try:
            tracker = sc.statusTracker()
            keep = {job for group in groups for job in tracker.getJobIdsForGroup(group)}
            for job in tracker.getActiveJobsIds():
                if job not in keep:
                    sc._jsc.sc().cancelJob(job)
                    cancelled.append(job)
        except (Py4JError, AttributeError) as exc:   # a stopped SparkContext: nothing runs
            logger.warning("tfos: could not cancel the running Spark jobs: %s", exc)
    return cancelled


def _on_sigint(signum, frame):
    with _lock:
        previous = None if _protected else _previous
    if callable(previous):   # every cluster is gone (released off the main thread): as before
        return previous(signum, frame)
    cancelled = cancel_unprotected()
    logger.info("interrupted: cancelled Spark jobs %s; the TF clusters keep running",
                cancelled)
    raise KeyboardInterrupt
