#!/usr/bin/env bash
# What the lead runs on the GPU machine (device tool), from the repository root, with .whl carried.
# STAGES picks what runs (default: check latency throughput sweep); every result lands under $OUT.
set -u
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
  && export PYTHONPATH=/tmp/site || exit 1
# editable install: kernels/ is mapped to localllm.kernels, which a bare PYTHONPATH cannot do
python3 -m pip install -q --no-deps --no-build-isolation -e . >/dev/null 2>&1 || exit 1
export PYTHONUNBUFFERED=1 LOCALLLM_HOME=/tmp/llhome
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
ll() { python3 -m localllm.cli.main "$@"; }
ARCHS=${ARCHS:-qwen3-0.6b llama-3.2-1b llama-3.1-8b}
for stage in ${STAGES:-check latency throughput sweep}; do
  echo "== $stage $(date -u +%H:%M:%S)"
  case $stage in
    check) python3 scripts/gpu_engine_check.py 2>&1 | grep -v -e Loading -e Writing | tee $OUT/engine_check.txt ;;
    latency) for arch in $ARCHS; do
        ll bench latency --random-weights $arch --json-out $OUT/latency-$arch.json 2>&1 | tail -20; done ;;
    throughput) ll bench throughput --random-weights qwen3-0.6b --workload nano-vllm \
        --json-out $OUT/throughput-nano-vllm.json 2>&1 | tail -20 ;;
    sweep) for arch in ${SWEEP_ARCHS:-qwen3-0.6b llama-3.1-8b}; do
        ll bench sweep --random-weights $arch --json-out $OUT/sweep-$arch.json 2>&1 | tail -14; done ;;
    hf-latency) for arch in $ARCHS; do
        ll bench latency --backend hf --random-weights $arch --json-out $OUT/hf-latency-$arch.json 2>&1 | tail -20
        done ;;
    compare-hf) ll bench throughput --random-weights qwen3-0.6b --workload nano-vllm --compare-hf \
        --json-out $OUT/throughput-vs-hf.json 2>&1 | tail -24 ;;
  esac
done
