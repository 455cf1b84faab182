/* The kernels of quant_blocks.c, quant_gemv.c, quant_gemm.c and decode_ops.c, shared by decode_step.c, and the block
 * formats and AVX2 block decoder that the matmuls share. */
#ifndef LQ_KERNELS_H
#define LQ_KERNELS_H
#include <stdint.h>
#include <string.h>
#ifdef __AVX2__
#include <immintrin.h>
#endif

enum { FMT_Q4_0 = 0, FMT_Q4_1 = 1, FMT_Q8_0 = 2 };
static const int LQ_BLOCK_BYTES[] = {18, 20, 34};   /* a Q4_0, Q4_1, Q8_0 block of 32 weights */

#ifdef __AVX2__
/* A block's [d, min] (Q4_0: [d, -8 d]; Q8_0: [d, 0]); block_weights: that, and its 32 weights as int16 (Q4: nibbles
 * 0..15, byte j holding weights j and j + 16): weights 0-15 returned, 16-31 in *w1. */
static inline __attribute__((always_inline)) __m128 block_dm(int fmt, const uint8_t *b) {
    if (fmt == FMT_Q8_0) return _mm_cvtph_ps(_mm_cvtsi32_si128(*(const uint16_t *)b));
    if (fmt == FMT_Q4_1) {
        int32_t both;
        memcpy(&both, b, 4);
        return _mm_cvtph_ps(_mm_cvtsi32_si128(both));
    }
    return _mm_mul_ps(_mm_broadcastss_ps(_mm_cvtph_ps(_mm_cvtsi32_si128(*(const uint16_t *)b))),
                      _mm_setr_ps(1.0f, -8.0f, 0.0f, 0.0f));
}

static inline __attribute__((always_inline)) __m256i block_weights(int fmt, const uint8_t *b, __m128 *dm,
                                                                   __m256i *w1) {
    *dm = block_dm(fmt, b);
    if (fmt == FMT_Q8_0) {
        *w1 = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)(b + 18)));
        return _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)(b + 2)));
    }
    __m256i v = _mm256_cvtepu8_epi16(_mm_loadu_si128((const __m128i *)(b + (fmt == FMT_Q4_1 ? 4 : 2))));
    *w1 = _mm256_srli_epi16(v, 4);
    return _mm256_and_si256(v, _mm256_set1_epi16(0x0F));
}

#ifdef __AVX512F__
/* block_weights' 32 weights as one zmm of int16, in x's order (weights 0-15, then 16-31) */
static inline __attribute__((always_inline)) __m512i block_weights_512(int fmt, const uint8_t *b, __m128 *dm) {
    __m256i w1, w0 = block_weights(fmt, b, dm, &w1);
    return _mm512_inserti64x4(_mm512_castsi256_si512(w0), w1, 1);
}
#endif
#endif

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
