# the tree (o at 512 columns from 4,096 rows over <= 2,048 columns) against its o at 1,024, alternated; Qwen3-0.6B
source scripts/gpu_setup.sh >/dev/null 2>&1
mkdir -p /tmp/r/proj3
v() { timeout 100 python3 docs/results/2026-12-02-silu-tile/variants_qkv_o.py $1 $2 localllm bench latency --random-weights $3 --json-out /tmp/r/proj3/lat-$3-$2-$1-$4.json > /tmp/r/proj3/lat-$3-$2-$1-$4.log 2>&1; python3 -c "import json;d=json.load(open('/tmp/r/proj3/lat-$3-$2-$1-$4.json'));print('$3 share$2 $1 #$4', round(d['decode_tokens_per_s'],1))" || tail -3 /tmp/r/proj3/lat-$3-$2-$1-$4.log; }
date -u
for i in 1 2; do v base 2 llama-3.1-8b $i; v obk1024 2 llama-3.1-8b $i; done
v base 1 qwen3-0.6b 1
date -u
tar czf $OUT/results.tgz -C /tmp/r proj3
