# 1,024-column GEMV steps (default now) against 512 (bk512), alternated: one TP=2 rank's share of the 8B, and Qwen3-0.6B
source scripts/gpu_setup.sh >/dev/null 2>&1
mkdir -p /tmp/r
v() { timeout 100 python3 docs/results/2026-12-02-rank-share/gemv/variants.py $1 bench latency --random-weights $2 --json-out /tmp/r/lat-$2-$1$3.json > /tmp/r/lat-$2-$1$3.log 2>&1; python3 -c "import json;d=json.load(open('/tmp/r/lat-$2-$1$3.json'));print('$2 $1$3', round(d['decode_tokens_per_s'],1), round(d['ttft_ms'],2))" || tail -3 /tmp/r/lat-$2-$1$3.log; }
date
for i in 1 2; do v bk512 llama-3.1-8b@tp2 $i; v base llama-3.1-8b@tp2 $i; done
for i in 1 2; do v bk512 qwen3-0.6b $i; v base qwen3-0.6b $i; done
date
tar czf $OUT/results.tgz -C /tmp/r .
