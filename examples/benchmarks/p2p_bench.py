"""Point-to-point ping-pong on one host, every transport side by side in one run.

A message bounces between this process and an echo process (a thread, for loopback), from
4 KiB to 256 MiB, over:

* ``memcpy``: one numpy copy in this process, the ceiling of a one-copy transport (numpy asks
  for transparent huge pages for large arrays, which anonymous memory gets here);
* ``memcpy shm``: the same copy between two shared-memory buffers, the kind of memory a
  transport between processes copies into (shared memory gets no transparent huge pages here,
  see /sys/kernel/mm/transparent_hugepage/shmem_enabled, so each 4 KiB page costs a TLB entry);
* ``socketpair``: a plain Unix socket pair, Python ``sendall``/``recv_into``;
* ``shm://``: the shm:// Comm (rdma.shm, over the core's shm link where rdma._core is
  built), its ring sized so every message fits;
* ``core shm``: the compiled core's shm link (rdma.core), messages from ordinary numpy memory
  (written from where they lie: the shm carrier copies from any memory);
* ``core alloc``: the same link, messages built in registered memory (``link.alloc``): one copy;
* ``core loopback``: the compiled core's loopback carrier, both ends in this process.

One-way time is half the median round trip (the echo forwards what it received, as is);
bandwidth is size / one-way time. The last columns are core alloc / memcpy bandwidth (issue
11's target: at least 0.5 at large sizes) and core alloc / memcpy shm. Prints; asserts nothing::

    .venv/bin/python examples/benchmarks/p2p_bench.py [--sizes 4K,64K,1M,16M,256M] [--seconds 0.3]
"""
from __future__ import annotations

import argparse
import multiprocessing
import os
import secrets
import socket
import statistics
import sys
import tempfile
import threading
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, REPO)

import rdma  # noqa: E402
from rdma import core  # noqa: E402

CTX = multiprocessing.get_context("spawn")
UNITS = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
COLUMNS = ["memcpy", "memcpy shm", "socketpair", "shm://", "core shm", "core alloc",
           "core loopback"]
_LENGTH = np.dtype("<u8")


def parse_size(text: str) -> int:
    text = text.strip().upper().removesuffix("IB").removesuffix("B")
    return int(text[:-1]) * UNITS[text[-1]] if text[-1] in UNITS else int(text)


def show(size: int) -> str:
    for unit, scale in (("MiB", 1 << 20), ("KiB", 1 << 10)):
        if size >= scale:
            return f"{size // scale} {unit}"
    return f"{size} B"


def time_round_trips(round_trip, seconds: float) -> float:
    """Median seconds of one round trip, timed for about ``seconds`` after a warm-up of at
    least two and about a third of that (a ring's first lap faults its pages in)."""
    started, warm = time.perf_counter(), 0
    while warm < 2 or (warm < 5000 and time.perf_counter() - started < seconds / 3):
        round_trip()
        warm += 1
    estimate = (time.perf_counter() - started) / warm
    times = []
    for _ in range(int(min(2000, max(3, seconds / max(estimate, 1e-7))))):
        start = time.perf_counter()
        round_trip()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


# -- echo ends (child processes) -------------------------------------------------------------

def socket_echo(sock: socket.socket, largest: int) -> None:
    buffer = memoryview(bytearray(largest))
    header = bytearray(8)
    while True:
        recv_exact(sock, memoryview(header))
        size = int(np.frombuffer(header, _LENGTH)[0])
        if size == 0:
            return
        recv_exact(sock, buffer[:size])
        sock.sendall(header)
        sock.sendall(buffer[:size])


def recv_exact(sock: socket.socket, view: memoryview) -> None:
    got = 0
    while got < len(view):
        n = sock.recv_into(view[got:])
        if n == 0:
            raise ConnectionError("the other end closed")
        got += n


def comm_echo(address: str, secret: bytes, capacity: int) -> None:
    with rdma.connect(address, secret, timeout=30, capacity=capacity,
                      max_message=capacity) as comm:
        while True:
            message = comm.recv(timeout=120)
            if len(message) == 0:
                return
            comm.send([message], timeout=120)


def link_echo(link) -> None:
    with link:
        while True:
            message = link.recv(timeout=120)
            if len(message) == 0:
                return
            link.send([message], timeout=120)


def core_echo(path: str, secret: bytes, spin_us: int) -> None:
    link_echo(core.shm_connect(path, secret, timeout=30, spin_us=spin_us))


# -- the transports, each: {size: median round trip seconds} ----------------------------------

def bench_memcpy(sizes, seconds):
    out = {}
    for size in sizes:
        src, dst = np.ones(size, np.uint8), np.empty(size, np.uint8)
        # one copy per one-way trip: a "round trip" is two copies
        out[size] = time_round_trips(
            lambda src=src, dst=dst: (np.copyto(dst, src), np.copyto(src, dst)), seconds)
    return out


def bench_memcpy_shm(sizes, seconds):
    from multiprocessing import shared_memory
    out = {}
    for size in sizes:
        blocks = [shared_memory.SharedMemory(create=True, size=max(size, 1)) for _ in range(2)]
        try:
            src, dst = (np.ndarray(size, np.uint8, block.buf) for block in blocks)
            src[:] = 1
            out[size] = time_round_trips(
                lambda src=src, dst=dst: (np.copyto(dst, src), np.copyto(src, dst)), seconds)
            del src, dst
        finally:
            for block in blocks:
                block.close()
                block.unlink()
    return out


def bench_socketpair(sizes, seconds):
    near, far = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    child = CTX.Process(target=socket_echo, args=(far, max(sizes)))
    child.start()
    far.close()
    out = {}
    try:
        for size in sizes:
            message, back = np.ones(size, np.uint8), memoryview(bytearray(size))
            header, reply = np.array([size], _LENGTH).tobytes(), memoryview(bytearray(8))

            def round_trip(header=header, message=message, reply=reply, back=back):
                near.sendall(header)
                near.sendall(message)
                recv_exact(near, reply)
                recv_exact(near, back)

            out[size] = time_round_trips(round_trip, seconds)
        near.sendall(np.array([0], _LENGTH).tobytes())
    finally:
        child.join(30)
        near.close()
    return out


def bench_shm_comm(sizes, seconds):
    secret = secrets.token_bytes(32)
    capacity = max(64 << 10, 2 * max(sizes))
    out = {}
    with rdma.listen("shm://", secret, capacity=capacity, max_message=capacity) as listener:
        child = CTX.Process(target=comm_echo, args=(listener.address, secret, capacity))
        child.start()
        try:
            with listener.accept(timeout=30) as comm:
                for size in sizes:
                    message = np.ones(size, np.uint8)

                    def round_trip(message=message):
                        comm.send([message], timeout=120)
                        comm.recv(timeout=120)

                    out[size] = time_round_trips(round_trip, seconds)
                comm.send([b""], timeout=30)
                child.join(30)   # before closing: the echo's last receive still credits us
        finally:
            child.join(30)
    return out


def bench_link(link, sizes, seconds, registered: bool):
    out = {}
    for size in sizes:
        if registered:
            message = np.frombuffer(link.alloc(size), np.uint8) if size else b""
        else:
            message = np.ones(size, np.uint8)

        def round_trip(message=message):
            link.send([message], timeout=120)
            link.recv(timeout=120)

        out[size] = time_round_trips(round_trip, seconds)
    return out


def bench_core_shm(sizes, seconds, spin_us):
    secret = secrets.token_bytes(32)
    with tempfile.TemporaryDirectory(prefix="p2p-bench-") as directory:
        path = os.path.join(directory, "core.sock")
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(path)
        listener.listen(1)
        child = CTX.Process(target=core_echo, args=(path, secret, spin_us))
        child.start()
        try:
            with core.shm_accept(listener, secret, timeout=30, spin_us=spin_us) as link:
                staged = bench_link(link, sizes, seconds, registered=False)
                direct = bench_link(link, sizes, seconds, registered=True)
                link.send([b""], timeout=30)
                child.join(30)
        finally:
            child.join(30)
            listener.close()
    return staged, direct


def bench_core_loopback(sizes, seconds):
    near, far = core.loopback_pair()
    echo = threading.Thread(target=link_echo, args=(far,))
    echo.start()
    with near:
        out = bench_link(near, sizes, seconds, registered=True)
        near.send([b""], timeout=30)
    echo.join(30)
    return out


# -- the report ------------------------------------------------------------------------------

def report(sizes, results, columns) -> None:
    width = 14
    print("\none-way time, microseconds (half the median round trip)")
    print(f"{'size':>10}" + "".join(f"{name:>{width}}" for name in columns))
    for size in sizes:
        print(f"{show(size):>10}" + "".join(f"{results[name][size] / 2 * 1e6:>{width}.1f}"
                                           for name in columns))
    print("\nbandwidth, GB/s (size / one-way time)")
    ratios = ("memcpy", "memcpy shm") if "memcpy" in columns else ()
    print(f"{'size':>10}" + "".join(f"{name:>{width}}" for name in columns)
          + "".join(f"{'alloc/' + name.replace(' ', '-'):>{width + 4}}" for name in ratios))
    for size in sizes:
        rates = {name: size / (results[name][size] / 2) / 1e9 for name in columns}
        print(f"{show(size):>10}" + "".join(f"{rates[name]:>{width}.2f}" for name in columns)
              + "".join(f"{rates['core alloc'] / rates[name]:>{width + 4}.2f}"
                        for name in ratios))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="4K,16K,64K,256K,1M,4M,16M,64M,256M",
                        help="message sizes, comma separated (K, M suffixes)")
    parser.add_argument("--seconds", type=float, default=0.3,
                        help="about how long to bounce each size on each transport")
    parser.add_argument("--spin_us", type=int, default=core.require_core().DEFAULTS["spin_us"],
                        help="how long the core's shm poll spins before it sleeps")
    parser.add_argument("--only_core_shm", action="store_true",
                        help="just the core's shm link (to compare --spin_us values)")
    args = parser.parse_args()
    sizes = [parse_size(s) for s in args.sizes.split(",")]
    results = {}
    others = () if args.only_core_shm else (
        ("memcpy", bench_memcpy), ("memcpy shm", bench_memcpy_shm),
        ("socketpair", bench_socketpair), ("shm://", bench_shm_comm),
        ("core loopback", bench_core_loopback))
    for name, run in others:
        started = time.perf_counter()
        results[name] = run(sizes, args.seconds)
        print(f"{name}: {time.perf_counter() - started:.1f} s", file=sys.stderr)
    started = time.perf_counter()
    results["core shm"], results["core alloc"] = bench_core_shm(sizes, args.seconds,
                                                                args.spin_us)
    print(f"core shm: {time.perf_counter() - started:.1f} s", file=sys.stderr)
    print(f"ping-pong between two processes on one host ({os.cpu_count()} cores, load "
          f"{os.getloadavg()[0]:.1f}), {args.seconds:g} s per size and transport, core shm "
          f"spinning {args.spin_us} us")
    report(sizes, results, COLUMNS if others else ["core shm", "core alloc"])


if __name__ == "__main__":
    main()
