source scripts/gpu_setup.sh >/dev/null 2>&1
mkdir -p /tmp/r
v() { timeout 120 python3 docs/results/2026-12-02-rope-skip/norope.py $1 bench latency --random-weights $2 --json-out /tmp/r/lat-$2-$1$3.json > /tmp/r/lat-$2-$1$3.log 2>&1; python3 -c "import json;d=json.load(open('/tmp/r/lat-$2-$1$3.json'));print('$2 $1$3', round(d['decode_tokens_per_s'],1), round(d['ttft_ms'],2))" || tail -3 /tmp/r/lat-$2-$1$3.log; }
date
for i in 1 2; do v base qwen3-0.6b $i; v norope qwen3-0.6b $i; done
for i in 1 2; do v base llama-3.1-8b@tp2 $i; v norope llama-3.1-8b@tp2 $i; done
v base llama-3.1-8b 1; v norope llama-3.1-8b 1
date
tar czf $OUT/results.tgz -C /tmp/r .
