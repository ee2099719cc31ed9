"""The image built for real, without the cloud (slow tier: scripts/test_ami.sh).

A Debian 12 root from Debian's archive (mmdebstrap), provisioned by ami/provision.sh in a chroot
(tests/ami/build_root.sh, cached between runs); then the installed units booted in that root by
tests/ami/run_units.py in namespaces of its own (loopback only), a Spark master and a worker
from the units' own command lines, and a 2-node tfos job (InputMode.SPARK) on them. Needs root,
mmdebstrap, unshare and chroot, and Debian's archive and the package index on the network.
"""
import json
import os
import subprocess
import time

import pytest

from ami_support import AMI, REPO, require

HERE = os.path.dirname(os.path.abspath(__file__))
pytestmark = [pytest.mark.ami_slow, pytest.mark.timeout(3600)]
BUILD_TIMEOUT = 3000
RUN_TIMEOUT = 900


def needs_root():
    if os.geteuid() != 0:
        reason = "builds a root file system and chroots into it: run as root"
        if os.environ.get("CI") == "true":
            pytest.fail(reason, pytrace=False)
        pytest.skip(reason)
    for tool, package in (("mmdebstrap", "mmdebstrap"), ("unshare", "util-linux"),
                          ("chroot", "coreutils"), ("ip", "iproute2")):
        require(tool, package)


@pytest.fixture(scope="module")
def image_root():
    """The provisioned root's path (built, or re-provisioned, or from the cache)."""
    needs_root()
    start = time.monotonic()
    try:
        proc = subprocess.run([os.path.join(HERE, "build_root.sh")], stdout=subprocess.PIPE,
                              text=True, timeout=BUILD_TIMEOUT)
    except subprocess.TimeoutExpired:
        pytest.fail(f"tests/ami/build_root.sh took over {BUILD_TIMEOUT} s", pytrace=False)
    if proc.returncode != 0:
        pytest.fail("tests/ami/build_root.sh failed (its output is above)", pytrace=False)
    root = proc.stdout.strip().splitlines()[-1]
    print(f"\n[ami] root ready in {time.monotonic() - start:.0f} s: {root}")
    return root


def tail(path, lines=25):
    try:
        with open(path, errors="replace") as f:
            return "".join(f.readlines()[-lines:])
    except OSError:
        return "(none)"


@pytest.fixture(scope="module")
def boot(image_root, tmp_path_factory):
    """What run_units.py saw: the units' results, the master's view, the job's result."""
    out = tmp_path_factory.mktemp("ami-run")
    argv = ["unshare", "--mount", "--pid", "--net", "--fork", "--mount-proc",
            "--propagation", "private", "--", "python3", os.path.join(HERE, "run_units.py"),
            image_root, str(out)]
    start = time.monotonic()
    try:
        subprocess.run(argv, timeout=RUN_TIMEOUT, check=False)
    except subprocess.TimeoutExpired:
        pytest.fail(f"run_units.py took over {RUN_TIMEOUT} s (logs in {out})", pytrace=False)
    with open(out / "result.json") as f:
        result = json.load(f)
    print(f"\n[ami] units and job ran in {time.monotonic() - start:.0f} s: {result['timings']}")
    if "error" in result:
        logs = "\n".join(f"--- {name} (last lines) ---\n{tail(out / name)}"
                         for name in sorted(os.listdir(out)) if name.endswith(".log"))
        pytest.fail(f"{result['error']}\n{logs}", pytrace=False)
    return result


def chroot(root, *argv):
    """``argv`` run in the root with its own /proc (in a mount namespace that ends with it)."""
    script = 'mount -t proc proc "$0/proc" && exec chroot "$0" "$@"'
    return subprocess.run(["unshare", "--mount", "--propagation", "private", "--", "sh", "-c",
                           script, root, *argv], capture_output=True, text=True, timeout=120)


# -- what provisioning installed ------------------------------------------------------------------
def test_the_venv_is_the_lock(image_root):
    proc = chroot(image_root, "/opt/tfos/venv/bin/pip", "freeze", "--all",
                  "--disable-pip-version-check")
    installed = {line.split("==")[0].lower().replace("_", "-"): line.split("==")[1]
                 for line in proc.stdout.splitlines() if "==" in line}
    with open(os.path.join(AMI, "constraints.txt")) as f:
        locked = [line.strip() for line in f if line.strip() and not line.startswith("#")]
    for line in locked:
        name, version = line.split("==")
        assert installed.get(name.lower().replace("_", "-")) == version, line
    proc = chroot(image_root, "/opt/tfos/venv/bin/python", "-c",
                  "import importlib.metadata as m; print(m.version('tfos'))")
    assert proc.stdout.strip() == "0.1.0", proc.stderr


def test_java_17_is_installed_and_held(image_root):
    proc = chroot(image_root, "/usr/lib/jvm/java-17-openjdk-amd64/bin/java", "-version")
    assert proc.returncode == 0 and 'version "17.' in proc.stderr, proc.stderr
    held = chroot(image_root, "apt-mark", "showhold").stdout.split()
    assert "openjdk-17-jre-headless" in held


def test_rdma_core_and_pyverbs_reach_the_venv(image_root):
    proc = chroot(image_root, "/opt/tfos/venv/bin/python", "-c",
                  "import pyverbs, rdma._core, sys; print(pyverbs.__file__)")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("/opt/tfos/system-python/pyverbs/")
    for program in ("/usr/bin/ibv_devices", "/usr/lib/x86_64-linux-gnu/libibverbs.so.1"):
        assert os.path.exists(image_root + program), program
    # Only pyverbs is shared with Debian's Python, not the rest of its packages.
    proc = chroot(image_root, "/opt/tfos/venv/bin/python", "-c", "import debian")
    assert proc.returncode != 0


def test_the_boot_units_are_enabled(image_root):
    wants = os.path.join(image_root, "etc/systemd/system/multi-user.target.wants")
    assert {"tfos-node-env.service", "tfos-firewall.service",
            "tfos-rdma-check.service"} <= set(os.listdir(wants))
    # The role's daemon is the user-data's to enable.
    assert "tfos-spark-master.service" not in os.listdir(wants)


def test_systemd_accepts_the_installed_units(image_root):
    """systemd's own reading of the units, against the root: directives, dependencies, and that
    every command they run exists there."""
    require("systemd-analyze", "systemd")
    units = sorted(f"/etc/systemd/system/{name}" for name in
                   os.listdir(os.path.join(image_root, "etc/systemd/system"))
                   if name.startswith("tfos-") and name.endswith(".service"))
    assert len(units) == 5, units
    proc = subprocess.run(["systemd-analyze", "verify", f"--root={image_root}", *units],
                          capture_output=True, text=True, timeout=120, cwd="/")
    assert proc.returncode == 0 and not (proc.stdout + proc.stderr).strip(), \
        proc.stdout + proc.stderr


OVERLAY_PROVISION = r"""
set -euo pipefail
root=$1 ami=$2 work=$3
mount -t tmpfs tmpfs "$work"
mkdir -p "$work/upper" "$work/work" "$work/merged"
mount -t overlay overlay -o "lowerdir=$root,upperdir=$work/upper,workdir=$work/work" "$work/merged"
mount -t proc proc "$work/merged/proc"
cp -L /etc/resolv.conf "$work/merged/etc/resolv.conf"
mkdir -p "$work/merged/tmp/tfos-ami"
cp -a "$ami/." "$work/merged/tmp/tfos-ami/"
: >"$work/merged/tmp/unused-source.tar.gz"
exec chroot "$work/merged" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8 \
  TFOS_VARIANT=gpu TFOS_APT_SIMULATE=1 TFOS_SOURCE=/tmp/unused-source.tar.gz \
  TFOS_AMI_DIR=/tmp/tfos-ami bash /tmp/tfos-ami/provision.sh
"""


def test_gpu_variant_debian_packages_resolve(image_root, tmp_path):
    """No GPU here to build the gpu variant on, but its Debian packages (NVIDIA's driver from
    contrib/non-free, the cloud kernel's headers) must resolve: provision.sh with
    TFOS_VARIANT=gpu and TFOS_APT_SIMULATE in a throw-away overlay of the built root."""
    proc = subprocess.run(["unshare", "--mount", "--propagation", "private", "--", "bash", "-c",
                           OVERLAY_PROVISION, "_", image_root, AMI, str(tmp_path)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "the gpu variant's Debian packages resolve" in proc.stderr


# -- the units, run -------------------------------------------------------------------------------
def test_node_env_from_cluster_env(boot):
    env = boot["node_env"]
    assert env["TFOS_MASTER_URL"] == "spark://127.0.0.1:7077"
    assert env["TFOS_WORKER_CORES"] == "4" and env["TFOS_WORKER_MEMORY"] == "4g"
    assert env["TFOS_WORK_DIR"] == "/var/lib/tfos/work/work"  # no instance storage here
    assert env["TFOS_WORKER_GPUS"] == "0"
    assert "gpu" not in env["SPARK_WORKER_OPTS"]


def test_the_firewall_lets_in_only_the_cluster_and_ssh(boot):
    rc, listing = boot["firewall"]
    assert rc == 0, listing
    assert "policy drop;" in listing
    assert "ip saddr 127.0.0.0/8 accept" in listing
    assert "tcp dport 22 accept" in listing
    rc, tables = boot["firewall_after_stop"]
    assert "tfos" not in tables


def test_rdma_check_logs_whether_rdma_can_work(boot):
    output = boot["rdma_check"]
    assert "Traceback" not in output, output      # Debian's pyverbs with no device at all
    assert boot["units"]["tfos-rdma-check.service"]["ExecStart"] in (0, 1)
    # This machine has no RDMA device: the verdict and its reasons are what the journal gets.
    assert "--rdma cannot run on this host" in output, output
    assert "no RDMA device" in output, output


def test_master_and_worker_from_the_units(boot):
    master = boot["master"]
    assert master["url"] == "spark://127.0.0.1:7077"
    (worker,) = master["workers"]
    assert worker["state"] == "ALIVE"
    assert worker["cores"] == 4 and worker["memory"] == 4096


def test_two_node_job_sees_every_record_once_and_trains(boot):
    job = boot["job"]
    records, nodes = job["records"], job["nodes"]
    assert len(nodes) == 2, nodes.keys()
    assert job["master"] == "spark://127.0.0.1:7077"
    for epoch in range(job["epochs"]):
        seen = [node["epochs"][epoch] for node in nodes.values()]
        assert [len(ids) for ids in seen] == [records // 2] * 2
        union = [i for ids in seen for i in ids]
        assert sorted(union) == list(range(records)), f"epoch {epoch}: records lost or repeated"
    for label, node in nodes.items():
        assert node["loss"] < 1e-3, (label, node["loss"])
        assert abs(node["w"] - 3.0) < 0.05 and abs(node["b"] - 1.0) < 0.05, (label, node)
        # The nodes ran in the worker's executors, in the work directory the unit gave it.
        assert node["cwd"].startswith("/var/lib/tfos/work/work/app-"), node["cwd"]


def test_the_daemons_stop_as_systemd_stops_them(boot):
    for name in ("tfos-spark-master.service", "tfos-spark-worker.service"):
        assert boot["units"][name]["clean_exit"], (name, boot["units"][name])
