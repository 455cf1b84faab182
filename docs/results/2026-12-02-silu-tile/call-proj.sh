# one TP=2 rank's share of the 8B: the qkv (RMSNorm prologue) and o (residual epilogue) GEMVs' tiles in the whole step
source scripts/gpu_setup.sh >/dev/null 2>&1
mkdir -p /tmp/r/proj
v() { timeout 100 python3 docs/results/2026-12-02-silu-tile/variants_qkv_o.py $1 2 localllm bench latency --random-weights llama-3.1-8b --json-out /tmp/r/proj/lat-$1-$2.json > /tmp/r/proj/lat-$1-$2.log 2>&1; python3 -c "import json;d=json.load(open('/tmp/r/proj/lat-$1-$2.json'));print('$1 #$2', round(d['decode_tokens_per_s'],1))" || tail -3 /tmp/r/proj/lat-$1-$2.log; }
date -u
v base 1
for var in obk512 obn8+obk512 obn2 qbk512 qbn8+qbk512 qbn2; do v $var 1; done
v base 2
date -u
tar czf $OUT/results.tgz -C /tmp/r proj
