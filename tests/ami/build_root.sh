#!/usr/bin/env bash
# Builds (or reuses) a Debian 12 root provisioned by ami/provision.sh: the image's root file
# system, without the cloud. Used by tests/ami/test_chroot.py; prints the root's path on stdout.
#
#   1. base: mmdebstrap --variant=minbase bookworm from deb.debian.org, kept as a tarball named
#      by the hash of its options (a base is about 15 s and 180 MB);
#   2. provisioned root: the base unpacked, then ami/provision.sh run in it by chroot, with
#      /proc, /sys, /dev (and /dev/shm, /run) mounted for the script's apt and pip. A stamp
#      keyed on the hash of ami/provision.sh, ami/constraints.txt and ami/files/ says which
#      provisioning built the root: when they change the root is rebuilt from the base;
#   3. when only tfos's source changed (another stamp, the source tarball's hash), the root is
#      provisioned again in place (the script is idempotent: apt and the locked packages are
#      already there, tfos is re-installed).
#
# The mounts are made in a mount namespace of this script's own (unshare), so none outlives
# it even if it is killed, and a trap unmounts them on every exit. pip's downloads are cached in
# CACHE/pip between runs (mounted in the root while provisioning, not part of the root).
#
# Usage: tests/ami/build_root.sh [--rebuild]     (as root; needs mmdebstrap, unshare)
# Environment: TFOS_AMI_CACHE (default /var/cache/tfos-ami), TFOS_VARIANT (default cpu).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
cache=${TFOS_AMI_CACHE:-/var/cache/tfos-ami}
variant=${TFOS_VARIANT:-cpu}
root=$cache/root-$variant
prog=build_root.sh

log() { echo "$prog: $*" >&2; }
die() { echo "$prog: error: $*" >&2; exit 1; }

if [ "${1:-}" = --rebuild ]; then rebuild=1; shift; else rebuild=0; fi
[ $# -eq 0 ] || die "usage: tests/ami/build_root.sh [--rebuild]"
[ "$(id -u)" -eq 0 ] || die "must run as root (chroot, mounts, mmdebstrap)"

# Re-run inside a private mount namespace: the mounts below vanish with this process.
if [ -z "${TFOS_AMI_MOUNT_NS:-}" ]; then
  command -v unshare >/dev/null || die "no unshare (util-linux)"
  TFOS_AMI_MOUNT_NS=1 exec unshare --mount --propagation private -- "$0" "$@"
fi
command -v mmdebstrap >/dev/null || die "no mmdebstrap: apt-get install mmdebstrap"

mkdir -p "$cache/pip"
exec 9>"$cache/.lock"
flock -w 1800 9 || die "another build holds $cache/.lock for over 30 minutes"

suite=bookworm
mirror=http://deb.debian.org/debian
# The suites Debian's cloud images use: the release, its updates and its security updates.
sources=("deb $mirror $suite main" "deb $mirror $suite-updates main"
         "deb http://deb.debian.org/debian-security $suite-security main")
base_opts=(--variant=minbase --include=ca-certificates "$suite")
base_key=$(printf '%s\n' "${base_opts[@]}" "${sources[@]}" | sha256sum | cut -c1-16)
base_tar=$cache/base-$base_key.tar
prov_key=$( (cd "$repo/ami" && find provision.sh constraints.txt files -type f -print0 | sort -z \
  | xargs -0 sha256sum; echo "$base_key $variant") | sha256sum | cut -c1-16)

# -- 1. base ---------------------------------------------------------------------------------
if [ ! -f "$base_tar" ]; then
  log "building the Debian 12 base with mmdebstrap ($mirror)"
  rm -rf "$base_tar.tmp"
  mmdebstrap --quiet --format=tar "${base_opts[@]}" "$base_tar.tmp" "${sources[@]}" \
    || die "mmdebstrap failed (see above): is $mirror reachable?"
  mv -f "$base_tar.tmp" "$base_tar"
fi

# -- source ----------------------------------------------------------------------------------
src=$cache/tfos-src.tar.gz
"$repo/ami/pack-source.sh" "$src.tmp"
src_key=$(sha256sum <"$src.tmp" | cut -c1-16)
mv -f "$src.tmp" "$src"

# -- 2./3. the provisioned root ----------------------------------------------------------------
mounts=()
unmount_all() {
  local i
  for ((i = ${#mounts[@]} - 1; i >= 0; i--)); do
    umount -l "${mounts[$i]}" 2>/dev/null || log "could not unmount ${mounts[$i]}"
  done
  mounts=()
}
trap unmount_all EXIT
mount_in_root() {  # mount_in_root TARGET mount-args...
  local target=$root$1; shift
  mkdir -p "$target"
  mount "$@" "$target" || die "cannot mount $* on $target"
  mounts+=("$target")
}

if [ "$rebuild" = 1 ] || [ "$(cat "$root.provisioned" 2>/dev/null)" != "$prov_key" ]; then
  log "unpacking the base into $root (provisioning $prov_key)"
  rm -rf "$root" "$root.provisioned" "$root.source"
  mkdir -p "$root"
  tar -xf "$base_tar" -C "$root"
elif [ "$(cat "$root.source" 2>/dev/null)" = "$src_key" ]; then
  log "cached: $root (provisioning $prov_key, tfos source $src_key)"
  echo "$root"
  exit 0
else
  log "tfos's source changed: provisioning $root again in place"
fi

mount_in_root /proc -t proc proc
mount_in_root /sys --rbind /sys
mount --make-rslave "$root/sys"
mount_in_root /dev --rbind /dev
mount --make-rslave "$root/dev"
mount_in_root /dev/shm -t tmpfs tmpfs
mount_in_root /run -t tmpfs tmpfs
mount_in_root /root/.cache/pip --bind "$cache/pip"
mkdir -p "$root/tmp/tfos-ami"
cp -a "$repo/ami/." "$root/tmp/tfos-ami/"
cp "$src" "$root/tmp/tfos-src.tar.gz"
cp -L /etc/resolv.conf "$root/etc/resolv.conf"
# pip in the root trusts what this machine's pip trusts (a build host behind a TLS-inspecting
# proxy has that proxy's CA in its bundle, not in Debian's), and uses the same index.
pip_env=(PIP_CERT=/tmp/tfos-pip-ca.crt)
cp -L "${PIP_CERT:-${REQUESTS_CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}}" "$root/tmp/tfos-pip-ca.crt"
[ -z "${PIP_INDEX_URL:-}" ] || pip_env+=("PIP_INDEX_URL=$PIP_INDEX_URL")
[ -z "${PIP_DEFAULT_TIMEOUT:-}" ] || pip_env+=("PIP_DEFAULT_TIMEOUT=$PIP_DEFAULT_TIMEOUT")
# No service starts while packages install (there is no init in a chroot anyway).
printf '#!/bin/sh\nexit 101\n' >"$root/usr/sbin/policy-rc.d"
chmod +x "$root/usr/sbin/policy-rc.d"
start=$SECONDS
if [ -f "$root.provisioned" ]; then
  log "running ami/provision.sh in the root again (seconds: only tfos is re-installed)"
else
  log "running ami/provision.sh in the fresh root (several minutes)"
fi
chroot "$root" /usr/bin/env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
  HOME=/root LANG=C.UTF-8 TFOS_VARIANT="$variant" TFOS_SOURCE=/tmp/tfos-src.tar.gz \
  TFOS_AMI_DIR=/tmp/tfos-ami TFOS_PIP_CACHE_DIR=/root/.cache/pip "${pip_env[@]}" \
  bash /tmp/tfos-ami/provision.sh >&2 || die "ami/provision.sh failed in $root (see above)"
rm -rf "$root/usr/sbin/policy-rc.d" "$root/tmp/tfos-ami" "$root/tmp/tfos-src.tar.gz" "$root/tmp/tfos-pip-ca.crt"
unmount_all
echo "$prov_key" >"$root.provisioned"
echo "$src_key" >"$root.source"
log "provisioned $root in $((SECONDS - start)) s"
echo "$root"
