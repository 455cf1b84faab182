#!/usr/bin/env bash
# Tensor parallelism on a machine with 2 GPUs: correctness against one rank, 8B and 70B speed, the all-reduce share of
# a decode step, and `localllm ps` with a TP=2 model. Usage: scripts/gpu_tp.sh OUTDIR (every stage's JSON lands
# there). STAGES picks stages (default: all, in this order; ~9 minutes on 2 H200s). SMOLLM2_GGUF names the embedded
# model's GGUF where its package is not installed. Run from the repository root.
set -u
OUT=${1:?usage: scripts/gpu_tp.sh OUTDIR}
mkdir -p "$OUT"
source scripts/gpu_setup.sh
export NCCL_NVLS_ENABLE=0
# A command that hangs (a collective whose peer is gone) gets SIGABRT after STAGE_TIMEOUT seconds, so the fault
# handler prints every thread's stack and the next stage still runs.
py() { timeout -k 20 -s ABRT "${STAGE_TIMEOUT:-600}" python3 "$@"; }
nvidia-smi --query-gpu=index,name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpus.txt"
ll() { py -m localllm.cli.main "$@"; }
lat() { ll bench latency --random-weights "$1" --tp "$2" --allreduce "$3" --json-out "$OUT/latency-$1-tp$2-$3.json" 2>&1 | tail -6; }
thr() { ll bench throughput --random-weights "$1" --tp "$2" --workload nano-vllm \
          --json-out "$OUT/throughput-$1-tp$2.json" 2>&1 | tail -6; }
for stage in ${STAGES:-fp32 agreement latency-8b latency-70b throughput-70b throughput-8b allreduce ps}; do
  echo "== $stage $(date -u +%H:%M:%S)"
  case $stage in
    fp32) py scripts/gpu_tp_agreement.py --tiny /tmp/tp-tiny --new-tokens 64 --json-out "$OUT/fp32-tiny.json" ;;
    agreement) py scripts/gpu_tp_agreement.py --padded /tmp/tp-smollm2 ${SMOLLM2_GGUF:+--gguf "$SMOLLM2_GGUF"} \
        --new-tokens 250 --prompts 4 \
        --json-out "$OUT/agreement-bf16.json" | tail -8 ;;
    latency-8b) lat llama-3.1-8b 1 nccl; lat llama-3.1-8b 2 nccl; lat llama-3.1-8b 2 symm_mem ;;
    latency-70b) lat llama-3.1-70b 2 nccl; lat llama-3.1-70b 2 symm_mem ;;
    throughput-70b) thr llama-3.1-70b 2 ;;
    throughput-8b) thr llama-3.1-8b 1; thr llama-3.1-8b 2 ;;
    allreduce) py scripts/gpu_tp_allreduce.py --json-out "$OUT/allreduce.json" \
        --latency-json "8b=$OUT/latency-llama-3.1-8b-tp2-nccl.json" \
        --latency-json "70b=$OUT/latency-llama-3.1-70b-tp2-nccl.json" | tail -30 ;;
    ps) [ -d /tmp/tp-smollm2 ] || python3 -c "import sys; sys.path.insert(0, 'scripts')
from pathlib import Path; from gpu_tp_agreement import padded_smollm2
padded_smollm2(Path('/tmp/tp-smollm2'), Path('$SMOLLM2_GGUF') if '${SMOLLM2_GGUF:-}' else None)"
        ll serve --port 0 --tp 2 --model /tmp/tp-smollm2 > "$OUT/serve.log" 2>&1 &
        for _ in $(seq 120); do ll ps --json 2>/dev/null | grep -q '"state": "ready"' && break; sleep 1; done
        ll run /tmp/tp-smollm2 "Say hello." --max-tokens 16 > "$OUT/run.txt" 2>&1
        ll ps | tee "$OUT/ps.txt"; ll ps --json > "$OUT/ps.json"
        ll stop; wait ;;
  esac
done
echo "== done $(date -u +%H:%M:%S)"
