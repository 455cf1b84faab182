# the bf16 GEMV's launch in the whole batch-1 decode step: one TP=2 rank's share of the 8B alone, and the whole 8B
source scripts/gpu_setup.sh >/dev/null 2>&1
mkdir -p /tmp/r
v() { timeout 100 python3 docs/results/2026-12-02-rank-share/gemv/variants.py $1 bench latency --random-weights $2 --json-out /tmp/r/lat-$2-$1$3.json > /tmp/r/lat-$2-$1$3.log 2>&1; python3 -c "import json;d=json.load(open('/tmp/r/lat-$2-$1$3.json'));print('$2 $1$3', round(d['decode_tokens_per_s'],1))" || tail -3 /tmp/r/lat-$2-$1$3.log; }
date
R=llama-3.1-8b@tp2
v base $R 1
v all $R
v bk1024 $R
v bn8 $R
v bn2 $R
v w8 $R
v w2 $R
v st3 $R
v all+bk1024 $R
v base $R 2
v base llama-3.1-8b 1
v bk1024 llama-3.1-8b
v st3 llama-3.1-8b
v base llama-3.1-8b 2
date
tar czf $OUT/results.tgz -C /tmp/r .
