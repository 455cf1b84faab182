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
 * Rows are shared out in chunks over the threads of work_pool.c.
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
enum { QK = 32, MAX_M = 4, ROWS_PER_CHUNK = 32 };

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

typedef struct {
    int fmt;
    const uint8_t *w;
    int64_t rows, cols;
    float *out;
} dequantize_job;

static void dequantize_rows(void *ctx, int64_t chunk) {
    const dequantize_job *j = ctx;
    int64_t nb = j->cols / QK, bytes = BLOCK_BYTES[j->fmt], last = (chunk + 1) * ROWS_PER_CHUNK;
    for (int64_t r = chunk * ROWS_PER_CHUNK; r < (last < j->rows ? last : j->rows); r++) {
        for (int64_t i = 0; i < nb; i++) {
            int32_t q[QK];
            float d, m;
            block_quants(j->fmt, j->w + (r * nb + i) * bytes, q, &d, &m);
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

/* Each block of x (32 values) as int16 quants xq * scale (round to nearest, |xq| <= 32767: a relative error of at
 * most 1.5e-5 of the block's largest value, against bfloat16's 4e-3), and beside its scale its float32 sum:
 * pairs[2 * block] = scale, pairs[2 * block + 1] = sum. */
static void quantize_x(const float *x, int64_t m, int64_t ldx, int64_t cols, int16_t *xq, float *pairs) {
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
            pairs[2 * (t * nb + i)] = amax / 32767.0f;
            pairs[2 * (t * nb + i) + 1] = s;
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

/* Block i of a row against m (<= MAX_M) quantized activations: acc[t] += d * scale * (q . xq) (the products exact
 * in int32, _mm256_madd_epi16) and, in lane 1 of mins[t], min * sum(x). The block's [d, min] and x's
 * [scale, sum] are multiplied as one 2-lane vector. */
static inline __attribute__((always_inline)) void block_dot(int fmt, const uint8_t *b, int64_t i, int64_t nb,
                                                            const int16_t *xq, int64_t cols, const float *pairs,
                                                            int m, __m256 *acc, __m128 *mins) {
    const __m256i low = _mm256_set1_epi16(0x0F);
    __m256i q0, q1;
    __m128 dm;
    if (fmt == FMT_Q8_0) {
        dm = _mm_cvtph_ps(_mm_cvtsi32_si128(*(const uint16_t *)b));   /* [d, 0] */
        q0 = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)(b + 2)));
        q1 = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)(b + 18)));
    } else {   /* 16 bytes widened to 16-bit lanes: low nibbles are weights 0-15, high ones 16-31 */
        if (fmt == FMT_Q4_1) {
            int32_t both;
            memcpy(&both, b, 4);
            dm = _mm_cvtph_ps(_mm_cvtsi32_si128(both));   /* [d, m] */
        } else {   /* [d, -8 d] */
            dm = _mm_mul_ps(_mm_broadcastss_ps(_mm_cvtph_ps(_mm_cvtsi32_si128(*(const uint16_t *)b))),
                            _mm_setr_ps(1.0f, -8.0f, 0.0f, 0.0f));
        }
        __m256i v = _mm256_cvtepu8_epi16(_mm_loadu_si128((const __m128i *)(b + (fmt == FMT_Q4_1 ? 4 : 2))));
        q0 = _mm256_and_si256(v, low);
        q1 = _mm256_srli_epi16(v, 4);
    }
    for (int t = 0; t < m; t++) {
        const int16_t *xb = xq + t * cols + i * QK;
        __m256i p = _mm256_add_epi32(_mm256_madd_epi16(q0, _mm256_loadu_si256((const __m256i *)xb)),
                                     _mm256_madd_epi16(q1, _mm256_loadu_si256((const __m256i *)(xb + 16))));
        __m128 prod = _mm_mul_ps(dm, _mm_castpd_ps(_mm_load_sd((const double *)(pairs + 2 * (t * nb + i)))));
        mins[t] = _mm_add_ps(mins[t], prod);
        acc[t] = _mm256_fmadd_ps(_mm256_broadcastss_ps(prod), _mm256_cvtepi32_ps(p), acc[t]);
    }
}

/* y[t] = a row's dot products with m quantized activations; even and odd blocks sum into separate accumulators
 * (two dependency chains). Inlined into one copy per format and m == 1 (row_dot below), so that the format's
 * branches leave the loop. */
static inline __attribute__((always_inline)) void row_dot_fmt(int fmt, const uint8_t *row, int64_t nb,
                                                              const int16_t *xq, int64_t cols, const float *pairs,
                                                              int m, float *y) {
    __m256 even[MAX_M], odd[MAX_M];
    __m128 mins_even[MAX_M], mins_odd[MAX_M];
    int64_t bytes = BLOCK_BYTES[fmt], i = 0;
    for (int t = 0; t < m; t++) {
        even[t] = odd[t] = _mm256_setzero_ps();
        mins_even[t] = mins_odd[t] = _mm_setzero_ps();
    }
    for (; i + 1 < nb; i += 2) {
        block_dot(fmt, row + i * bytes, i, nb, xq, cols, pairs, m, even, mins_even);
        block_dot(fmt, row + (i + 1) * bytes, i + 1, nb, xq, cols, pairs, m, odd, mins_odd);
    }
    if (i < nb) block_dot(fmt, row + i * bytes, i, nb, xq, cols, pairs, m, even, mins_even);
    for (int t = 0; t < m; t++) {
        __m128 mins = _mm_add_ps(mins_even[t], mins_odd[t]);
        y[t] = hsum(_mm256_add_ps(even[t], odd[t])) + _mm_cvtss_f32(_mm_movehdup_ps(mins));
    }
}

static void row_dot(int fmt, const uint8_t *row, int64_t nb, const int16_t *xq, int64_t cols, const float *pairs,
                    int m, float *y) {
    if (fmt == FMT_Q4_1) {
        if (m == 1) row_dot_fmt(FMT_Q4_1, row, nb, xq, cols, pairs, 1, y);
        else row_dot_fmt(FMT_Q4_1, row, nb, xq, cols, pairs, m, y);
    } else if (fmt == FMT_Q4_0) {
        if (m == 1) row_dot_fmt(FMT_Q4_0, row, nb, xq, cols, pairs, 1, y);
        else row_dot_fmt(FMT_Q4_0, row, nb, xq, cols, pairs, m, y);
    } else {
        if (m == 1) row_dot_fmt(FMT_Q8_0, row, nb, xq, cols, pairs, 1, y);
        else row_dot_fmt(FMT_Q8_0, row, nb, xq, cols, pairs, m, y);
    }
}
#else
/* Without AVX2: the same sums in plain C. */
static void row_dot(int fmt, const uint8_t *row, int64_t nb, const int16_t *xq, int64_t cols, const float *pairs,
                    int m, float *y) {
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
            y[t] += d * pairs[2 * (t * nb + i)] * (float)s + mn * pairs[2 * (t * nb + i) + 1];
        }
    }
}
#endif

typedef struct {
    int fmt;
    const uint8_t *w;
    int64_t rows, cols, m, ldy;
    const int16_t *xq;
    const float *pairs;
    float *y;
} matmul_job;

static void matmul_rows(void *ctx, int64_t chunk) {
    const matmul_job *j = ctx;
    int64_t nb = j->cols / QK, row_bytes = nb * BLOCK_BYTES[j->fmt], last = (chunk + 1) * ROWS_PER_CHUNK;
    for (int64_t r = chunk * ROWS_PER_CHUNK; r < (last < j->rows ? last : j->rows); r++) {
        for (int64_t t0 = 0; t0 < j->m; t0 += MAX_M) {
            int n = (int)(j->m - t0 < MAX_M ? j->m - t0 : MAX_M);
            float out[MAX_M];
            row_dot(j->fmt, j->w + r * row_bytes, nb, j->xq + t0 * j->cols, j->cols, j->pairs + 2 * t0 * nb, n, out);
            for (int t = 0; t < n; t++) j->y[(t0 + t) * j->ldy + r] = out[t];
        }
    }
}

/* y[t, r] (row stride ldy) = sum_k W[r, k] x[t, k] (row stride ldx) for t < m, x quantized per block first
 * (quantize_x). Q4_0 keeps its offset out of the quants here (q in 0..15, min = -8 d): the same weights. */
void lq_matmul(int fmt, const uint8_t *w, int64_t rows, int64_t cols, const float *x, int64_t m, int64_t ldx,
               float *y, int64_t ldy, int threads) {
    int64_t nb = cols / QK;
    int16_t *xq = aligned_alloc(64, (size_t)((m * cols * 2 + 63) / 64 * 64));
    float *pairs = malloc(sizeof(float) * (size_t)(2 * m * nb));
    quantize_x(x, m, ldx, cols, xq, pairs);
    matmul_job job = {fmt, w, rows, cols, m, ldy, xq, pairs, y};
    lq_parallel(matmul_rows, &job, (rows + ROWS_PER_CHUNK - 1) / ROWS_PER_CHUNK, threads);
    free(xq);
    free(pairs);
}
