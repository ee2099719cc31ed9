#!/usr/bin/env bash
# Creates (idempotently) a private SPARK_HOME at <repo>/.spark-home and prints its path on stdout.
#
# The pip package of pyspark is a complete Spark distribution, but used as SPARK_HOME it makes
# Spark write into site-packages (local-cluster executors and standalone workers create
# $SPARK_HOME/work/app-*, which pile up there). The private SPARK_HOME is made of symlinks to the
# package's bin/ jars/ python/ sbin/ plus a conf/ directory of its own:
#   conf/spark-env.sh                 SPARK_LOCAL_IP=127.0.0.1 and PYSPARK_PYTHON=<venv>/bin/python
#                                     unless already set
#   conf/log4j2.properties            console at WARN (drivers, executors)
#   conf/log4j2-daemon.properties     INFO, for the standalone master/worker logs
#                                     (scripts/spark_standalone.sh points the daemons at it)
# so work/ (and logs/ of anything started from it) lands in the git-ignored checkout.
#
# Usage:  export SPARK_HOME=$(scripts/spark_home.sh)
# Environment: VENV (default <repo>/.venv) is the virtualenv whose pyspark is used;
#              TFOS_SPARK_HOME (default <repo>/.spark-home) is where the SPARK_HOME is made.
# Re-running repoints the symlinks (e.g. after the venv was rebuilt) and rewrites conf/ files
# that this script owns; it leaves other files in conf/ (your spark-defaults.conf) alone.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv=${VENV:-$root/.venv}
home=${TFOS_SPARK_HOME:-$root/.spark-home}

die() { echo "spark_home.sh: error: $*" >&2; exit 1; }

[ -x "$venv/bin/python" ] || die "no python at $venv/bin/python (run scripts/bootstrap.sh, or set VENV)"
pkg=$("$venv/bin/python" -c 'import pyspark, os; print(os.path.dirname(pyspark.__file__))' 2>/dev/null) \
  || die "pyspark is not importable from $venv/bin/python (pip install pyspark into $venv)"
for d in bin jars python sbin; do
  [ -d "$pkg/$d" ] || die "pyspark package at $pkg has no $d/ directory; is it the full pip package?"
done

mkdir -p "$home/conf"
for d in bin jars python sbin; do
  link="$home/$d"
  if [ -L "$link" ]; then
    [ "$(readlink "$link")" = "$pkg/$d" ] || ln -sfn "$pkg/$d" "$link"
  elif [ -e "$link" ]; then
    die "$link exists and is not a symlink; remove it and re-run"
  else
    ln -s "$pkg/$d" "$link"
  fi
done

# write_if_changed FILE: content on stdin; the file is replaced atomically, only when it differs.
write_if_changed() {
  local f=$1 tmp
  tmp=$(mktemp "$f.XXXXXX")
  cat >"$tmp"
  if [ -f "$f" ] && cmp -s "$tmp" "$f"; then rm -f "$tmp"; else chmod 644 "$tmp"; mv -f "$tmp" "$f"; fi
}

write_if_changed "$home/conf/spark-env.sh" <<EOF
# Written by scripts/spark_home.sh (rewritten on each run). Sourced by Spark's launch scripts.
# Bind to loopback unless the caller chose an address (without it Spark binds to eth0).
SPARK_LOCAL_IP="\${SPARK_LOCAL_IP:-127.0.0.1}"
# The venv's python for spark-submit'ed drivers and for the daemons' environment. A python
# process that creates its SparkSession itself must export PYSPARK_PYTHON before doing so:
# executors run the driver's PYSPARK_PYTHON (default "python3"), and spark.pyspark.python set
# from an already running python is ignored.
PYSPARK_PYTHON="\${PYSPARK_PYTHON:-$venv/bin/python}"
EOF

# log4j2 configuration at root level $1, headed by the comment $2.
log4j_config() {
  cat <<EOF
# Written by scripts/spark_home.sh (rewritten on each run): $2
rootLogger.level = $1
rootLogger.appenderRef.stdout.ref = console

appender.console.type = Console
appender.console.name = console
appender.console.target = SYSTEM_ERR
appender.console.layout.type = PatternLayout
appender.console.layout.pattern = %d{yy/MM/dd HH:mm:ss} %p %c{1}: %m%n%ex

logger.jetty.name = org.sparkproject.jetty
logger.jetty.level = warn
logger.jetty2.name = org.sparkproject.jetty.util.component.AbstractLifeCycle
logger.jetty2.level = error
# "Unable to load native-hadoop library" on every start
logger.nativecode.name = org.apache.hadoop.util.NativeCodeLoader
logger.nativecode.level = error
logger.parquet.name = org.apache.parquet.CorruptStatistics
logger.parquet.level = error
EOF
}

log4j_config warn "console (stderr) at WARN." | write_if_changed "$home/conf/log4j2.properties"
# Standalone master/worker daemons: their .out logs are what to read when a worker does not
# register, so INFO.
log4j_config info "standalone daemons at INFO." | write_if_changed "$home/conf/log4j2-daemon.properties"

echo "$home"
