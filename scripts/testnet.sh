#!/usr/bin/env bash
# A multi-host Spark standalone cluster on one machine: the test hosts are Linux network
# namespaces, so every executor has an address of its own and the traffic between them (Spark,
# TensorFlow's gRPC, the tfos feed) crosses a real, cuttable link. Needs root.
#
# Usage:
#   scripts/testnet.sh up     [--timeout S]    build it (default S=120), print the master URL
#   scripts/testnet.sh status                  print the master URL and one line per host
#   scripts/testnet.sh down   [--timeout S]    stop everything and remove the network (S=15)
#
#   up      idempotent: creates what is missing, brings every link up again (also one that a
#           test cut), and starts Spark unless it already runs with every worker ALIVE. Prints
#           exactly one line on stdout, the master URL, once all workers are ALIVE and every
#           host reaches the master and every other host; everything else goes to stderr.
#   status  exits 1 when the cluster is not up, 2 when a link is down or a worker not ALIVE.
#   down    stops the master, kills every process still inside the namespaces (found with
#           `ip netns pids`: workers, executors, Python workers, TF nodes), SIGKILL after S
#           seconds, then deletes the namespaces, the veth pairs and the bridge. Idempotent.
#   Calls are serialized by a lock.
#
# The network (root namespace = the driver's host):
#   bridge tfos-br0 with 10.213.0.1/24           the driver (a test process) and the master
#   namespace tfos-h<i> (i = 1..N, N=3)           test host i: lo up, eth0 10.213.0.1<i>/24
#   veth pair eth0 (in tfos-h<i>) <-> veth-tfos-h<i> (a port of tfos-br0, root namespace)
# The test hosts have no default route, so nothing in them reaches beyond 10.213.0.0/24, and the
# daemons are named by their addresses, so none of them asks DNS who they are. To cut
# host i off (as a test does): ip link set veth-tfos-h<i> down; `up` restores it.
#
# Spark (from the pip package, private SPARK_HOME of scripts/spark_home.sh, started with
# spark-daemon.sh like scripts/spark_standalone.sh, whose helpers scripts/spark_lib.sh holds):
#   master   in the root namespace on 10.213.0.1 (free ports). Not in a test host: tests cut a
#            host's link, and the master (like the driver) must stay reachable from the other
#            hosts when that happens, as on a real cluster where it runs on a machine of its own.
#   worker i inside tfos-h<i> (ip netns exec), --host 10.213.0.1<i>, SPARK_LOCAL_IP and
#            SPARK_LOCAL_HOSTNAME set to it, so its executors bind to and advertise that address;
#            C=2 cores and M=2g each, ports 7078 (web UI 8081) of its own namespace.
# Workers and, through them, executors run with PYSPARK_PYTHON=<venv>/bin/python and inherit
# the caller's environment, TFOS_TEST_SESSION included (the integration tests' leftover check;
# a driver should also pass spark.executorEnv.TFOS_TEST_SESSION, since `up` keeps workers that
# an earlier session started).
# A driver in the root namespace uses it with: --master <URL> --conf spark.driver.host=10.213.0.1
#   --conf spark.driver.bindAddress=10.213.0.1, PYSPARK_PYTHON=<venv>/bin/python.
#
# Environment: VENV (default <repo>/.venv); TFOS_TESTNET_HOSTS (N), TFOS_TESTNET_CORES (C),
# TFOS_TESTNET_MEMORY (M). Files under <repo>/.spark-work/testnet/ (git-ignored): cluster.env
# (state), logs/ (daemon logs), pids/, work/h<i>/ (worker dirs: executor stdout/stderr).
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv=${VENV:-$root/.venv}
py=$venv/bin/python
prog=testnet.sh
base=$root/.spark-work/testnet
state=$base/cluster.env
ident=tfosnet
master_class=org.apache.spark.deploy.master.Master
worker_class=org.apache.spark.deploy.worker.Worker
# shellcheck source=scripts/spark_lib.sh
. "$root/scripts/spark_lib.sh"

nhosts=${TFOS_TESTNET_HOSTS:-3}
cores=${TFOS_TESTNET_CORES:-2}
memory=${TFOS_TESTNET_MEMORY:-2g}
bridge=tfos-br0
subnet=10.213.0
driver_ip=$subnet.1
worker_port=7078 worker_ui=8081

log() { echo "$prog: $*" >&2; }
die() { echo "$prog: error: $*" >&2; exit 1; }
usage() { sed -n '6,19p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }

ns_name() { echo "tfos-h$1"; }
host_ip() { echo "$subnet.1$1"; }
veth_name() { echo "veth-tfos-h$1"; }

[ $# -ge 1 ] || usage
cmd=$1; shift
timeout=
while [ $# -gt 0 ]; do
  case "$1" in
    --timeout) timeout=${2:?--timeout needs a value}; shift 2 ;;
    -h|--help) usage ;;
    *) log "unknown argument: $1"; usage ;;
  esac
done
[ -z "$timeout" ] || [[ $timeout =~ ^[0-9]+$ ]] || die "--timeout must be seconds, got '$timeout'"
[[ $nhosts =~ ^[1-9]$ ]] || die "TFOS_TESTNET_HOSTS must be 1-9, got '$nhosts'"
[[ $cores =~ ^[1-9][0-9]*$ ]] || die "TFOS_TESTNET_CORES must be a positive integer, got '$cores'"
[[ $memory =~ ^[0-9]+[mMgG]$ ]] || die "TFOS_TESTNET_MEMORY must look like 1024m or 2g, got '$memory'"
case "$cmd" in up|down|status) ;; -h|--help|help) usage ;; *) log "unknown command: $cmd"; usage ;; esac

# -- preconditions ---------------------------------------------------------------------------
[ "$(id -u)" -eq 0 ] || die "must run as root: network namespaces, veth pairs and bridges need \
CAP_NET_ADMIN (run it with sudo, or skip the multi-host tests on this machine)"
command -v ip >/dev/null || die "no 'ip' command: install iproute2 (apt-get install iproute2)"
[ -x "$py" ] || die "no python at $py (run scripts/bootstrap.sh, or set VENV)"

mkdir -p "$base"
exec 9>"$base/.lock"
flock -w 120 9 || die "another scripts/testnet.sh call holds $base/.lock for over 120 s"

ns_exists() { ip netns list 2>/dev/null | awk '{print $1}' | grep -qx -- "$1"; }
link_exists() { ip link show "$1" >/dev/null 2>&1; }

# -- network ---------------------------------------------------------------------------------
net_up() {
  local i ns veth ip err
  for ((i = 1; i <= nhosts; i++)); do
    ns=$(ns_name "$i")
    if ! ns_exists "$ns"; then
      err=$(ip netns add "$ns" 2>&1) || die "cannot create network namespace $ns: $err \
(network namespaces are not permitted here: needs CAP_SYS_ADMIN and CAP_NET_ADMIN)"
    fi
  done
  if ! link_exists "$bridge"; then
    err=$(ip link add "$bridge" type bridge 2>&1) || die "cannot create bridge $bridge: $err \
(creating network devices is not permitted here, needs CAP_NET_ADMIN; or no bridge driver)"
  fi
  ip -4 addr show dev "$bridge" | grep -qF " $driver_ip/24 " \
    || ip addr add "$driver_ip/24" dev "$bridge"
  ip link set "$bridge" up
  for ((i = 1; i <= nhosts; i++)); do
    ns=$(ns_name "$i") veth=$(veth_name "$i") ip=$(host_ip "$i")
    if ! link_exists "$veth"; then
      # The host's end is created inside its namespace, named eth0 there.
      err=$(ip link add "$veth" type veth peer name eth0 netns "$ns" 2>&1) \
        || die "cannot create the veth pair $veth <-> $ns/eth0: $err"
    fi
    ip link set "$veth" master "$bridge"
    ip link set "$veth" up
    ip -n "$ns" link set lo up
    ip -n "$ns" -4 addr show dev eth0 | grep -qF " $ip/24 " || ip -n "$ns" addr add "$ip/24" dev eth0
    ip -n "$ns" link set eth0 up
  done
}

# Deletes what net_up creates (whatever of it exists); bounded wait for the kernel to drop it.
net_down() {
  local i ns veth left=() deadline
  for ((i = 1; i <= 9; i++)); do
    ns=$(ns_name "$i") veth=$(veth_name "$i")
    ! link_exists "$veth" || ip link del "$veth" 2>/dev/null || true
    ! ns_exists "$ns" || ip netns del "$ns" 2>/dev/null || log "cannot delete namespace $ns"
  done
  ! link_exists "$bridge" || ip link del "$bridge" 2>/dev/null || log "cannot delete bridge $bridge"
  # A deleted namespace's devices may linger a moment (the kernel frees them asynchronously).
  deadline=$((SECONDS + 10))
  while :; do
    mapfile -t left < <(ip -o link show 2>/dev/null | awk -F': ' '{print $2}' | sed 's/@.*//' \
      | grep -E "^(veth-tfos-h[0-9]|$bridge)$" || true
      ip netns list 2>/dev/null | awk '{print $1}' | grep -E '^tfos-h[0-9]$' || true)
    [ ${#left[@]} -eq 0 ] && return 0
    [ $SECONDS -lt $deadline ] || break
    sleep 0.2
    for veth in "${left[@]}"; do
      ip link del "$veth" 2>/dev/null || ip netns del "$veth" 2>/dev/null || true
    done
  done
  die "still present after down: ${left[*]}"
}

# Pids of every process inside the test hosts' namespaces.
ns_pids() {
  local i ns
  for ((i = 1; i <= 9; i++)); do
    ns=$(ns_name "$i")
    ! ns_exists "$ns" || ip netns pids "$ns" 2>/dev/null || true
  done
}

# master_pids: the master JVM of this cluster (pid file or command line).
master_pids() {
  local pid f
  {
    for f in "$base/pids/spark-$ident-$master_class-"*.pid; do
      [ -f "$f" ] || continue
      pid=$(cat "$f")
      ! spark_is_ours "$pid" "$master_class" || echo "$pid"
    done
    pgrep -f "org\.apache\.spark\.deploy\.master\.Master --host $driver_ip " || true
  } | sort -u
}

# stop_spark SECONDS: the master, then everything inside the namespaces; TERM, then KILL.
stop_spark() {
  local t=$1 pids
  mapfile -t pids < <(master_pids)
  if [ ${#pids[@]} -gt 0 ]; then
    log "stopping the master (pid ${pids[*]})"
    kill "${pids[@]}" 2>/dev/null || true
    spark_wait_gone "$t" "${pids[@]}" || { log "master still running after ${t}s; SIGKILL"; kill -9 "${pids[@]}" 2>/dev/null || true; }
  fi
  mapfile -t pids < <(ns_pids | sort -u)
  if [ ${#pids[@]} -gt 0 ]; then
    log "stopping ${#pids[@]} process(es) inside the test hosts: ${pids[*]}"
    kill "${pids[@]}" 2>/dev/null || true
    spark_wait_gone "$t" "${pids[@]}" || {
      mapfile -t pids < <(ns_pids | sort -u)
      log "still running after ${t}s: ${pids[*]}; SIGKILL"
      [ ${#pids[@]} -eq 0 ] || kill -9 "${pids[@]}" 2>/dev/null || true
      [ ${#pids[@]} -eq 0 ] || spark_wait_gone 5 "${pids[@]}" || true
    }
  fi
  mapfile -t pids < <(master_pids; ns_pids | sort -u)
  [ ${#pids[@]} -eq 0 ] || die "processes of the test cluster still running: ${pids[*]}"
  rm -f "$base/pids/"*.pid "$state"
}

# -- Spark -----------------------------------------------------------------------------------
pid_file() { echo "$base/pids/spark-$ident-$1-$2.pid"; }   # class, instance
log_file() { echo "$base/logs/spark-$ident-$1-$2-${HOSTNAME:-$(hostname)}.out"; }
elapsed() { awk -v a="$start_ts" -v b="$(date +%s.%N)" 'BEGIN{printf "%.1f", b - a}'; }

# spark_running: the state's master answers and lists every worker ALIVE.
spark_running() {
  [ -f "$state" ] || return 1
  # shellcheck disable=SC1090
  . "$state"
  [ -n "$(master_pids)" ] || return 1
  spark_wait_up "$MASTER_HOST" "$MASTER_PORT" "$MASTER_WEBUI_PORT" "$nhosts" \
    "$(date +%s)" 2>/dev/null
}

# check_reach: from every host, TCP connects to the master and every other host's worker.
check_reach() {
  local i j targets
  for ((i = 1; i <= nhosts; i++)); do
    targets="$driver_ip:$MASTER_PORT"
    for ((j = 1; j <= nhosts; j++)); do
      [ "$j" -eq "$i" ] || targets+=" $(host_ip "$j"):$worker_port"
    done
    # shellcheck disable=SC2086  # one argument per target
    if ! ip netns exec "$(ns_name "$i")" "$py" - $targets <<'EOF'
import socket, sys
bad = []
for target in sys.argv[1:]:
    host, port = target.rsplit(":", 1)
    try:
        socket.create_connection((host, int(port)), timeout=3).close()
    except OSError as exc:
        bad.append(f"{target}: {exc}")
if bad:
    print("testnet.sh: unreachable from this host:", *bad, sep="\n  ", file=sys.stderr)
    sys.exit(1)
EOF
    then
      die "test host $(ns_name "$i") cannot reach the others (see above): is traffic across \
bridge $bridge filtered (bridge-nf-call-iptables with a DROP policy for FORWARD)?"
    fi
  done
}

start_spark() {
  local t=$1 ports i ns ip wdir rc=0 deadline dpids=() wfiles=() master_pidf
  deadline=$(awk -v a="$start_ts" -v t="$t" 'BEGIN{printf "%.3f", a + t}')
  mkdir -p "$base/logs" "$base/pids" "$base/work"
  rm -f "$base/pids/"*.pid
  ports=$(spark_free_ports "$driver_ip" 2) || die "cannot pick free ports on $driver_ip"
  read -r -a ports <<<"$ports"
  MASTER_HOST=$driver_ip MASTER_PORT=${ports[0]} MASTER_WEBUI_PORT=${ports[1]}
  MASTER_URL=spark://$MASTER_HOST:$MASTER_PORT
  cat >"$state" <<EOF
MASTER_URL=$MASTER_URL
MASTER_HOST=$MASTER_HOST
MASTER_PORT=$MASTER_PORT
MASTER_WEBUI_PORT=$MASTER_WEBUI_PORT
HOSTS=$nhosts
EOF
  spark_daemon_env "$driver_ip" "$base" "$ident"
  master_pidf=$(pid_file "$master_class" 1)
  log "starting master $MASTER_URL (web UI http://$MASTER_HOST:$MASTER_WEBUI_PORT/)"
  # spark-daemon.sh sleeps a few seconds to see whether the JVM survived, and exits 0 either
  # way: it runs in the background and the master's own web UI is what is waited for.
  # Named by its address (SPARK_LOCAL_HOSTNAME, SPARK_PUBLIC_DNS): otherwise the master looks
  # 10.213.0.1 up in DNS, a query that leaves the machine.
  SPARK_LOCAL_HOSTNAME=$driver_ip SPARK_PUBLIC_DNS=$driver_ip \
    "$SPARK_HOME/sbin/spark-daemon.sh" start "$master_class" 1 \
    --host "$MASTER_HOST" --port "$MASTER_PORT" --webui-port "$MASTER_WEBUI_PORT" >&2 9>&- &
  dpids+=($!)
  spark_wait_up "$MASTER_HOST" "$MASTER_PORT" "$MASTER_WEBUI_PORT" -1 "$deadline" "$master_pidf" || rc=$?
  if [ "$rc" -eq 0 ]; then
    log "master up after $(elapsed) s${TFOS_TEST_SESSION:+; executors inherit TFOS_TEST_SESSION=$TFOS_TEST_SESSION}"
    for ((i = 1; i <= nhosts; i++)); do
      ns=$(ns_name "$i") ip=$(host_ip "$i") wdir=$base/work/h$i
      mkdir -p "$wdir"
      log "starting worker $i in $ns on $ip:$worker_port ($cores cores, $memory, dir $wdir)"
      ip netns exec "$ns" env SPARK_LOCAL_IP="$ip" SPARK_LOCAL_HOSTNAME="$ip" \
        SPARK_PUBLIC_DNS="$ip" SPARK_WORKER_DIR="$wdir" \
        "$SPARK_HOME/sbin/spark-daemon.sh" start "$worker_class" "$i" \
        --host "$ip" --port "$worker_port" --webui-port "$worker_ui" --cores "$cores" \
        --memory "$memory" --work-dir "$wdir" "$MASTER_URL" >&2 9>&- &
      dpids+=($!)
      wfiles+=("$(pid_file "$worker_class" "$i")")
    done
    spark_wait_up "$MASTER_HOST" "$MASTER_PORT" "$MASTER_WEBUI_PORT" "$nhosts" "$deadline" \
      "$master_pidf" "${wfiles[@]}" || rc=$?
  fi
  for i in "${dpids[@]}"; do wait "$i" || true; done  # spark-daemon.sh: at most ~7 s each
  if [ "$rc" -ne 0 ]; then
    case $rc in
      3) log "the master JVM died" ;;
      4) log "worker JVM(s) died" ;;
      5) log "the master did not answer on http://$MASTER_HOST:$MASTER_WEBUI_PORT/json/ within ${t}s" ;;
      6) log "not all $nhosts workers registered ALIVE with the master within ${t}s (--timeout)" ;;
      7) log "another Spark master answers on web UI port $MASTER_WEBUI_PORT" ;;
      *) log "waiting for the cluster failed (rc $rc)" ;;
    esac
    log "logs (kept): master $(log_file "$master_class" 1)"
    for ((i = 1; i <= nhosts; i++)); do log "  worker $i: $(log_file "$worker_class" "$i")"; done
    log "last lines of the master log:"
    tail -n 12 "$(log_file "$master_class" 1)" 2>/dev/null | cut -c1-400 | sed 's/^/    /' >&2 || true
    log "stopping what was started"
    stop_spark 15 || true
    exit 1
  fi
  log "all $nhosts workers ALIVE after $(elapsed) s"
}

do_up() {
  start_ts=$(date +%s.%N)
  local t=${timeout:-120}
  net_up
  if spark_running; then
    log "already up: $MASTER_URL with $nhosts workers ALIVE"
  else
    if [ -f "$state" ] || [ -n "$(master_pids)$(ns_pids)" ]; then
      log "a previous cluster is incomplete or gone; stopping what is left of it"
      stop_spark 15
    fi
    start_spark "$t"
  fi
  check_reach
  log "ready in $(elapsed) s; drivers: spark.driver.host=spark.driver.bindAddress=$driver_ip, \
PYSPARK_PYTHON=$py, --master $MASTER_URL"
  echo "$MASTER_URL"
}

do_down() {
  stop_spark "${timeout:-15}"
  net_down
  log "down: no process left in the test hosts, namespaces, veth pairs and bridge removed"
}

do_status() {
  local i ns veth rc=0 json
  if [ ! -f "$state" ]; then
    log "not running (no $state)"
    ns_exists "$(ns_name 1)" && log "(the network exists; scripts/testnet.sh down removes it)"
    return 1
  fi
  # shellcheck disable=SC1090
  . "$state"
  json=$(curl -fsS --noproxy '*' --max-time 3 "http://$MASTER_HOST:$MASTER_WEBUI_PORT/json/" 2>/dev/null) \
    || { log "master $MASTER_URL does not answer (log: $(log_file "$master_class" 1))"; return 1; }
  echo "$MASTER_URL"
  for ((i = 1; i <= HOSTS; i++)); do
    ns=$(ns_name "$i") veth=$(veth_name "$i")
    local link="missing" worker
    if link_exists "$veth"; then
      if ip link show "$veth" | grep -q "state UP"; then link=up; else link=down; rc=2; fi
    else
      rc=2
    fi
    worker=$("$py" -c '
import json, sys
d = json.loads(sys.argv[1])
print(next((w["state"] for w in d.get("workers", []) if w.get("host") == sys.argv[2]
            and w.get("state") == "ALIVE"), "not ALIVE"))' "$json" "$(host_ip "$i")")
    [ "$worker" = ALIVE ] || rc=2
    echo "$ns $(host_ip "$i") link=$link worker=$worker"
  done
  return $rc
}

case "$cmd" in
  up) do_up ;;
  down) do_down ;;
  status) do_status ;;
esac
