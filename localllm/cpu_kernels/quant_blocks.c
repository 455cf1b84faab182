/* The GGUF blocks (Q4_0, Q4_1, Q8_0) one at a time, and x's rounding, shared by the GEMV (quant_gemv.c) and the
 * tiled GEMM (quant_gemm.c): a block's quants, scale and minimum (lq_block_quants), whole matrices dequantized
 * exactly as gguf's dequantize computes them (lq_dequantize: the same float32 operations, built with
 * -ffp-contract=off so that none is fused), and x rounded to int16 per block of 32 (lq_quantize_x).
 * A weight [rows, cols] is rows x (cols / 32) blocks (kernels/block_formats.py): Q4_0 = f16 d, 16 bytes of
 * nibbles, w = d * (q - 8); Q4_1 = f16 d, f16 m, 16 bytes, w = d * q + m; Q8_0 = f16 d, 32 int8, w = d * q.
 * A nibble byte j holds weight j (low) and weight j + 16 (high).
 */
#include <stdint.h>
#include <math.h>
#include <string.h>

#include "lq_kernels.h"
#if defined(__AVX2__) || defined(__F16C__)
#include <immintrin.h>
#endif

enum { QK = 32, X_LEVELS = 32767, ROWS_PER_CHUNK = 32 };

int64_t lq_row_bytes(int fmt, int64_t cols) { return cols / QK * LQ_BLOCK_BYTES[fmt]; }

static inline float f16_to_f32(const uint8_t *p) {
#ifdef __F16C__
    uint16_t bits16;
    memcpy(&bits16, p, 2);
    return _cvtsh_ss(bits16);
#else
    uint16_t h = (uint16_t)(p[0] | (p[1] << 8));
    uint32_t sign = (uint32_t)(h & 0x8000) << 16, exp = (h >> 10) & 0x1F, man = h & 0x3FF, bits;
    if (exp == 0x1F) {
        bits = sign | 0x7F800000u | (man << 13);
    } else if (exp != 0) {
        bits = sign | ((exp + 112) << 23) | (man << 13);
    } else if (man == 0) {
        bits = sign;
    } else {   /* subnormal: normalise */
        exp = 113;
        while (!(man & 0x400)) { man <<= 1; exp--; }
        bits = sign | (exp << 23) | ((man & 0x3FF) << 13);
    }
    float f;
    memcpy(&f, &bits, 4);
    return f;
#endif
}

/* A block's quants as 32 integers (Q4: 0..15, Q8: -128..127) and its scale and minimum: w = d * q + m, except
 * Q4_0, whose q is shifted (q - 8) and m is 0, as gguf computes it. */
void lq_block_quants(int fmt, const uint8_t *b, int32_t *q, float *d, float *m) {
    *d = f16_to_f32(b);
    *m = 0.0f;
    if (fmt == FMT_Q8_0) {
        for (int j = 0; j < QK; j++) q[j] = (int8_t)b[2 + j];
        return;
    }
    const uint8_t *qs = b + (fmt == FMT_Q4_1 ? 4 : 2);
    int shift = fmt == FMT_Q4_0 ? 8 : 0;
    if (fmt == FMT_Q4_1) *m = f16_to_f32(b + 2);
    for (int j = 0; j < 16; j++) {
        q[j] = (qs[j] & 0x0F) - shift;
        q[j + 16] = (qs[j] >> 4) - shift;
    }
}

typedef struct {
    int fmt;
    const uint8_t *w;
    int64_t rows, cols;
    float *out;
} dequantize_job;

static void dequantize_rows(void *ctx, int64_t chunk) {
    const dequantize_job *j = ctx;
    int64_t nb = j->cols / QK, bytes = LQ_BLOCK_BYTES[j->fmt], last = (chunk + 1) * ROWS_PER_CHUNK;
    for (int64_t r = chunk * ROWS_PER_CHUNK; r < (last < j->rows ? last : j->rows); r++) {
        for (int64_t i = 0; i < nb; i++) {
            int32_t q[QK];
            float d, m;
            lq_block_quants(j->fmt, j->w + (r * nb + i) * bytes, q, &d, &m);
            float *o = j->out + r * j->cols + i * QK;
            if (j->fmt == FMT_Q8_0) {
                for (int k = 0; k < QK; k++) o[k] = (float)q[k] * d;
            } else if (j->fmt == FMT_Q4_1) {
                for (int k = 0; k < QK; k++) o[k] = d * (float)q[k] + m;
            } else {
                for (int k = 0; k < QK; k++) o[k] = d * (float)q[k];
            }
        }
    }
}

void lq_dequantize(int fmt, const uint8_t *w, int64_t rows, int64_t cols, float *out, int threads) {
    dequantize_job job = {fmt, w, rows, cols, out};
    lq_parallel(dequantize_rows, &job, (rows + ROWS_PER_CHUNK - 1) / ROWS_PER_CHUNK, threads);
}

/* Each block of x (32 values) as int16 X = round(x * 32767 / max|x|) (a rounding error of at most 1.5e-5 of the
 * block's largest value; bfloat16's is 4e-3; llama.cpp's int8 x, 0.4%, costs greedy agreement with the exact path
 * here: 98.8% over 1,000 tokens), XQ_BYTES a block, and beside: pairs[2 * block] = the scale max|x| / 32767,
 * pairs[2 * block + 1] = scale * sum(X). The minimum's term uses that rounded sum, so that the block's weights
 * d q + m meet one rounded x (with x's exact sum, x's rounding error would meet d q alone, not centred on 0). */
static void quantize_block(const float *xb, int16_t *q, float *pair) {
    float amax = 0.0f;
#pragma omp simd reduction(max : amax)
    for (int j = 0; j < QK; j++) amax = fabsf(xb[j]) > amax ? fabsf(xb[j]) : amax;
    float inv = amax > 0.0f ? (float)X_LEVELS / amax : 0.0f;
    int32_t sum = 0;
#ifdef __AVX2__   /* the same rounding as lrintf (to nearest even), 8 at a time */
    __m256i v[4], total = _mm256_setzero_si256();
    for (int k = 0; k < 4; k++) {
        v[k] = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(xb + 8 * k), _mm256_set1_ps(inv)));
        total = _mm256_add_epi32(total, v[k]);
    }
    /* the pack interleaves 128-bit lanes: the permutation puts the 64-bit groups back in order */
    _mm256_storeu_si256((__m256i *)q, _mm256_permute4x64_epi64(_mm256_packs_epi32(v[0], v[1]), 0xD8));
    _mm256_storeu_si256((__m256i *)(q + 16), _mm256_permute4x64_epi64(_mm256_packs_epi32(v[2], v[3]), 0xD8));
    __m128i s4 = _mm_add_epi32(_mm256_castsi256_si128(total), _mm256_extracti128_si256(total, 1));
    s4 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, 0x4E));
    sum = _mm_cvtsi128_si32(_mm_add_epi32(s4, _mm_shuffle_epi32(s4, 0xB1)));
#else
    for (int j = 0; j < QK; j++) sum += q[j] = (int16_t)lrintf(xb[j] * inv);
#endif
    pair[0] = amax / (float)X_LEVELS;
    pair[1] = pair[0] * (float)sum;
}

void lq_quantize_x(const float *x, int64_t m, int64_t ldx, int64_t cols, int16_t *xq, float *pairs) {
    int64_t nb = cols / QK;
    for (int64_t t = 0; t < m; t++)
        for (int64_t i = 0; i < nb; i++)
            quantize_block(x + t * ldx + i * QK, xq + (t * nb + i) * QK, pairs + 2 * (t * nb + i));
}
