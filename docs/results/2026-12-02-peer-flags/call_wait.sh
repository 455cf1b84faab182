source scripts/gpu_setup.sh; mkdir -p $OUT/w
for v in fence acq fence acq; do python3 .probe_s/waitvar.py $v $OUT/w/$v.json 2>&1 | grep -E "time|FAIL|Error" | tail -8; done
