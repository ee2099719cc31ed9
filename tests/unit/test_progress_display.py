"""The progress numbers from a node to the driver's live display: ``tfos.node.progress`` (the
node's reporter and Keras callback) and ``tfos.driver.progress`` (the table, where it is drawn,
and the nodes' lines printed above it)."""
from __future__ import annotations

import io
import threading

import pytest

from tfos.core import messages as m
from tfos.core.config import ClusterConfig
from tfos.core.errors import NodeFailed
from tfos.core.runtime import python_version, tensorflow_version
from tfos.driver.cluster_state import ClusterState
from tfos.driver.progress import ProgressDisplay, display_kind
from tfos.node.progress import ProgressReporter, keras_callback


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def cluster_state(stream=None) -> ClusterState:
    config = ClusterConfig(num_executors=3, num_ps=1, master_node="chief")
    return ClusterState(config, driver_versions=(python_version(), tensorflow_version()),
                        log_stream=stream)


def register(state: ClusterState, node_id: int) -> None:
    state.register(m.Register(node_id, 0, "10.0.0.5", 41000 + node_id, 500 + node_id,
                              python_version(), tensorflow_version()))


def text(display: ProgressDisplay) -> str:
    from rich.console import Console
    console = Console(file=io.StringIO(), width=160, record=True)
    console.print(display.table())
    return console.export_text()


def row(rendered: str, label: str) -> str:
    (line,) = [line for line in rendered.splitlines() if label in line]
    return line


def test_the_table_shows_each_nodes_state_feed_rate_and_training():
    state, clock = cluster_state(), Clock()
    display = ProgressDisplay(state, None, None, clock=clock)
    for node_id in (0, 1, 2):
        register(state, node_id)
    feed = lambda records, epoch: {"input": m.FeedProgress(records, epoch)}  # noqa: E731
    state.heartbeat(m.Heartbeat(1, m.NodeState.RUNNING,
                                m.Progress(feed(1000, 0), epoch=1, step=20,
                                           metrics={"loss": 0.52312, "accuracy": 0.8})))
    state.heartbeat(m.Heartbeat(0, m.NodeState.SERVING))
    first = text(display)
    clock.now += 2.0
    state.heartbeat(m.Heartbeat(1, m.NodeState.RUNNING,
                                m.Progress(feed(5000, 1), epoch=2, step=60,
                                           metrics={"loss": 0.25})))
    rendered = text(display)
    worker = row(rendered, "chief:0@10.0.0.5")
    assert "running" in worker and "5,000" in worker and "2,000" in worker   # 4000 in 2 s
    assert "epoch 2  step 60  loss 0.25" in worker
    assert "1,000" in row(first, "chief:0@10.0.0.5")
    assert "serving" in row(rendered, "ps:0@10.0.0.5")
    assert "starting" in row(rendered, "worker:0@10.0.0.5")


def test_unregistered_nodes_wait_for_an_executor_and_exits_say_done_or_failed():
    state = cluster_state()
    display = ProgressDisplay(state, None, None)
    register(state, 1)
    register(state, 2)
    state.status(m.NodeStatus(1, m.NodeState.EXITED, exit_code=0))
    state.fail(NodeFailed("worker:0@10.0.0.5", "10.0.0.5", "its TF process exited with code 1"))
    state.status(m.NodeStatus(2, m.NodeState.EXITED, exit_code=1, stopped=True))
    rendered = text(display)
    assert "waiting for an executor" in row(rendered, "ps:0")
    assert "done" in row(rendered, "chief:0@10.0.0.5")
    assert "failed" in row(rendered, "worker:0@10.0.0.5")


def test_the_last_progress_arrives_with_the_exit_report():
    state = cluster_state()
    register(state, 1)
    final = m.Progress({"input": m.FeedProgress(60000, 2)}, epoch=3)
    state.status(m.NodeStatus(1, m.NodeState.EXITED, exit_code=0, progress=final))
    assert state.nodes[1].progress == final


@pytest.mark.parametrize("stream, kind", [(None, None), (io.StringIO(), None),
                                          (Terminal(), "terminal")])
def test_drawn_only_on_a_terminal_or_notebook(stream, kind):
    assert display_kind(stream) == kind


def test_on_a_terminal_node_lines_print_above_the_table_and_the_table_goes_away():
    stream = Terminal()
    state = cluster_state(stream)
    register(state, 1)
    display = ProgressDisplay(state, stream, "terminal")
    with display.showing("feeding 'input', 1 epoch"):
        state.log_lines(m.LogLines(1, ["step 10 loss 0.5"]))
        state.output.note("fed 'input' epoch 0")
        assert state.output.printer is not None
    assert state.output.printer is None
    out = stream.getvalue()
    assert "[chief:0@10.0.0.5] step 10 loss 0.5\n" in out
    assert "tfos: fed 'input' epoch 0\n" in out
    assert "tfos: feeding 'input', 1 epoch" in out     # the table was drawn
    # After the block the same lines go straight to the stream again.
    state.log_lines(m.LogLines(1, ["after"]))
    assert stream.getvalue().endswith("[chief:0@10.0.0.5] after\n")


def test_without_a_display_kind_nothing_is_drawn_and_lines_go_to_the_stream():
    stream = io.StringIO()
    state = cluster_state(stream)
    register(state, 1)
    with ProgressDisplay(state, stream, None).showing("training"):
        state.log_lines(m.LogLines(1, ["hello"]))
    assert stream.getvalue() == "[chief:0@10.0.0.5] hello\n"


def test_quiet_output_drops_tfos_notes_but_keeps_node_lines():
    stream = io.StringIO()
    config = ClusterConfig(num_executors=1, quiet=True)
    state = ClusterState(config, driver_versions=(python_version(), tensorflow_version()),
                         log_stream=stream)
    register(state, 0)
    state.output.note("waiting for 1 of 1 nodes")
    state.log_lines(m.LogLines(0, ["mine"]))
    assert stream.getvalue() == "[worker:0@10.0.0.5] mine\n"


# -- the node's side ------------------------------------------------------------------------------
class Events:
    def __init__(self):
        self.sent: list[m.Progress] = []
        self.arrived = threading.Event()

    def __call__(self, progress: m.Progress) -> None:
        self.sent.append(progress)
        self.arrived.set()


def test_the_reporter_sends_what_changed_with_the_feeds_counts():
    events = Events()
    feeds = {"input": m.FeedProgress(10, 0)}
    reporter = ProgressReporter(events, lambda: dict(feeds), interval=0.05)
    reporter.report(epoch=1, step=5, loss=0.5, accuracy=None, note="text")
    assert events.arrived.wait(5)
    reporter.close()
    assert events.sent[-1] == m.Progress(feeds, epoch=1, step=5, metrics={"loss": 0.5})
    # Nothing changed: no new event however long it runs.
    assert len(events.sent) == 1


def test_the_keras_callback_reports_epochs_from_one_and_steps_with_metrics():
    import numpy as np
    import tensorflow as tf
    reports: list[dict] = []
    model = tf.keras.Sequential([tf.keras.Input((2,)), tf.keras.layers.Dense(1)])
    model.compile("sgd", "mse")
    x = np.zeros((8, 2), np.float32)
    model.fit(x, x[:, :1], batch_size=4, epochs=2, verbose=0,
              callbacks=[keras_callback(lambda **kw: reports.append(kw))])
    assert [r["epoch"] for r in reports if "epoch" in r] == [1, 1, 2, 2]
    steps = [r["step"] for r in reports if "step" in r]
    assert steps == [1, 2, 3, 4]
    # Metrics at most once a second (converting them waits for the step): with the first step.
    with_steps = [r for r in reports if "step" in r]
    assert "loss" in with_steps[0] and not any("loss" in r for r in with_steps[1:])


def test_without_batch_hooks_the_callback_reports_epochs_only():
    import numpy as np
    import tensorflow as tf
    reports: list[dict] = []
    callback = keras_callback(lambda **kw: reports.append(kw), batches=False)
    model = tf.keras.Sequential([tf.keras.Input((2,)), tf.keras.layers.Dense(1)])
    model.compile("sgd", "mse")
    x = np.zeros((8, 2), np.float32)
    model.fit(x, x[:, :1], batch_size=4, epochs=2, verbose=0, callbacks=[callback])
    # What Keras checks under ParameterServerStrategy: no batch hook overridden.
    assert type(callback).on_train_batch_end is tf.keras.callbacks.Callback.on_train_batch_end
    assert [r["epoch"] for r in reports] == [1, 1, 2, 2] and "loss" in reports[-1]
