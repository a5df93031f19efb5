#!/bin/bash
# Every GPU check of the GPU issues in one prepared run (under 8 minutes on an H100-class GPU).
#
# On a machine with a CUDA GPU and torch, transformers, accelerate, peft, torchmetrics installed, but not
# diffusers (the lent GPU machines have no network): carry diffusers as a wheel in .whl/, e.g. here
#   echo /.whl/ >> .git/info/exclude
#   python -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux_2_28_x86_64 -d .whl diffusers==0.42.1
# then run this script from the repository root. Results go to benchmarks/results/<gpu>-<date>.txt and, where
# $OUT is set, are copied there too.
set -o pipefail
cd "$(dirname "$0")/.."
if compgen -G ".whl/*.whl" > /dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
    export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
log=$(mktemp)
{
    echo "## nvidia-smi"; nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
    echo "## python benchmarks/cuda_check.py"; timeout 150 python3 benchmarks/cuda_check.py
    echo "## python benchmarks/bench_gpu.py --rounds 3 --write"; timeout 300 python3 benchmarks/bench_gpu.py --rounds 3 --write
} 2>&1 | grep -v "should be kept in float32" | tee "$log"
status=$?
if [ -n "$OUT" ]; then cp "$log" "$OUT/gpu_checks.log"; cp benchmarks/results/*"$(date +%F)"*.txt "$OUT/" 2>/dev/null; fi
exit $status
