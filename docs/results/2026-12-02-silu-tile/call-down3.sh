# the SiLU-prologue GEMV at 8 rows x 512 columns: the whole 8B's down through it (117 MB) against cuBLAS, the share's
# tiles around it, and the 70B share's down (235 MB)
source scripts/gpu_setup.sh >/dev/null 2>&1
mkdir -p /tmp/r/down3
v() { timeout 150 python3 docs/results/2026-12-02-silu-tile/variants.py $1 $2 localllm bench latency --random-weights $3 --json-out /tmp/r/down3/lat-$3-$2-$1-$4.json > /tmp/r/down3/lat-$3-$2-$1-$4.log 2>&1; python3 -c "import json;d=json.load(open('/tmp/r/down3/lat-$3-$2-$1-$4.json'));print('$3 share$2 $1 #$4', round(d['decode_tokens_per_s'],1))" || tail -3 /tmp/r/down3/lat-$3-$2-$1-$4.log; }
date -u
for i in 1 2; do for var in base mx120+dbn8+dbk512; do v $var 1 llama-3.1-8b $i; done; done
for var in mx60+dbn8+dbk256 mx60+dbn16+dbk512 mx60+dbn16+dbk256 mx60+dbn8+dbk512; do v $var 2 llama-3.1-8b 1; done
date -u
for var in base mx240+dbn8+dbk512; do v $var 2 llama-3.1-70b 1; done
date -u
tar czf $OUT/results.tgz -C /tmp/r down3
