#!/usr/bin/env bash
# Quantized weights on one GPU: the kernels against their references and timed, greedy agreement of quantized models
# with the same weights dequantized to bf16 (1,000 tokens), Llama-3.1-8B decode / 1,024-token prefill / the nano-vllm
# workload in bf16, Q4_K_M, Q8_0, int4 (AWQ/GPTQ's kernels) and FP8, Qwen3-8B in bf16 and FP8, weight memory against
# file size, and a Qwen2.5-32B Q4_K_M within 24 GB with a 4k-token KV pool. Random weights are drawn on the device in
# each format from the real configs. Usage: scripts/gpu_quant.sh OUTDIR (every stage's JSON lands there, then
# summary.json). STAGES picks stages (default: all, in this order). SMOLLM2_GGUF names the embedded model's GGUF where
# its package is not installed; QUANT_GGUF names a real GGUF file to measure too (e.g.
# Llama-3.1-8B-Instruct-Q4_K_M.gguf). Run from the repository root.
set -u
OUT=${1:?usage: scripts/gpu_quant.sh OUTDIR}
mkdir -p "$OUT"
source scripts/gpu_setup.sh
# A command that hangs gets SIGABRT after STAGE_TIMEOUT seconds, so the fault handler prints every thread's stack
# and the next stage still runs.
py() { timeout -k 20 -s ABRT "${STAGE_TIMEOUT:-900}" python3 "$@"; }
ll() { py -m localllm.cli.main "$@"; }
nvidia-smi --query-gpu=index,name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpus.txt"
agree() {   # NAME ARGS...: 4 prompts x 1,000 tokens, quantized kernels vs the same weights in bf16 (transformers)
  local name=$1; shift
  py scripts/gpu_agreement.py "$@" --dtype bfloat16 --new-tokens 1000 --prompts 4 \
    --json-out "$OUT/agreement-$name.json" 2>&1 | tail -3
}
lat() {     # NAME ARCH QUANTIZE [bench options]: batch-1 decode (128 + 256 tokens) and a 1,024-token prefill
  local name=$1 arch=$2 quant=$3; shift 3
  ll bench latency --random-weights "$arch" --quantize "$quant" --ttft-prompt-tokens 1024 "$@" \
    --json-out "$OUT/$name-$arch-$quant.json" 2>&1 | tail -4
}
thr() {     # ARCH QUANTIZE: the nano-vllm workload (256 sequences, 134k output tokens)
  ll bench throughput --random-weights "$1" --quantize "$2" --workload nano-vllm \
    --json-out "$OUT/throughput-$1-$2.json" 2>&1 | tail -4
}
for stage in ${STAGES:-kernels agreement latency-8b prefill-8b throughput-8b qwen3-8b fit-32b real-gguf summary}; do
  echo "== $stage $(date -u +%H:%M:%S)"
  case $stage in
    kernels) py scripts/gpu_quant_check.py --json-out "$OUT/quant-kernels.json" | tee "$OUT/quant-kernels.txt" \
      | tail -40 ;;
    agreement)   # the embedded SmolLM2-135M: its own Q4_1/Q8_0 blocks, then quantized at load to Q8_0 and Q4_K_M
      for q in auto q8_0 q4_k_m fp8; do
        agree "smollm2-$q" ${SMOLLM2_GGUF:+--model "$SMOLLM2_GGUF"} --quantize "$q"
      done ;;
    latency-8b) for q in none q4_k_m q8_0 int4 fp8; do lat latency llama-3.1-8b "$q"; done ;;
    prefill-8b)   # the 1,024-token prefill again, apart from decode (its time is the median of 5 after one)
      for q in none q4_k_m; do lat prefill llama-3.1-8b "$q" --new-tokens 2 --prompt-tokens 16; done ;;
    throughput-8b) for q in none q4_k_m q8_0; do thr llama-3.1-8b "$q"; done ;;
    qwen3-8b) for q in none fp8; do lat latency qwen3-8b "$q"; thr qwen3-8b "$q"; done ;;
    fit-32b)   # weights plus a 4,096-token KV pool (256 blocks of 16), CUDA graphs included; peak vs 24 GiB
      lat fit qwen2.5-32b q4_k_m --max-model-len 4096 --num-kv-blocks 256 ;;
    real-gguf) if [ -n "${QUANT_GGUF:-}" ]; then
        ll bench latency --model "$QUANT_GGUF" --ttft-prompt-tokens 1024 --json-out "$OUT/latency-real-gguf.json" \
          2>&1 | tail -4
        agree real-gguf --model "$QUANT_GGUF" --quantize auto
      else echo "QUANT_GGUF not set: skipped"; fi ;;
    summary) py scripts/gpu_quant_summary.py "$OUT" | tee "$OUT/summary.txt" ;;
  esac
done
echo "== done $(date -u +%H:%M:%S)"
