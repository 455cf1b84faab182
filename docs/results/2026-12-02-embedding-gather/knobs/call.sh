# launch knobs in the whole decode step (Q4_K_M, batch 1), alternated with the tree as it is
source scripts/gpu_setup.sh >/dev/null 2>&1
mkdir -p /tmp/r
v() { timeout 120 python3 docs/results/2026-12-02-embedding-gather/knobs/variants.py $1 bench latency --random-weights llama-3.1-8b --quantize q4_k_m --ttft-prompt-tokens 1024 --json-out /tmp/r/lat-$1$2.json > /tmp/r/lat-$1$2.log 2>&1; python3 -c "import json;d=json.load(open('/tmp/r/lat-$1$2.json'));print('$1$2', {k:round(v,2) for k,v in d.items() if 'decode_tok' in k or 'ttft_ms' in k})" || tail -4 /tmp/r/lat-$1$2.log; }
date
v base 1
v gather
v rms4
v rms8
v attn32
v rope2
v longpps3
v base 2
date
tar czf $OUT/results.tgz -C /tmp/r .
