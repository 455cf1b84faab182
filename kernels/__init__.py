"""Compute kernels (installed as localllm.kernels). Each op has a plain-torch reference, the ground truth for
tests and the path used where Triton is unavailable. Nothing here imports the rest of localllm.

Triton kernels (each module imports triton when imported; import them only where a GPU and triton exist):
  rope_store.norm_rope_store        per-head q/k RMSNorm (optional), rotary, and K/V into their cache slots
                                    (negative slot = skip; an fp8 e4m3 cache rounded to nearest even, saturated):
                                    one launch per layer
  paged_attention.paged_attention   varlen causal paged attention for a whole step, GQA, sliding window,
                                    split-K flash decoding for all-decode steps with long contexts
                                    (paged_attention_split; the shared tile step in paged_attention_tile)
  rmsnorm.rms_norm                  RMSNorm with optional fused residual add; pulled_rms_norm adds the ranks'
                                    partial sums of a tensor-parallel step first (peer_sum)
  activation.silu_and_mul           SwiGLU gate
  quant_matmul.quant_matmul         y = x @ W^T over quantized weight planes: GEMV (1-2 rows of x), the
                                    tensor-core kernel of quant_gemm (to 64 rows), dequantize + cuBLAS above;
                                    quant_tiles decodes the planes for all three, quant_launch launches them;
                                    FP8 weights from 3 rows of x on the FP8 tensor cores (fp8_gemm: x quantized
                                    to e4m3 per 128 columns, cuBLAS's block-scaled matmul); merged_matmul runs
                                    two formats' GEMVs in one launch; gated: SwiGLU in the GEMV's store;
                                    dequantize_rows also gathers an embedding's rows
  gemv.gemv                         y = x @ W^T for a few token rows, with the RMSNorm or SiLU-and-mul before
                                    it and the residual add after it fused in, or its partial sum pushed to
                                    every tensor-parallel rank (peer_sum: the all-reduce split over the GEMV and
                                    the norm after it)
  pdl                               programmatic dependent launch of a decode step's kernels (Hopper)
  sample.sample_tokens              a step's tokens by temperature alone (greedy rows beside them) in one launch
  rounding.rounded                  rounding to the model's dtype where transformers' torch ops round (rope, SiLU);
                                    to_e4m3, float32 to float8 e4m3 as torch rounds it
Plain data: block_formats (the quantized block formats: sizes, the GGUF types kept as blocks)
Plain torch (no triton; the ground truth of the tests and the CPU path of localllm.layers):
  paged_attention_ref               store_kvcache, decode_attention, prefill_attention, paged_attention_varlen
                                    (over a cache in q's dtype or fp8: to_cache, from_cache)
  rmsnorm_ref, activation_ref       the reference of the kernel of the same name
  gemv_ref                          the unfused ops gemv replaces
  rotary_ref                        neox rotary (the CPU path of the rotary layer)
  rope_store_ref                    rmsnorm_ref + rotary_ref + store_kvcache, the reference of rope_store
  quant_blocks_ref                  block dequantizers (bit-exact with gguf's) and quant_matmul_ref
  quant_planes_ref                  the GPU layout: blocks repacked into planes and back, planes_matmul_ref
  quantize_ref                      round-to-nearest quantizers into the block formats
  fp8_gemm_ref                      x quantized to e4m3 per 128 columns, fp8_matmul_ref, block_scaled_mm_ref
  sample_ref                        softmax + inverse CDF over the whole vocabulary, the reference of sample
tests/test_kernels.py, tests/test_fused_kernels.py, tests/test_sample_kernel.py and tests/test_fp8_gemm.py check
every kernel against its reference under Triton's interpreter; scripts/gpu_kernel_check.py does so on a GPU in
bf16 and times them.
"""
