# the o GEMV (residual epilogue) at 512 columns a step, alternated: the TP=2 share of the 8B, Qwen3-0.6B, Llama-3.2-1B
source scripts/gpu_setup.sh >/dev/null 2>&1
mkdir -p /tmp/r/proj2
v() { timeout 100 python3 docs/results/2026-12-02-silu-tile/variants_qkv_o.py $1 $2 localllm bench latency --random-weights $3 --json-out /tmp/r/proj2/lat-$3-$2-$1-$4.json > /tmp/r/proj2/lat-$3-$2-$1-$4.log 2>&1; python3 -c "import json;d=json.load(open('/tmp/r/proj2/lat-$3-$2-$1-$4.json'));print('$3 share$2 $1 #$4', round(d['decode_tokens_per_s'],1))" || tail -3 /tmp/r/proj2/lat-$3-$2-$1-$4.log; }
date -u
for i in 1 2; do v obk512 2 llama-3.1-8b $i; v base 2 llama-3.1-8b $i; done
for i in 1 2; do v obk512 1 qwen3-0.6b $i; v base 1 qwen3-0.6b $i; done
v obk512 1 llama-3.2-1b 1; v base 1 llama-3.2-1b 1
date -u
tar czf $OUT/results.tgz -C /tmp/r proj2
