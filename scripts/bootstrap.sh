#!/usr/bin/env bash
# Creates (or reuses) the virtualenv .venv inside the checkout and installs tfos with its test and
# example extras. Idempotent: a second run only checks that everything is installed.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
venv="$root/.venv"
python=${PYTHON:-python3}
if [ ! -x "$venv/bin/python" ]; then
  echo "[tfos] creating virtualenv $venv" >&2
  "$python" -m venv "$venv"
fi
stamp="$venv/.tfos-installed"
# Reinstall when setup.py or the compiled transport's C sources changed since the last install.
if [ ! -f "$stamp" ] || [ "$root/setup.py" -nt "$stamp" ] \
    || [ -n "$(find "$root/rdma/csrc" -newer "$stamp" -print -quit 2>/dev/null)" ]; then
  echo "[tfos] installing tfos and its dependencies into $venv (first time: about 2 minutes)" >&2
  "$venv/bin/python" -m pip install --quiet --upgrade pip 2>&1 | grep -v "^WARNING: Location" >&2 || true
  "$venv/bin/python" -m pip install --quiet -e "${root}[test,examples]" 2>&1 | grep -v "^WARNING: Location" >&2 || true
  "$venv/bin/python" -c "import importlib.util as u, sys; sys.exit(any(u.find_spec(m) is None for m in ('tfos', 'pyspark', 'tensorflow', 'tf_keras', 'grpc')))" \
    || { echo "[tfos] install failed: run '$venv/bin/python -m pip install -e ${root}[test,examples]' to see why" >&2; exit 1; }
  touch "$stamp"
fi
# The image's validators (tests/ami/test_static.py) need three Debian packages: packer,
# cloud-init and the shell linter. Installed here when missing and this is a root shell with
# apt (else the tests say what is missing, and fail under CI=true).
if ! command -v packer >/dev/null || ! command -v cloud-init >/dev/null \
    || ! command -v shellcheck >/dev/null; then
  if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null; then
    echo "[tfos] installing packer, cloud-init and shellcheck (apt) for the image's validators" >&2
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
        --no-install-recommends packer cloud-init shellcheck; } >/dev/null 2>&1 \
      || echo "[tfos] could not install packer, cloud-init and shellcheck with apt-get" >&2
  fi
fi
