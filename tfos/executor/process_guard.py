"""``python -m tfos.executor.process_guard PARENT_PID -- COMMAND...`` (executor side).

Arms the parent-death signal, then replaces itself with COMMAND (the signal survives exec),
so helper programs a node task starts (TensorBoard) die when the task's process dies.
"""
import os
import sys

from tfos.core.runtime import die_with_parent


def main(argv: list[str]) -> int:
    if len(argv) < 3 or argv[1] != "--":
        sys.stderr.write("usage: python -m tfos.executor.process_guard PARENT_PID -- COMMAND...\n")
        return 2
    if not die_with_parent(int(argv[0])):
        return 1
    os.execvp(argv[2], argv[2:])
    return 127  # unreachable: execvp raises on failure


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
