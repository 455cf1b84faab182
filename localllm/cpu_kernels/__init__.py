"""C kernels of the CPU decode path (matmuls over GGUF blocks, and the small per-layer operations), built on first
use by build.py and called through ops.py; without a C compiler the engine keeps torch's CPU path."""
