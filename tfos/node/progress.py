"""How far a node has come, sent to the driver's progress display (TF node side).

``ProgressReporter`` keeps what the user's code reported last (``ctx.report_progress(epoch=,
step=, **metrics)``, or the Keras callback of ``ctx.progress_callback()``) and, at most once a
``interval``, sends it with the feeds' counts as one ``tfos.core.messages.Progress`` status
event when something changed. Reporting only stores numbers, so it is cheap enough to call
after every training step.
"""
from __future__ import annotations

import math
import threading
import time
from typing import Callable

from tfos.core import messages as m

# Seconds between two progress events; the driver redraws about as often.
INTERVAL = 1.0
# Metrics kept per report (the first ones by name order), and the length of their names.
MAX_METRICS = 8
MAX_NAME = 32


class ProgressReporter:
    """Sends ``m.Progress`` events through ``notify`` from a thread of its own."""

    def __init__(self, notify: Callable[[m.Progress], None],
                 feeds: Callable[[], dict[str, m.FeedProgress]], interval: float = INTERVAL):
        self._notify = notify
        self._feeds = feeds
        self._lock = threading.Lock()
        self._epoch: int | None = None
        self._step: int | None = None
        self._metrics: dict[str, float] = {}
        self._sent: m.Progress | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(interval,), daemon=True,
                                        name="tfos-progress")
        self._thread.start()

    def report(self, epoch: int | None = None, step: int | None = None, **metrics) -> None:
        """Records the training ``epoch``, ``step`` and scalar ``metrics`` (e.g. loss=0.3);
        arguments left out keep their last value. Non-numeric metrics are ignored."""
        kept = {}
        for name, value in sorted(metrics.items())[:MAX_METRICS]:
            try:
                number = float(value)
            except (TypeError, ValueError):
                continue
            if math.isfinite(number):
                kept[name[:MAX_NAME]] = number
        with self._lock:
            if epoch is not None:
                self._epoch = int(epoch)
            if step is not None:
                self._step = int(step)
            if kept:
                self._metrics = kept

    def snapshot(self) -> m.Progress:
        with self._lock:
            return m.Progress(self._feeds(), self._epoch, self._step, dict(self._metrics))

    def close(self) -> None:
        """Stops the thread after one last event, so the driver sees the final numbers."""
        self._stop.set()
        self._thread.join(5)
        self._send()

    def _run(self, interval: float) -> None:
        while not self._stop.wait(interval):
            self._send()

    def _send(self) -> None:
        progress = self.snapshot()
        if progress != self._sent:
            self._sent = progress
            try:
                self._notify(progress)
            except OSError:   # the task is gone: nobody to tell
                self._stop.set()


def keras_callback(report: Callable[..., None], batches: bool = True):
    """A Keras callback that reports epoch, step and the logged metrics through ``report``.

    Built on the Keras that ``tf.keras`` is in this process (tf-keras in the nodes by default,
    Keras 3 with ``legacy_keras=False``), so ``model.fit`` accepts it. ``batches=False`` leaves
    out the per-step hook, which Keras refuses under ParameterServerStrategy: epochs only.
    """
    import tensorflow as tf

    class EpochProgress(tf.keras.callbacks.Callback):
        """Reports training progress to the tfos driver (``ctx.progress_callback()``)."""

        def on_epoch_begin(self, epoch, logs=None):
            report(epoch=epoch + 1)   # counted from 1, as Keras prints "Epoch 1/3"

        def on_epoch_end(self, epoch, logs=None):
            report(epoch=epoch + 1, **(logs or {}))

    class StepProgress(EpochProgress):
        # Keras hands this callback the step's logs as tensors, unconverted: converting them
        # waits for the step's device work (a sync per step). They are converted at most once
        # an INTERVAL instead, the rate at which the driver hears of them anyway.
        _supports_tf_logs = True

        def __init__(self):
            super().__init__()
            self._step = 0
            self._metrics_at = 0.0

        def on_train_batch_end(self, batch, logs=None):
            self._step += 1
            now = time.monotonic()
            if logs and now - self._metrics_at >= INTERVAL:
                self._metrics_at = now
                report(step=self._step, **logs)
            else:
                report(step=self._step)

    return StepProgress() if batches else EpochProgress()
