#!/usr/bin/env bash
# Starts, stops and uses a Spark standalone cluster of hosts made from the tfos image (ami/), over
# ssh, with the image's own systemd units: the same ones the user-data starts at boot.
#
# Usage:
#   scripts/cluster.sh [HOSTS] [SSH] [--cluster NAME] [--cidr CIDR] [--timeout S] start
#   scripts/cluster.sh [HOSTS] [SSH] stop | status
#   scripts/cluster.sh [HOSTS] [SSH] submit [spark-submit options] APP [app arguments]
#   scripts/cluster.sh [HOSTS] [SSH] run CMD [ARG...]       (on every host, as user spark)
#
#   HOSTS  --master ADDR --workers "ADDR ADDR ..."  (the addresses ssh reaches them at), or
#          --hosts FILE with lines "master ADDR" and "worker ADDR" ('#' comments)
#   SSH    --user USER (default admin, Debian's AMI user) --identity KEY_FILE
#          Extra ssh options in TFOS_SSH_OPTS; TFOS_SSH replaces the ssh command itself.
#
#   start   writes /etc/tfos/cluster.env on every host (the master's own private address is what
#           the workers get as TFOS_MASTER), starts tfos-spark-master, waits until it answers,
#           starts tfos-spark-worker on every worker and waits until all are ALIVE (--timeout,
#           default 180 s). Prints the master URL (spark://PRIVATE_ADDR:7077) on stdout.
#           --cluster (default tfos) names the cluster; --cidr is the network of its hosts that
#           each host's firewall lets in (default: each host's own subnet).
#   stop    stops the workers' units (their executors and TF processes with them), then the
#           master's.
#   status  the master's URL and each worker it knows, with its state, cores and memory.
#   submit  runs spark-submit on the master, as user spark from a login shell (the image's
#           venv and Spark configuration), with --master set to the cluster's.
#   run     runs a command on every host as user spark (e.g. to write example data to the
#           same path on each host).
# The scripts run on the hosts are in single quotes on purpose: they expand there, not here.
# shellcheck disable=SC2016
set -euo pipefail

prog=cluster.sh
log() { echo "$prog: $*" >&2; }
die() { echo "$prog: error: $*" >&2; exit 1; }
usage() { sed -n '5,28p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }

master='' workers=() hosts_file='' user=admin identity='' cluster=tfos cidr='' timeout=180
while [ $# -gt 0 ]; do
  case "$1" in
    --master) master=${2:?--master needs an address}; shift 2 ;;
    --workers) read -r -a workers <<<"${2:?--workers needs addresses}"; shift 2 ;;
    --hosts) hosts_file=${2:?--hosts needs a file}; shift 2 ;;
    --user) user=${2:?--user needs a name}; shift 2 ;;
    --identity) identity=${2:?--identity needs a key file}; shift 2 ;;
    --cluster) cluster=${2:?--cluster needs a name}; shift 2 ;;
    --cidr) cidr=${2:?--cidr needs a network}; shift 2 ;;
    --timeout) timeout=${2:?--timeout needs seconds}; shift 2 ;;
    -h|--help) usage ;;
    -*) log "unknown option: $1"; usage ;;
    *) break ;;
  esac
done
[ $# -ge 1 ] || usage
cmd=$1; shift
case "$cmd" in start|stop|status) [ $# -eq 0 ] || die "$cmd takes no arguments" ;;
  submit|run) [ $# -ge 1 ] || die "$cmd needs a command line" ;;
  *) log "unknown command: $cmd"; usage ;; esac
if [ -n "$hosts_file" ]; then
  [ -r "$hosts_file" ] || die "cannot read --hosts $hosts_file"
  while read -r role addr rest; do
    case "$role" in ''|'#'*) continue ;; esac
    if [ -z "$addr" ] || [ -n "$rest" ]; then
      die "$hosts_file: expected 'master ADDR' or 'worker ADDR', got '$role $addr $rest'"
    fi
    case "$role" in
      master) [ -z "$master" ] || die "$hosts_file: more than one master"; master=$addr ;;
      worker) workers+=("$addr") ;;
      *) die "$hosts_file: unknown role '$role' (master or worker)" ;;
    esac
  done <"$hosts_file"
fi
[ -n "$master" ] || die "no master: give --master ADDR or --hosts FILE"
[[ $timeout =~ ^[1-9][0-9]*$ ]] || die "--timeout must be seconds, got '$timeout'"
[[ $cluster =~ ^[A-Za-z0-9._-]+$ ]] || die "--cluster must be letters, digits, '.', '_' or '-', got '$cluster'"
[ -z "$cidr" ] || [[ $cidr =~ ^[0-9.]+/[0-9]+$ ]] || die "--cidr must look like 10.0.0.0/16, got '$cidr'"

# -- ssh ---------------------------------------------------------------------------------------
# Every call is bounded: the connection by ConnectTimeout, a dead peer by ServerAlive*.
read -r -a ssh_cmd <<<"${TFOS_SSH:-ssh}"
ssh_cmd+=(-o BatchMode=yes -o ConnectTimeout=10 -o ServerAliveInterval=15 -o ServerAliveCountMax=4 -l "$user")
[ -z "$identity" ] || ssh_cmd+=(-i "$identity")
if [ -n "${TFOS_SSH_OPTS:-}" ]; then read -r -a extra <<<"$TFOS_SSH_OPTS"; ssh_cmd+=("${extra[@]}"); fi

# on HOST SCRIPT [ARG...]: runs the bash SCRIPT as root on HOST, with the ARGs as $1, $2...
# ssh hands the remote login shell (bash, as on Debian's AMI) one command line: the ARGs quoted
# with %q arrive there whole; the script itself comes on standard input.
on() {
  local host=$1 script=$2 args=
  shift 2
  [ $# -eq 0 ] || args=$(printf '%q ' "$@")
  # shellcheck disable=SC2029  # expanded here on purpose: the quoted ARGs
  "${ssh_cmd[@]}" "$host" "sudo bash -s -- $args" <<<"set -euo pipefail
$script"
}

# Reads a value of /run/tfos/node.env on HOST.
node_env() {
  on "$1" 'sed -n "s/^$1=//p" /run/tfos/node.env' "$2"
}

cluster_env() {  # cluster_env ROLE [MASTER]
  printf 'TFOS_CLUSTER=%s\nTFOS_ROLE=%s\n' "$cluster" "$1"
  [ -z "${2:-}" ] || printf 'TFOS_MASTER=%s\n' "$2"
  [ -z "$cidr" ] || printf 'TFOS_CLUSTER_CIDR=%s\n' "$cidr"
}

configure() {  # configure HOST ROLE [MASTER]: cluster.env, then the boot units again
  local host=$1
  on "$host" '
[ -x /opt/tfos/bin/tfos-node-env ] || { echo "$(hostname): not a tfos image host (no /opt/tfos)" >&2; exit 1; }
install -d /etc/tfos
printf "%s\n" "$1" >/etc/tfos/cluster.env.new
mv -f /etc/tfos/cluster.env.new /etc/tfos/cluster.env
systemctl restart tfos-node-env.service tfos-firewall.service' "$(cluster_env "${@:2}")" \
    || die "configuring $host failed (see above; the journal there: journalctl -u tfos-node-env)"
}

# wait_master ALIVE_WORKERS: on the master, until its JSON shows that many ALIVE workers.
wait_master() {
  on "$master" '
want=$1 deadline=$((SECONDS + $2))
. <(sed -n "s/^\(TFOS_HOST\|TFOS_MASTER_WEBUI_PORT\)=/\1=/p" /run/tfos/node.env)
url=http://$TFOS_HOST:$TFOS_MASTER_WEBUI_PORT/json/
while :; do
  systemctl is-active --quiet tfos-spark-master.service \
    || { echo "tfos-spark-master is not running: journalctl -u tfos-spark-master" >&2; exit 3; }
  if json=$(curl -fsS --noproxy "*" --max-time 2 "$url" 2>/dev/null); then
    alive=$(printf "%s" "$json" | python3 -c "import json, sys; print(sum(w.get(\"state\") == \"ALIVE\" for w in json.load(sys.stdin).get(\"workers\", [])))")
    [ "$alive" -lt "$want" ] || exit 0
  fi
  [ $SECONDS -lt $deadline ] || { echo "after $2 s: ${alive:-no answer from $url}, want $want ALIVE worker(s)" >&2; exit 4; }
  sleep 1
done' "$1" "$timeout"
}

do_start() {
  local host master_addr url
  log "master $master: configuring cluster $cluster and starting tfos-spark-master"
  configure "$master" master
  on "$master" 'systemctl restart tfos-spark-master.service' || die "starting the master failed on $master"
  wait_master 0 || die "the master on $master did not come up (journalctl -u tfos-spark-master there)"
  master_addr=$(node_env "$master" TFOS_HOST)
  url=$(node_env "$master" TFOS_MASTER_URL)
  [ -n "$master_addr" ] || die "no TFOS_HOST in $master's /run/tfos/node.env"
  for host in "${workers[@]}"; do
    log "worker $host: joining $url"
    configure "$host" worker "$master_addr"
    on "$host" 'systemctl restart tfos-spark-worker.service' || die "starting the worker failed on $host"
  done
  wait_master "${#workers[@]}" \
    || die "not all ${#workers[@]} workers registered (journalctl -u tfos-spark-worker on each)"
  log "all ${#workers[@]} workers ALIVE"
  echo "$url"
}

do_stop() {
  local host rc=0
  for host in "${workers[@]}"; do
    log "worker $host: stopping tfos-spark-worker"
    on "$host" 'systemctl stop tfos-spark-worker.service' || { log "stopping the worker on $host failed"; rc=1; }
  done
  log "master $master: stopping tfos-spark-master"
  on "$master" 'systemctl stop tfos-spark-master.service' || { log "stopping the master on $master failed"; rc=1; }
  return $rc
}

do_status() {
  on "$master" '
. <(sed -n "s/^\(TFOS_HOST\|TFOS_MASTER_WEBUI_PORT\)=/\1=/p" /run/tfos/node.env)
curl -fsS --noproxy "*" --max-time 5 "http://$TFOS_HOST:$TFOS_MASTER_WEBUI_PORT/json/" | python3 -c "
import json, sys
d = json.load(sys.stdin)
print(d[\"url\"], d.get(\"status\", \"\"))
for w in d.get(\"workers\", []):
    print(\" \", w[\"host\"], w[\"state\"], w[\"cores\"], \"cores\", w[\"memory\"], \"MiB\")
"' || die "the master on $master does not answer (systemctl status tfos-spark-master there)"
}

as_spark='cd ~spark && exec sudo -u spark -H bash -lc "$1"'

do_submit() {
  # The driver runs on the master, bound to its private address; the app's paths are the
  # master's (the image has tfos's examples in /opt/tfos/examples).
  on "$master" "$as_spark" "set -a; . /run/tfos/node.env; set +a; exec spark-submit --master \"\$TFOS_MASTER_URL\" $(printf '%q ' "$@")"
}

do_run() {
  local host rc=0
  for host in "$master" "${workers[@]}"; do
    log "$host: $*"
    on "$host" "$as_spark" "$(printf '%q ' "$@")" || { log "failed on $host"; rc=1; }
  done
  return $rc
}

"do_$cmd" "$@"
