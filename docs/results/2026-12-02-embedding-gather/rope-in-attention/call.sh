# the split-K decode rotating q and storing the new K/V itself (the patch beside this file applied) against 21ef29a (checked out in base/)
source scripts/gpu_setup.sh >/dev/null 2>&1
mkdir -p /tmp/r
lat() { timeout 150 python3 -m localllm.cli.main bench latency --random-weights $2 --quantize $3 --ttft-prompt-tokens 1024 --json-out /tmp/r/lat-$1.json > /tmp/r/lat-$1.log 2>&1; python3 -c "import json;d=json.load(open('/tmp/r/lat-$1.json'));print('$1', {k:round(v,2) for k,v in d.items() if 'decode_tok' in k or 'ttft_ms' in k})" || tail -4 /tmp/r/lat-$1.log; }
date
timeout 240 python3 scripts/gpu_kernel_check.py --no-bench > /tmp/r/kernel-check.txt 2>&1; echo "rc $?"; grep -c PASS /tmp/r/kernel-check.txt; grep -E "FAIL|Error|rotating" /tmp/r/kernel-check.txt | head -20
lat q4km-new1 llama-3.1-8b q4_k_m
lat bf16-new llama-3.1-8b none
lat 1b-new llama-3.2-1b none
(cd base && python3 -m pip install -q --no-deps --no-build-isolation -e . >/dev/null 2>&1 && lat q4km-base llama-3.1-8b q4_k_m && lat bf16-base llama-3.1-8b none && lat 1b-base llama-3.2-1b none)
python3 -m pip install -q --no-deps --no-build-isolation -e . >/dev/null 2>&1
lat q4km-new2 llama-3.1-8b q4_k_m
lat 1b-new2 llama-3.2-1b none
timeout 200 python3 scripts/gpu_tp_profile.py --random-weights llama-3.1-8b --tp 1 --quantize q4_k_m --steps 20 --no-pdl > /tmp/r/profile-no-pdl.txt 2>&1; awk 'NR>4' /tmp/r/profile-no-pdl.txt | sed -E 's/ +/ /g' | cut -c1-160 | head -12
date
tar czf $OUT/results.tgz -C /tmp/r .
