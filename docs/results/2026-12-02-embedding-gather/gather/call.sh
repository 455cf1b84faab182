# the embedding rows by the dequantize kernel and one payload conversion (this tree) against 92c51a5 (checked out in base/)
source scripts/gpu_setup.sh >/dev/null 2>&1
mkdir -p /tmp/r
lat() { timeout 150 python3 -m localllm.cli.main bench latency --random-weights llama-3.1-8b --quantize $2 --ttft-prompt-tokens 1024 --json-out /tmp/r/lat-$1.json > /tmp/r/lat-$1.log 2>&1; python3 -c "import json;d=json.load(open('/tmp/r/lat-$1.json'));print('$1', {k:round(v,2) for k,v in d.items() if 'decode_tok' in k or 'ttft_ms' in k})" || tail -4 /tmp/r/lat-$1.log; }
date
timeout 200 python3 scripts/gpu_quant_check.py --no-bench > /tmp/r/check.txt 2>&1; echo "rc $?"; grep -c PASS /tmp/r/check.txt; grep -E "FAIL|Error|embedding" /tmp/r/check.txt | head
lat q4km-new1 q4_k_m
(cd base && python3 -m pip install -q --no-deps --no-build-isolation -e . >/dev/null 2>&1 && lat q4km-base q4_k_m)
python3 -m pip install -q --no-deps --no-build-isolation -e . >/dev/null 2>&1
lat q4km-new2 q4_k_m
timeout 200 python3 scripts/gpu_tp_profile.py --random-weights llama-3.1-8b --tp 1 --quantize q4_k_m --steps 20 --no-pdl > /tmp/r/profile-no-pdl.txt 2>&1; awk 'NR>4' /tmp/r/profile-no-pdl.txt | sed -E 's/ +/ /g' | cut -c1-160 | head -30
date
tar czf $OUT/results.tgz -C /tmp/r .
