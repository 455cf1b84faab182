"""`localllm bench`: what a device can do (device_limits), the fastest a model could run on it (roofline), the
prompts (workloads), the models (models), the measurements and their results (measure), and the runtimes measured:
our engine (engine_backend) and transformers (hf_backend)."""
