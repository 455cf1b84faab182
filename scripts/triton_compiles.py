"""Runs a localllm command and prints every Triton kernel it compiles (seconds since start, kernel, arguments), so
that compiles inside a timed region show. Usage: python scripts/triton_compiles.py bench throughput ... 2>log"""
import sys
import time

import triton

START = time.perf_counter()


def _print_compile(**event) -> bool:
    print(f"[compile {time.perf_counter() - START:7.2f}s] {event.get('repr')}", file=sys.stderr, flush=True)
    return False   # go on compiling


def main() -> None:
    triton.knobs.runtime.jit_post_compile_hook = _print_compile
    from localllm.cli.main import app

    sys.argv = ["localllm", *sys.argv[1:]]
    app()


if __name__ == "__main__":
    main()
