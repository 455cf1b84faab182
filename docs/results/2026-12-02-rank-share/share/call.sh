# one TP=2 rank's share of the 8B / 70B models run alone on one H200: its decode, and the host's phases at full batch
source scripts/gpu_setup.sh >/dev/null 2>&1
mkdir -p /tmp/r
lat() { timeout 200 python3 docs/results/2026-12-02-rank-share/share/variants.py bench latency --random-weights $1 --json-out /tmp/r/lat-$1-$2.json > /tmp/r/lat-$1-$2.log 2>&1; python3 -c "import json;d=json.load(open('/tmp/r/lat-$1-$2.json'));print('$1 $2', {k:round(v,2) for k,v in d.items() if 'decode_tok' in k or 'ttft' in k})" || tail -4 /tmp/r/lat-$1-$2.log; }
thr() { timeout 240 python3 docs/results/2026-12-02-rank-share/share/variants.py phases bench throughput --random-weights $1 --workload nano-vllm --json-out /tmp/r/thr-$1.json > /tmp/r/thr-$1.log 2>&1; grep -A30 "steps in" /tmp/r/thr-$1.log | head -24; grep -i "output tok\|tokens_per_s" /tmp/r/thr-$1.log | head -3; }
date; nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
lat llama-3.1-8b 1
lat llama-3.1-8b@tp2 1
lat llama-3.1-8b 2
lat llama-3.1-8b@tp2 2
thr llama-3.1-8b
thr llama-3.1-8b@tp2
lat llama-3.1-70b@tp2 1
date
tar czf $OUT/results.tgz -C /tmp/r .
