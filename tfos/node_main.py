"""Entry point of a TF node process: ``python -m tfos.node_main`` (started by the node task).

The node task starts this process with ``TF_CONFIG`` (and the rest of the node's environment)
already set, and writes the pickled ``(map_fun, tf_args)`` to its stdin. This process arms
its parent-death guard, builds the ``ctx``, and runs ``map_fun(tf_args, ctx)``. Its exit
code is the node's verdict: 0 when ``map_fun`` returned, 1 when it raised (with the traceback
on stderr, which the node task forwards to the driver).
"""
import os
import pickle
import sys
import traceback

from tfos.context import NodeContext
from tfos.process import PARENT_PID_ENV, die_with_parent


def main() -> int:
    parent = os.environ.pop(PARENT_PID_ENV, None)
    if not die_with_parent(int(parent) if parent else None):
        return 1
    ctx = NodeContext.from_environment()
    # The payload comes from our own parent over a pipe; it was pickled by the Spark driver.
    secret, payload = pickle.loads(sys.stdin.buffer.read())
    sys.stdin.close()
    ctx.start_feed_server(secret)
    map_fun, tf_args = pickle.loads(payload)
    try:
        map_fun(tf_args, ctx)
    except SystemExit as exc:
        if exc.code not in (None, 0):
            traceback.print_exc()
            return exc.code if isinstance(exc.code, int) else 1
    except BaseException:  # noqa: B036 - report anything map_fun raised, KeyboardInterrupt too
        traceback.print_exc()
        return 1
    unread = ctx.unread_feed_error()
    if unread:
        print(f"tfos: {unread}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    sys.exit(code)
