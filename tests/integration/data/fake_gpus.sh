#!/bin/sh
# One fake GPU per Spark worker: the first free number, claimed atomically with mkdir.
dir=${TFOS_FAKE_GPU_DIR:?}
i=0
while ! mkdir "$dir/$i" 2>/dev/null; do i=$((i + 1)); done
echo "{\"name\": \"gpu\", \"addresses\": [\"$i\"]}"
