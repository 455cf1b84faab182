#!/usr/bin/env bash
# localllm's GPU checks and benchmarks, run from the repository root on a machine with an NVIDIA GPU.
set -u

usage() {
  cat <<'EOF'
Usage: scripts/gpu_run.sh [--wheels DIR] OUTPUT_DIR [STAGE...]

Runs localllm's checks and benchmarks on this machine's GPU, from the repository root, and writes every result
into OUTPUT_DIR (created if missing). The models are built from their real configs with random weights, so
nothing is downloaded.

Stages (default: check latency throughput sweep):
  check        greedy tokens of the engine on the GPU against transformers  -> engine_check.txt
  agreement    bf16 greedy top-1 agreement with transformers, 4 x 1,000      -> agreement.json
               tokens of the embedded model (dense)
  latency      localllm bench latency for each model of $ARCHS              -> latency-ARCH.json
  throughput   localllm bench throughput, nano-vllm workload, qwen3-0.6b    -> throughput-nano-vllm.json
  sweep        localllm bench sweep for each model of $SWEEP_ARCHS          -> sweep-ARCH.json
  hf-latency   latency with transformers as the runtime, each of $ARCHS     -> hf-latency-ARCH.json
  compare-hf   64 streams of 256 tokens beside transformers' continuous batching -> throughput-vs-hf.json
  kernels      every Triton kernel against its reference, and their timings  -> kernel_check.txt
  startup      latency of each of $STARTUP_ARCHS twice over a new Triton     -> startup-ARCH-cold.json,
               cache: load_s cold (kernels compiled), then warm (disk cache)    startup-ARCH-warm.json
  fp8kv        the throughput stage with --kv-cache-dtype fp8, and greedy     -> throughput-nano-vllm-fp8kv.json,
               agreement with transformers over an fp8 KV cache (embedded)      agreement-fp8kv.json

Options:
  --wheels DIR  first install the wheels in DIR (localllm's dependencies) without the network, then localllm
                itself from this checkout; otherwise localllm must already be installed (pip install -e '.[test]')

Environment:
  ARCHS         models of latency and hf-latency (default: qwen3-0.6b llama-3.2-1b llama-3.1-8b)
  SWEEP_ARCHS   models of sweep (default: qwen3-0.6b llama-3.1-8b)
  STARTUP_ARCHS models of startup (default: qwen3-0.6b llama-3.1-8b)
  LOCALLLM_HOME the model store to use (default: a new temporary directory)
  LOCALLLM_EMBEDDED_GGUF  the embedded model's GGUF where its package is not installed (agreement, fp8kv)

Example: scripts/gpu_run.sh results/ latency sweep
EOF
}

wheels=""
case "${1:-}" in
  -h|--help) usage; exit 0 ;;
  --wheels) wheels=${2:?"--wheels needs a directory"}; shift 2 ;;
esac
if [ $# -lt 1 ]; then
  usage >&2
  exit 2
fi
out=$1
shift
stages=${*:-check latency throughput sweep}
for stage in $stages; do
  case $stage in
    check|agreement|latency|throughput|sweep|hf-latency|compare-hf|kernels|startup|fp8kv) ;;
    *) echo "Error: unknown stage '$stage' (see scripts/gpu_run.sh --help)" >&2; exit 2 ;;
  esac
done
mkdir -p "$out" || exit 1

if [ -n "$wheels" ]; then
  site=$(mktemp -d)
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$site" "$wheels"/*.whl \
    || exit 1
  export PYTHONPATH=$site
  # an editable install, since kernels/ is installed as localllm.kernels (a bare PYTHONPATH cannot map it)
  python3 -m pip install -q --no-deps --no-build-isolation -e . >/dev/null || exit 1
fi
if ! python3 -c "import localllm.kernels" 2>/dev/null; then
  echo "Error: localllm is not installed; pip install -e '.[test]', or give its wheels with --wheels DIR" >&2
  exit 1
fi

if ! command -v nvidia-smi >/dev/null; then
  echo "Error: no nvidia-smi here; these checks and benchmarks need an NVIDIA GPU and its driver" >&2
  exit 1
fi

export PYTHONUNBUFFERED=1
export LOCALLLM_HOME=${LOCALLLM_HOME:-$(mktemp -d)}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
ll() { python3 -m localllm.cli.main "$@"; }
archs=${ARCHS:-qwen3-0.6b llama-3.2-1b llama-3.1-8b}
sweep_archs=${SWEEP_ARCHS:-qwen3-0.6b llama-3.1-8b}
startup_archs=${STARTUP_ARCHS:-qwen3-0.6b llama-3.1-8b}
for stage in $stages; do
  echo "== $stage $(date -u +%H:%M:%S)"
  case $stage in
    check) python3 scripts/gpu_engine_check.py 2>&1 | grep -v -e Loading -e Writing | tee "$out/engine_check.txt" ;;
    agreement) python3 scripts/gpu_agreement.py --dtype bfloat16 --json-out "$out/agreement.json" 2>&1 | tail -12 ;;
    latency) for arch in $archs; do
        ll bench latency --random-weights "$arch" --json-out "$out/latency-$arch.json" 2>&1 | tail -20; done ;;
    throughput) ll bench throughput --random-weights qwen3-0.6b --workload nano-vllm \
        --json-out "$out/throughput-nano-vllm.json" 2>&1 | tail -20 ;;
    sweep) for arch in $sweep_archs; do
        ll bench sweep --random-weights "$arch" --json-out "$out/sweep-$arch.json" 2>&1 | tail -14; done ;;
    hf-latency) for arch in $archs; do
        ll bench latency --backend hf --random-weights "$arch" --json-out "$out/hf-latency-$arch.json" 2>&1 | tail -20
        done ;;
    compare-hf)   # 64 streams of 256 tokens: transformers' continuous batching takes minutes over nano-vllm's
      ll bench throughput --random-weights qwen3-0.6b --streams 64 --new-tokens 256 --compare-hf \
        --json-out "$out/throughput-vs-hf.json" 2>&1 | tail -24 ;;
    kernels) python3 scripts/gpu_kernel_check.py 2>&1 | tee "$out/kernel_check.txt" | tail -40 ;;
    startup) for arch in $startup_archs; do
        cache=$(mktemp -d)
        for start in cold warm; do
          TRITON_CACHE_DIR=$cache ll bench latency --random-weights "$arch" \
            --json-out "$out/startup-$arch-$start.json" 2>&1 | grep -i load; done
        rm -rf "$cache"; done ;;
    fp8kv) ll bench throughput --random-weights qwen3-0.6b --workload nano-vllm --kv-cache-dtype fp8 \
        --json-out "$out/throughput-nano-vllm-fp8kv.json" 2>&1 | tail -20
      python3 scripts/gpu_agreement.py --dtype bfloat16 --kv-cache-dtype fp8 \
        --json-out "$out/agreement-fp8kv.json" 2>&1 | tail -12 ;;
  esac
done
