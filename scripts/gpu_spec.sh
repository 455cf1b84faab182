#!/usr/bin/env bash
# Speculative decoding on one GPU (docs/speculative.md): Llama-3.1-8B arch with random weights at batch 1 on the
# code-edit workload, plain and with n-gram drafts accepted with probability p = 0 ... 1 (the speedup-vs-acceptance
# curve); plain chat (random prompts, nothing matches) with and without speculation; the embedded SmolLM2-135M as its
# own target on the code-edit prompt (a real acceptance rate); the nano-vllm workload (256 sequences) with and without
# it. Usage: scripts/gpu_spec.sh OUTDIR (one JSON per run, then summary.txt). STAGES picks stages (default: all);
# PROBS the acceptance probabilities of the curve; TOKENIZER a model directory whose tokenizer writes the code-edit
# prompt of the random-weight runs (default the embedded model's). SMOLLM2_GGUF names the embedded model's GGUF where
# its package is not installed. Run from the repository root.
set -u
OUT=${1:?usage: scripts/gpu_spec.sh OUTDIR}
mkdir -p "$OUT"
source scripts/gpu_setup.sh
ll() { timeout -k 20 -s ABRT "${STAGE_TIMEOUT:-900}" python3 -m localllm.cli.main "$@"; }
lat() {   # NAME [bench latency options]
  local name=$1; shift
  ll bench latency --ttft-prompt-tokens 128 --new-tokens 512 "$@" --json-out "$OUT/$name.json" 2>&1 | tail -3
}
for stage in ${STAGES:-curve chat real throughput summary}; do
  echo "== $stage $(date -u +%H:%M:%S)"
  case $stage in
    curve)
      edit=(--random-weights llama-3.1-8b --workload code-edit ${TOKENIZER:+--model "$TOKENIZER"})
      lat code-edit-off "${edit[@]}"
      for p in ${PROBS:-0 0.2 0.4 0.6 0.7 0.8 0.9 1}; do
        lat "code-edit-p$p" "${edit[@]}" --speculative ngram --spec-accept-prob "$p"
      done ;;
    chat)
      lat chat-off --random-weights llama-3.1-8b
      lat chat-ngram --random-weights llama-3.1-8b --speculative ngram ;;
    real)
      lat smollm2-code-edit-off ${SMOLLM2_GGUF:+--model "$SMOLLM2_GGUF"} --workload code-edit
      lat smollm2-code-edit-ngram ${SMOLLM2_GGUF:+--model "$SMOLLM2_GGUF"} --workload code-edit --speculative ngram ;;
    throughput)
      for s in off ngram; do
        ll bench throughput --random-weights llama-3.1-8b --workload nano-vllm --speculative "$s" \
          --json-out "$OUT/nano-vllm-$s.json" 2>&1 | tail -3
      done ;;
    summary)
      python3 - "$OUT" <<'PY' | tee "$OUT/summary.txt"
import json, pathlib, sys
for path in sorted(pathlib.Path(sys.argv[1]).glob("*.json")):
    r = json.loads(path.read_text())
    rate = r.get("decode_tokens_per_s") or r.get("output_tokens_per_s")
    spec = r.get("speculation") or {}
    print(f"{path.stem:28} {rate:9.1f} tok/s  acceptance {spec.get('acceptance_rate', 0):.2f}  "
          f"mean accepted length {spec.get('mean_accepted_length', 0):.2f}")
PY
      ;;
  esac
done
