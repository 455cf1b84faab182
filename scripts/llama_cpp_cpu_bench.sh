#!/usr/bin/env bash
# llama.cpp beside localllm on the CPU: builds llama-bench and llama-batched-bench (CPU only) from the llama.cpp
# source inside the llama-cpp-python sdist, then runs them on a GGUF (default: the embedded SmolLM2-135M Q4_1).
#
#   scripts/llama_cpp_cpu_bench.sh [WORKDIR] [GGUF]
#
# Prints llama-bench's tg128 / pp512 (batch-1 decode and prefill tokens/s) and llama-batched-bench's figures for
# 16 streams of 128-token prompts and 64 new tokens each (the workload of `localllm bench throughput --streams 16
# --new-tokens 64`). THREADS (default 2) and LLAMA_CPP_PYTHON_VERSION (default 0.3.36) may be set; every step
# runs under a timeout (pip prepares the sdist's metadata, installing its build backend, before it saves the file:
# minutes on a loaded machine). Needs cmake and a C++ compiler.
set -euo pipefail

WORK=$(realpath -m "${1:-/tmp/llama-cpp-bench}")
GGUF=${2:-}
THREADS=${THREADS:-2}
VERSION=${LLAMA_CPP_PYTHON_VERSION:-0.3.36}
PYTHON=${PYTHON:-$PWD/.venv/bin/python}

if [[ -z "$GGUF" ]]; then
  GGUF=$("$PYTHON" -c "from localllm.hub.embedded import embedded_gguf_path; print(embedded_gguf_path())")
fi
for tool in cmake c++; do
  command -v "$tool" >/dev/null || { echo "Error: $tool is needed to build llama.cpp" >&2; exit 1; }
done
mkdir -p "$WORK"
cd "$WORK"

if [[ ! -d src ]]; then
  timeout 1800 "$PYTHON" -m pip download --no-deps --no-binary :all: "llama-cpp-python==$VERSION" -d sdist
  mkdir -p src
  tar -xzf sdist/llama_cpp_python-*.tar.gz -C src --strip-components=1
fi
BUILD=src/vendor/llama.cpp/build
if [[ ! -x $BUILD/bin/llama-batched-bench ]]; then
  timeout 600 cmake -S src/vendor/llama.cpp -B "$BUILD" -DCMAKE_BUILD_TYPE=Release -DGGML_CUDA=OFF \
    -DGGML_METAL=OFF -DGGML_NATIVE=ON -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_SERVER=OFF
  timeout 3000 cmake --build "$BUILD" --config Release -j "$THREADS" --target llama-bench llama-batched-bench
fi

echo "== llama-bench: $GGUF, $THREADS threads, $(date -u +%FT%TZ), load $(cut -d' ' -f1-3 /proc/loadavg)"
timeout 600 "$BUILD/bin/llama-bench" -m "$GGUF" -t "$THREADS" -p 512 -n 128 -r 3
echo "== llama-batched-bench: 16 streams, 128-token prompts, 64 new tokens, load $(cut -d' ' -f1-3 /proc/loadavg)"
timeout 600 "$BUILD/bin/llama-batched-bench" -m "$GGUF" -t "$THREADS" -c 4096 -b 2048 -ub 512 -npp 128 -ntg 64 \
  -npl 1,16
