#!/usr/bin/env bash
# What the lead runs on the GPU machine (device tool), from the repository root, with .whl carried.
set -u
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
  && export PYTHONPATH=/tmp/site || exit 1
# editable install: kernels/ is mapped to localllm.kernels, which a bare PYTHONPATH cannot do
python3 -m pip install -q --no-deps --no-build-isolation -e . || exit 1
export PYTHONUNBUFFERED=1 LOCALLLM_HOME=/tmp/llhome
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
ll() { python3 -m localllm.cli.main "$@"; }
python3 scripts/gpu_engine_check.py 2>&1 | grep -v -e Loading -e Writing | tee $OUT/engine_check.txt
for arch in ${ARCHS:-qwen3-0.6b llama-3.2-1b llama-3.1-8b}; do
  ll bench latency --random-weights $arch --json-out $OUT/latency-$arch.json 2>&1 | tail -12
done
ll bench throughput --random-weights qwen3-0.6b --workload nano-vllm --json-out $OUT/throughput-nano-vllm.json 2>&1 | tail -12
if [ -n "${PROFILE:-}" ]; then
  python3 -m cProfile -s tottime -m localllm.cli.main bench throughput --random-weights qwen3-0.6b --workload nano-vllm \
    2>&1 | head -45 | tee $OUT/host_profile.txt
fi
