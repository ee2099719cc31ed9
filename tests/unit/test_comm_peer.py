"""The other end of the comm conformance suite (test_comm.py), run as its own process.

    python test_comm_peer.py <action> <uri> <options as JSON> [args...]

It holds no tests (its name only keeps it beside the suite) and imports nothing but the
standard library and rdma, so it starts fast. The secret comes in ``TFOS_TEST_SECRET`` (hex);
reports go to stdout as JSON lines; every wait is bounded.
"""
from __future__ import annotations

import json
import os
import select
import struct
import sys

import rdma
from rdma.errors import AuthFailed, CommTimeout


def pattern(index: int, size: int) -> bytes:
    """Message ``index`` of a stream: its number, then a byte that depends on it."""
    return struct.pack("<Q", index) + bytes([index % 251]) * (size - 8)


def _say(**report) -> None:
    print(json.dumps(report), flush=True)


def _wait_for_parent() -> None:
    """Blocks until the test writes a line or closes our stdin (bounded)."""
    select.select([sys.stdin], [], [], 60)


def _listen_then_hang(uri: str, secret: bytes, opts: dict) -> None:
    with rdma.listen(uri, secret, **opts) as listener:
        _say(address=listener.address)
        comm = listener.accept(timeout=20)
        _say(accepted=True)
        _wait_for_parent()
        comm.close()


def _echo(comm) -> None:
    for _ in range(10_000):
        message = comm.recv(timeout=20)
        if bytes(message) == b"bye":
            return
        third = len(message) // 3     # echoed as three parts: gathers on this side
        comm.send([message[:third], message[third:2 * third], message[2 * third:]],
                  timeout=20)


def _stream(comm, count: int, size: int) -> None:
    for i in range(count):
        comm.send([pattern(i, size)], timeout=20)
    comm.send([], timeout=20)       # end mark
    comm.recv(timeout=20)           # the consumer's acknowledgement


def _flood(comm, size: int) -> None:
    """Sends until backpressure stops us, reports how many went, waits for the test."""
    sent = 0
    try:
        for sent in range(64):
            comm.send([pattern(sent, size)], timeout=1.0)
        _say(error=None, sent=64)
    except CommTimeout:
        _say(error="CommTimeout", sent=sent)
    _wait_for_parent()


def _hang(comm, count: int) -> None:
    for i in range(count):
        comm.send([pattern(i, 100)], timeout=10)
    _say(sent=count)
    _wait_for_parent()


def main(action: str, uri: str, opts: str, *args: str) -> None:
    opts = json.loads(opts)
    secret = bytes.fromhex(os.environ["TFOS_TEST_SECRET"])
    if action == "listen_then_hang":
        _listen_then_hang(uri, secret, opts)
        return
    try:
        comm = rdma.connect(uri, secret, timeout=20, **opts)
    except AuthFailed:
        _say(error="AuthFailed")
        return
    with comm:
        if action == "auth":
            comm.send([b"hello"], timeout=10)
            _say(ok=True)
        elif action == "echo":
            _echo(comm)
        elif action == "stream":
            _stream(comm, int(args[0]), int(args[1]))
        elif action == "flood":
            _flood(comm, int(args[0]))
        elif action == "hang":
            _hang(comm, int(args[0]))
        else:
            raise SystemExit(f"unknown peer action {action!r}")


if __name__ == "__main__":
    main(*sys.argv[1:])
