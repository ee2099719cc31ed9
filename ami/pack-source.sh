#!/usr/bin/env bash
# Packs the tfos checkout into the source tarball that ami/provision.sh installs: the files git
# tracks plus new ones it does not ignore (so no .venv, data/ or build output), as they are in
# the work tree now.
#
# Usage: ami/pack-source.sh OUT.tar.gz
set -euo pipefail
out=${1:?usage: ami/pack-source.sh OUT.tar.gz}
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
git -C "$root" rev-parse --is-inside-work-tree >/dev/null 2>&1 \
  || { echo "pack-source.sh: error: $root is not a git checkout" >&2; exit 1; }
list=$(mktemp)
trap 'rm -f "$list"' EXIT
# Tracked files deleted in the work tree are left out, as they would be from a commit of it.
git -C "$root" ls-files -z --cached --others --exclude-standard \
  | while IFS= read -r -d '' f; do [ -e "$root/$f" ] && printf '%s\0' "$f"; done >"$list"
[ -s "$list" ] || { echo "pack-source.sh: error: no files to pack in $root" >&2; exit 1; }
# Same files, same bytes: names sorted, one fixed date (after 1980, which zip needs when pip
# builds a wheel from it), no timestamp in gzip's header; the test keys its cache on the hash.
tar -C "$root" --null -T "$list" --sort=name --mtime='2020-01-01 00:00Z' --owner=0 --group=0 \
  --numeric-owner -cf - | gzip -n >"$out"
echo "pack-source.sh: $out ($(tr -cd '\0' <"$list" | wc -c) files)" >&2
