# shellcheck shell=bash
# root, py and prog are set by the script that sources this file.
# shellcheck disable=SC2154
# Sourced (not run) by scripts/spark_standalone.sh and scripts/testnet.sh: the environment of
# Spark's daemon scripts (spark-daemon.sh from the private SPARK_HOME of scripts/spark_home.sh)
# and the bounded waits on the daemons they start.
#
# The caller sets, before calling these functions:
#   root   the checkout         py    the venv's python          prog  its name, for messages
#
#   spark_daemon_env HOST BASE IDENT   exports the daemons' environment (logs and pid files
#                                      under BASE/logs, BASE/pids; pid/log names carry IDENT)
#   spark_free_ports HOST N [P1 P2]    prints N distinct free TCP ports of HOST (P1, P2: fixed
#                                      values for the first two when non-zero)
#   spark_is_ours PID PATTERN          PID is alive and its command line contains PATTERN
#   spark_wait_gone SECONDS PID...     waits until none of the PIDs is alive (exit 1 if some is)
#   spark_wait_up HOST PORT UI WANT DEADLINE PIDFILE...
#                                      waits for a master's workers (see the function)

# spark_daemon_env HOST BASE IDENT
spark_daemon_env() {
  local host=$1 base=$2 ident=$3
  SPARK_HOME=$("$root/scripts/spark_home.sh")
  export SPARK_HOME
  export SPARK_CONF_DIR=$SPARK_HOME/conf
  export SPARK_LOCAL_IP=$host SPARK_MASTER_HOST=$host
  export SPARK_LOG_DIR=$base/logs SPARK_PID_DIR=$base/pids SPARK_IDENT_STRING=$ident
  export PYSPARK_PYTHON=$py
  # Daemon logs at INFO (the conf dir's log4j2.properties keeps drivers/executors at WARN).
  # Master, worker and spark-class's launcher JVM do little work: C1 only and the serial GC
  # start them faster and smaller (on a loaded 2-core machine start took 10-12 s instead of
  # 13-31 s). Executors are launched by the worker with the driver's options, not these; the
  # caller's SPARK_DAEMON_JAVA_OPTS / SPARK_LAUNCHER_OPTS come last and so win.
  local fast="-XX:TieredStopAtLevel=1 -XX:+UseSerialGC"
  export SPARK_DAEMON_JAVA_OPTS="$fast -Dlog4j2.configurationFile=file:$SPARK_CONF_DIR/log4j2-daemon.properties ${SPARK_DAEMON_JAVA_OPTS:-}"
  export SPARK_LAUNCHER_OPTS="$fast ${SPARK_LAUNCHER_OPTS:-}"
  # Spark quietly moves to port+1 (up to 16 times) when a port is taken: the master URL printed
  # would then be wrong. maxRetries=0 makes a daemon whose port is taken die, which the wait
  # reports. The master's REST submission server (on by default, fixed port 6066,
  # unauthenticated) is turned off: a second cluster on the machine would collide on it.
  export SPARK_MASTER_OPTS="${SPARK_MASTER_OPTS:-} -Dspark.port.maxRetries=0 -Dspark.master.rest.enabled=false"
  export SPARK_WORKER_OPTS="${SPARK_WORKER_OPTS:-} -Dspark.port.maxRetries=0"
  unset SPARK_NO_DAEMONIZE SPARK_ENV_LOADED SPARK_MASTER
}

# spark_free_ports HOST N [FIXED1 FIXED2]: all chosen at once, so that they are distinct.
# (Another process could take one before Spark binds it; the daemon then dies, which
# spark_wait_up reports.)
spark_free_ports() {
  "$py" - "$1" "$2" "${3:-0}" "${4:-0}" <<'EOF'
import socket, sys
host, n, fixed = sys.argv[1], int(sys.argv[2]), [int(p) for p in sys.argv[3:5]]
socks, out = [], []
for i in range(n):
    if i < 2 and fixed[i]:
        out.append(fixed[i]); continue
    s = socket.socket(); s.bind((host, 0)); socks.append(s); out.append(s.getsockname()[1])
print(*out)
EOF
}

spark_is_ours() {
  local pid=$1 pat=$2
  [ -n "$pid" ] && [ -r "/proc/$pid/cmdline" ] && tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF -- "$pat"
}

# spark_wait_gone SECONDS PID...: bounded by SECONDS; zombies count as gone.
spark_wait_gone() {
  "$py" - "$@" <<'EOF'
import os, sys, time
deadline = time.monotonic() + float(sys.argv[1])
pids = [int(p) for p in sys.argv[2:]]
def alive(p):
    try:
        with open(f"/proc/{p}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False
while time.monotonic() < deadline:
    pids = [p for p in pids if alive(p)]
    if not pids:
        sys.exit(0)
    time.sleep(0.2)
sys.exit(1)
EOF
}

# spark_wait_up HOST PORT UI WANT DEADLINE PIDFILE...: bounded wait (until the epoch time
# DEADLINE) polling the master's JSON on http://HOST:UI/json/ until WANT workers are ALIVE
# (WANT=-1: until the master answers). Gives up early when a daemon of the pid files (the
# master's first, then the workers') has died; a pid file is read once spark-daemon.sh has
# written it. Exit 0 ok, 3 master died, 4 a worker died (prints the worker numbers), 5 master
# not answering by the deadline, 6 too few workers by the deadline, 7 the web UI port is another
# master's.
spark_wait_up() {
  "$py" - "$prog" "$@" <<'EOF'
import json, sys, time, urllib.request
prog, host, port, ui = sys.argv[1:5]
want, deadline, pidfiles = int(sys.argv[5]), float(sys.argv[6]), sys.argv[7:]
def alive(pidfile):
    try:
        with open(pidfile) as f:
            pid = int(f.read().strip())
    except (OSError, ValueError):
        return True  # not written yet
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False
# No proxy: the master is on this machine (or a test host), whatever http_proxy says.
opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
answered, n = False, 0
while True:
    dead = [i for i, p in enumerate(pidfiles) if not alive(p)]
    if 0 in dead:
        sys.exit(3)
    if dead:
        print(f"{prog}: dead workers:", *dead, file=sys.stderr)
        sys.exit(4)
    try:
        with opener.open(f"http://{host}:{ui}/json/", timeout=2) as r:
            d = json.load(r)
        answered = True
        if d.get("url") != f"spark://{host}:{port}":
            print(f"{prog}: the web UI on port {ui} belongs to {d.get('url')}", file=sys.stderr)
            sys.exit(7)
        n = sum(1 for w in d.get("workers", []) if w.get("state") == "ALIVE")
        if n >= want:
            sys.exit(0)
    except (OSError, ValueError):
        pass
    if time.time() > deadline:
        if answered:
            print(f"{prog}: {n} of {want} workers ALIVE", file=sys.stderr)
        sys.exit(6 if answered else 5)
    time.sleep(0.2)
EOF
}
