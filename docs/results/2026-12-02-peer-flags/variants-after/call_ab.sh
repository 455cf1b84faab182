# bash call_ab.sh A B (run as "want mine", then "all warp0"): the check three times with each of two copies of
# kernels/peer_sum.py (.probe_s/peer_sum_A.py, peer_sum_B.py), alternated, in the device's copy of the tree.
source scripts/gpu_setup.sh; mkdir -p $OUT/m
for v in $1 $2 $1 $2 $1 $2; do
  cp .probe_s/peer_sum_$v.py kernels/peer_sum.py
  python3 scripts/gpu_peer_sum_check.py --json $OUT/m/$v-$RANDOM.json 2>&1 | grep -E "time|FAIL" | sed "s/^/$v /"
done
