#!/usr/bin/env bash
# The whole test suite: sets up .venv (scripts/bootstrap.sh), then runs pytest over tests/.
# Extra arguments go to pytest (e.g. scripts/run_tests.sh tests/unit -x).
set -euo pipefail
# shellcheck source=scripts/env.sh
source "$(dirname "$0")/env.sh"
# The fast tier first: a broken core fails in seconds, before any Spark starts. The image's
# fast validators run too; its slow chroot tier is scripts/test_ami.sh.
if [ $# -eq 0 ]; then
  set -- tests/unit tests/ami/test_static.py tests/ami/test_cluster_script.py tests/integration
fi
exec "$root/.venv/bin/python" -m pytest "$@"
