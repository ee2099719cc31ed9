#!/usr/bin/env bash
# The whole test suite: sets up .venv (scripts/bootstrap.sh), then runs pytest over tests/.
# Extra arguments go to pytest (e.g. scripts/run_tests.sh tests/unit -x).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
"$root/scripts/bootstrap.sh"
cd "$root"
export SPARK_LOCAL_IP=${SPARK_LOCAL_IP:-127.0.0.1}
export PYSPARK_PYTHON="$root/.venv/bin/python"
export SPARK_HOME=$("$root/scripts/spark_home.sh")
# The fast tier first: a broken core fails in seconds, before any Spark starts.
if [ $# -eq 0 ]; then set -- tests/unit tests/integration; fi
exec "$root/.venv/bin/python" -m pytest "$@"
