# the tree with the wide SiLU tile and down's 64 MB limit: GEMV check, share A/B against cuBLAS down, whole 8B,
# the 70B share's down through the GEMV at either tile (as under the fused all-reduce), engine check
source scripts/gpu_setup.sh >/dev/null 2>&1
mkdir -p /tmp/r/down4
v() { timeout 150 python3 docs/results/2026-12-02-silu-tile/variants.py $1 $2 localllm bench latency --random-weights $3 --json-out /tmp/r/down4/lat-$3-$2-$1-$4.json > /tmp/r/down4/lat-$3-$2-$1-$4.log 2>&1; python3 -c "import json;d=json.load(open('/tmp/r/down4/lat-$3-$2-$1-$4.json'));print('$3 share$2 $1 #$4', round(d['decode_tokens_per_s'],1), round(d['percent_of_roofline'],1))" || tail -3 /tmp/r/down4/lat-$3-$2-$1-$4.log; }
date -u
timeout 200 python3 scripts/gpu_gemv_check.py --no-sweep --json /tmp/r/down4/gemv_check.json > /tmp/r/down4/gemv_check.txt 2>&1; grep "tp2\|passed\|error" /tmp/r/down4/gemv_check.txt | head -20
for i in 1 2; do v base 2 llama-3.1-8b $i; v dmx48 2 llama-3.1-8b $i; done
v base 1 llama-3.1-8b 1
date -u
v mx240 2 llama-3.1-70b 1; v mx240+dbn4+dbk1024 2 llama-3.1-70b 1
date -u
timeout 200 python3 scripts/gpu_engine_check.py > /tmp/r/down4/engine_check.txt 2>&1; tail -4 /tmp/r/down4/engine_check.txt
date -u
tar czf $OUT/results.tgz -C /tmp/r down4
