"""What the driver does with the nodes' output lines (driver).

Every line a node prints goes, unfiltered, to that node's log file on the driver
(``<node_log_dir>/<job>-<index>.log``); the lines shown on the driver's stream (``log_stream``,
prefixed ``[role:index@host]``) leave out TensorFlow's start-up noise: the messages of
``TF_NOISE``, which every TF process prints at import whatever the user's code does (CUDA
probing on a host without GPUs, oneDNN and CPU-feature notices, absl's logging preamble). The
error reports' tail (``NodeFailed.log_tail``) keeps every line. ``show_tf_noise=True``
(``TFCluster.run`` option) shows everything.
"""
from __future__ import annotations

import logging
import os
import re
import threading
import time
from typing import Callable, TextIO

logger = logging.getLogger(__name__)

# A line of TensorFlow's C++ logging: severity, date, time, thread id, file:line]
_GLOG = r"[IWEF]\d{4} [\d:.]+ +\d+ "
_INFO = r"I\d{4} [\d:.]+ +\d+ "
TF_NOISE = (
    r"WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR",
    _GLOG + r"port\.cc:\d+\] oneDNN custom operations are on",
    _GLOG + r"cudart_stub\.cc:\d+\] Could not find cuda drivers on your machine",
    _GLOG + r"cpu_feature_guard\.cc:\d+\] This TensorFlow binary is optimized to use available",
    r"To enable the following instructions: .*rebuild TensorFlow with the appropriate compiler",
    _GLOG + r"cuda_(platform|executor|diagnostics)\.cc:\d+\] (failed call to cuInit|"
            r"retrieving CUDA diagnostic information|kernel driver does not appear)",
    _GLOG + r"cuda_(dnn|fft|blas)\.cc:\d+\] Unable to register cu(DNN|FFT|BLAS) factory",
    _GLOG + r"computation_placer\.cc:\d+\] computation placer already registered",
    _GLOG + r"gpu_device\.cc:\d+\] Cannot dlopen some GPU libraries",
    _GLOG + r"dataset\.cc:\d+\] Input of GeneratorDatasetOp::Dataset will not be optimized",
    # The cluster's rendezvous at start, as INFO: its errors (E...) stay visible.
    _INFO + r"coordination_service(_agent)?\.(cc|h):\d+\] (Initializing CoordinationService|"
            r".* has connected to coordination service|Waiting for \d+/\d+ tasks to connect|"
            r"Example stragglers:|Barrier\(WaitForAllTasks|"
            r"Coordination agent has successfully connected)",
    r"/job:[\w-]+/replica:\d+/task:\d+$",   # the straggler named on the line after
    _INFO + r"grpc_server_lib\.cc:\d+\] Started server with target: ",
    _INFO + r"generator_dataset_op\.cc:\d+\] Memory patch applied",
    _INFO + r"tf_record_dataset_op\.cc:\d+\] TFRecordDataset `buffer_size` is unspecified",
    # Parameter servers and TF1 between-graph replication: start-up and session clean-up.
    _INFO + r"eager_service_impl\.cc:\d+\] Creating sync eager service context",
    _INFO + r"master\.cc:\d+\] Scanning workers for devices",
    _INFO + r"mlir_graph_optimization_pass\.cc:\d+\] MLIR V1 optimization pass is not enabled",
    _INFO + r"kernel_and_device\.cc:\d+\] Ignoring error status when releasing multi-device "
            r"function handle UNIMPLEMENTED",
    _GLOG + r"local_rendezvous\.cc:\d+\] Local rendezvous is aborting with status: ABORTED: "
            r"Cleanup",
)
# A remote eager context's session options, dumped as a protobuf text of many lines up to an
# empty one (ParameterServerStrategy's ps and workers, at start): left off with its body.
SESSION_DUMP = _INFO + r"eager_service_impl\.cc:\d+\] SessionOptions: "
MAX_DUMP_LINES = 100
_NOISE = re.compile("|".join(f"(?:{pattern})" for pattern in TF_NOISE))


_DUMP = re.compile(SESSION_DUMP)


def is_tf_noise(line: str) -> bool:
    """True for a line of TensorFlow's start-up noise (``TF_NOISE``)."""
    return _NOISE.match(line) is not None


class NoiseFilter:
    """The lines of one node's output that are not TensorFlow's noise: ``TF_NOISE`` lines, and
    the ``SESSION_DUMP`` header with the lines of its body (up to an empty line, at most
    ``MAX_DUMP_LINES``), which may arrive over several calls."""

    def __init__(self):
        self._in_dump = 0   # body lines left off so far, while in a dump

    def shown(self, lines: list[str]) -> list[str]:
        kept = []
        for line in lines:
            if self._in_dump:
                self._in_dump = 0 if not line.strip() or self._in_dump >= MAX_DUMP_LINES \
                    else self._in_dump + 1
                continue
            if _DUMP.match(line):
                self._in_dump = 1
            elif not is_tf_noise(line):
                kept.append(line)
        return kept


def default_log_dir(cluster_id: str) -> str:
    """Where a cluster's node logs go unless ``node_log_dir`` says: the temporary directory."""
    import tempfile
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return os.path.join(tempfile.gettempdir(), "tfos-logs", f"{stamp}-{cluster_id}")


class NodeOutput:
    """The nodes' output on the driver: a log file per node, filtered lines on ``stream``."""

    def __init__(self, stream: TextIO | None, log_dir: str | None, show_tf_noise: bool = False,
                 notes: bool = True):
        self.stream = stream
        self.notes = notes
        self.log_dir = log_dir
        self.show_tf_noise = show_tf_noise
        self.hidden = 0                  # noise lines left off the stream
        # Set while a progress display draws on the stream: text goes through it instead.
        self.printer: Callable[[str], None] | None = None
        self._files: dict[str, TextIO] = {}
        self._filters: dict[str, NoiseFilter] = {}   # per node (its log file's name)
        self._lock = threading.Lock()
        self._closed = False

    def write(self, label: str, file_name: str, lines: list[str]) -> None:
        """``lines`` of the node ``label`` (``role:index@host``), logged as ``file_name``."""
        with self._lock:
            if self._closed:
                return
            log = self._file(file_name)
            if log is not None:
                log.write("".join(f"{line}\n" for line in lines))
                log.flush()
            if self.show_tf_noise:
                shown = lines
            else:
                shown = self._filters.setdefault(file_name, NoiseFilter()).shown(lines)
            self.hidden += len(lines) - len(shown)
            if shown:
                self._print("".join(f"[{label}] {line}\n" for line in shown))

    def _file(self, name: str) -> TextIO | None:
        if self.log_dir is None:
            return None
        log = self._files.get(name)
        if log is None:
            try:
                os.makedirs(self.log_dir, exist_ok=True)
                log = open(os.path.join(self.log_dir, name), "a", encoding="utf-8")
            except OSError as exc:
                logger.warning("tfos: cannot write the node log %s in %s (%s); node output "
                               "goes only to the stream", name, self.log_dir, exc)
                self.log_dir = None
                return None
            self._files[name] = log
        return log

    def note(self, text: str) -> None:
        """A line of tfos's own on the stream (``tfos: ...``): what a long wait waits for,
        what a feed has done."""
        with self._lock:
            if self.notes and not self._closed:
                self._print(f"tfos: {text}\n")

    def _print(self, text: str) -> None:
        if self.stream is None:
            return
        if self.printer is not None:
            self.printer(text)
        else:
            self.stream.write(text)
            self.stream.flush()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            for log in self._files.values():
                log.close()
            self._files.clear()
