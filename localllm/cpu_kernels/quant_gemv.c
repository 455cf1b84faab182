/* Matmuls over GGUF block rows as they are in memory (Q4_0, Q4_1, Q8_0), float32 activations in and out.
 *
 * A weight [rows, cols] is rows x (cols / 32) blocks (kernels/block_formats.py): Q4_0 = f16 d, 16 bytes of
 * nibbles, w = d * (q - 8); Q4_1 = f16 d, f16 m, 16 bytes, w = d * q + m; Q8_0 = f16 d, 32 int8, w = d * q.
 * A nibble byte j holds weight j (low) and weight j + 16 (high).
 *
 * lq_dequantize writes the weights exactly as gguf's dequantize computes them (the same float32 operations, built
 * with -ffp-contract=off so that none is fused). lq_matmul never writes them out: per block it sums q * x in
 * float32 (8 lanes) and applies the scale and the minimum once, sum_j (d q_j + m) x_j = d sum_j q_j x_j +
 * m sum_j x_j, so it agrees with dequantize-then-matmul to float32 rounding, not bit for bit.
 * Rows are shared out over OpenMP threads (the runtime torch already loaded: both name libgomp.so.1).
 */
#include <stdint.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "lq_kernels.h"
#if defined(__AVX2__) || defined(__F16C__)
#include <immintrin.h>
#endif

enum { FMT_Q4_0 = 0, FMT_Q4_1 = 1, FMT_Q8_0 = 2 };
enum { QK = 32, MAX_M = 4 };

static const int BLOCK_BYTES[] = {18, 20, 34};

int64_t lq_row_bytes(int fmt, int64_t cols) { return cols / QK * BLOCK_BYTES[fmt]; }

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
static void block_quants(int fmt, const uint8_t *b, int32_t *q, float *d, float *m) {
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

void lq_dequantize(int fmt, const uint8_t *w, int64_t rows, int64_t cols, float *out, int threads) {
    int64_t nb = cols / QK, bytes = BLOCK_BYTES[fmt];
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t r = 0; r < rows; r++) {
        for (int64_t i = 0; i < nb; i++) {
            int32_t q[QK];
            float d, m;
            block_quants(fmt, w + (r * nb + i) * bytes, q, &d, &m);
            float *o = out + r * cols + i * QK;
            if (fmt == FMT_Q8_0) {
                for (int j = 0; j < QK; j++) o[j] = (float)q[j] * d;
            } else if (fmt == FMT_Q4_1) {
                for (int j = 0; j < QK; j++) o[j] = d * (float)q[j] + m;
            } else {
                for (int j = 0; j < QK; j++) o[j] = d * (float)q[j];
            }
        }
    }
}

/* Each block of x (32 values) as int16 quants xq * scale (round to nearest, |xq| <= 32767: a relative error of at
 * most 1.5e-5 of the block's largest value, against bfloat16's 4e-3), and its float32 sum. */
static void quantize_x(const float *x, int64_t m, int64_t ldx, int64_t cols, int16_t *xq, float *scales,
                       float *sums) {
    int64_t nb = cols / QK;
    for (int64_t t = 0; t < m; t++) {
        for (int64_t i = 0; i < nb; i++) {
            const float *xb = x + t * ldx + i * QK;
            float amax = 0.0f, s = 0.0f;
#pragma omp simd reduction(+ : s) reduction(max : amax)
            for (int j = 0; j < QK; j++) {
                s += xb[j];
                amax = fabsf(xb[j]) > amax ? fabsf(xb[j]) : amax;
            }
            float inv = amax > 0.0f ? 32767.0f / amax : 0.0f;
            for (int j = 0; j < QK; j++) xq[t * cols + i * QK + j] = (int16_t)lrintf(xb[j] * inv);
            scales[t * nb + i] = amax / 32767.0f;
            sums[t * nb + i] = s;
        }
    }
}

#ifdef __AVX2__
static float hsum(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

/* Block i of a row against m (<= MAX_M) quantized activations: acc[t] += d * xscale * (q . xq) (the products exact
 * in int32, _mm256_madd_epi16), mins[t] += min * sum(x). */
static inline __attribute__((always_inline)) void block_dot(int fmt, const uint8_t *b, int64_t i, int64_t nb,
                                                            const int16_t *xq, int64_t cols, const float *scales,
                                                            const float *sums, int m, __m256 *acc, float *mins) {
    const __m256i low = _mm256_set1_epi16(0x0F);
    __m256i q0, q1;
    float d = f16_to_f32(b), mn;
    if (fmt == FMT_Q8_0) {
        q0 = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)(b + 2)));
        q1 = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)(b + 18)));
        mn = 0.0f;
    } else {   /* 16 bytes widened to 16-bit lanes: low nibbles are weights 0-15, high ones 16-31 */
        __m256i v = _mm256_cvtepu8_epi16(_mm_loadu_si128((const __m128i *)(b + (fmt == FMT_Q4_1 ? 4 : 2))));
        q0 = _mm256_and_si256(v, low);
        q1 = _mm256_srli_epi16(v, 4);
        mn = fmt == FMT_Q4_1 ? f16_to_f32(b + 2) : -8.0f * d;
    }
    for (int t = 0; t < m; t++) {
        const int16_t *xb = xq + t * cols + i * QK;
        __m256i p = _mm256_add_epi32(_mm256_madd_epi16(q0, _mm256_loadu_si256((const __m256i *)xb)),
                                     _mm256_madd_epi16(q1, _mm256_loadu_si256((const __m256i *)(xb + 16))));
        acc[t] = _mm256_fmadd_ps(_mm256_set1_ps(d * scales[t * nb + i]), _mm256_cvtepi32_ps(p), acc[t]);
        mins[t] += mn * sums[t * nb + i];
    }
}

/* y[t] = a row's dot products with m quantized activations; even and odd blocks sum into separate accumulators
 * (two dependency chains). Inlined into one copy per format and m == 1 (row_dot below), so that the format's
 * branches leave the loop. */
static inline __attribute__((always_inline)) void row_dot_fmt(int fmt, const uint8_t *row, int64_t nb,
                                                              const int16_t *xq, int64_t cols, const float *scales,
                                                              const float *sums, int m, float *y) {
    __m256 even[MAX_M], odd[MAX_M];
    float mins_even[MAX_M] = {0}, mins_odd[MAX_M] = {0};
    int64_t bytes = BLOCK_BYTES[fmt], i = 0;
    for (int t = 0; t < m; t++) even[t] = odd[t] = _mm256_setzero_ps();
    for (; i + 1 < nb; i += 2) {
        block_dot(fmt, row + i * bytes, i, nb, xq, cols, scales, sums, m, even, mins_even);
        block_dot(fmt, row + (i + 1) * bytes, i + 1, nb, xq, cols, scales, sums, m, odd, mins_odd);
    }
    if (i < nb) block_dot(fmt, row + i * bytes, i, nb, xq, cols, scales, sums, m, even, mins_even);
    for (int t = 0; t < m; t++) y[t] = hsum(_mm256_add_ps(even[t], odd[t])) + (mins_even[t] + mins_odd[t]);
}

static void row_dot(int fmt, const uint8_t *row, int64_t nb, const int16_t *xq, int64_t cols, const float *scales,
                    const float *sums, int m, float *y) {
    if (fmt == FMT_Q4_1) {
        if (m == 1) row_dot_fmt(FMT_Q4_1, row, nb, xq, cols, scales, sums, 1, y);
        else row_dot_fmt(FMT_Q4_1, row, nb, xq, cols, scales, sums, m, y);
    } else if (fmt == FMT_Q4_0) {
        if (m == 1) row_dot_fmt(FMT_Q4_0, row, nb, xq, cols, scales, sums, 1, y);
        else row_dot_fmt(FMT_Q4_0, row, nb, xq, cols, scales, sums, m, y);
    } else {
        if (m == 1) row_dot_fmt(FMT_Q8_0, row, nb, xq, cols, scales, sums, 1, y);
        else row_dot_fmt(FMT_Q8_0, row, nb, xq, cols, scales, sums, m, y);
    }
}
#else
/* Without AVX2: the same sums in plain C. */
static void row_dot(int fmt, const uint8_t *row, int64_t nb, const int16_t *xq, int64_t cols, const float *scales,
                    const float *sums, int m, float *y) {
    int64_t bytes = BLOCK_BYTES[fmt];
    for (int t = 0; t < m; t++) y[t] = 0.0f;
    for (int64_t i = 0; i < nb; i++) {
        int32_t q[QK];
        float d, mn;
        block_quants(fmt, row + i * bytes, q, &d, &mn);
        if (fmt == FMT_Q4_0) {   /* as above: q in 0..15 and the offset in the minimum */
            for (int j = 0; j < QK; j++) q[j] += 8;
            mn = -8.0f * d;
        }
        for (int t = 0; t < m; t++) {
            int32_t s = 0;
            for (int j = 0; j < QK; j++) s += q[j] * xq[t * cols + i * QK + j];
            y[t] += d * scales[t * nb + i] * (float)s + mn * sums[t * nb + i];
        }
    }
}
#endif

/* y[t, r] (row stride ldy) = sum_k W[r, k] x[t, k] (row stride ldx) for t < m, x quantized per block first
 * (quantize_x). Q4_0 keeps its offset out of the quants here (q in 0..15, min = -8 d): the same weights. */
void lq_matmul(int fmt, const uint8_t *w, int64_t rows, int64_t cols, const float *x, int64_t m, int64_t ldx,
               float *y, int64_t ldy, int threads) {
    int64_t nb = cols / QK, row_bytes = nb * BLOCK_BYTES[fmt];
    int16_t *xq = aligned_alloc(64, (size_t)((m * cols * 2 + 63) / 64 * 64));
    float *scales = malloc(sizeof(float) * (size_t)(m * nb)), *sums = malloc(sizeof(float) * (size_t)(m * nb));
    quantize_x(x, m, ldx, cols, xq, scales, sums);
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t r = 0; r < rows; r++) {
        for (int64_t t0 = 0; t0 < m; t0 += MAX_M) {
            int n = (int)(m - t0 < MAX_M ? m - t0 : MAX_M);
            float out[MAX_M];
            row_dot(fmt, w + r * row_bytes, nb, xq + t0 * cols, cols, scales + t0 * nb, sums + t0 * nb, n, out);
            for (int t = 0; t < n; t++) y[(t0 + t) * ldy + r] = out[t];
        }
    }
    free(xq);
    free(scales);
    free(sums);
}
