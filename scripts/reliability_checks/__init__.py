"""The reliability suite's checks (run by scripts/reliability.py and, in reduced sizes, by
tests/test_reliability.py). They drive a real `localllm serve` over HTTP and the `localllm` CLI only."""
