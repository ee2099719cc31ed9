#!/usr/bin/env bash
# What a GPU or RDMA host offers tfos, checked with that host's own Python, no Spark and no
# TensorFlow needed (for a host being readied, or an accelerator machine lent for a short check):
#
#   1. the host: CPUs, kernel, GPUs (nvidia-smi), RDMA devices (sysfs) and libibverbs;
#   2. Spark's GPU discovery script (tests/integration/data/nvidia_gpus.sh) on this host's GPUs,
#      its JSON checked;
#   3. rdma._core built in place with this host's compiler and Python;
#   4. `python -m rdma.check`: whether --rdma can run here, and if not, what is missing;
#   5. the transport suite (carriers, engine faults, the verbs carrier through the fake
#      libibverbs and, where rdma-core and a device exist, the real one; comm; collectives);
#   6. p2p_bench (every carrier beside memcpy) and the tfos all-reduce of 64 MiB across 3
#      processes over shm:// and tcp:// (collective_bench; TensorFlow's RING beside it where TF
#      is installed).
#
# Usage: scripts/host_checks.sh [OUTDIR]   (default: a new temporary folder; logs go there)
# Exits non-zero when a check fails; the benchmarks only print.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
out=${1:-$(mktemp -d -t tfos-host-checks.XXXXXX)}
mkdir -p "$out"
python=$(command -v "${PYTHON:-python3}") || { echo "no ${PYTHON:-python3}"; exit 1; }
# Absolute, but not through its links: a virtual environment's python is a link out of it.
python="$(cd "$(dirname "$python")" && pwd)/$(basename "$python")"
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
failed=()
check() {  # check NAME COMMAND...: runs it, its output teed to OUTDIR/NAME.txt
    local name=$1; shift
    echo "=== $name: $*"
    if "$@" 2>&1 | tee "$out/$name.txt"; then echo "=== $name: ok"; else
        echo "=== $name: FAILED"; failed+=("$name"); fi
}

echo "=== host: $(nproc) CPUs, kernel $(uname -r), $("$python" --version 2>&1)"
if command -v nvidia-smi >/dev/null; then
    nvidia-smi --query-gpu=index,name,memory.total,driver_version --format=csv,noheader
    check gpu_discovery sh -c "sh tests/integration/data/nvidia_gpus.sh | $python -c '
import json, subprocess, sys
found = json.load(sys.stdin)
gpus = subprocess.run([\"nvidia-smi\", \"-L\"], capture_output=True, text=True).stdout
count = sum(line.startswith(\"GPU \") for line in gpus.splitlines())
assert found[\"name\"] == \"gpu\" and found[\"addresses\"] == [str(i) for i in range(count)], found
print(\"Spark discovery:\", found)'"
else
    echo "=== no nvidia-smi: no NVIDIA GPU checks"
fi
echo "=== RDMA devices in sysfs: $(find /sys/class/infiniband -mindepth 1 -maxdepth 1 -printf '%f ' 2>/dev/null)"
echo "=== libibverbs: $(ldconfig -p 2>/dev/null | grep -o 'libibverbs.so[.0-9]*' | sort -u | tr '\n' ' ') rdma-core $(dpkg-query -W -f '${Version}' libibverbs1 2>/dev/null || echo "(version unknown)")"

check build_core "$python" setup.py -q build_ext --inplace
# rdma.check exits 1 when --rdma cannot run on this host: that is a finding, not a failure.
echo "=== rdma_check"; "$python" -m rdma.check 2>&1 | tee "$out/rdma_check.txt"
check transport_suite "$python" -m pytest -q -rs --noconftest -p no:cacheprovider \
    tests/unit/test_core_ring.py tests/unit/test_carriers.py tests/unit/test_engine_faults.py \
    tests/unit/test_verbs_carrier.py tests/unit/test_comm.py tests/unit/test_collective.py \
    tests/unit/test_rdma_check.py tests/unit/test_framing.py tests/unit/test_peer.py

echo "=== p2p_bench"
"$python" examples/benchmarks/p2p_bench.py --sizes 4K,64K,1M,16M,64M 2>&1 | tee "$out/p2p.txt"
echo "=== all-reduce, 64 MiB across 3 processes (median ms of 5)"
(cd examples/benchmarks && "$python" collective_bench.py --sizes_mb 64 --procs 3) 2>&1 \
    | tee "$out/allreduce.txt"
if ((${#failed[@]})); then echo "host checks FAILED: ${failed[*]} (logs in $out)"; exit 1; fi
echo "host checks passed (logs in $out)"
