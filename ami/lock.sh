#!/usr/bin/env bash
# Writes ami/constraints.txt: the exact version of every Python package the image installs,
# read from a working virtualenv (default: the checkout's .venv, the one the test suite passes
# in), so that the image runs what was tested.
#
# Usage:  ami/lock.sh [VENV]
#
# The lock holds the dependency closure of tfos (its install_requires, without extras) and of
# scikit-learn (examples/mnist/mnist_data_setup.py writes its data from scikit-learn's digits),
# nothing else of the venv (no pytest, no moto). Regenerate it after changing setup.py's
# dependencies or upgrading the venv, then rebuild the image; scripts/test_ami.sh checks that the
# image's venv matches it line for line.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
venv=${1:-$here/../.venv}
py=$venv/bin/python
[ -x "$py" ] || { echo "lock.sh: error: no python at $py (run scripts/bootstrap.sh, or pass a venv)" >&2; exit 1; }
out=$here/constraints.txt
tmp=$(mktemp "$out.XXXXXX")
trap 'rm -f "$tmp"' EXIT
"$py" - tfos scikit-learn >"$tmp" <<'PY'
"""Prints name==version for the installed closure of the given distributions (no extras)."""
import importlib.metadata as md
import sys

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

roots = sys.argv[1:]
seen, todo, lines = set(), list(roots), []
while todo:
    name = canonicalize_name(todo.pop())
    if name in seen:
        continue
    seen.add(name)
    try:
        dist = md.distribution(name)
    except md.PackageNotFoundError:
        sys.exit(f"lock.sh: error: {name} is required but not installed in this venv")
    if name != "tfos":
        lines.append(f"{dist.metadata['Name']}=={dist.version}")
    for text in dist.requires or []:
        req = Requirement(text)
        if req.marker is None or req.marker.evaluate({"extra": ""}):
            todo.append(req.name)
print("# Written by ami/lock.sh from a working venv: the image's Python packages, exactly.")
print("# Regenerate with ami/lock.sh [VENV]; do not edit by hand.")
print(*sorted(lines, key=str.lower), sep="\n")
PY
mv -f "$tmp" "$out"
trap - EXIT
echo "lock.sh: wrote $out ($(grep -vc '^#' "$out") packages)" >&2
