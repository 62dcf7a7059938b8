#!/usr/bin/env bash
# Set up (first run only) and run the end-to-end demo on a local Dask cluster.
# Extra arguments go to pipelines/demo.py, e.g. --subjects 400 --size 256.
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
exec python pipelines/demo.py "$@"
