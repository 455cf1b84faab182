/* The kernels of quant_blocks.c, quant_gemv.c, quant_gemm.c and decode_ops.c, shared by decode_step.c. */
#ifndef LQ_KERNELS_H
#define LQ_KERNELS_H
#include <stdint.h>

static const int LQ_BLOCK_BYTES[] = {18, 20, 34};   /* a Q4_0, Q4_1, Q8_0 block of 32 weights */

typedef void (*lq_chunk_fn)(void *ctx, int64_t chunk);
void lq_parallel(lq_chunk_fn fn, void *ctx, int64_t chunks, int threads);

void lq_dequantize(int fmt, const uint8_t *w, int64_t rows, int64_t cols, float *out, int threads);
void lq_matmul(int fmt, const uint8_t *w, int64_t rows, int64_t cols, const float *x, int64_t m, int64_t ldx,
               float *y, int64_t ldy, int threads);
int64_t lq_row_bytes(int fmt, int64_t cols);
void lq_block_quants(int fmt, const uint8_t *b, int32_t *q, float *d, float *m);
void lq_quantize_x(const float *x, int64_t m, int64_t ldx, int64_t cols, int16_t *xq, float *pairs);
void lq_gemm(int fmt, const uint8_t *w, int64_t rows, int64_t cols, const float *x, int64_t m, int64_t ldx,
             float *y, int64_t ldy, int threads);
void lq_rms_norm(const float *x, const float *residual, const float *weight, int64_t rows, int64_t dim, float eps,
                 float *out, float *residual_out);
void lq_silu_mul(const float *x, int64_t rows, int64_t inner, float *out);
void lq_rope_store(const float *q, const float *k, const float *v, int64_t stride, int64_t tokens, int64_t heads,
                   int64_t kv_heads, int64_t dim, const float *cos, const float *sin, const int64_t *slots,
                   float *q_out, void *k_cache, void *v_cache, int half);
void lq_decode_attention(const float *q, const void *k_cache, const void *v_cache, const int64_t *block_tables,
                         int64_t table_width, const int64_t *context_lens, int64_t seqs, int64_t heads,
                         int64_t kv_heads, int64_t dim, int64_t block_size, float scale, int64_t window, float *out,
                         int half, int threads);
#endif
