import sys, time
from localllm.bench.engine_backend import EngineBackend
from localllm.bench.models import open_bench_model
from localllm.sampling_params import SamplingParams
name = sys.argv[1]
backend = EngineBackend(open_bench_model(None, name), "bfloat16", max_model_len=2048)
for label, params in (("plain", SamplingParams(temperature=0, max_tokens=1)),
                      ("scored k=1", SamplingParams(temperature=0, max_tokens=1, prompt_logprobs=1)),
                      ("scored k=5", SamplingParams(temperature=0, max_tokens=1, prompt_logprobs=5))):
    times = []
    for run in range(8):
        prompt = [(11 * j + 5 + run) % 1000 for j in range(1024)]
        start = time.perf_counter()
        backend._add(prompt, params)
        backend._run_to_completion()
        times.append(time.perf_counter() - start)
    print(f"{name} tree {label}: {sorted(times[1:])[3] * 1000:.1f} ms", flush=True)
backend.close()
