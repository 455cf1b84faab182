source scripts/gpu_setup.sh; mkdir -p $OUT/diag
for v in tree A B C no_wait D A tree; do
  python3 .probe_s/pushdiag.py $v $OUT/diag/$v.json 2>&1 | grep -E "time|Error|error" | tail -6
done
