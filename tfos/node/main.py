"""Entry point of a TF node process: ``python -m tfos.node.main`` (started by the node task).

The node task starts this process with ``TF_CONFIG`` (and the rest of TensorFlow's environment)
already set, and writes the launch message of ``tfos.core.launch`` to its stdin: the node's
launch record, the cluster's secret and the pickled ``(map_fun, tf_args)``. This process arms
its parent-death guard, builds the ``ctx``, opens its feed endpoint when it is fed, and runs
``map_fun(tf_args, ctx)``. Its exit code is the node's verdict: 0 when ``map_fun`` returned, 1
when it raised (with the traceback on stderr, which the node task forwards to the driver).
What ``map_fun`` returns travels to the driver as JSON (``TFCluster.results``), a Keras
``History`` as its ``history`` dict.
"""
import json
import pickle
import sys
import traceback

from tfos.core import launch
from tfos.core.errors import ConfigError, ProtocolError
from tfos.core.runtime import die_with_parent, show_stacks_on_signal
from tfos.node.context import NodeContext


def main() -> int:
    try:
        record, secret, payload = launch.decode(sys.stdin.buffer.read())
    except ProtocolError as exc:
        print(f"tfos: cannot start this TF node: {exc}", file=sys.stderr)
        return 1
    sys.stdin.close()
    if not die_with_parent(record.parent_pid):
        return 1
    show_stacks_on_signal()
    ctx = NodeContext(record, secret)
    ctx.start_feed_server(secret)
    # Pickled by the Spark driver and handed over by our own parent (see tfos.core.launch).
    map_fun, tf_args = pickle.loads(payload)
    try:
        refuse_cpu_strategies(ctx, record.gpus)
        value = map_fun(tf_args, ctx)
    except SystemExit as exc:
        if exc.code not in (None, 0):
            traceback.print_exc()
            return exc.code if isinstance(exc.code, int) else 1
    except BaseException:  # noqa: B036 - report anything map_fun raised, KeyboardInterrupt too
        traceback.print_exc()
        return 1
    ctx.close_progress()
    unread = ctx.unread_feed_error() or rdma_unused(ctx, record.gpus)
    if unread:
        print(f"tfos: {unread}", file=sys.stderr)
        return 1
    if value is not None:
        text, problem = result_json(value)
        if problem:
            print(f"tfos: map_fun's return value does not reach the driver: {problem}",
                  file=sys.stderr)
        else:
            ctx.report_result(text)
    return 0


def _cpu_trainer_under_rdma(ctx, gpus: list[str] | None) -> bool:
    """``--rdma`` on a trainer without GPUs that exchanges tensors with others: only
    ``tfos.collective`` gives it an RDMA path (with GPUs, NCCL takes the RDMA port)."""
    return (ctx.transport == "rdma" and ctx.num_workers >= 2
            and ctx.job_name in ("chief", "master", "worker") and gpus is not None and not gpus)


def refuse_cpu_strategies(ctx, gpus: list[str] | None):
    """With ``--rdma`` on a trainer without GPUs, MultiWorkerMirroredStrategy fails as it is
    built (its CPU all-reduce is gRPC over TCP), instead of training over TCP and failing at
    the end. Returns a function that undoes it (None when nothing was done)."""
    if not _cpu_trainer_under_rdma(ctx, gpus):
        return None
    from tensorflow.python.distribute import collective_all_reduce_strategy as strategies
    extended = strategies.CollectiveAllReduceExtended   # under every MWMS variant
    original = extended.__init__

    def refused(self, *args, **kwargs):
        raise ConfigError(
            "rdma=True (--rdma), but this node has no GPU, and MultiWorkerMirroredStrategy "
            "all-reduces on CPUs over TensorFlow's gRPC (TCP): it has no RDMA path. Train with "
            "tfos.collective (hvd.init(ctx); DistributedOptimizer or DistributedGradientTape), "
            "whose links between hosts use the RDMA device, or drop --rdma")

    extended.__init__ = refused

    def undo():
        extended.__init__ = original
    return undo


def rdma_unused(ctx, gpus: list[str] | None) -> str | None:
    """With ``--rdma``, why a trainer without GPUs that never joined ``tfos.collective`` fails:
    its tensors went by TensorFlow's gRPC over TCP (on CPUs MultiWorkerMirroredStrategy has no
    RDMA path), which is not what was asked for. With GPUs, NCCL took the RDMA port."""
    if not _cpu_trainer_under_rdma(ctx, gpus):
        return None
    collective = sys.modules.get("tfos.collective")
    if collective is not None and collective.joined():
        return None
    return ("rdma=True (--rdma), but this node has no GPU and never called "
            "tfos.collective.init(ctx): its tensors went over TensorFlow's gRPC (TCP), since on "
            "CPUs MultiWorkerMirroredStrategy has no RDMA path. Train with tfos.collective "
            "(DistributedOptimizer or DistributedGradientTape) or drop --rdma")


def result_json(value) -> tuple[str | None, str]:
    """``(json_text, "")`` for a return value the driver can receive, else ``(None, why)``.

    A Keras ``History`` becomes its ``history`` dict (metric -> per-epoch values); numpy
    scalars and arrays become numbers and lists.
    """
    history = getattr(value, "history", None)
    if isinstance(history, dict) and hasattr(value, "on_epoch_end"):
        value = history

    def plain(obj):
        if hasattr(obj, "tolist"):    # numpy scalars and arrays, tf.Tensor via numpy()
            return obj.tolist()
        if hasattr(obj, "numpy"):
            return obj.numpy().tolist()
        raise TypeError(f"{type(obj).__qualname__!r} values cannot be sent as JSON")

    try:
        text = json.dumps(value, default=plain)
    except (TypeError, ValueError) as exc:
        return None, f"{exc}; return JSON-like values (dicts, lists, numbers, strings)"
    if len(text) > launch.MAX_RESULT_BYTES:
        return None, (f"{len(text)} bytes as JSON, over the {launch.MAX_RESULT_BYTES} bytes "
                      "allowed; write large results to files and return their paths")
    return text, ""


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    sys.exit(code)
