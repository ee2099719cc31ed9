"""The driver's SIGINT handler (tfos.driver.interrupts): installed while clusters live, put
back after, and handing over to the one it replaced once no cluster is left."""
import signal
import threading

import pytest

from tfos.driver import interrupts


class NoJobs:
    """A SparkContext with nothing running (the handler asks its status tracker)."""

    class _Tracker:
        def getJobIdsForGroup(self, group):  # noqa: N802 - PySpark's name
            return []

        def getActiveJobsIds(self):  # noqa: N802
            return []

    def statusTracker(self):  # noqa: N802
        return self._Tracker()


def test_the_handler_lives_as_long_as_a_cluster_and_then_the_old_one_is_back():
    calls = []
    original = signal.signal(signal.SIGINT, lambda signum, frame: calls.append(signum))
    try:
        previous = signal.getsignal(signal.SIGINT)
        interrupts.protect(NoJobs(), "tfos-a")
        interrupts.protect(NoJobs(), "tfos-b")
        assert signal.getsignal(signal.SIGINT) is interrupts._on_sigint
        with pytest.raises(KeyboardInterrupt):
            signal.raise_signal(signal.SIGINT)
        assert calls == []                     # the old handler (PySpark's) was not run
        interrupts.release("tfos-a")
        assert signal.getsignal(signal.SIGINT) is interrupts._on_sigint
        interrupts.release("tfos-b")
        assert signal.getsignal(signal.SIGINT) is previous
    finally:
        signal.signal(signal.SIGINT, original)


def test_released_off_the_main_thread_the_handler_hands_over_to_the_old_one():
    calls = []
    original = signal.signal(signal.SIGINT, lambda signum, frame: calls.append(signum))
    try:
        interrupts.protect(NoJobs(), "tfos-c")
        thread = threading.Thread(target=interrupts.release, args=("tfos-c",))
        thread.start()
        thread.join()
        assert signal.getsignal(signal.SIGINT) is interrupts._on_sigint   # not ours to reset
        signal.raise_signal(signal.SIGINT)
        assert calls == [signal.SIGINT]
    finally:
        signal.signal(signal.SIGINT, original)
        interrupts._previous = None
