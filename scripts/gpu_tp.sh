#!/usr/bin/env bash
# Tensor parallelism on a machine with several GPUs: correctness against one rank, 8B and 70B speed at each degree,
# the all-reduce share of a decode step, the degree the engine picks by itself, and `localllm ps` with a model split
# over the most GPUs. Usage: scripts/gpu_tp.sh OUTDIR (every stage's JSON lands there). DEGREES lists the degrees
# (default "1 2"; "1 2 4" on four GPUs), the last being the largest; the 70B model runs at the degrees above 1, or at
# DEGREES_70B. STAGES picks stages (default: all, in this order; ~15 minutes on 2 H200s); "share" times one rank's
# share of the 8B at the largest degree alone on GPU 0 (scripts/gpu_tp_rank_share.py): beside the same workloads at
# --tp, the difference is what crossing the GPUs costs. SMOLLM2_GGUF names the embedded model's GGUF where its
# package is not installed. Run from the repository root.
set -u
OUT=${1:?usage: scripts/gpu_tp.sh OUTDIR}
mkdir -p "$OUT"
source scripts/gpu_setup.sh
export NCCL_NVLS_ENABLE=0
DEGREES=${DEGREES:-1 2}
MAX=${DEGREES##* }
SPLIT=$(for tp in $DEGREES; do [ "$tp" -gt 1 ] && echo -n "$tp "; done)
DEGREES_70B=${DEGREES_70B:-$SPLIT}
# A command that hangs (a collective whose peer is gone) gets SIGABRT after STAGE_TIMEOUT seconds, so the fault
# handler prints every thread's stack and the next stage still runs.
py() { timeout -k 20 -s ABRT "${STAGE_TIMEOUT:-600}" python3 "$@"; }
nvidia-smi --query-gpu=index,name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpus.txt"
ll() { py -m localllm.cli.main "$@"; }
lat() { ll bench latency --random-weights "$1" --tp "$2" --allreduce "$3" --json-out "$OUT/latency-$1-tp$2-$3.json" 2>&1 | tail -6; }
thr() { ll bench throughput --random-weights "$1" --tp "$2" --allreduce "${3:-nccl}" --workload nano-vllm \
          --json-out "$OUT/throughput-$1-tp$2${3:+-$3}${TAG:+-$TAG}.json" 2>&1 | tail -6; }
padded() { [ -d /tmp/tp-smollm2 ] || python3 -c "import sys; sys.path.insert(0, 'scripts')
from pathlib import Path; from gpu_tp_agreement import padded_smollm2
padded_smollm2(Path('/tmp/tp-smollm2'), Path('$SMOLLM2_GGUF') if '${SMOLLM2_GGUF:-}' else None)"; }
for stage in ${STAGES:-fp32 agreement latency-8b latency-70b throughput-70b throughput-8b share allreduce profile degree ps}; do
  echo "== $stage $(date -u +%H:%M:%S)"
  case $stage in
    fp32) # a tiny model: a run past 5 minutes (cold kernel compiles included) hangs; the rest of the call is worth more
          for tp in $SPLIT; do
            STAGE_TIMEOUT=300 py scripts/gpu_tp_agreement.py --tiny /tmp/tp-tiny --tp "$tp" --new-tokens 64 \
              --json-out "$OUT/fp32-tiny-tp$tp.json"
            STAGE_TIMEOUT=300 py scripts/gpu_tp_agreement.py --tiny /tmp/tp-tiny --tp "$tp" --new-tokens 64 \
              --allreduce fused --alone --json-out "$OUT/fp32-tiny-tp$tp-fused.json"
            STAGE_TIMEOUT=300 py scripts/gpu_tp_agreement.py --tiny /tmp/tp-tiny --tp "$tp" --new-tokens 64 \
              --allreduce symm_mem --alone --json-out "$OUT/fp32-tiny-tp$tp-symm_mem.json"
          done ;;
    agreement) for kind in nccl symm_mem; do
        py scripts/gpu_tp_agreement.py --padded /tmp/tp-smollm2 ${SMOLLM2_GGUF:+--gguf "$SMOLLM2_GGUF"} --tp "$MAX" \
          --allreduce $kind --new-tokens 250 --prompts 4 --json-out "$OUT/agreement-bf16-tp$MAX-$kind.json" | tail -8
      done ;;
    latency-8b) for tp in $DEGREES; do lat llama-3.1-8b "$tp" nccl; done
                for kind in symm_mem fused; do lat llama-3.1-8b "$MAX" $kind; done ;;
    latency-70b) for tp in $DEGREES_70B; do lat llama-3.1-70b "$tp" nccl; lat llama-3.1-70b "$tp" fused; done ;;
    throughput-70b) for tp in $DEGREES_70B; do thr llama-3.1-70b "$tp"; done ;;
    throughput-8b) for tp in $DEGREES; do thr llama-3.1-8b "$tp"; done
                   thr llama-3.1-8b "$MAX" symm_mem   # two-shot for the full batch's 1-2 MiB messages
                   TAG=ch16 NCCL_MIN_NCHANNELS=16 thr llama-3.1-8b "$MAX" ;;
    share) share() { CUDA_VISIBLE_DEVICES=0 py scripts/gpu_tp_rank_share.py "$MAX" localllm bench "$@" 2>&1 | tail -4; }
           share latency --random-weights llama-3.1-8b --json-out "$OUT/latency-llama-3.1-8b-share$MAX.json"
           share throughput --random-weights llama-3.1-8b --workload nano-vllm \
             --json-out "$OUT/throughput-llama-3.1-8b-share$MAX.json" ;;
    allreduce) for tp in $SPLIT; do
        latency=(); for model in 8b 70b; do
          f="$OUT/latency-llama-3.1-$model-tp$tp-nccl.json"; [ -f "$f" ] && latency+=(--latency-json "$model=$f")
        done
        py scripts/gpu_tp_allreduce.py --world-size "$tp" "${latency[@]}" --json-out "$OUT/allreduce-tp$tp.json" | tail -30
        # NCCL's own choices against more channels and its Simple protocol (read when its communicator starts)
        NCCL_MIN_NCHANNELS=16 py scripts/gpu_tp_allreduce.py --world-size "$tp" --json-out "$OUT/allreduce-tp$tp-ch16.json"
        NCCL_PROTO=Simple py scripts/gpu_tp_allreduce.py --world-size "$tp" --json-out "$OUT/allreduce-tp$tp-simple.json"
      done ;;
    profile) for kind in nccl fused; do   # rank 0's kernels of a batch-1 8B decode step at the largest degree
        py scripts/gpu_tp_profile.py --tp "$MAX" --allreduce $kind --trace "$OUT/trace-8b-tp$MAX-$kind.json" \
          2>&1 | grep -v "^ *aten" | head -24
      done ;;
    degree) py scripts/gpu_tp_degree.py llama-3.1-8b llama-3.1-70b --json-out "$OUT/degree.json" ;;
    ps) padded
        ll serve --port 0 --tp "$MAX" --model /tmp/tp-smollm2 > "$OUT/serve.log" 2>&1 &
        for _ in $(seq 120); do ll ps --json 2>/dev/null | grep -q '"state": "ready"' && break; sleep 1; done
        ll run /tmp/tp-smollm2 "Say hello." --max-tokens 16 > "$OUT/run.txt" 2>&1
        ll ps | tee "$OUT/ps.txt"; ll ps --json > "$OUT/ps.json"
        ll stop; wait ;;
  esac
done
echo "== done $(date -u +%H:%M:%S)"
