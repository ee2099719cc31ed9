"""The driver's live view of a cluster while it waits on it (driver).

While ``TFCluster.run`` starts the nodes, ``train`` feeds them and ``shutdown`` waits for them,
a table shows each node's state (waiting for an executor, starting, running, serving, done,
failed), the records it received with their rate and the epoch it reads, and the training
epoch, step and metrics its code reported (``ctx.report_progress``,
``ctx.progress_callback()``). It is drawn with rich: in place at the bottom of a terminal, with
the nodes' lines scrolling above it, or as one display in a Jupyter cell, updated in place.
Nothing is drawn when the stream is neither (a file, a pipe, CI) or with ``quiet=True``.

In a terminal, Spark's own console progress bar (``[Stage 0:==> (1 + 2) / 3]``) would redraw
itself over the table: the first time tfos draws, it stops Spark's bar for the rest of the
SparkContext (``spark.ui.showConsoleProgress=false`` at session start does the same).
"""
from __future__ import annotations

import collections
import contextlib
import io
import logging
import threading
import time
from typing import TextIO

from tfos.core import messages as m

logger = logging.getLogger(__name__)

# Redraws per second, and the seconds over which a feed's rate is measured.
REFRESH_PER_SECOND = 2
RATE_WINDOW = 5.0
NOTEBOOK_WIDTH = 110


def display_kind(stream: TextIO | None) -> str | None:
    """``"notebook"`` for a Jupyter kernel's output stream, ``"terminal"`` for a TTY, else
    None (nothing is drawn)."""
    if stream is None:
        return None
    if type(stream).__module__.startswith("ipykernel"):
        return "notebook"
    try:
        return "terminal" if stream.isatty() else None
    except (AttributeError, ValueError):   # no isatty, or a closed stream
        return None


def stop_spark_progress_bar(sc) -> None:
    """Stops the JVM's console progress bar of ``sc``, if it draws one."""
    try:
        bar = sc._jsc.sc().progressBar()
        if bar.isDefined():
            bar.get().stop()
    except Exception as exc:  # noqa: BLE001 - py4j errors of other Spark versions: not fatal
        logger.debug("could not stop Spark's console progress bar: %s", exc)


class ProgressDisplay:
    """Draws ``state`` (a ``ClusterState``) on ``stream`` while ``showing(...)`` is entered."""

    def __init__(self, state, stream: TextIO | None, kind: str | None, sc=None,
                 clock=time.monotonic):
        self.state = state
        self.stream = stream
        self.kind = kind
        self._sc = sc
        self._clock = clock
        self._samples: dict[int, collections.deque] = collections.defaultdict(
            lambda: collections.deque(maxlen=4 * REFRESH_PER_SECOND * int(RATE_WINDOW)))
        self._activity = ""
        self._since = 0.0
        self._active = threading.Lock()   # one display at a time (train() from two threads)

    @contextlib.contextmanager
    def showing(self, activity: str):
        """Draws the cluster, titled ``activity``, until the block ends."""
        if self.kind is None or not self._active.acquire(blocking=False):
            yield
            return
        self._activity, self._since = activity, self._clock()
        try:
            with (self._terminal() if self.kind == "terminal" else self._notebook()):
                yield
        finally:
            self._active.release()

    # -- drawing ----------------------------------------------------------------------------
    @contextlib.contextmanager
    def _terminal(self):
        from rich.console import Console
        from rich.live import Live
        if self._sc is not None:
            stop_spark_progress_bar(self._sc)
            self._sc = None
        console = Console(file=self.stream)
        live = Live(get_renderable=self.table, console=console, transient=True,
                    refresh_per_second=REFRESH_PER_SECOND, redirect_stdout=False,
                    redirect_stderr=False)
        output = self.state.output
        with live:
            # The nodes' lines and tfos's notes print above the table, never through it.
            output.printer = lambda text: console.out(text, end="", highlight=False)
            try:
                yield
            finally:
                output.printer = None

    @contextlib.contextmanager
    def _notebook(self):
        from IPython.display import display
        handle = display(self._bundle(), raw=True, display_id=True)
        done = threading.Event()

        def refresh():
            while not done.wait(1 / REFRESH_PER_SECOND):
                handle.update(self._bundle(), raw=True)

        thread = threading.Thread(target=refresh, name="tfos-progress", daemon=True)
        thread.start()
        try:
            yield
        finally:
            done.set()
            thread.join(5)
            handle.update(self._bundle(), raw=True)   # the final state stays in the cell

    def _bundle(self) -> dict[str, str]:
        """The table as a Jupyter display bundle: plain text and HTML."""
        from rich.console import Console
        console = Console(file=io.StringIO(), record=True, width=NOTEBOOK_WIDTH,
                          force_terminal=False, force_jupyter=False)
        console.print(self.table())
        return {"text/plain": console.export_text(),
                "text/html": console.export_html(inline_styles=True)}

    def table(self):
        """The cluster as a rich ``Table``: one row per node."""
        from rich.table import Table
        now = self._clock()
        table = Table(title=f"tfos: {self._activity} ({now - self._since:.0f} s)",
                      title_justify="left", expand=False)
        for name, justify in (("node", "left"), ("state", "left"), ("records fed", "right"),
                              ("rate/s", "right"), ("epochs read", "right"),
                              ("training", "left")):
            table.add_column(name, justify=justify, no_wrap=True)
        with self.state.changed:
            nodes = sorted(self.state.nodes.items())
            failed = {f.node for f in self.state.failures}
            rows = [(i, n.label, _state(n, n.label in failed), n.progress) for i, n in nodes]
        for node_id, label, state, progress in rows:
            records, epoch = _feed_totals(progress)
            table.add_row(label, state, f"{records:,}" if records is not None else "",
                          self._rate(node_id, records, now),
                          str(epoch) if epoch is not None else "", _training(progress))
        return table

    def _rate(self, node_id: int, records: int | None, now: float) -> str:
        if records is None:
            return ""
        samples = self._samples[node_id]
        samples.append((now, records))
        while len(samples) > 2 and now - samples[0][0] > RATE_WINDOW:
            samples.popleft()
        then, before = samples[0]
        seconds = now - then
        return f"{(records - before) / seconds:,.0f}" if seconds > 0.5 else ""


def _state(node, failed: bool) -> str:
    if node.state is None:
        return "waiting for an executor"
    if node.state == m.NodeState.EXITED:
        return "failed" if failed or node.exit_code not in (0, None) else "done"
    return node.state.value


def _feed_totals(progress: m.Progress | None) -> tuple[int | None, int | None]:
    """Records received over every feed, and the epoch of the busiest feed."""
    if progress is None or not progress.feeds:
        return None, None
    busiest = max(progress.feeds.values(), key=lambda f: f.records)
    return sum(f.records for f in progress.feeds.values()), busiest.epoch


def _training(progress: m.Progress | None) -> str:
    if progress is None:
        return ""
    parts = []
    if progress.epoch is not None:
        parts.append(f"epoch {progress.epoch}")
    if progress.step is not None:
        parts.append(f"step {progress.step:,}")
    parts += [f"{name} {value:.4g}" for name, value in progress.metrics.items()]
    return "  ".join(parts)
