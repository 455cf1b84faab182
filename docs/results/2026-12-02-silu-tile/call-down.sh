# the share's down projection through the GEMV (as under the fused all-reduce) against cuBLAS, and its tiles
source scripts/gpu_setup.sh >/dev/null 2>&1
mkdir -p /tmp/r/down
v() { timeout 100 python3 docs/results/2026-12-02-silu-tile/variants.py $1 2 localllm bench latency --random-weights llama-3.1-8b --json-out /tmp/r/down/lat-$1$2.json > /tmp/r/down/lat-$1$2.log 2>&1; python3 -c "import json;d=json.load(open('/tmp/r/down/lat-$1$2.json'));print('$1$2', round(d['decode_tokens_per_s'],1))" || tail -3 /tmp/r/down/lat-$1$2.log; }
date -u
v base 1; for var in mx60 mx60+dbn8 mx60+dbn2 mx60+dw8 mx60+dbk512; do v $var; done; v base 2; v mx60 2
date -u
tar czf $OUT/results.tgz -C /tmp/r down
