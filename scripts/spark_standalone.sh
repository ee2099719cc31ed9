#!/usr/bin/env bash
# Starts, stops and reports a Spark standalone cluster (one master, N workers) on this machine,
# from the pip package of pyspark, through a private SPARK_HOME (scripts/spark_home.sh).
#
# Usage:
#   scripts/spark_standalone.sh start  [--workers N] [--cores C] [--memory M] [--host H]
#                                      [--port P] [--webui-port W] [--timeout S]
#   scripts/spark_standalone.sh status
#   scripts/spark_standalone.sh stop   [--timeout S]
#
#   start   prints exactly one line on stdout, the master URL (spark://127.0.0.1:PORT), once the
#           master reports all N workers ALIVE; everything else goes to stderr.
#           Defaults: N=2 workers, C=1 core and M=2g memory per worker, H=127.0.0.1, P and W
#           free ports chosen at start, S=60 seconds. Fails if a cluster is already running.
#   status  prints the master URL and one line per ALIVE worker on stdout; exits 1 if the cluster
#           is not running, 2 if fewer workers than started are ALIVE.
#   stop    stops the master, then the workers (and their executors); SIGKILL after S (default
#           15) seconds; then verifies that no process of this cluster remains (exit 1 if one does).
#   Calls are serialized by a lock (a second start waits, then finds the cluster running).
#
# Everything lives under <repo>/.spark-work/standalone/ (git-ignored):
#   cluster.env      state: master URL and ports, worker ports (sourced by status/stop)
#   logs/            SPARK_LOG_DIR: spark-tfos-org.apache.spark.deploy.{master.Master,worker.Worker}-<i>-<host>.out
#   pids/            SPARK_PID_DIR
#   work/worker-<i>  SPARK_WORKER_DIR of worker i (executor stdout/stderr: work/worker-<i>/app-*/<id>/)
#
# Workers run with PYSPARK_PYTHON=<venv>/bin/python in their environment (executors inherit it).
# Note: PySpark's driver sends its own PYSPARK_PYTHON (default "python3") with every Python
# function and executors run that, so the driver must have PYSPARK_PYTHON set too (spark-submit
# with SPARK_HOME=.spark-home gets it from conf/spark-env.sh; spark.pyspark.python given to
# SparkSession.builder in an already running python is ignored).
# Environment: VENV (default <repo>/.venv); SPARK_DAEMON_MEMORY (master/worker heap, default 1g).
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv=${VENV:-$root/.venv}
py=$venv/bin/python
base=$root/.spark-work/standalone
state=$base/cluster.env
ident=tfos
prog=spark_standalone.sh
# shellcheck source=scripts/spark_lib.sh
. "$root/scripts/spark_lib.sh"
master_class=org.apache.spark.deploy.master.Master
worker_class=org.apache.spark.deploy.worker.Worker

log() { echo "spark_standalone.sh: $*" >&2; }
die() { echo "spark_standalone.sh: error: $*" >&2; exit 1; }
usage() { sed -n '5,19p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }

[ $# -ge 1 ] || usage
cmd=$1; shift
workers=2 cores=1 memory=2g host=127.0.0.1 port=0 webui_port=0 timeout=
while [ $# -gt 0 ]; do
  case "$1" in
    --workers) workers=${2:?--workers needs a value}; shift 2 ;;
    --cores) cores=${2:?--cores needs a value}; shift 2 ;;
    --memory) memory=${2:?--memory needs a value}; shift 2 ;;
    --host) host=${2:?--host needs a value}; shift 2 ;;
    --port) port=${2:?--port needs a value}; shift 2 ;;
    --webui-port) webui_port=${2:?--webui-port needs a value}; shift 2 ;;
    --timeout) timeout=${2:?--timeout needs a value}; shift 2 ;;
    -h|--help) usage ;;
    *) log "unknown argument: $1"; usage ;;
  esac
done
for v in workers cores port webui_port; do
  [[ ${!v} =~ ^[0-9]+$ ]] || die "--${v//_/-} must be a non-negative integer, got '${!v}'"
done
[ "$workers" -ge 1 ] || die "--workers must be at least 1"
[[ $memory =~ ^[0-9]+[mMgG]$ ]] || die "--memory must look like 1024m or 2g, got '$memory'"
[ -z "$timeout" ] || [[ $timeout =~ ^[0-9]+$ ]] || die "--timeout must be seconds, got '$timeout'"
[ -x "$py" ] || die "no python at $py (run scripts/bootstrap.sh, or set VENV)"

# One call at a time (fd 9 is closed for the daemons, so they do not hold the lock).
mkdir -p "$base"
exec 9>"$base/.lock"
flock -w 120 9 || die "another scripts/spark_standalone.sh call holds $base/.lock for over 120 s"

# The environment every Spark launch script below runs in.
setup_env() { spark_daemon_env "$host" "$base" "$ident"; }

elapsed() { awk -v a="$start_ts" -v b="$(date +%s.%N)" 'BEGIN{printf "%.1f", b - a}'; }
pid_file() { echo "$base/pids/spark-$ident-$1-$2.pid"; }   # class, instance
log_file() { echo "$base/logs/spark-$ident-$1-$2-${HOSTNAME:-$(hostname)}.out"; }

is_ours() { spark_is_ours "$@"; }

# Processes of the cluster described in $state (master, workers, executors JVMs, found by
# command line so that daemons whose pid file is gone are found too; executors' Python workers,
# found by their working directory under the workers' dirs).
cluster_pids() {
  local pats=("$master_class --host $MASTER_HOST --port $MASTER_PORT " "$worker_class " "--worker-url spark://Worker@")
  local pid args i
  for pid in $(pgrep -f 'org\.apache\.spark\.(deploy\.(master\.Master|worker\.Worker)|executor\.CoarseGrainedExecutorBackend)' || true); do
    args=$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null) || continue
    if [[ $args == *"${pats[0]}"* ]]; then echo "$pid"; continue; fi
    if [[ $args == *"${pats[1]}"* && $args == *" $MASTER_URL "* ]]; then echo "$pid"; continue; fi
    for i in $WORKER_PORTS; do
      if [[ $args == *"${pats[2]}$MASTER_HOST:$i "* ]]; then echo "$pid"; break; fi
    done
  done
  for pid in $(pgrep -f 'pyspark[./]daemon|pyspark[./]worker' || true); do
    args=$(readlink "/proc/$pid/cwd" 2>/dev/null) || continue
    [[ $args == "$base/work/"* ]] && echo "$pid"
  done
  return 0
}

# master_json: the master's /json/ page on stdout, or fail.
master_json() { curl -fsS --noproxy '*' --max-time 3 "http://$MASTER_HOST:$MASTER_WEBUI_PORT/json/"; }

wait_gone() { spark_wait_gone "$@"; }   # SECONDS PID...

# wait_up WANT DEADLINE PIDFILE...: this cluster's master, see spark_wait_up in spark_lib.sh.
wait_up() { spark_wait_up "$MASTER_HOST" "$MASTER_PORT" "$MASTER_WEBUI_PORT" "$@"; }

do_stop() {
  local t=${timeout:-15} pids pid f cls have_state=0
  if [ -f "$state" ]; then
    # shellcheck disable=SC1090
    . "$state"
    have_state=1
  elif ! compgen -G "$base/pids/*.pid" >/dev/null; then
    log "no cluster state in $state and no pid files; nothing to stop"
    return 0
  fi
  # Master first, then the workers (a worker kills its executors on SIGTERM). The other order
  # races: while a worker shuts down, the master sees its executors exit and asks the same,
  # still registered worker to launch replacements, which then outlive it.
  for cls in "$master_class" "$worker_class"; do
    pids=()
    for f in "$base/pids/spark-$ident-$cls-"*.pid; do
      [ -f "$f" ] || continue
      pid=$(cat "$f")
      if is_ours "$pid" "$cls"; then
        log "stopping ${cls##*.} (pid $pid)"
        kill "$pid" 2>/dev/null || true
        pids+=("$pid")
      fi
      rm -f "$f"
    done
    [ ${#pids[@]} -eq 0 ] || wait_gone "$t" "${pids[@]}" || {
      log "${cls##*.} still running after ${t}s; sending SIGKILL"; kill -9 "${pids[@]}" 2>/dev/null || true; }
  done
  if [ "$have_state" -eq 0 ]; then
    log "stopped the daemons of the pid files (no $state, so no check for other leftovers)"
    return 0
  fi
  # Verify: anything of this cluster left (pid file lost, executors orphaned) is killed.
  mapfile -t pids < <(cluster_pids)
  if [ ${#pids[@]} -gt 0 ]; then
    log "left over processes of this cluster: ${pids[*]}; sending SIGTERM, then SIGKILL after ${t}s"
    kill "${pids[@]}" 2>/dev/null || true
    wait_gone "$t" "${pids[@]}" || kill -9 "${pids[@]}" 2>/dev/null || true
    wait_gone 5 "${pids[@]}" || true
  fi
  mapfile -t pids < <(cluster_pids)
  [ ${#pids[@]} -eq 0 ] || die "processes of this cluster still running: ${pids[*]}"
  rm -f "$state"
  log "stopped $MASTER_URL"
}

do_status() {
  [ -f "$state" ] || { log "not running (no $state)"; return 1; }
  # shellcheck disable=SC1090
  . "$state"
  local json
  json=$(master_json 2>/dev/null) || { log "master $MASTER_URL does not answer on http://$MASTER_HOST:$MASTER_WEBUI_PORT/json/ (log: $MASTER_LOG)"; return 1; }
  echo "$MASTER_URL"
  "$py" -c '
import json, sys
d = json.loads(sys.argv[1]); want = int(sys.argv[2])
alive = [w for w in d.get("workers", []) if w.get("state") == "ALIVE"]
for w in alive:
    print("worker %s %s:%s cores=%s memory=%sMB coresused=%s" % (w["id"], w["host"], w["port"], w["cores"], w["memory"], w["coresused"]))
print("master %s: %d of %d workers ALIVE, web UI http://%s:%s/" % (d.get("status"), len(alive), want, sys.argv[3], sys.argv[4]), file=sys.stderr)
sys.exit(0 if len(alive) >= want else 2)
' "$json" "$WORKERS" "$MASTER_HOST" "$MASTER_WEBUI_PORT"
}

do_start() {
  local t=${timeout:-60} start_ts i ports wport wui wdir pid
  if [ -f "$state" ]; then
    # shellcheck disable=SC1090
    . "$state"
    if [ -n "$(cluster_pids)" ]; then
      die "a cluster is already running at $MASTER_URL (scripts/spark_standalone.sh status|stop)"
    fi
    log "removing stale state of a cluster that is no longer running ($MASTER_URL)"
    rm -f "$state"
  fi
  start_ts=$(date +%s.%N)  # the deadline counts from here
  mkdir -p "$base/logs" "$base/pids" "$base/work"
  rm -f "$base/pids/"*.pid

  # Free ports, all chosen at once so that they are distinct: master, master web UI, then a
  # port and a web UI port per worker. (Another process could take one before Spark binds it;
  # the wait below then fails naming the log that says so.)
  ports=$(spark_free_ports "$host" $((2 + 2 * workers)) "$port" "$webui_port") \
    || die "cannot pick free ports on $host (is --host an address of this machine?)"
  read -r -a ports <<<"$ports"
  MASTER_HOST=$host MASTER_PORT=${ports[0]} MASTER_WEBUI_PORT=${ports[1]}
  MASTER_URL=spark://$MASTER_HOST:$MASTER_PORT WORKERS=$workers
  MASTER_LOG=$(log_file "$master_class" 1)
  WORKER_PORTS=
  for ((i = 1; i <= workers; i++)); do WORKER_PORTS+="${ports[2 * i]} "; done
  cat >"$state" <<EOF
MASTER_URL=$MASTER_URL
MASTER_HOST=$MASTER_HOST
MASTER_PORT=$MASTER_PORT
MASTER_WEBUI_PORT=$MASTER_WEBUI_PORT
MASTER_LOG='$MASTER_LOG'
WORKERS=$WORKERS
WORKER_PORTS='${WORKER_PORTS% }'
EOF

  setup_env
  local deadline dpids=() rc=0 wfiles=() master_pidf
  deadline=$(awk -v a="$start_ts" -v t="$t" 'BEGIN{printf "%.3f", a + t}')
  master_pidf=$(pid_file "$master_class" 1)
  log "starting master $MASTER_URL (web UI http://$MASTER_HOST:$MASTER_WEBUI_PORT/, SPARK_HOME=$SPARK_HOME)"
  # spark-daemon.sh prints "starting ..." on stdout, then sleeps 2.5-7 s to see whether the JVM
  # survived, and exits 0 either way. So it runs in the background (output to stderr) and the
  # master's own web UI is what is waited for; the workers are started once the master answers
  # (a worker that finds no master retries its registration only after 5-15 s).
  "$SPARK_HOME/sbin/spark-daemon.sh" start "$master_class" 1 \
    --host "$MASTER_HOST" --port "$MASTER_PORT" --webui-port "$MASTER_WEBUI_PORT" >&2 9>&- &
  dpids+=($!)
  wait_up -1 "$deadline" "$master_pidf" || rc=$?
  if [ "$rc" -eq 0 ]; then
    log "master up after $(elapsed) s"
    for ((i = 1; i <= workers; i++)); do
      wport=${ports[2 * i]} wui=${ports[2 * i + 1]} wdir=$base/work/worker-$i
      mkdir -p "$wdir"
      log "starting worker $i on $host:$wport (web UI $wui, $cores core(s), $memory, dir $wdir)"
      SPARK_WORKER_DIR=$wdir "$SPARK_HOME/sbin/spark-daemon.sh" start "$worker_class" "$i" \
        --host "$host" --port "$wport" --webui-port "$wui" --cores "$cores" --memory "$memory" \
        --work-dir "$wdir" "$MASTER_URL" >&2 9>&- &
      dpids+=($!)
      wfiles+=("$(pid_file "$worker_class" "$i")")
    done
    wait_up "$workers" "$deadline" "$master_pidf" "${wfiles[@]}" || rc=$?
  fi
  [ "$rc" -ne 0 ] || log "all $workers workers ALIVE after $(elapsed) s"
  for pid in "${dpids[@]}"; do wait "$pid" || true; done  # spark-daemon.sh: at most ~7 s each
  if [ "$rc" -ne 0 ]; then
    case $rc in
      3) log "the master JVM died; read $MASTER_LOG" ;;
      4) log "worker JVM(s) died: read the worker log(s) listed below" ;;
      5) log "the master did not answer on http://$MASTER_HOST:$MASTER_WEBUI_PORT/json/ within ${t}s; read $MASTER_LOG" ;;
      6) log "not all $workers workers registered ALIVE with the master within ${t}s (--timeout)" ;;
      7) log "another Spark master answers on web UI port $MASTER_WEBUI_PORT; choose another --webui-port" ;;
      *) log "waiting for the cluster failed (rc $rc)" ;;
    esac
    log "logs:"
    log "  master: $MASTER_LOG"
    for ((i = 1; i <= ${#wfiles[@]}; i++)); do log "  worker $i: $(log_file "$worker_class" "$i")"; done
    log "last lines of the master log:"
    tail -n 12 "$MASTER_LOG" 2>/dev/null | cut -c1-400 | sed 's/^/    /' >&2 || true
    log "stopping what was started (logs are kept)"
    do_stop || true
    exit 1
  fi
  log "started in $(elapsed) s"
  log "use it with: SPARK_LOCAL_IP=$host PYSPARK_PYTHON=$py and --master $MASTER_URL"
  echo "$MASTER_URL"
}

case "$cmd" in
  start) do_start ;;
  stop) do_stop ;;
  status) do_status ;;
  -h|--help|help) usage ;;
  *) log "unknown command: $cmd"; usage ;;
esac
