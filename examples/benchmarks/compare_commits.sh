#!/usr/bin/env bash
# Measures two checkouts of tfos side by side, in one run, with the benchmark scripts each
# checkout ships: feed_bench.py (feed throughput) and startup_bench.py (start-up time).
#
# Usage:
#   examples/benchmarks/compare_commits.sh PREV_DIR NEW_DIR [--rounds N] [--out DIR]
#                                          [--timeout SECONDS]
#
# PREV_DIR and NEW_DIR are tfos checkouts (e.g. a worktree of an older commit:
#   git worktree add --detach /work/bench-prev <commit>
#   python3 -m venv /work/bench-prev/.venv
#   /work/bench-prev/.venv/bin/pip install -e '/work/bench-prev[test,examples]'
# ), each with its own virtualenv DIR/.venv holding tfos installed editable from DIR. Every
# run gets that checkout's environment only: its venv's python for the driver and, through
# PYSPARK_PYTHON, for the Spark executors' Python workers (the TF nodes are their children),
# a private SPARK_HOME made by DIR/scripts/spark_home.sh, SPARK_LOCAL_IP=127.0.0.1, no
# PYTHONPATH. Before measuring, each checkout is checked to import tfos from DIR on the driver,
# in a Spark task and in a TF node; the run stops if one does not.
#
# Each round runs, alternating the two checkouts (PREV first in odd rounds, NEW first in even
# rounds, so a slow drift of the machine does not favour one side):
#   feed_bench.py --skip-baseline --memory_gb 0.5      (about 1 min)
#   startup_bench.py --rounds 1                         (about 1 min)
# each under `timeout` (--timeout, default 900 s). Every run's stdout+stderr is saved under the
# results directory (--out, default /tmp/compare-<timestamp>/) as rN-<bench>-<prev|new>.log;
# at the end a table of the headline numbers (median over rounds) with NEW/PREV is printed and
# saved as summary.txt. Nothing is asserted; numbers on a shared machine are noisy (compare
# the same tree against itself to see how noisy).
set -euo pipefail

usage() {
  sed -n '5,7p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2
  exit 2
}
die() { echo "compare_commits.sh: error: $*" >&2; exit 1; }
say() { echo "[$(date +%H:%M:%S)] $*" >&2; }

rounds=1
out=""
limit=900
positional=()
while [ $# -gt 0 ]; do
  case $1 in
    --rounds) [ $# -ge 2 ] || usage; rounds=$2; shift 2 ;;
    --rounds=*) rounds=${1#*=}; shift ;;
    --out) [ $# -ge 2 ] || usage; out=$2; shift 2 ;;
    --out=*) out=${1#*=}; shift ;;
    --timeout) [ $# -ge 2 ] || usage; limit=$2; shift 2 ;;
    --timeout=*) limit=${1#*=}; shift ;;
    -h|--help) usage ;;
    -*) echo "unknown option $1" >&2; usage ;;
    *) positional+=("$1"); shift ;;
  esac
done
[ ${#positional[@]} -eq 2 ] || usage
[[ $rounds =~ ^[1-9][0-9]*$ ]] || die "--rounds must be a positive integer, not '$rounds'"
[[ $limit =~ ^[1-9][0-9]*$ ]] || die "--timeout must be a positive integer, not '$limit'"
command -v timeout >/dev/null || die "the 'timeout' command (coreutils) is missing"

declare -A dir python home
for i in 0 1; do
  side=$([ "$i" = 0 ] && echo prev || echo new)
  d=$(cd "${positional[$i]}" 2>/dev/null && pwd -P) || die "${positional[$i]}: no such directory"
  for script in feed_bench.py startup_bench.py; do
    [ -f "$d/examples/benchmarks/$script" ] || die "$d has no examples/benchmarks/$script"
  done
  [ -x "$d/.venv/bin/python" ] || die "$d/.venv/bin/python missing: create the checkout's venv \
(python3 -m venv $d/.venv && $d/.venv/bin/pip install -e '${d}[test,examples]')"
  [ -x "$d/scripts/spark_home.sh" ] || die "$d/scripts/spark_home.sh missing"
  dir[$side]=$d
  python[$side]=$d/.venv/bin/python
  home[$side]=$(VENV="$d/.venv" "$d/scripts/spark_home.sh") || die "$d/scripts/spark_home.sh failed"
done

out=${out:-/tmp/compare-$(date +%Y%m%d-%H%M%S)}
mkdir -p "$out" || die "cannot create $out"
out=$(cd "$out" && pwd -P)

# in_checkout SIDE LOG SECONDS COMMAND...: runs COMMAND in that checkout's directory and environment, in
# a clean environment apart from HOME/PATH/locale (nothing of the caller's venv, PYTHONPATH,
# SPARK_HOME or PYSPARK_* leaks in), stdout+stderr to LOG, bounded by `timeout` to SECONDS: on expiry its
# process group (Spark's JVMs, Python workers, TF nodes) gets SIGTERM, then SIGKILL 30 s later.
# Whatever of that group outlives COMMAND gets 60 s to exit, then SIGKILL. Returns COMMAND's
# exit status (124: timed out).
in_checkout() {
  local side=$1 log=$2 seconds=$3 pid rc=0; shift 3
  (
    cd "${dir[$side]}"
    exec env -i HOME="${HOME:-/root}" USER="${USER:-root}" LANG="${LANG:-C.UTF-8}" TERM=dumb \
      PATH="${dir[$side]}/.venv/bin:$PATH" VIRTUAL_ENV="${dir[$side]}/.venv" \
      ${JAVA_HOME:+JAVA_HOME="$JAVA_HOME"} TMPDIR="${TMPDIR:-/tmp}" \
      SPARK_LOCAL_IP=127.0.0.1 PYSPARK_PYTHON="${python[$side]}" SPARK_HOME="${home[$side]}" \
      TF_CPP_MIN_LOG_LEVEL=2 \
      timeout -k 30 "$seconds" "$@"
  ) >"$log" 2>&1 &
  pid=$!  # that of `timeout`, which leads a process group of its own
  wait "$pid" || rc=$?
  for _ in $(seq 60); do pgrep -g "$pid" >/dev/null || break; sleep 1; done
  if pgrep -g "$pid" >/dev/null; then
    say "  killing what is left of the run (process group $pid)"
    kill -KILL -- "-$pid" 2>/dev/null || true
  fi
  return "$rc"
}

# Where does each side's tfos come from: the driver, a Spark task (executor's Python worker),
# a TF node started by tfos (a child of a Python worker). Only the public API is used.
read -r -d '' WHICH_TFOS <<'PY' || true
import os, sys, tempfile
import tfos
from pyspark.sql import SparkSession

def where(_=None):
    import sys, tfos
    return f"{os.path.realpath(tfos.__file__)} (python {sys.executable})"

def node_fun(args, ctx):
    with open(args["out"], "w") as f:
        f.write(where())

spark = (SparkSession.builder.master("local-cluster[1,1,1024]").appName("which-tfos")
         .config("spark.ui.enabled", "false").config("spark.ui.showConsoleProgress", "false")
         .getOrCreate())
spark.sparkContext.setLogLevel("ERROR")
print("driver:", where())
print("task:  ", spark.sparkContext.parallelize([0], 1).map(where).collect()[0])
with tempfile.TemporaryDirectory() as d:
    cluster = tfos.TFCluster.run(spark, node_fun, {"out": os.path.join(d, "node")},
                                 num_executors=1, log_stream=None)
    cluster.shutdown(timeout=120)
    with open(os.path.join(d, "node")) as f:
        print("node:  ", f.read())
spark.stop()
PY

for side in prev new; do
  log=$out/which-tfos-$side.log
  say "$side: ${dir[$side]} at $(git -C "${dir[$side]}" describe --always --dirty 2>/dev/null || echo '?'): checking where tfos is imported from"
  in_checkout "$side" "$log" 300 "${python[$side]}" -u -c "$WHICH_TFOS" \
    || die "$side: the tfos check failed (exit $?); see $log"
  grep -E '^(driver|task|node):' "$log" | sed 's/^/    /' >&2
  [ "$(grep -cE '^(driver|task|node):' "$log")" = 3 ] || die "$side: the tfos check printed no result; see $log"
  if grep -E '^(driver|task|node):' "$log" | grep -vqF " ${dir[$side]}/tfos/"; then
    die "$side: tfos is not imported from ${dir[$side]}/tfos everywhere; see $log"
  fi
done

{
  echo "started $(date -Is), $rounds round(s), timeout ${limit}s per run, $(nproc) cores"
  for side in prev new; do
    echo "$side: ${dir[$side]}  $(git -C "${dir[$side]}" log -1 --format='%h %s' 2>/dev/null | cut -c1-90)"
    echo "      $(git -C "${dir[$side]}" status --porcelain 2>/dev/null | wc -l) changed/untracked paths"
  done
} | tee "$out/meta.txt" >&2

# bench NAME SIDE ROUND ARGS...: one benchmark run, its output saved; failures are recorded.
bench() {
  local name=$1 side=$2 round=$3; shift 3
  local log=$out/r$round-$name-$side.log start rc=0
  say "round $round/$rounds: $name, $side"
  start=$(date +%s)
  in_checkout "$side" "$log" "$limit" "${python[$side]}" "examples/benchmarks/${name}_bench.py" "$@" \
    || rc=$?
  echo "# exit $rc after $(( $(date +%s) - start )) s" >>"$log"
  [ "$rc" = 0 ] || say "  $name/$side failed (exit $rc$([ "$rc" = 124 ] && echo ": timed out")); see $log"
}

for round in $(seq 1 "$rounds"); do
  if (( round % 2 )); then order=(prev new); else order=(new prev); fi
  for side in "${order[@]}"; do bench feed "$side" "$round" --skip-baseline --memory_gb 0.5; done
  for side in "${order[@]}"; do bench startup "$side" "$round" --rounds 1; done
done

# The table: headline numbers parsed from the saved outputs, median over the rounds.
python3 - "$out" "$rounds" <<'PY' | tee "$out/summary.txt"
import re, statistics, sys
from pathlib import Path

out, rounds = Path(sys.argv[1]), int(sys.argv[2])
FEED = [  # (label in the table, line prefix in feed_bench's report)
    ("feed RDD end-to-end rec/s", "tfos feed, RDD, end to end"),
    ("feed RDD at-node rec/s", "tfos feed, RDD, node (first->last batch)"),
    ("feed DF end-to-end rec/s", "tfos feed, DataFrame, end to end"),
    ("feed DF at-node rec/s", "tfos feed, DataFrame, node (first->last batch)"),
    ("Spark ceiling RDD rec/s", "Spark ceiling, RDD ("),
    ("Spark ceiling DF rec/s", "Spark ceiling, DataFrame ("),
]

def feed(text):
    got = {}
    for line in text.splitlines():
        m = re.search(r"\s([\d,]+)\s+[\d,.]+\s*$", line)
        for label, prefix in FEED:
            if m and line.startswith(prefix):
                got[label] = float(m.group(1).replace(",", ""))
    return got

def startup(text):
    got, table = {}, False
    for line in text.splitlines():
        if line.startswith("node ") and "tfos" in line and "bare" in line:
            table = True
            continue
        m = re.match(r"(\S+)\s+(-?[\d.]+)\s+(-?[\d.]+)\s+[+-][\d.]+\s*$", line) if table else None
        if m:
            got[f"startup {m.group(1)} tfos s"] = float(m.group(2))
            got[f"startup {m.group(1)} bare s"] = float(m.group(3))
        elif table and line.strip():
            table = False
    return got

values = {}   # (label, side) -> [value per round]
order = [label for label, _ in FEED]
for side in ("prev", "new"):
    for r in range(1, rounds + 1):
        for name, parse in (("feed", feed), ("startup", startup)):
            log = out / f"r{r}-{name}-{side}.log"
            for label, v in (parse(log.read_text(errors="replace")) if log.exists() else {}).items():
                values.setdefault((label, side), []).append(v)
                if label not in order:
                    order.append(label)
startup_labels = sorted((l for l in order if l.startswith("startup ")),
                        key=lambda l: (l.endswith("bare s"), l))
order = [l for l in order if not l.startswith("startup ")] + startup_labels

def cell(vs):
    if not vs:
        return "-"
    m = statistics.median(vs)
    return f"{m:,.0f}" if m >= 100 else f"{m:.2f}"

print(f"\nmedian of {rounds} round(s); rec/s: higher is better, s: lower is better;"
      f" n = runs parsed (prev/new)")
print(f"{'metric':28s} {'PREV':>10s} {'NEW':>10s} {'NEW/PREV':>9s}  n")
for label in order:
    p, n = values.get((label, "prev"), []), values.get((label, "new"), [])
    ratio = f"{statistics.median(n) / statistics.median(p):.2f}x" if p and n else "-"
    print(f"{label:28s} {cell(p):>10s} {cell(n):>10s} {ratio:>9s}  {len(p)}/{len(n)}")
failed, took = [], {}
for log in sorted(out.glob("r*-*.log")):
    m = re.search(r"# exit (\d+) after (\d+) s\s*$", log.read_text(errors="replace"))
    if not m or m.group(1) != "0":
        failed.append(f"{log.name} (exit {m.group(1) if m else '?'})")
    if m:
        took.setdefault(log.name.split("-")[1], []).append(int(m.group(2)))
print("seconds per run (median): " + ", ".join(
    f"{name} {statistics.median(s):.0f}" for name, s in sorted(took.items())))
if failed:
    print("failed runs: " + ", ".join(failed))
print(f"outputs: {out}")
PY
