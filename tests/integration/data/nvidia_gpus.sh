#!/bin/sh
# Spark GPU discovery from nvidia-smi: {"name": "gpu", "addresses": ["0", "1", ...]}.
ids=$(nvidia-smi --query-gpu=index --format=csv,noheader | sed 's/.*/"&"/' | paste -sd, -)
echo "{\"name\": \"gpu\", \"addresses\": [$ids]}"
