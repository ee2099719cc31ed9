#!/usr/bin/env bash
# The image's tests (ami/): the fast validators (tests/ami/test_static.py: packer validate,
# cloud-init schema, shellcheck, the units) and the slow tier (tests/ami/test_chroot.py): a
# Debian 12 root built with mmdebstrap and provisioned by ami/provision.sh, its units booted in
# a chroot, a 2-node tfos job on the Spark master and worker they start. Not part of
# scripts/run_tests.sh. Needs root, Debian's mmdebstrap, packer, cloud-init and shellcheck
# (apt-get install mmdebstrap packer cloud-init shellcheck), Debian's archive and the package
# index. The first run takes some minutes; the root is kept in TFOS_AMI_CACHE
# (/var/cache/tfos-ami), so later runs take a few.
#
# Usage: scripts/test_ami.sh [--from-nothing] [--clean] [pytest arguments]
#   --from-nothing  remove the cache first (the base, the root, pip's downloads)
#   --clean         remove the cache afterwards
# Every run checks at its end that no mount and no process of the build or the boot is left.
set -euo pipefail
root_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cache=${TFOS_AMI_CACHE:-/var/cache/tfos-ami}
export TFOS_AMI_CACHE=$cache
from_nothing=0 clean=0
while [ $# -gt 0 ]; do
  case "$1" in
    --from-nothing) from_nothing=1; shift ;;
    --clean) clean=1; shift ;;
    *) break ;;
  esac
done
[ "$(id -u)" -eq 0 ] || { echo "test_ami.sh: error: must run as root (mmdebstrap, chroot, mounts)" >&2; exit 1; }

# leftovers: mounts under the cache, processes whose root is inside it.
leftovers() {
  grep -F " $cache/" /proc/mounts || true
  local p
  for p in /proc/[0-9]*; do
    case "$(readlink "$p/root" 2>/dev/null)" in "$cache"/*) echo "process ${p#/proc/} in $cache" ;; esac
  done
}

remove_cache() {
  # Never through a mount: a bind-mounted /dev under the root would be emptied with it.
  [ -z "$(leftovers)" ] || { echo "test_ami.sh: error: not removing $cache: mounts or processes in it" >&2; leftovers >&2; exit 1; }
  rm -rf --one-file-system "$cache"
}
[ "$from_nothing" = 0 ] || remove_cache
start=$SECONDS
rc=0
# shellcheck source=scripts/env.sh
(source "$root_dir/scripts/env.sh" && exec "$root_dir/.venv/bin/python" -m pytest tests/ami -s "$@") || rc=$?
echo "test_ami.sh: tests/ami took $((SECONDS - start)) s (exit $rc)" >&2
left=$(leftovers)
if [ -n "$left" ]; then
  echo "test_ami.sh: error: left behind:" >&2
  echo "$left" >&2
  rc=1
fi
[ "$clean" = 0 ] || remove_cache
exit $rc
