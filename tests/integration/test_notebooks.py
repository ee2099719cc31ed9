"""The example notebooks, run in a real Jupyter kernel (ipykernel, driven by nbclient and
jupyter_client): top to bottom, and what notebook users do between cells: interrupt a
``train()``, run the launch cell again, start a second cluster after ``shutdown()``."""
import json
import queue
import re
import time
from pathlib import Path

import pytest
from conftest import REPO, tfos_processes

NOTEBOOKS = REPO / "examples" / "notebooks"


def cell_texts(notebook) -> list[str]:
    """Each cell's outputs (streams, results, errors) as one text."""
    texts = []
    for cell in notebook.cells:
        parts = []
        for out in cell.get("outputs", []):
            parts.append(out.get("text") or out.get("data", {}).get("text/plain", "")
                         or "\n".join(out.get("traceback", [])))
        texts.append("\n".join(parts))
    return texts


def execute(path):
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError, CellTimeoutError
    notebook = nbformat.read(path, as_version=4)
    try:
        NotebookClient(notebook, timeout=240, kernel_name="python3", cwd=str(REPO)).execute()
    except (CellExecutionError, CellTimeoutError) as exc:
        # What every cell printed up to the failure, node lines included.
        raise AssertionError(f"{path.name}: {exc}\n--- outputs:\n" +
                             "\n".join(cell_texts(notebook))[-6000:]) from None
    return cell_texts(notebook)


def node_lines(texts: list[str]) -> list[str]:
    return [line for text in texts for line in text.splitlines()
            if re.match(r"\[(chief|worker):\d+@", line)]


def assert_no_tf_noise(lines: list[str]):
    noisy = [line for line in lines if re.search(r"\] [IWE]0000 .*(cudart_stub|port\.cc|"
                                                 r"cuda_platform|coordination_service)", line)]
    assert not noisy, noisy


def assert_progress_table(texts: list[str], activity: str, *row_patterns: str):
    """A cell shows tfos's progress display for ``activity``, its final frame matching each
    ``row_patterns`` (a regular expression of one node's row)."""
    tables = [text for text in texts if f"tfos: {activity}" in text]
    assert tables, f"no progress display for {activity!r}"
    frame = tables[-1]
    for pattern in row_patterns:
        assert re.search(pattern, frame), frame


def test_quickstart_spark_notebook_trains_predicts_and_shows_node_output():
    texts = execute(NOTEBOOKS / "quickstart_spark.ipynb")
    everything = "\n".join(texts)
    # The progress display, updated in place in the cells that wait: the nodes while train()
    # feeds them (their numbers arrive once a second, so a short feed may end before the first),
    # and at shutdown, when each node's last numbers came with its exit, the records each
    # received (the Keras callback's epochs are checked in the TENSORFLOW-mode notebook).
    assert_progress_table(texts, "feeding 'input', 3 epochs",
                          r"chief:0@\S+ +│ running +│", r"worker:0@\S+ +│ running +│")
    assert_progress_table(texts, "waiting for the nodes to finish",
                          r"chief:0@\S+ +│ done +│ +[1-9][\d,]* +│",
                          r"worker:0@\S+ +│ done +│ +[1-9][\d,]* +│")
    assert re.search(r"TensorBoard: http://[\w.-]+:\d+/", everything), everything[-3000:]
    lines = node_lines(texts)
    assert any(line.endswith("Epoch 1/3") for line in lines), everything[-3000:]
    # map_fun's own print() reaches the driver: its log of the chief's output has it. (Not
    # checked in the cells: the chief prints it as the inference cell ends, and nbclient drops
    # output the kernel publishes for a cell that already finished; Jupyter shows it there.)
    log_dir = re.search(r"each node's complete output goes to (\S+)/<job>-<index>\.log",
                        everything)[1]
    assert "chief:0 trained, loss" in (Path(log_dir) / "chief-0.log").read_text()
    assert_no_tf_noise(lines)
    found = dict(re.findall(r"\|\[(1\.0, 1\.0|0\.5, 0\.0)\]\|\s*([-0-9.]+)\|", everything))
    assert float(found["1.0, 1.0"]) == pytest.approx(4.758, abs=0.05)
    assert float(found["0.5, 0.0"]) == pytest.approx(1.57, abs=0.05)
    losses = json.loads(re.search(r"chief's loss per epoch: (\[.*\])", everything)[1])
    assert len(losses) == 3 and losses[-1] < 1e-3


def test_quickstart_tensorflow_notebook_reads_its_files_and_tfmodel_scores():
    texts = execute(NOTEBOOKS / "quickstart_tensorflow.ipynb")
    everything = "\n".join(texts)
    assert_progress_table(texts, "waiting for the nodes to finish",
                          r"chief:0@\S+ +│ done .*epoch \d+ +step \d+ +loss")
    lines = node_lines(texts)
    assert any("tfos: SavedModel exported to" in line for line in lines), everything[-3000:]
    assert not any("Saved artifact" in line for line in lines)
    assert_no_tf_noise(lines)
    found = dict(re.findall(r"\|\[(1\.0, 1\.0|0\.5, 0\.0)\]\|\s*([-0-9.]+)\|", everything))
    assert float(found["1.0, 1.0"]) == pytest.approx(4.758, abs=0.05), everything[-3000:]


# -- what notebook users do between cells ------------------------------------------------------
class Kernel:
    """A live ipykernel: ``run(code)`` executes a cell and returns (status, ename, output)."""

    def __init__(self):
        from jupyter_client.manager import start_new_kernel
        self.manager, self.client = start_new_kernel(kernel_name="python3", cwd=str(REPO))

    def submit(self, code: str) -> str:
        return self.client.execute(code)

    def outputs(self, msg_id: str, timeout: float, until: str | None = None):
        """(status, ename, text) of cell ``msg_id`` once it is done, or once its output
        matches ``until`` (then status is None)."""
        deadline = time.monotonic() + timeout
        text, status, ename = [], None, None
        while time.monotonic() < deadline:
            try:
                msg = self.client.get_iopub_msg(timeout=max(0.1, deadline - time.monotonic()))
            except queue.Empty:
                break
            if msg["parent_header"].get("msg_id") != msg_id:
                continue
            kind, content = msg["msg_type"], msg["content"]
            if kind == "stream":
                text.append(content["text"])
            elif kind in ("execute_result", "display_data"):
                text.append(content["data"].get("text/plain", ""))
            elif kind == "error":
                ename = content["ename"]
                text.append(f"{content['ename']}: {content['evalue']}")
            elif kind == "status" and content["execution_state"] == "idle":
                status = "error" if ename else "ok"
                return status, ename, "".join(text)
            if until and re.search(until, "".join(text)):
                return None, None, "".join(text)
        raise AssertionError(f"cell did not finish within {timeout} s; output so far:\n"
                             + "".join(text)[-3000:])

    def run(self, code: str, timeout: float = 240):
        return self.outputs(self.submit(code), timeout)

    def close(self):
        self.client.stop_channels()
        self.manager.shutdown_kernel(now=True)


SETUP = '''
import os, sys, time
os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
from pyspark.sql import SparkSession
import numpy as np
import tfos
spark = (SparkSession.builder.master("local[3]").appName("tfos-kernel-test")
         .config("spark.ui.showConsoleProgress", "false").getOrCreate())
sc = spark.sparkContext

def slow_fun(args, ctx):
    feed = ctx.get_data_feed()
    seen = 0
    while not feed.should_stop():
        batch = feed.next_batch(10)
        if batch and not seen:
            print("FIRST BATCH", flush=True)
        seen += len(batch)
        time.sleep(0.05)
    return seen

def image(i):
    import numpy as np
    return (np.full(2000, i, np.float32),)

def launch():
    return tfos.TFCluster.run(spark, slow_fun, None, 2, input_mode=tfos.InputMode.SPARK,
                              feed_buffer_bytes=4 << 20)
'''


def test_a_notebook_interrupts_train_reruns_the_launch_cell_and_starts_a_second_cluster():
    kernel = Kernel()
    try:
        assert kernel.run(SETUP)[0] == "ok"
        assert kernel.run("cluster = launch()")[0] == "ok"
        # Interrupt a long train(): KeyboardInterrupt within seconds, the cluster lives on.
        train = kernel.submit("cluster.train(sc.range(20000, numSlices=4).map(image), 1)")
        kernel.outputs(train, 120, until=r"\] FIRST BATCH")
        interrupted_at = time.monotonic()
        kernel.manager.interrupt_kernel()
        status, ename, _ = kernel.outputs(train, 60)
        assert (status, ename) == ("error", "KeyboardInterrupt")
        assert time.monotonic() - interrupted_at < 20
        status, _, text = kernel.run(
            "cluster.train(sc.range(40, numSlices=2).map(image), 1); print('TRAINED AGAIN')")
        assert status == "ok" and "TRAINED AGAIN" in text, text
        # Running the launch cell again: the running cluster holds the slots, said at once.
        status, ename, text = kernel.run("cluster2 = launch()", timeout=60)
        assert (status, ename) == ("error", "PreflightError"), text
        assert f"hold 3 of the 3 ({_cluster_id(kernel)} (3 slots))" in text, text
        status, _, text = kernel.run("cluster.shutdown(); print(json.dumps(cluster.results))"
                                     .replace("json.dumps", "__import__('json').dumps"))
        assert status == "ok", text
        counts = json.loads(text.strip().splitlines()[-1])
        assert sorted(counts) == ["worker:0", "worker:1"] and min(counts.values()) >= 20
        # A second cluster after shutdown() in the same kernel.
        status, _, text = kernel.run(
            "c2 = launch(); c2.train(sc.range(40, numSlices=2).map(image), 1); c2.shutdown(); "
            "print(sorted(c2.results.values()), tfos.TFCluster.running())")
        assert status == "ok" and "[20, 20] []" in text, text
    finally:
        kernel.close()
    # This session's TF node processes only (another test run may share the machine).
    left = [p.pid for p in tfos_processes() if "tfos.node.main" in " ".join(p.info["cmdline"])]
    assert left == [], "TF node processes outlived the kernel"


def _cluster_id(kernel: Kernel) -> str:
    return kernel.run("print(cluster.cluster_id)")[2].strip()
