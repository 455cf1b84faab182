# kernels of one TP=2 rank's batch-1 decode step, alone on one H200 (with and without dependent launches), and the
# whole 8B's for comparison
source scripts/gpu_setup.sh >/dev/null 2>&1
mkdir -p /tmp/r
p() { timeout 150 python3 docs/results/2026-12-02-rank-share/share/variants.py script scripts/gpu_tp_profile.py --random-weights $1 --tp 1 $2 --trace /tmp/r/trace-$1$2.json > /tmp/r/prof-$1$2.log 2>&1; grep -v "^ *aten\|^ *cuda[A-Z]\|^ *Memcpy\|^ *Memset" /tmp/r/prof-$1$2.log | cut -c1-180 | head -30; }
p llama-3.1-8b@tp2 ""
p llama-3.1-8b@tp2 --no-pdl
p llama-3.1-8b --no-pdl
gzip /tmp/r/*.json
tar czf $OUT/results.tgz -C /tmp/r .
