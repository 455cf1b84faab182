source scripts/gpu_setup.sh; mkdir -p $OUT/m
for v in want mine want mine want mine; do
  cp .probe_s/peer_sum_$v.py kernels/peer_sum.py
  python3 scripts/gpu_peer_sum_check.py --json $OUT/m/$v-$RANDOM.json 2>&1 | grep -E "time|FAIL" | sed "s/^/$v /"
done
cp .probe_s/peer_sum_mine.py kernels/peer_sum.py
