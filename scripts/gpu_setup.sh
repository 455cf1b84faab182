# Sourced by the scripts/gpu_*.sh measurement scripts, from the repository root: installs the wheels the GPU machine
# lacks (fastapi, uvicorn, msgspec, ... in .whl/, if present) into /tmp/site, localllm itself as -e (kernels/ maps to
# localllm.kernels only through the install), and sets the environment every stage shares.
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site || exit 1
fi
python3 -m pip install -q --no-deps --no-build-isolation -e . >/dev/null 2>&1 || exit 1
export PYTHONUNBUFFERED=1 PYTHONFAULTHANDLER=1 LOCALLLM_HOME=${LOCALLLM_HOME:-/tmp/llhome}
# the embedded model's GGUF, where its package is not installed: every command that defaults to it uses this file
if [ -n "${SMOLLM2_GGUF:-}" ]; then export LOCALLLM_EMBEDDED_GGUF=${LOCALLLM_EMBEDDED_GGUF:-$SMOLLM2_GGUF}; fi
