"""scripts/cluster.sh without hosts: ssh is replaced (TFOS_SSH) by a recorder, so these check
what the script asks of each host and in which order, and that arguments reach the remote
command whole. Starting real hosts is the README's walk-through (ami/README.md)."""
import os
import re
import subprocess

import pytest

from ami_support import REPO

SCRIPT = os.path.join(REPO, "scripts", "cluster.sh")
FAKE_SSH = r"""#!/usr/bin/env bash
# Records one ssh call: the host, the remote command line and the script on stdin.
while [ $# -gt 0 ]; do
  case "$1" in -o|-l|-i) shift 2 ;; *) break ;; esac
done
{ printf 'HOST %s\nCMD %s\n' "$1" "$2"; cat; printf '\nEND\n'; } >>"$FAKE_SSH_LOG"
echo "${FAKE_SSH_ANSWER:-}"
"""


@pytest.fixture
def cluster(tmp_path):
    ssh = tmp_path / "ssh"
    ssh.write_text(FAKE_SSH)
    ssh.chmod(0o755)
    log = tmp_path / "calls"
    hosts = tmp_path / "hosts"
    hosts.write_text("# the demo cluster\nmaster m.example\nworker w1.example\nworker w2.example\n")

    def run(*args, answer=""):
        env = {**os.environ, "TFOS_SSH": str(ssh), "FAKE_SSH_LOG": str(log),
               "FAKE_SSH_ANSWER": answer}
        proc = subprocess.run([SCRIPT, "--hosts", str(hosts), *args], capture_output=True,
                              text=True, env=env, timeout=60)
        calls = re.findall(r"HOST (\S+)\nCMD (.*?)\n(.*?)\nEND\n",
                           log.read_text() if log.exists() else "", re.S)
        return proc, calls
    return run


def remote_args(cmd: str) -> list[str]:
    """The $1, $2... that the remote 'sudo bash -s -- ARGS' gets, parsed by bash itself."""
    prefix = "sudo bash -s -- "
    assert cmd.startswith(prefix), cmd
    out = subprocess.run(["bash", "-c", 'eval "set -- $1"; printf "%s\\0" "$@"', "_",
                          cmd[len(prefix):]], capture_output=True, text=True, check=True).stdout
    return out.split("\0")[:-1]


def test_stop_stops_the_workers_then_the_master(cluster):
    proc, calls = cluster("stop")
    assert proc.returncode == 0, proc.stderr
    assert [host for host, _, _ in calls] == ["w1.example", "w2.example", "m.example"]
    assert "systemctl stop tfos-spark-worker.service" in calls[0][2]
    assert "systemctl stop tfos-spark-master.service" in calls[2][2]


def test_submit_runs_spark_submit_on_the_master_with_arguments_whole(cluster):
    proc, calls = cluster("submit", "--conf", "spark.app.name=two words",
                          "/opt/tfos/examples/mnist/mnist_spark.py", "--cluster_size", "2")
    assert proc.returncode == 0, proc.stderr
    ((host, cmd, script),) = calls
    assert host == "m.example"
    assert "sudo -u spark -H bash -lc" in script
    (inner,) = remote_args(cmd)
    assert 'exec spark-submit --master "$TFOS_MASTER_URL" ' in inner
    submitted = remote_args("sudo bash -s -- " + inner.split('"$TFOS_MASTER_URL" ', 1)[1])
    assert submitted == ["--conf", "spark.app.name=two words",
                         "/opt/tfos/examples/mnist/mnist_spark.py", "--cluster_size", "2"]


def test_run_goes_to_every_host_as_spark(cluster):
    proc, calls = cluster("run", "python", "-c", "print('a b')")
    assert proc.returncode == 0, proc.stderr
    assert [host for host, _, _ in calls] == ["m.example", "w1.example", "w2.example"]
    assert all(remote_args(cmd) == ["python -c print\\(\\'a\\ b\\'\\) "] for _, cmd, _ in calls)


@pytest.mark.parametrize("args, message", [
    (("--cluster", "bad name", "start"), "--cluster must be"),
    (("--cidr", "everything", "start"), "--cidr must look like"),
    (("status", "extra"), "status takes no arguments"),
])
def test_bad_arguments_are_refused_before_any_ssh(cluster, args, message):
    proc, calls = cluster(*args)
    assert proc.returncode != 0 and message in proc.stderr
    assert calls == []
