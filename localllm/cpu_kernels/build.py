"""The C kernels of this package, compiled on first use with the system's C compiler and loaded with ctypes.

No torch headers are involved (the kernels take raw pointers), so a build takes about a second. The shared library
is cached in the user's cache directory under a key made of the sources, the flags and the CPU's feature flags
(-march=native code is only valid on a CPU like the one it was built on). Without a compiler, or when the build
fails, or with LOCALLLM_CPU_KERNELS=0, library() returns None after one log line and callers keep torch's path.
"""
from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path

from localllm import settings

log = logging.getLogger("localllm.cpu_kernels")
SOURCES = ("quant_blocks.c", "quant_gemv.c", "quant_gemm.c", "decode_ops.c", "decode_step.c", "work_pool.c")
HEADERS = ("lq_kernels.h", "quant_gemm_512.h", "quant_gemv_512.h", "decode_attention_512.h")
FLAGS = ("-O3", "-march=native", "-ffp-contract=off", "-fopenmp-simd", "-shared", "-fPIC", "-std=gnu11", "-pthread")


def cache_dir() -> Path:
    """Where built libraries are kept: cpu_kernels/ in the user's cache directory (in $LOCALLLM_HOME when set)."""
    home = settings.home()
    if home is not None:
        return home / "cache" / "cpu_kernels"
    import platformdirs

    return Path(platformdirs.user_cache_dir("localllm")) / "cpu_kernels"


def cpu_flags() -> str:
    """The CPU's feature flags as /proc/cpuinfo lists them (else the machine's name): part of a build's key."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return line
    except OSError:
        pass
    return platform.machine() + platform.processor()


def _key(compiler: str, flags: tuple[str, ...]) -> str:
    digest = hashlib.sha256()
    for name in (*SOURCES, *HEADERS):
        digest.update((Path(__file__).parent / name).read_bytes())
    digest.update("\0".join((compiler, *flags, cpu_flags())).encode())
    return digest.hexdigest()[:16]


def _compile(compiler: str, flags: tuple[str, ...], target: Path) -> None:
    """Builds into a temporary file renamed into place, so that a concurrent first use never loads half a file."""
    target.parent.mkdir(parents=True, exist_ok=True)
    sources = [str(Path(__file__).parent / name) for name in SOURCES]
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=target.parent)
    os.close(fd)
    try:
        done = subprocess.run([compiler, *flags, *sources, "-o", tmp, "-lm"], capture_output=True, text=True,
                              timeout=120)
        if done.returncode != 0:
            lines = done.stderr.strip().splitlines()
            raise RuntimeError(f"{compiler} failed: {lines[-1] if lines else done.returncode}")
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def system_compiler() -> str | None:
    """The C compiler the kernels are built with: cc, else gcc, else clang; None when there is none."""
    return shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")


def build(compiler: str | None = None, extra_flags: tuple[str, ...] = ()) -> Path:
    """The path of the built library, compiling it when the cache lacks it. Raises RuntimeError with the reason
    when it cannot be built. extra_flags follow FLAGS (the tests build the AVX2 kernels on an AVX-512 CPU with
    -mno-avx512f)."""
    compiler = compiler or system_compiler()
    if not compiler or shutil.which(compiler) is None:
        raise RuntimeError(f"no C compiler found ({compiler or 'cc, gcc or clang'})")
    flags = (*FLAGS, *extra_flags)
    target = cache_dir() / f"localllm_cpu_{_key(compiler, flags)}.so"
    if not target.exists():
        _compile(compiler, flags, target)
    return target


def library(compiler: str | None = None) -> ctypes.CDLL | None:
    """The loaded kernels, or None (said once in the log) when they are turned off or cannot be built."""
    if not settings.cpu_kernels():
        _say_once("compiled CPU kernels turned off (LOCALLLM_CPU_KERNELS=0): using torch's CPU path")
        return None
    return _load(compiler)


@functools.lru_cache(maxsize=None)
def _say_once(line: str) -> None:
    log.warning(line)


@functools.lru_cache(maxsize=None)
def _load(compiler: str | None) -> ctypes.CDLL | None:
    from localllm.cpu_kernels.ops import declare

    try:
        return declare(ctypes.CDLL(str(build(compiler))))
    except (OSError, RuntimeError, subprocess.SubprocessError) as e:
        _say_once(f"compiled CPU kernels unavailable ({e}): using torch's CPU path")
        return None
