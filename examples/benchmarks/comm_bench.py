"""Throughput of the tensor transport: tcp:// vs shm://, one producer process, one consumer.

    python examples/benchmarks/comm_bench.py [--seconds 2] [--records 1,100,1000]

Messages look like a feed batch of MNIST records: a small header, a float32 image column
(784 values per record) and an int32 label column, 3,140 bytes per record, sent as three
parts. The consumer (this process) listens, starts the producer as a separate process, and
times the messages it receives (it maps the columns with numpy, in place, as a feed would).
Prints MB/s, messages/s and records/s per scheme, and the shm/tcp ratio. Nothing is asserted.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, REPO)

import rdma  # noqa: E402

RECORD_BYTES = 784 * 4 + 4
SCHEMES = {"tcp": "tcp://127.0.0.1:0", "shm": "shm://"}


def batch(records: int) -> list:
    images = np.random.default_rng(0).random((records, 784), dtype=np.float32)
    labels = np.arange(records, dtype=np.int32)
    return [np.array([records], dtype=np.int64).tobytes(), images, labels]


def produce(uri: str, records: int, count: int) -> None:
    """Producer process: sends ``count`` batches, then one empty message as end mark."""
    parts = batch(records)
    with rdma.connect(uri, bytes.fromhex(os.environ["COMM_BENCH_SECRET"]), timeout=30) as comm:
        for _ in range(count):
            comm.send(parts, timeout=60)
        comm.send([], timeout=60)
        comm.recv(timeout=60)   # the consumer's acknowledgement: everything arrived


def consume(comm: rdma.Comm, records: int) -> tuple[int, float]:
    first = comm.recv(timeout=60)
    start, received = time.perf_counter(), 1
    del first
    while True:
        message = comm.recv(timeout=60)
        if not len(message):
            break
        images = np.frombuffer(message, np.float32, records * 784, offset=8)
        labels = np.frombuffer(message, np.int32, records, offset=8 + images.nbytes)
        assert labels[-1] == records - 1
        del images, labels, message
        received += 1
    elapsed = time.perf_counter() - start
    comm.send([b"ok"], timeout=10)
    return received - 1, elapsed   # the first message only starts the clock


def run(scheme: str, records: int, seconds: float, secret: bytes) -> dict:
    size = 8 + records * RECORD_BYTES
    # Enough messages for about ``seconds`` at 1 GB/s or 200k messages/s, whichever is fewer.
    count = max(20, int(min(seconds * 1e9 / size, seconds * 2e5)))
    env = dict(os.environ, COMM_BENCH_SECRET=secret.hex(), PYTHONPATH=REPO)
    with rdma.listen(SCHEMES[scheme], secret) as listener:
        producer = subprocess.Popen([sys.executable, __file__, "--produce", listener.address,
                                     str(records), str(count)], env=env)
        try:
            with listener.accept(timeout=30) as comm:
                messages, elapsed = consume(comm, records)
            producer.wait(timeout=30)
        finally:
            if producer.poll() is None:
                producer.kill()
                producer.wait()
    return {"scheme": scheme, "records": records, "bytes": size, "messages": messages,
            "seconds": elapsed, "MB/s": messages * size / elapsed / 1e6,
            "msg/s": messages / elapsed, "rec/s": messages * records / elapsed}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=2.0, help="rough duration per case")
    parser.add_argument("--records", default="1,100,1000", help="records per message")
    parser.add_argument("--produce", nargs=3, metavar=("URI", "RECORDS", "COUNT"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.produce:
        produce(args.produce[0], int(args.produce[1]), int(args.produce[2]))
        return
    secret = os.urandom(32)
    print(f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} at the start "
          "(other processes on the machine slow both schemes down)")
    print(f"{'records/msg':>11} {'msg bytes':>10} | {'scheme':>6} {'MB/s':>8} {'msg/s':>9} "
          f"{'rec/s':>10} | shm/tcp")
    for records in (int(r) for r in args.records.split(",")):
        results = {s: run(s, records, args.seconds, secret) for s in SCHEMES}
        for scheme, r in results.items():
            ratio = (f"{results['shm']['MB/s'] / results['tcp']['MB/s']:.2f}x"
                     if scheme == "shm" else "")
            print(f"{records:>11} {r['bytes']:>10} | {scheme:>6} {r['MB/s']:>8.0f} "
                  f"{r['msg/s']:>9.0f} {r['rec/s']:>10.0f} | {ratio}")


if __name__ == "__main__":
    main()
