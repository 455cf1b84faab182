# the bf16 GEMV's 1,024-column steps (now the default) against 512 (bk512), alternated; then the kernel and engine checks
source scripts/gpu_setup.sh >/dev/null 2>&1
mkdir -p /tmp/r
v() { timeout 100 python3 docs/results/2026-12-02-rank-share/gemv/variants.py $1 bench latency --random-weights $2 --json-out /tmp/r/lat-$2-$1$3.json > /tmp/r/lat-$2-$1$3.log 2>&1; python3 -c "import json;d=json.load(open('/tmp/r/lat-$2-$1$3.json'));print('$2 $1$3', round(d['decode_tokens_per_s'],1), round(d['ttft_ms'],2))" || tail -3 /tmp/r/lat-$2-$1$3.log; }
date
for i in 1 2 3; do v base llama-3.1-8b $i; v bk512 llama-3.1-8b $i; done
v base llama-3.1-8b@tp2 1; v bk512 llama-3.1-8b@tp2 1
date
timeout 150 python3 scripts/gpu_kernel_check.py --no-bench > /tmp/r/kernel_check.txt 2>&1; grep -c PASS /tmp/r/kernel_check.txt; grep -i "fail" /tmp/r/kernel_check.txt | head
timeout 200 python3 scripts/gpu_engine_check.py 2>&1 | grep -v -e Loading -e Writing > /tmp/r/engine_check.txt; tail -15 /tmp/r/engine_check.txt
date
tar czf $OUT/results.tgz -C /tmp/r .
