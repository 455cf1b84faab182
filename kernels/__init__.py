"""Compute kernels (installed as localllm.kernels). Each op has a plain-torch reference, the ground truth for
tests and the path used where Triton is unavailable. Nothing here imports the rest of localllm."""
