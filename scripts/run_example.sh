#!/usr/bin/env bash
# The main example end to end: sets up .venv, writes the MNIST-shaped data (offline, from
# scikit-learn's digits) once, then trains examples/mnist on a 3-node TF cluster (chief + 2
# workers) on an embedded Spark local-cluster and prints the test accuracy.
# Extra arguments go to mnist_spark.py (e.g. --num_ps 1, --epochs 5, --tensorboard).
set -euo pipefail
# shellcheck source=scripts/env.sh
source "$(dirname "$0")/env.sh"
data="$root/data/mnist"
if [ ! -d "$data/train" ]; then
  "$root/.venv/bin/python" examples/mnist/mnist_data_setup.py --output "$data"
fi
exec "$root/.venv/bin/python" examples/mnist/mnist_spark.py --cluster_size 3 \
  --data_dir "$data" "$@"
