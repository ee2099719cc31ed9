# shellcheck shell=bash
# Sourced by the runner scripts: sets up .venv (scripts/bootstrap.sh) and the environment every
# run needs (ENV-NOTES): Spark on loopback, executors on the venv's python, a private SPARK_HOME.
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
"$root/scripts/bootstrap.sh"
export SPARK_LOCAL_IP=${SPARK_LOCAL_IP:-127.0.0.1}
export PYSPARK_PYTHON="$root/.venv/bin/python"
SPARK_HOME=$("$root/scripts/spark_home.sh")
export SPARK_HOME
cd "$root" || return 1
