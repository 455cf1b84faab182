# the GEMV's short-row tiles in the whole decode step (Q4_K_M, batch 1), alternated with the tree as it is
source scripts/gpu_setup.sh >/dev/null 2>&1
mkdir -p /tmp/r
v() { timeout 100 python3 docs/results/2026-12-02-embedding-gather/knobs/variants.py $1 bench latency --random-weights llama-3.1-8b --quantize q4_k_m --json-out /tmp/r/lat-$1$2.json > /tmp/r/lat-$1$2.log 2>&1; python3 -c "import json;d=json.load(open('/tmp/r/lat-$1$2.json'));print('$1$2', {k:round(v,2) for k,v in d.items() if 'decode_tok' in k})" || tail -4 /tmp/r/lat-$1$2.log; }
date
v base 1
v fourpps2
v fourpps3
v fourpps6
v fourpps8
v fourwarps2
v fourwarps8
v fourbn8
v fourahead2
v sixpps6
v base 2
date
tar czf $OUT/results.tgz -C /tmp/r .
