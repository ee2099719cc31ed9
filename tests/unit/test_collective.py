"""``rdma.collective`` across real processes on this host, over ``shm://`` and ``tcp://``:
every operation against numpy's answer, every dtype family, and mismatched calls named."""
from __future__ import annotations

import multiprocessing
import socket
import traceback
from multiprocessing import resource_tracker

import numpy as np
import pytest

SECRET = b"s" * 32
CTX = multiprocessing.get_context("spawn")
# multiprocessing's queues start its resource tracker, a process that lives as long as this
# one: started now, before any test, so the leftover-process check does not count it.
resource_tracker.ensure_running()


def tensor(rank: int, shape, dtype) -> np.ndarray:
    values = np.arange(int(np.prod(shape)), dtype=np.float64).reshape(shape) * (rank + 1) - rank
    return values.astype(dtype)


def member(rank, addresses, script, results_out):
    """One rank: join the ring at the shared addresses list, run ``script``."""
    from rdma.collective import Group
    try:
        with Group.join(rank, addresses, SECRET, timeout=60) as group:
            results_out.put((rank, None, script(group)))
    except Exception as exc:  # noqa: BLE001 - reported to the test, which fails with it
        results_out.put((rank, f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}", None))


def ring_addresses(size: int, scheme: str, tmp_path) -> list[str]:
    if scheme == "shm":
        return [f"shm://{tmp_path}/r{r}.sock" for r in range(size)]
    socks = [socket.socket() for _ in range(size)]
    for sock in socks:
        sock.bind(("127.0.0.1", 0))
    ports = [sock.getsockname()[1] for sock in socks]
    for sock in socks:
        sock.close()
    return [f"tcp://127.0.0.1:{port}" for port in ports]


def run_group(size: int, scheme: str, tmp_path, script, starts=None) -> list:
    """``script(group)`` on ``size`` processes; ``starts``: the order they start in."""
    results = CTX.Queue()
    addresses = ring_addresses(size, scheme, tmp_path)
    procs = [CTX.Process(target=member, args=(r, addresses, script, results))
             for r in range(size)]
    for rank in starts or range(size):
        procs[rank].start()
    try:
        answers, errors = [None] * size, []
        for _ in range(size):     # every rank's outcome: the first error may be a consequence
            rank, error, value = results.get(timeout=120)
            if error:
                errors.append(f"rank {rank}: {error}")
            answers[rank] = value
        if errors:
            raise AssertionError("\n".join(errors))
        return answers
    finally:
        for proc in procs:
            proc.join(30)
            if proc.is_alive():
                proc.kill()


def every_operation(group):
    out = {}
    for dtype in ("float32", "float64", "int32", "int64", "uint8", "float16"):
        x = tensor(group.rank, (3, 7), dtype)
        out[f"sum-{dtype}"] = group.allreduce(x, "sum")
        out[f"max-{dtype}"] = group.allreduce(x, "max")
        out[f"min-{dtype}"] = group.allreduce(x, "min")
    out["mean"] = group.allreduce(tensor(group.rank, (5,), "float32"), "mean")
    out["big"] = group.allreduce(tensor(group.rank, (1 << 20,), "float32"))
    # Shared memory hands out read-only views of the one result; the ring a private array.
    out["read-only"] = not out["big"].flags.writeable
    # The ring (over SMALL_BYTES) for the other reductions too; it divides means per chunk.
    out["big-mean"] = group.allreduce(tensor(group.rank, (1 << 15,), "int64"), "mean")
    signed = tensor(group.rank, (1 << 15,), "float32") * (-1) ** group.rank
    out["big-max"] = group.allreduce(signed, "max")
    out["tiny"] = group.allreduce(np.array([group.rank], np.int64))     # fewer values than ranks
    out["gather"] = group.allgather(tensor(group.rank, (2, 3), "int32"))
    out["bcast"] = group.broadcast(tensor(group.rank, (1000,), "float64"), root=group.size - 1)
    rng = np.random.default_rng(group.rank)
    for name, count in (("small", 1000), ("large", 300_000)):   # both all-reduce algorithms
        out[f"random-{name}"] = group.allreduce(rng.standard_normal(count).astype(np.float32))
    group.barrier()
    return out


@pytest.mark.parametrize("scheme", ["shm", "shm-ring", "tcp"])
def test_every_operation_matches_numpy_on_three_ranks(scheme, tmp_path, monkeypatch):
    """``shm``: large all-reduces in shared memory; ``shm-ring``: the same links, the ring."""
    size = 3
    if scheme == "shm-ring":
        monkeypatch.setenv("TFOS_COLLECTIVE_SHARED", "0")   # the spawned ranks inherit it
    answers = run_group(size, scheme.split("-")[0], tmp_path, every_operation)
    assert [answer["read-only"] for answer in answers] == [scheme == "shm"] * size
    for dtype in ("float32", "float64", "int32", "int64", "uint8", "float16"):
        inputs = [tensor(r, (3, 7), dtype) for r in range(size)]
        with np.errstate(over="ignore"):
            expected = {"sum": sum(inputs[1:], inputs[0].copy()),
                        "max": np.maximum.reduce(inputs), "min": np.minimum.reduce(inputs)}
        for op, value in expected.items():
            for answer in answers:
                got = answer[f"{op}-{dtype}"]
                assert got.dtype == np.dtype(dtype) and got.shape == (3, 7)
                np.testing.assert_allclose(got, value, rtol=1e-3 if dtype == "float16" else 1e-6)
    big = sum(tensor(r, (1 << 20,), "float32").astype(np.float64) for r in range(size))
    means = np.mean([tensor(r, (5,), "float32") for r in range(size)], axis=0)
    inputs = [tensor(r, (1 << 15,), "int64") for r in range(size)]
    signed = [tensor(r, (1 << 15,), "float32") * (-1) ** r for r in range(size)]
    for answer in answers:
        assert answer["big-mean"].tolist() == (sum(inputs) // size).tolist()
        assert answer["big-max"].tolist() == np.maximum.reduce(signed).tolist()
        np.testing.assert_allclose(answer["big"], big, rtol=1e-6)
        np.testing.assert_allclose(answer["mean"], means, rtol=1e-6)
        assert answer["tiny"].tolist() == [sum(range(size))]
        assert answer["gather"].tolist() == [tensor(r, (2, 3), "int32").tolist()
                                             for r in range(size)]
        assert answer["bcast"].tolist() == tensor(size - 1, (1000,), "float64").tolist()
    rngs = [np.random.default_rng(r) for r in range(size)]
    for name, count in (("small", 1000), ("large", 300_000)):
        inputs = [rng.standard_normal(count).astype(np.float32) for rng in rngs]
        np.testing.assert_allclose(answers[0][f"random-{name}"], np.sum(inputs, axis=0),
                                   rtol=1e-5, atol=1e-5)
        # Every rank holds the very same bits: replicas that train on them stay identical.
        for answer in answers[1:]:
            assert answer[f"random-{name}"].tobytes() == answers[0][f"random-{name}"].tobytes()


def held_results(group):
    """Results kept across calls, more of them than shared memory has result buffers, and a
    tensor that outgrows the shared memory: none of them may change afterwards."""
    def x(scale, count=1 << 18):
        return np.full(count, float(scale * (group.rank + 1)), np.float32)
    held = [group.allreduce(x(1)), group.allreduce(x(2)), group.allreduce(x(3))]
    paths = [not h.flags.writeable for h in held]       # True: the shared-memory path
    del held[0]                                         # its buffer is free again
    held.append(group.allreduce(x(4)))
    held.append(group.allreduce(x(5, count=1 << 21)))   # grows every rank's shared memory
    paths += [not held[-2].flags.writeable, not held[-1].flags.writeable]
    held.append(group.allreduce(x(6, count=1 << 21), "mean"))
    with pytest.raises(ValueError, match="read-only"):
        held[-1][0] = 0
    return paths, [(float(h.min()), float(h.max()), h.size) for h in held]


def test_shared_memory_results_held_across_calls_are_never_overwritten(tmp_path):
    answers = run_group(3, "shm", tmp_path, held_results)
    for paths, values in answers:
        # Two result buffers: the third held result takes the ring, the next reuses the one
        # freed; the grown memory starts with fresh buffers.
        assert paths == [True, True, False, True, True]
        assert values == [(12.0, 12.0, 1 << 18), (18.0, 18.0, 1 << 18), (24.0, 24.0, 1 << 18),
                          (30.0, 30.0, 1 << 21), (12.0, 12.0, 1 << 21)]


def one_rank_cannot_map(group):
    """Rank 1 fails to map its peers' memory (as when the ranks run as different users)."""
    if group.rank == 1:
        def refused(*args):
            raise PermissionError(13, "Permission denied", "/proc/1/fd/3")
        group._arena._map = refused
    x = np.full(1 << 18, group.rank + 1.0, np.float32)
    results = [group.allreduce(x), group.allreduce(x)]
    return [(float(r[0]), r.flags.writeable) for r in results], group._arena is None


def test_a_rank_that_cannot_map_shared_memory_sends_every_rank_to_the_ring(tmp_path):
    answers = run_group(3, "shm", tmp_path, one_rank_cannot_map)
    assert answers == [([(6.0, True), (6.0, True)], True)] * 3


def rank_sum(group):
    return group.allreduce(np.array([group.rank + 1]))


def test_ranks_may_start_in_any_order(tmp_path):
    answers = run_group(3, "tcp", tmp_path, rank_sum, starts=[2, 0, 1])
    assert [a.tolist() for a in answers] == [[6]] * 3


def out_of_order(group):
    if group.rank == 1:
        group.allgather(np.zeros(4, np.float32))
    return group.allreduce(np.zeros(4, np.float32))


def test_ranks_that_call_different_collectives_are_named_not_hung(tmp_path):
    with pytest.raises(AssertionError) as failure:
        run_group(3, "shm", tmp_path, out_of_order)
    message = str(failure.value)
    assert "CollectiveMismatch" in message
    assert "call #1 allreduce(float32[4], sum)" in message
    assert "call #1 allgather(float32[4])" in message


def different_shapes(group):
    return group.allreduce(np.zeros(4 + group.rank, np.float32))


def test_different_shapes_are_a_mismatch(tmp_path):
    with pytest.raises(AssertionError, match=r"CollectiveMismatch: rank \d is in call #1 "
                                             r"allreduce\(float32\[\d\], sum\)"):
        run_group(2, "tcp", tmp_path, different_shapes)


def test_a_group_of_one_is_the_identity():
    from rdma.collective import Group
    group = Group.connect(0, ["unused"], None, SECRET)
    x = np.arange(6, dtype=np.int32).reshape(2, 3)
    assert group.allreduce(x, "mean").tolist() == x.tolist()
    assert group.allgather(x).shape == (1, 2, 3)
    assert group.broadcast(x).tolist() == x.tolist()
    group.barrier()
    with pytest.raises(TypeError, match="not a number type"):
        group.allreduce(np.array(["a"]))
    with pytest.raises(ValueError, match="op='prod'"):
        group.allreduce(x, "prod")
