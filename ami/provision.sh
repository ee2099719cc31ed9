#!/usr/bin/env bash
# Turns a Debian 12 host into a tfos cluster host. The one provisioning script: Packer runs it on
# the EC2 builder instance (ami/tfos.pkr.hcl), tests/ami runs it in a chroot of a Debian 12 root
# built with mmdebstrap. Run as root; idempotent (a second run only repairs and re-installs tfos).
#
# Installs and pins:
#   - OpenJDK 17 (JRE, headless), held at its version (apt-mark hold);
#   - rdma-core: libibverbs1, ibverbs-providers (the device drivers), ibverbs-utils,
#     python3-pyverbs (exposed to the venv alone, for python -m rdma.check);
#   - /opt/tfos/venv: Debian's Python 3.11 with tfos from the source tarball and every other
#     package at the version in ami/constraints.txt (ami/lock.sh writes it from the tested venv);
#     the versions installed are checked against the lock, line by line;
#   - gpu variant: Debian's NVIDIA driver (non-free) and TensorFlow's CUDA libraries (pip);
#   - the systemd units of ami/files/systemd, their helpers in /opt/tfos/bin, Spark's
#     configuration in /etc/tfos/spark, the source's examples/ in /opt/tfos/examples.
#
# Environment:
#   TFOS_VARIANT        cpu (default) or gpu
#   TFOS_SOURCE         tfos source tarball made by ami/pack-source.sh (default /tmp/tfos-src.tar.gz)
#   TFOS_AMI_DIR        a copy of ami/ on this host (default: this script's directory)
#   TFOS_PIP_CACHE_DIR  a pip cache to use (default: none, so the image carries no cache)
#   TFOS_APT_SIMULATE   set: only check that the variant's Debian packages resolve (tests)
set -euo pipefail

variant=${TFOS_VARIANT:-cpu}
source_tar=${TFOS_SOURCE:-/tmp/tfos-src.tar.gz}
ami=${TFOS_AMI_DIR:-$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)}
prefix=/opt/tfos
venv=$prefix/venv
py_minor=3.11

log() { echo "provision.sh: $*" >&2; }
die() { echo "provision.sh: error: $*" >&2; exit 1; }

# -- preconditions -------------------------------------------------------------------------------
[ "$(id -u)" -eq 0 ] || die "must run as root (under Packer: execute_command with sudo)"
case "$variant" in cpu|gpu) ;; *) die "TFOS_VARIANT must be cpu or gpu, got '$variant'" ;; esac
# shellcheck disable=SC1091
. /etc/os-release
if [ "${ID:-}" != debian ] || [ "${VERSION_ID:-}" != 12 ]; then
  die "this is ${PRETTY_NAME:-an unknown system}; the image is built on Debian 12 (bookworm)"
fi
arch=$(dpkg --print-architecture)
case "$arch" in amd64|arm64) ;; *) die "architecture $arch: TensorFlow has wheels for amd64 and arm64 only" ;; esac
[ "$variant" = cpu ] || [ "$arch" = amd64 ] || die "the gpu variant needs amd64 (NVIDIA's driver in Debian), not $arch"
[ -f "$source_tar" ] || die "no tfos source tarball at $source_tar (make it with ami/pack-source.sh, set TFOS_SOURCE)"
for f in constraints.txt files/systemd files/bin files/spark; do
  [ -e "$ami/$f" ] || die "$ami/$f is missing: TFOS_AMI_DIR must be a copy of the repository's ami/"
done

export DEBIAN_FRONTEND=noninteractive
apt_install() {
  apt-get install -y -q --no-install-recommends \
    -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold "$@"
}

# -- Debian packages -----------------------------------------------------------------------------
if [ "$variant" = gpu ]; then
  # Debian ships NVIDIA's driver in non-free, its firmware in non-free-firmware and some of
  # what the driver's packages need (nvidia-support, nvidia-installer-cleanup) in contrib.
  add_components='/ contrib( |$)/! s/$/ contrib/; / non-free( |$)/! s/$/ non-free/; / non-free-firmware/! s/$/ non-free-firmware/'
  if [ -f /etc/apt/sources.list.d/debian.sources ]; then
    sed -i -E "/^Components:/ { $add_components }" /etc/apt/sources.list.d/debian.sources
  fi
  if [ -f /etc/apt/sources.list ]; then
    sed -i -E "/^deb .*debian/ { $add_components }" /etc/apt/sources.list
  fi
fi
log "installing Debian packages ($variant variant)"
apt-get update -q
packages=(
  openjdk-17-jre-headless
  python3 python3-venv
  # tfos's compiled transport (rdma._core) is built by pip at install time.
  gcc libc6-dev python3-dev
  libibverbs1 ibverbs-providers ibverbs-utils rdma-core python3-pyverbs
  ca-certificates curl iproute2 netbase nftables procps e2fsprogs util-linux systemd
)
if [ "$variant" = gpu ]; then
  # A compute host's share of NVIDIA's driver, without X (nvidia-driver would add 80 packages
  # of it): the kernel module, built by DKMS for the current cloud kernel (installed with its
  # headers, so the image boots the kernel the module was built for), libcuda, the GSP
  # firmware newer GPUs load, and nvidia-smi, which the worker's GPU discovery script asks.
  packages+=(nvidia-kernel-dkms libcuda1 nvidia-smi firmware-nvidia-gsp dkms
             linux-image-cloud-amd64 linux-headers-cloud-amd64)
fi
if [ -n "${TFOS_APT_SIMULATE:-}" ]; then
  # For tests without the hardware: does this variant's package set resolve? Nothing installed.
  apt-get install --simulate -q --no-install-recommends "${packages[@]}" >/dev/null \
    || die "the $variant variant's Debian packages do not resolve (see above)"
  log "TFOS_APT_SIMULATE: the $variant variant's Debian packages resolve; stopping here"
  exit 0
fi
apt_install "${packages[@]}"
# Java 17 is what Spark 4 was tested with here; a later upgrade to another JDK or a new 17
# build stays a deliberate act (apt-mark unhold).
apt-mark hold openjdk-17-jre-headless >/dev/null
java_home=/usr/lib/jvm/java-17-openjdk-$arch
[ -x "$java_home/bin/java" ] || die "OpenJDK 17 installed, but $java_home/bin/java is missing"
python3 -c "import sys; assert sys.version_info[:2] == (3, 11)" 2>/dev/null \
  || die "python3 is $(python3 --version 2>&1), the lock was made for Python $py_minor"

# Spark's driver binds "localhost": a root without /etc/hosts (a minimal chroot; EC2's images
# have one) would ask DNS for it.
if ! grep -qsE '^127\.0\.0\.1[[:space:]].*\blocalhost\b' /etc/hosts; then
  printf '127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n' >>/etc/hosts
fi

# -- the user the daemons run as -------------------------------------------------------------------
if ! getent passwd spark >/dev/null; then
  useradd --system --user-group --home-dir /var/lib/tfos --shell /usr/sbin/nologin spark
fi
install -d -o spark -g spark -m 0755 /var/lib/tfos /var/lib/tfos/work

# -- the virtualenv --------------------------------------------------------------------------------
log "installing tfos and its locked dependencies into $venv"
rm -rf "$prefix/src"
install -d "$prefix/src"
tar -xzf "$source_tar" -C "$prefix/src"
[ -f "$prefix/src/setup.py" ] || die "$source_tar holds no setup.py at its top: not a tfos source tarball"
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
# pyverbs comes from Debian (PyPI's needs a newer rdma-core than bookworm's); the venv sees that
# one package, not the rest of Debian's Python packages.
install -d "$prefix/system-python"
ln -sfn /usr/lib/python3/dist-packages/pyverbs "$prefix/system-python/pyverbs"
echo "$prefix/system-python" >"$venv/lib/python$py_minor/site-packages/tfos-pyverbs.pth"
pip_opts=(--disable-pip-version-check --no-input --progress-bar off)
if [ -n "${TFOS_PIP_CACHE_DIR:-}" ]; then pip_opts+=(--cache-dir "$TFOS_PIP_CACHE_DIR"); else pip_opts+=(--no-cache-dir); fi
constraints=(-c "$ami/constraints.txt")
extra=()
if [ "$variant" = gpu ]; then
  # TensorFlow's CUDA and cuDNN libraries as pip packages (the "and-cuda" extra), at the
  # versions TensorFlow asks for; the driver above provides libcuda.
  extra=("tensorflow[and-cuda]")
fi
# pyspark (an sdist) and tfos are built with the locked setuptools and wheel, not with whatever
# an isolated build environment would download.
"$venv/bin/pip" install "${pip_opts[@]}" "${constraints[@]}" setuptools wheel
# pip re-installs a project given by its path every time (its version does not change with each
# commit); the locked packages already there are left as they are.
"$venv/bin/pip" install "${pip_opts[@]}" "${constraints[@]}" --no-build-isolation \
  "$prefix/src" scikit-learn "${extra[@]}"
rm -rf "$prefix/src/build" "$prefix/src/"*.egg-info
"$venv/bin/pip" check || die "pip check found broken dependencies in $venv (see above)"
"$venv/bin/python" - "$ami/constraints.txt" <<'PY' || die "the venv does not match ami/constraints.txt (see above)"
"""Every locked package is installed at exactly the locked version."""
import importlib.metadata as md
import sys

wrong = []
for line in open(sys.argv[1]):
    line = line.split("#", 1)[0].strip()
    if not line:
        continue
    name, version = line.split("==")
    try:
        got = md.version(name)
    except md.PackageNotFoundError:
        got = "not installed"
    if got != version:
        wrong.append(f"{name}: locked {version}, installed {got}")
if wrong:
    print("provision.sh: version mismatches:", *wrong, sep="\n  ", file=sys.stderr)
    sys.exit(1)
PY
"$venv/bin/python" -c "import rdma._core, tfos, pyspark" \
  || die "tfos does not import from $venv, or its compiled transport (rdma._core) did not build"
"$venv/bin/python" - "$prefix/src" <<'PY' || die "the tfos in $venv is not the one in $source_tar"
"""The installed tfos is this source's, file for file (not an earlier install left in place)."""
import filecmp, importlib, os, sys

src, stale = sys.argv[1], []
for package in ("tfos", "rdma"):
    installed = os.path.dirname(importlib.import_module(package).__file__)
    for folder, _, files in os.walk(os.path.join(src, package)):
        for name in (f for f in files if f.endswith(".py")):
            path = os.path.join(folder, name)
            target = os.path.join(installed, os.path.relpath(path, os.path.join(src, package)))
            if not os.path.exists(target) or not filecmp.cmp(path, target, shallow=False):
                stale.append(os.path.relpath(path, src))
if stale:
    print("provision.sh: installed files differ from the source:", *stale[:10], file=sys.stderr)
    sys.exit(1)
PY

# -- configuration, helpers, units ---------------------------------------------------------------
log "installing the units, their helpers and Spark's configuration"
rm -rf "$prefix/examples"
cp -a "$prefix/src/examples" "$prefix/examples"
install -d "$prefix/bin" /etc/tfos /etc/tfos/spark
install -m 0755 "$ami"/files/bin/* "$prefix/bin/"
install -m 0644 "$ami"/files/spark/* /etc/tfos/spark/
install -m 0644 "$ami"/files/systemd/*.service /etc/systemd/system/
# The daemons' fixed environment; /etc/tfos/cluster.env (user-data) and /run/tfos/node.env
# (tfos-node-env, at boot) say what differs per cluster and per host.
cat >/etc/tfos/spark.env <<EOF
# Written by ami/provision.sh.
JAVA_HOME=$java_home
SPARK_HOME=$venv/lib/python$py_minor/site-packages/pyspark
SPARK_CONF_DIR=/etc/tfos/spark
SPARK_DAEMON_JAVA_OPTS=-Dlog4j2.configurationFile=file:/etc/tfos/spark/log4j2-daemon.properties
PYSPARK_PYTHON=$venv/bin/python
TFOS_VARIANT=$variant
EOF
# Drivers started by a login shell (spark-submit on the master) get the same Spark and Python.
cat >/etc/profile.d/tfos.sh <<EOF
# Written by ami/provision.sh: tfos's Spark and Python for login shells.
export JAVA_HOME=$java_home SPARK_CONF_DIR=/etc/tfos/spark PYSPARK_PYTHON=$venv/bin/python
case ":\$PATH:" in *":$venv/bin:"*) ;; *) PATH=$venv/bin:\$PATH ;; esac
EOF
# --rdma registers its buffers: rdma.check asks for at least 64 MiB of locked memory. The units
# set LimitMEMLOCK themselves; this is for drivers and TF processes started from a login.
cat >/etc/security/limits.d/90-tfos-memlock.conf <<'EOF'
# Written by ami/provision.sh: RDMA registers (locks) memory; see python -m rdma.check.
*    soft    memlock    unlimited
*    hard    memlock    unlimited
EOF
# Boot: discover the host, firewall it, tell whether --rdma can work. The master and worker
# units are enabled by the user-data (or started by scripts/cluster.sh) for the host's role.
systemctl enable tfos-node-env.service tfos-firewall.service tfos-rdma-check.service >/dev/null

{
  echo "# Written by ami/provision.sh: what this image holds."
  echo "variant=$variant"
  echo "built=$(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "java=$(dpkg-query -W -f '${Version}' openjdk-17-jre-headless)"
  echo "rdma-core=$(dpkg-query -W -f '${Version}' rdma-core)"
  echo "python=$("$venv/bin/python" -c 'import platform; print(platform.python_version())')"
  "$venv/bin/pip" freeze --disable-pip-version-check | sed 's/^/pip: /'
} >"$prefix/MANIFEST"
apt-get clean
log "done: $prefix/MANIFEST lists what was installed"
