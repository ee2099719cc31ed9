"""All-reduce across processes on one host, side by side in one run: tfos's ``rdma.collective``
over ``shm://`` and ``tcp://`` against TensorFlow's own MultiWorkerMirroredStrategy all-reduce
(RING, its CPU implementation), for each size and process count.

Prints a table of median milliseconds per all-reduce of a float32 tensor and the speed-up of
each tfos carrier over TensorFlow's. Asserts nothing. Usage::

    .venv/bin/python examples/benchmarks/collective_bench.py [--sizes_mb 4,64] [--procs 2,3]
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import multiprocessing
import os
import statistics
import subprocess
import sys
import tempfile
import time

from startup_bench import free_ports  # this directory, as the scripts run

CTX = multiprocessing.get_context("spawn")

TF_WORKER = r"""
import json, os, sys, time
import tensorflow as tf
size_mb, repeats = int(sys.argv[1]), int(sys.argv[2])
options = tf.distribute.experimental.CommunicationOptions(
    implementation=tf.distribute.experimental.CommunicationImplementation.RING)
strategy = tf.distribute.MultiWorkerMirroredStrategy(communication_options=options)
x = tf.ones([size_mb << 18], tf.float32)

@tf.function
def allreduce():
    return strategy.run(lambda: tf.distribute.get_replica_context().all_reduce("sum", x))

allreduce()
times = []
for _ in range(repeats):
    start = time.perf_counter()
    strategy.experimental_local_results(allreduce())[0].numpy()   # waits for the result
    times.append(time.perf_counter() - start)
print("RESULT", json.dumps(sorted(times)[len(times) // 2]))
"""


def tensorflow_allreduce(procs: int, size_mb: int, repeats: int) -> float:
    """Median seconds of MWMS RING all-reduce, as rank 0 measures it."""
    workers = [f"127.0.0.1:{p}" for p in free_ports(procs)]
    runs = []
    for index in range(procs):
        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", TF_CONFIG=json.dumps(
            {"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}}))
        runs.append(subprocess.Popen([sys.executable, "-c", TF_WORKER, str(size_mb),
                                      str(repeats)], env=env, stdout=subprocess.PIPE,
                                     stderr=subprocess.DEVNULL, text=True))
    outputs = [run.communicate(timeout=600)[0] for run in runs]
    found = [line for line in outputs[0].splitlines() if line.startswith("RESULT ")]
    if not found:
        raise RuntimeError(f"TensorFlow's all-reduce did not report: {outputs[0][-2000:]}")
    return json.loads(found[0].split(" ", 1)[1])


def _member(rank, addresses, secret, size_mb, repeats, outbox):
    try:
        outbox.put(("result", rank, _measure(rank, addresses, secret, size_mb, repeats)))
    except Exception as exc:  # noqa: BLE001 - reported to the parent, which stops
        outbox.put(("error", rank, f"{type(exc).__name__}: {exc}"))


def _measure(rank, addresses, secret, size_mb, repeats) -> float:
    import numpy as np

    from rdma.collective import Group
    with Group.join(rank, addresses, secret) as group:
        x = np.ones(size_mb << 18, np.float32)
        group.allreduce(x)
        times = []
        for _ in range(repeats):
            group.barrier()
            start = time.perf_counter()
            group.allreduce(x)
            times.append(time.perf_counter() - start)
        return statistics.median(times)


def tfos_allreduce(procs: int, size_mb: int, repeats: int, scheme: str) -> float:
    """Median seconds of rdma.collective's all-reduce, as rank 0 measures it."""
    with tempfile.TemporaryDirectory() as scratch:
        addresses = ([f"shm://{scratch}/r{r}.sock" for r in range(procs)] if scheme == "shm"
                     else [f"tcp://127.0.0.1:{port}" for port in free_ports(procs)])
        outbox = CTX.Queue()
        secret = os.urandom(32)
        members = [CTX.Process(target=_member, args=(r, addresses, secret, size_mb, repeats,
                                                     outbox)) for r in range(procs)]
        for member in members:
            member.start()
        result = None
        for _ in range(procs):
            kind, rank, value = outbox.get(timeout=600)
            if kind == "error":
                for member in members:
                    member.kill()
                raise RuntimeError(f"rank {rank}: {value}")
            if rank == 0:
                result = value
        for member in members:
            member.join(60)
        return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes_mb", default="4,64")
    parser.add_argument("--procs", default="2,3")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    print(f"{'procs':>5} {'MiB':>5} {'TF RING ms':>11} {'tfos shm ms':>12} {'tfos tcp ms':>12} "
          f"{'shm speed-up':>13} {'tcp speed-up':>13}")
    # A host without TensorFlow (a GPU or RDMA host checked by scripts/host_checks.sh) still
    # gets tfos's own times, with TensorFlow's column left empty.
    with_tf = importlib.util.find_spec("tensorflow") is not None
    for procs in map(int, args.procs.split(",")):
        for size in map(int, args.sizes_mb.split(",")):
            tf_s = tensorflow_allreduce(procs, size, args.repeats) if with_tf else None
            shm_s = tfos_allreduce(procs, size, args.repeats, "shm")
            tcp_s = tfos_allreduce(procs, size, args.repeats, "tcp")
            tf_ms = f"{tf_s * 1e3:>11.1f}" if tf_s else f"{'(no TF)':>11}"
            speed_ups = f" {tf_s / shm_s:>12.2f}x {tf_s / tcp_s:>12.2f}x" if tf_s else ""
            print(f"{procs:>5} {size:>5} {tf_ms} {shm_s * 1e3:>12.1f} {tcp_s * 1e3:>12.1f}"
                  f"{speed_ups}", flush=True)


if __name__ == "__main__":
    main()
