#!/usr/bin/env python3
"""Boots the image's services inside the built root and runs a 2-node tfos job on them.

tests/ami/test_chroot.py starts it, as root, as

    unshare --mount --pid --net --fork --mount-proc --propagation private \\
        python3 tests/ami/run_units.py ROOT OUTDIR

so it is process 1 of a PID namespace of its own (every process it starts dies with it, even
if it is killed), its mounts vanish with its mount namespace, and its network namespace has
loopback only: the cluster's fixed ports (7077, 8080, ...) collide with nothing on the machine,
the firewall unit's nftables rules are loaded for real without touching the machine's, and
nothing started here can reach past this machine.

systemd cannot run in a chroot, so this runs the installed units the way systemd would
(tests/ami/ami_units.py): each ``ExecStart=`` as the unit's ``User=``, in its
``WorkingDirectory=``, with its ``Environment=``/``EnvironmentFile=`` and limits. In boot order:
tfos-node-env, tfos-firewall, tfos-rdma-check (oneshot), then tfos-spark-master and
tfos-spark-worker; then ``ami_job.py`` as the driver from a login shell; then every unit is
stopped (SIGTERM, as systemd does, and ``ExecStop=``). It writes OUTDIR/result.json (what
happened, for the test to judge) and the units' output to OUTDIR/<unit>.log. Exit status 0
when everything ran, 1 when a step failed (the reason is in result.json's ``error``).
Standard library only: it runs under the host's python3.
"""
from __future__ import annotations

import json
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import ami_units  # noqa: E402

SYSTEMD_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
UNIT_DIR = "etc/systemd/system"
CLUSTER_ENV = """\
# Written by tests/ami/run_units.py: master and worker on one host, loopback only.
TFOS_CLUSTER=ami-test
TFOS_ROLE=master
TFOS_HOST=127.0.0.1
TFOS_CLUSTER_CIDR=127.0.0.0/8
# Two executors of 2 cores (a TF node and its feed task each) on a 2-core machine.
TFOS_WORKER_CORES=4
TFOS_WORKER_MEMORY=4g
"""
ONESHOTS = ("tfos-node-env.service", "tfos-firewall.service", "tfos-rdma-check.service")
DAEMONS = ("tfos-spark-master.service", "tfos-spark-worker.service")
JOB_TIMEOUT = 480
UP_TIMEOUT = 120


class StepFailed(RuntimeError):
    """A step of the run failed; the message says which and where to look."""


class Root:
    """The built root with what this run mounted in it (unmounted by ``close``, in reverse)."""

    def __init__(self, path: str):
        self.path = path
        self.mounts: list[str] = []

    def join(self, path: str) -> str:
        return os.path.join(self.path, path.lstrip("/"))

    def mount(self, target: str, *args: str) -> None:
        full = self.join(target)
        os.makedirs(full, exist_ok=True)
        subprocess.run(["mount", *args, full], check=True)
        self.mounts.append(full)

    def close(self) -> None:
        while self.mounts:
            target = self.mounts.pop()
            subprocess.run(["umount", "-l", target], check=False)

    def account(self, user: str) -> tuple[int, int, str]:
        """uid, gid and home of ``user`` in the root's /etc/passwd."""
        with open(self.join("/etc/passwd")) as f:
            for line in f:
                fields = line.split(":")
                if fields[0] == user:
                    return int(fields[2]), int(fields[3]), fields[5]
        raise StepFailed(f"no user {user!r} in {self.join('/etc/passwd')}: did provisioning run?")


class Runner:
    def __init__(self, root: Root, outdir: str):
        self.root = root
        self.outdir = outdir
        self.units = {}
        self.daemons: list[tuple[str, subprocess.Popen]] = []
        self.result: dict = {"units": {}, "timings": {}}

    # -- the environment of a unit's process ------------------------------------------------
    def base_env(self, unit: ami_units.Unit) -> dict[str, str]:
        env = {"PATH": SYSTEMD_PATH, "LANG": "C.UTF-8"}
        if unit.user:
            _, _, home = self.root.account(unit.user)
            env.update(HOME=home, USER=unit.user, LOGNAME=unit.user, SHELL="/usr/sbin/nologin")
        return env

    def argv(self, unit: ami_units.Unit, command: ami_units.Command) -> list[str]:
        env = ami_units.service_environment(unit, self.root.path, self.base_env(unit))
        args = ami_units.expand(command.argv, env)
        chroot = ["chroot"]
        if unit.user and not command.privileged:
            uid, gid, _ = self.root.account(unit.user)
            chroot += [f"--userspec={uid}:{gid}", f"--groups={gid}"]
        workdir = unit.working_directory or "/"
        return [*chroot, self.root.path, "/usr/bin/env", "-i", "-C", workdir,
                *(f"{k}={v}" for k, v in env.items()), *args]

    def limits(self, unit: ami_units.Unit):
        """The unit's Limit*= as the child's rlimits. systemd (with CAP_SYS_RESOURCE) raises
        them at will; where this runner may not (a container without that capability), a
        limit stops at the hard limit it has, and result.json says so."""
        wanted = {}
        for name, value in unit.limits.items():
            limit = resource.RLIM_INFINITY if value is None else value
            _, hard = resource.getrlimit(getattr(resource, name))
            if hard != resource.RLIM_INFINITY and (limit == resource.RLIM_INFINITY or limit > hard):
                self.result.setdefault("limits_capped", {})[f"{unit.name} {name}"] = hard
                limit = hard
            wanted[getattr(resource, name)] = limit

        def apply():
            for rlimit, limit in wanted.items():
                resource.setrlimit(rlimit, (limit, limit))
        return apply

    def log(self, unit_name: str):
        return open(os.path.join(self.outdir, unit_name.replace(".service", ".log")), "ab")

    # -- running units -------------------------------------------------------------------------
    def run_oneshot(self, name: str, key: str = "ExecStart", timeout: float = 120) -> None:
        unit = self.units[name]
        start = time.monotonic()
        for command in unit.commands(key):
            with self.log(name) as log:
                try:
                    proc = subprocess.run(self.argv(unit, command), stdout=log, stderr=log,
                                          preexec_fn=self.limits(unit), timeout=timeout)
                except subprocess.TimeoutExpired:
                    raise StepFailed(f"{name} {key} did not finish in {timeout} s: "
                                     f"{' '.join(command.argv)}") from None
            self.result["units"].setdefault(name, {})[key] = proc.returncode
            if proc.returncode not in unit.success_exit_status and not command.ignore_failure:
                raise StepFailed(f"{name} {key} exited {proc.returncode}: "
                                 f"{' '.join(command.argv)} (see {name[:-8]}.log)")
        self.result["timings"][name] = round(time.monotonic() - start, 1)

    def start_daemon(self, name: str) -> subprocess.Popen:
        unit = self.units[name]
        (command,) = unit.commands()
        with self.log(name) as log:
            proc = subprocess.Popen(self.argv(unit, command), stdout=log, stderr=log,
                                    preexec_fn=self.limits(unit))
        self.daemons.append((name, proc))
        return proc

    def stop_daemons(self, grace: float = 30) -> None:
        """SIGTERM in reverse start order, as systemd stops them; SIGKILL after ``grace``."""
        for name, proc in reversed(self.daemons):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(grace)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(10)
            unit = self.units[name]
            self.result["units"].setdefault(name, {})["exit"] = proc.returncode
            self.result["units"][name]["clean_exit"] = (
                proc.returncode in unit.success_exit_status or proc.returncode == -signal.SIGTERM)
        self.daemons.clear()

    # -- waits on real conditions, with deadlines -------------------------------------------
    def wait_port(self, name: str, proc: subprocess.Popen, host: str, port: int) -> None:
        deadline = time.monotonic() + UP_TIMEOUT
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise StepFailed(f"{name} exited {proc.returncode} before listening on "
                                 f"{host}:{port} (see {name[:-8]}.log)")
            try:
                socket.create_connection((host, port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.25)
        raise StepFailed(f"{name} is not listening on {host}:{port} after {UP_TIMEOUT} s")

    def wait_workers(self, proc: subprocess.Popen, url: str, want: int) -> dict:
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        deadline, state = time.monotonic() + UP_TIMEOUT, {}
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise StepFailed(f"tfos-spark-worker exited {proc.returncode} before registering "
                                 "(see tfos-spark-worker.log)")
            try:
                with opener.open(url, timeout=2) as r:
                    state = json.load(r)
                if sum(w.get("state") == "ALIVE" for w in state.get("workers", [])) >= want:
                    return state
            except (OSError, ValueError):
                pass
            time.sleep(0.5)
        raise StepFailed(f"fewer than {want} worker(s) ALIVE at {url} after {UP_TIMEOUT} s")

    # -- the run --------------------------------------------------------------------------------
    def node_env(self) -> dict[str, str]:
        return dict(ami_units.read_environment_file(self.root.join("/run/tfos/node.env")))

    def chroot_output(self, *argv: str) -> tuple[int, str]:
        proc = subprocess.run(["chroot", self.root.path, *argv], capture_output=True, text=True,
                              timeout=60)
        return proc.returncode, proc.stdout + proc.stderr

    def run(self) -> None:
        for name in (*ONESHOTS, *DAEMONS):
            self.units[name] = ami_units.load(self.root.join(f"/{UNIT_DIR}/{name}"))
        with open(self.root.join("/etc/tfos/cluster.env"), "w") as f:
            f.write(CLUSTER_ENV)
        for name in ONESHOTS:
            self.run_oneshot(name)
        env = self.node_env()
        self.result["node_env"] = env
        self.result["firewall"] = self.chroot_output("nft", "list", "table", "inet", "tfos")
        with open(os.path.join(self.outdir, "tfos-rdma-check.log"), errors="replace") as f:
            self.result["rdma_check"] = f.read()
        start = time.monotonic()
        master = self.start_daemon("tfos-spark-master.service")
        self.wait_port("tfos-spark-master.service", master, env["TFOS_HOST"],
                       int(env["TFOS_MASTER_PORT"]))
        self.result["timings"]["master_up"] = round(time.monotonic() - start, 1)
        worker = self.start_daemon("tfos-spark-worker.service")
        ui = f"http://{env['TFOS_HOST']}:{env['TFOS_MASTER_WEBUI_PORT']}/json/"
        state = self.wait_workers(worker, ui, 1)
        self.result["timings"]["worker_up"] = round(time.monotonic() - start, 1)
        self.result["master"] = {"url": state.get("url"), "workers": [
            {k: w.get(k) for k in ("host", "port", "cores", "memory", "state")}
            for w in state.get("workers", [])]}
        self.run_job(env["TFOS_MASTER_URL"])
        self.stop_daemons()
        self.run_oneshot("tfos-firewall.service", "ExecStop")
        self.result["firewall_after_stop"] = self.chroot_output("nft", "list", "tables")

    def run_job(self, master_url: str) -> None:
        here = os.path.dirname(os.path.abspath(__file__))
        shutil.copy(os.path.join(here, "ami_job.py"), self.root.join("/tmp/ami_job.py"))
        uid, gid, home = self.root.account("spark")
        # A login shell, as a user who submits on the master would have: /etc/profile.d/tfos.sh
        # gives the venv's python and Spark's configuration.
        script = (f"exec python /tmp/ami_job.py --master {master_url} "
                  "--result /tmp/ami-job-result.json")
        argv = ["chroot", f"--userspec={uid}:{gid}", f"--groups={gid}", self.root.path,
                "/usr/bin/env", "-i", "-C", home, f"HOME={home}", "USER=spark", "LOGNAME=spark",
                "PATH=/usr/local/bin:/usr/bin:/bin", "LANG=C.UTF-8", "TF_CPP_MIN_LOG_LEVEL=2",
                "/bin/bash", "-lc", script]
        start = time.monotonic()
        with open(os.path.join(self.outdir, "job.log"), "ab") as log:
            try:
                proc = subprocess.run(argv, stdout=log, stderr=log, timeout=JOB_TIMEOUT)
            except subprocess.TimeoutExpired:
                raise StepFailed(f"the tfos job did not finish in {JOB_TIMEOUT} s "
                                 "(see job.log)") from None
        self.result["timings"]["job"] = round(time.monotonic() - start, 1)
        if proc.returncode != 0:
            raise StepFailed(f"the tfos job exited {proc.returncode} (see job.log)")
        with open(self.root.join("/tmp/ami-job-result.json")) as f:
            self.result["job"] = json.load(f)


def kill_the_rest() -> None:
    """Every process of this PID namespace but this one (it is process 1)."""
    for pid in (int(p) for p in os.listdir("/proc") if p.isdigit()):
        if pid != 1:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass


def main(argv: list[str]) -> int:
    if len(argv) != 3:
        print("usage: run_units.py ROOT OUTDIR (under unshare: see the docstring)", file=sys.stderr)
        return 2
    if os.getpid() != 1:
        print("run_units.py: error: must be process 1 of its own PID namespace: start it under "
              "unshare --mount --pid --net --fork --mount-proc", file=sys.stderr)
        return 2
    root, outdir = Root(os.path.abspath(argv[1])), os.path.abspath(argv[2])
    runner = Runner(root, outdir)
    start = time.monotonic()
    try:
        subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
        root.mount("/proc", "-t", "proc", "proc")
        root.mount("/sys", "--rbind", "/sys")
        root.mount("/dev", "--rbind", "/dev")
        root.mount("/dev/shm", "-t", "tmpfs", "tmpfs")
        root.mount("/run", "-t", "tmpfs", "tmpfs")
        # What the run writes stays out of the cached root: /tmp and the daemons' home.
        root.mount("/tmp", "-t", "tmpfs", "-o", "mode=1777", "tmpfs")
        uid, gid, home = root.account("spark")
        root.mount(home, "-t", "tmpfs", "-o", f"mode=0755,uid={uid},gid={gid}", "tmpfs")
        runner.run()
    except (StepFailed, ami_units.UnitError, subprocess.SubprocessError, OSError, ValueError,
            KeyError) as exc:
        runner.result["error"] = f"{type(exc).__name__}: {exc}"
    finally:
        runner.stop_daemons(grace=15)
        kill_the_rest()
        try:
            os.unlink(root.join("/etc/tfos/cluster.env"))
        except OSError:
            pass
        root.close()
        runner.result["timings"]["total"] = round(time.monotonic() - start, 1)
        with open(os.path.join(outdir, "result.json"), "w") as f:
            json.dump(runner.result, f, indent=1)
    return 1 if "error" in runner.result else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
