# alternated: the SiLU-prologue GEMV at 512 columns a step against 1,024: the share's down through the GEMV (as under
# the fused all-reduce), and whole small models whose down runs the GEMV anyway
source scripts/gpu_setup.sh >/dev/null 2>&1
mkdir -p /tmp/r/down2
v() { timeout 100 python3 docs/results/2026-12-02-silu-tile/variants.py $1 $2 localllm bench latency --random-weights $3 --json-out /tmp/r/down2/lat-$3-$2-$1-$4.json > /tmp/r/down2/lat-$3-$2-$1-$4.log 2>&1; python3 -c "import json;d=json.load(open('/tmp/r/down2/lat-$3-$2-$1-$4.json'));print('$3 share$2 $1 #$4', round(d['decode_tokens_per_s'],1))" || tail -3 /tmp/r/down2/lat-$3-$2-$1-$4.log; }
date -u
for i in 1 2; do for var in mx60 mx60+dbk512 mx60+dbk512+dbn8; do v $var 2 llama-3.1-8b $i; done; done
for i in 1 2; do for var in base dbk512; do v $var 1 qwen3-0.6b $i; v $var 1 llama-3.2-1b $i; done; done
date -u
tar czf $OUT/results.tgz -C /tmp/r down2
