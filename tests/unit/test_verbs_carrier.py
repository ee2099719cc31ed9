"""The verbs carrier (``rdma/csrc/verbs_carrier.c``) run for real against a test-only fake
libibverbs, so its own code is tested on hosts without RDMA.

The fake (``tests/fakeverbs/fake_ibverbs.c``) and a C driver of the carrier
(``tests/fakeverbs/nic_driver.c``, compiled with the carrier's own source) are built with gcc
into a temporary directory; the driver runs as two processes joined by a TCP bootstrap socket
on 127.0.0.1 (or as one process for set-up failures), with the fake loaded through
``TFOS_IBVERBS_LIBRARY``. The fake reports misuse that real hardware would punish with a hang
on stderr as ``fake_ibverbs: ...``; every run must be free of it. Where rdma-core's headers
and library are installed, ``ibv_abi.h`` is compared with them and the real library's "no
device" answer is checked too.
"""
from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CSRC = ROOT / "rdma" / "csrc"
FAKEVERBS = ROOT / "tests" / "fakeverbs"
CFLAGS = ["-std=gnu11", "-O1", "-g", "-Wall", "-Wextra", "-Werror", f"-I{CSRC}"]
RUN_TIMEOUT = 60

pytestmark = pytest.mark.skipif(shutil.which("gcc") is None,
                                reason="gcc is not installed: the fake libibverbs is built with it")


@dataclass(frozen=True)
class FakeVerbs:
    """The built fake library and driver, and the environment that makes the carrier use it."""

    library: Path
    driver: Path
    sockets: Path

    def env(self, **extra: str) -> dict[str, str]:
        env = dict(os.environ, TFOS_IBVERBS_LIBRARY=str(self.library),
                   TFOS_FAKE_VERBS_DIR=str(self.sockets))
        env.update(extra)
        return env


def gcc(*args: str | Path) -> subprocess.Popen:
    return subprocess.Popen(["gcc", *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def finish(build: subprocess.Popen) -> None:
    out, _ = build.communicate(timeout=RUN_TIMEOUT)
    assert build.returncode == 0, f"{' '.join(build.args)} failed:\n{out}"


@pytest.fixture(scope="module")
def fake_verbs(tmp_path_factory) -> FakeVerbs:
    """The fake libibverbs and the driver, built in parallel."""
    out = tmp_path_factory.mktemp("fakeverbs")
    library, driver = out / "libfake_ibverbs.so", out / "nic_driver"
    builds = [
        gcc(*CFLAGS, "-shared", "-fPIC", "-o", library, FAKEVERBS / "fake_ibverbs.c",
            "-lpthread"),
        gcc(*CFLAGS, "-o", driver, FAKEVERBS / "nic_driver.c", CSRC / "verbs_carrier.c", "-ldl",
            "-lpthread"),
    ]
    for build in builds:
        finish(build)
    return FakeVerbs(library, driver, out)


@pytest.fixture
def verbs_env(fake_verbs, tmp_path) -> FakeVerbs:
    """The fake with a socket directory of this test's own (its queue pairs live there)."""
    return FakeVerbs(fake_verbs.library, fake_verbs.driver, tmp_path)


def output(proc: subprocess.CompletedProcess | subprocess.Popen, out: str, err: str) -> str:
    return f"exit {proc.returncode}\n--- stdout\n{out}--- stderr\n{err}"


def check_clean(out: str, err: str, where: str) -> None:
    assert "fake_ibverbs:" not in err, f"{where}: the fake saw misuse:\n{err}"
    assert out.rstrip().endswith("PASS"), f"{where} did not pass:\n{out}{err}"


def solo(verbs: FakeVerbs, mode: str, **env: str) -> str:
    """One driver process; its stdout once it passed cleanly."""
    proc = subprocess.run([verbs.driver, mode, "solo"], env=verbs.env(**env), text=True,
                          capture_output=True, timeout=RUN_TIMEOUT)
    assert proc.returncode == 0, output(proc, proc.stdout, proc.stderr)
    check_clean(proc.stdout, proc.stderr, mode)
    return proc.stdout


@contextlib.contextmanager
def killed_on_exit(proc: subprocess.Popen):
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()


def pair(verbs: FakeVerbs, mode: str, client_dies: bool = False, **env: str) -> tuple[str, str]:
    """A server and a client process on two simulated hosts; both stdouts."""
    server = subprocess.Popen([verbs.driver, mode, "server"], text=True, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE,
                              env=verbs.env(TFOS_FAKE_VERBS_HOST="1", **env))
    with killed_on_exit(server):
        first = server.stdout.readline()
        assert first.startswith("port "), f"server did not listen: {first}"
        client = subprocess.run([verbs.driver, mode, "client", first.split()[1]], text=True,
                                capture_output=True, timeout=RUN_TIMEOUT,
                                env=verbs.env(TFOS_FAKE_VERBS_HOST="2", **env))
        out, err = server.communicate(timeout=RUN_TIMEOUT)
    assert server.returncode == 0, output(server, out, err)
    check_clean(out, err, "server")
    if client_dies:
        assert client.returncode == -9, output(client, client.stdout, client.stderr)
    else:
        assert client.returncode == 0, output(client, client.stdout, client.stderr)
        check_clean(client.stdout, client.stderr, "client")
    return out, client.stdout


# ---- what the carrier is built from ----------------------------------------------------------


def test_abi_declarations_match_rdma_core(tmp_path):
    """Every layout and constant of ibv_abi.h the carrier relies on equals rdma-core's."""
    real_header = Path("/usr/include/infiniband/verbs.h")
    builds = {"ours": gcc(*CFLAGS, "-o", tmp_path / "ours", FAKEVERBS / "abi_layout.c")}
    if real_header.exists():
        builds["real"] = gcc(*CFLAGS, "-DREAL_VERBS", "-o", tmp_path / "real",
                             FAKEVERBS / "abi_layout.c")
    for build in builds.values():
        finish(build)
    layouts = {name: subprocess.run([tmp_path / name], capture_output=True, text=True,
                                    check=True).stdout for name in builds}
    assert "offsetof ibv_context_ops.post_send 200" in layouts["ours"]
    if "real" not in layouts:
        pytest.skip(f"{real_header} is absent (apt install libibverbs-dev to compare)")
    ours, real = (dict(line.rsplit(" ", 1) for line in layouts[name].splitlines())
                  for name in ("ours", "real"))
    assert ours.keys() == real.keys()
    # rdma-core appends fields to ibv_port_attr (active_speed_ex, in releases after 44). The
    # carrier calls the exported ibv_query_port, which writes only the legacy layout
    # (struct _compat_ibv_port_attr, no larger than ours): a longer real struct is harmless.
    size = "sizeof ibv_port_attr"
    assert int(real.pop(size)) >= int(ours.pop(size))
    assert ours == real


def test_the_carrier_builds_into_a_shared_object_without_libibverbs(tmp_path):
    """As the extension will build it: warning-free, position independent, and not linked
    against libibverbs (it is dlopen'ed at run time, so a host without it still loads us)."""
    shared = tmp_path / "verbs_carrier.so"
    finish(gcc("-std=c11", "-O2", "-Wall", "-Wextra", "-Werror", "-fPIC", "-shared",
               "-o", shared, CSRC / "verbs_carrier.c", "-ldl", "-lpthread"))
    lib = ctypes.CDLL(str(shared))
    assert lib.tfos_verbs_create and lib.tfos_verbs_default_options
    if shutil.which("readelf"):
        needed = subprocess.run(["readelf", "-d", shared], capture_output=True, text=True,
                                check=True).stdout
        assert "libibverbs" not in needed


# ---- data moved between two processes ----------------------------------------------------------


@pytest.mark.parametrize("link", ["roce", "ib"])
def test_ping_pong_of_every_size_lands_exactly(verbs_env, link):
    """0 B .. 16 MiB at odd offsets, every byte checked on both sides and the bytes beside each
    write untouched; over RoCE (GIDs, GRH) and InfiniBand (LIDs) addressing."""
    server, client = pair(verbs_env, "pingpong", TFOS_FAKE_VERBS_LINK=link)
    assert "13 sizes up to 16 MiB" in server and "13 sizes up to 16 MiB" in client


def test_many_immediates_repost_receives_and_wait_for_send_room(verbs_env):
    """3000 immediates through 8 posted receives and a 4-deep send queue the writer never polls
    while writing: receives are reposted, write() makes room itself, and every completion
    comes back once, in order."""
    server, client = pair(verbs_env, "burst")
    assert "3000 immediates in order" in server and "3000 immediates in order" in client


# ---- writes the peer refuses ----------------------------------------------------------------


def test_a_wrong_rkey_is_refused_with_eaccess(verbs_env):
    """The device, not the carrier, checks the key: the writer's poll says EACCESS and why, and
    keeps saying it; the peer's link fails too (its receives are flushed) instead of hanging."""
    server, client = pair(verbs_env, "badkey")
    assert "poll: -3 " in client and "IBV_WC_REM_ACCESS_ERR" in client
    assert "victim: -" in server


def test_writes_out_of_bounds_are_refused(verbs_env):
    """Past the peer's region: EACCESS at once; past the local region: EINVAL; past the
    region behind a forged, longer descriptor: EACCESS from the device at poll."""
    server, client = pair(verbs_env, "outofbounds")
    assert "write: -3 " in client and "runs past the peer's region" in client
    assert "poll: -3 " in client and "IBV_WC_REM_ACCESS_ERR" in client


def test_a_killed_peer_is_noticed_at_once(verbs_env):
    """The bootstrap socket stays open for this: a poll blocked without a timeout returns
    ECLOSED as soon as the peer's process is killed."""
    server, _ = pair(verbs_env, "peerdeath", client_dies=True)
    assert "ECLOSED after" in server and "process died" in server


# ---- set-up that cannot succeed, and the rest in one process ---------------------------------


REFUSALS = [
    ("nolib", {"TFOS_IBVERBS_LIBRARY": "/nonexistent/libibverbs.so.1"},
     "cannot load /nonexistent/libibverbs.so.1"),
    ("nosymbol", {"TFOS_IBVERBS_LIBRARY": "libc.so.6"}, "has no symbol ibv_get_device_list"),
    ("nodevice", {"TFOS_FAKE_VERBS_DEVICES": "0"}, "no RDMA device found"),
    ("portdown", {"TFOS_FAKE_VERBS_PORT_STATE": "down"}, "no ACTIVE port (fake_mlx0 port 1: DOWN)"),
    ("baddevice", {}, "no RDMA device named mlx5_7 (found: fake_mlx0)"),
    ("peerless", {}, "hung up during set-up"),
    ("badrecord", {}, "is not a verbs carrier's"),
    ("memlock", {"TFOS_FAKE_VERBS_MEMLOCK": str(1 << 20)}, "ulimit -l unlimited"),
]


@pytest.mark.parametrize("mode, env, said", REFUSALS, ids=[mode for mode, _, _ in REFUSALS])
def test_what_cannot_work_is_named(verbs_env, mode, env, said):
    assert said in solo(verbs_env, mode, **env)


def test_poll_times_out_is_interrupted_and_hears_a_destroyed_peer(verbs_env):
    assert "interrupted after" in solo(verbs_env, "interrupt")


def test_the_fake_enforces_queue_pair_rules(verbs_env):
    """A lax fake would pass a wrong carrier: post_send before RTS and transitions with missing,
    extra or impossible attributes are refused with EINVAL, as rdma-core does."""
    solo(verbs_env, "rules")


def real_libibverbs_loads() -> bool:
    try:
        ctypes.CDLL("libibverbs.so.1")
    except OSError:
        return False
    return True


@pytest.mark.skipif(not real_libibverbs_loads(), reason="rdma-core's libibverbs is not installed")
@pytest.mark.skipif(bool(list(Path("/dev/infiniband").glob("uverbs*"))),
                    reason="this host has RDMA devices")
def test_the_real_library_binds_and_says_there_is_no_device(verbs_env):
    """Every symbol the carrier binds exists in the real libibverbs, and on a host without RDMA
    its answer is turned into the same "no device" error."""
    env = verbs_env.env()
    del env["TFOS_IBVERBS_LIBRARY"]
    proc = subprocess.run([verbs_env.driver, "nodevice", "solo"], env=env, text=True,
                          capture_output=True, timeout=RUN_TIMEOUT)
    assert proc.returncode == 0, output(proc, proc.stdout, proc.stderr)
    assert "libibverbs.so.1 lists none" in proc.stdout
