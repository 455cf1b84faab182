/* Matmuls over GGUF block rows as they are in memory (Q4_0, Q4_1, Q8_0), float32 activations in and out.
 *
 * The blocks' layout, their decoding one at a time and x's rounding are in quant_blocks.c. lq_matmul never writes
 * the weights out: x is rounded to int16 per block (lq_quantize_x), each block's products sum exactly in int32,
 * and the scale and the minimum apply once, sum_j (d q_j + m) x_j = d sum_j q_j x_j + m sum_j x_j, so it agrees
 * with dequantize-then-matmul to x's rounding (relative 2e-5). Rows are shared out in a few contiguous chunks a
 * thread of work_pool.c. For one x (batch-1 decode) each chunk goes 4 rows at a time, prefetching ahead
 * (rows_dot_fmt): 25-30% less time than a row at a time. Several x (batched decode) go 8 at a time against each
 * row, its blocks decoded once for the 8 (group_dot_fmt). From GEMM_MIN_M x on (prefill, and with AVX-512 VNNI
 * batched decode), quant_gemm.c's tiles take over. With AVX-512 VNNI the two dot products are quant_gemv_512.h's.
 */
#include <stdint.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "lq_kernels.h"
#if defined(__AVX2__) || defined(__F16C__)
#include <immintrin.h>
#endif

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VNNI__)
#define LQ_GEMV_512 1   /* group_dot_fmt and rows_dot_fmt from quant_gemv_512.h */
#endif
enum { QK = 32, XQ_BYTES = 2 * QK, MAX_M = 4, GROUP_M = 8 };
/* Rows are shared out in CHUNKS_PER_THREAD contiguous chunks a thread (of at least MIN_CHUNK_ROWS): the weights then
 * stream from memory in a few long runs that the hardware prefetcher follows. Chunks of 32 rows taken by the threads
 * in turn read at 22-25 GB/s on a 2-core Zen 5 VM; two chunks a thread at 39 GB/s (batch-1 decode 1.6x faster). */
enum { CHUNKS_PER_THREAD = 2, MIN_CHUNK_ROWS = 32 };
/* x from which lq_gemm is faster: with AVX2 it decodes the whole matrix first (1.3-1.6x slower at 32 x, faster at
 * 64); with AVX-512 VNNI it decodes each panel where it is used (on a Zen 5 VM, 1.17x slower than group_dot at 4 x,
 * 1.13x faster at 6, 1.35x at 8, 2x at 16) */
#ifdef LQ_GEMV_512
enum { GEMM_MIN_M = 5 };
#else
enum { GEMM_MIN_M = 64 };
#endif
/* batch-1 rows per pass over x, and how many such groups ahead their weights are prefetched (2 measured best of 1-4) */
enum { ROWS_AT_ONCE = 4, PREFETCH_GROUPS = 2 };

#ifdef __AVX2__
static float hsum(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

/* The int32 sums of the 8 groups of 4 products of a block's 32 weights (two vectors of 16 int16: weights 0-15,
 * 16-31) and one block of x. */
static inline __attribute__((always_inline)) __m256i dot_x(__m256i w0, __m256i w1, const int16_t *x) {
    return _mm256_add_epi32(_mm256_madd_epi16(w0, _mm256_load_si256((const __m256i *)x)),
                            _mm256_madd_epi16(w1, _mm256_load_si256((const __m256i *)(x + 16))));
}

/* A row's dot product with one quantized x (m == 1, a remainder row of the 4-row pass below); even and odd blocks
 * sum into separate accumulators (two dependency chains). The block's [d, min] and x's [scale, scale * sum] are
 * multiplied as one 2-lane vector: lane 0 scales the exact int32 sum, lane 1 is the minimum's term. */
static inline __attribute__((always_inline)) void row_dot_fmt(int fmt, const uint8_t *row, int64_t nb,
                                                              const int16_t *xq, const float *pairs, float *y) {
    __m256 acc[2] = {_mm256_setzero_ps(), _mm256_setzero_ps()};
    __m128 mins[2] = {_mm_setzero_ps(), _mm_setzero_ps()};
    int64_t bytes = LQ_BLOCK_BYTES[fmt];
    for (int64_t i = 0; i < nb; i++) {
        __m128 dm;
        __m256i w1, w0 = block_weights(fmt, row + i * bytes, &dm, &w1);
        __m256i p = dot_x(w0, w1, xq + i * QK);
        __m128 prod = _mm_mul_ps(dm, _mm_castpd_ps(_mm_load_sd((const double *)(pairs + 2 * i))));
        mins[i & 1] = _mm_add_ps(mins[i & 1], prod);
        acc[i & 1] = _mm256_fmadd_ps(_mm256_broadcastss_ps(prod), _mm256_cvtepi32_ps(p), acc[i & 1]);
    }
    __m128 both = _mm_add_ps(mins[0], mins[1]);
    *y = hsum(_mm256_add_ps(acc[0], acc[1])) + _mm_cvtss_f32(_mm_movehdup_ps(both));
}

#ifdef LQ_GEMV_512
#include "quant_gemv_512.h"
#else
/* A row against a group of N (<= GROUP_M) quantized activations (batched decode, prompt chunks): each block's
 * weights are decoded once for the N of them. The group's x comes interleaved by block (x_by_group: block i of x t
 * at xg[(i * GROUP_M + t) * QK]), with its scales and scaled sums beside ([i * GROUP_M + t]), so one pointer walks
 * all of it and d * scale for the whole group is one multiply and the minimum's term one FMA a block; per x and
 * block there remain two integer multiply-adds, one conversion and one FMA. N is a constant in each copy, so that
 * the accumulators stay in registers. */
static inline __attribute__((always_inline)) void group_dot_fmt(int fmt, const uint8_t *row, int64_t nb,
                                                                const int16_t *xg, const float *scales,
                                                                const float *sums, const int N, float *y) {
    __m256 acc[GROUP_M], mins = _mm256_setzero_ps();
    float dsx[GROUP_M] __attribute__((aligned(32)));
    int64_t bytes = LQ_BLOCK_BYTES[fmt];
    for (int t = 0; t < N; t++) acc[t] = _mm256_setzero_ps();
    for (int64_t i = 0; i < nb; i++, xg += GROUP_M * QK, scales += GROUP_M, sums += GROUP_M) {
        __m128 dm;
        __m256i w1, w0 = block_weights(fmt, row + i * bytes, &dm, &w1);
        _mm256_store_ps(dsx, _mm256_mul_ps(_mm256_broadcastss_ps(dm), _mm256_load_ps(scales)));
        if (fmt != FMT_Q8_0)
            mins = _mm256_fmadd_ps(_mm256_broadcastss_ps(_mm_movehdup_ps(dm)), _mm256_load_ps(sums), mins);
        for (int t = 0; t < N; t++) {
            __m256i p = dot_x(w0, w1, xg + t * QK);
            acc[t] = _mm256_fmadd_ps(_mm256_broadcast_ss(dsx + t), _mm256_cvtepi32_ps(p), acc[t]);
        }
    }
    float minv[GROUP_M] __attribute__((aligned(32)));
    _mm256_store_ps(minv, mins);
    for (int t = 0; t < N; t++) y[t] = hsum(acc[t]) + minv[t];
}

#endif

#define GROUP_DOT_N(F, N) group_dot_fmt(F, row, nb, xg, scales, sums, N, y)
#define GROUP_DOT_FMT(F) switch (n) { \
    case 1: GROUP_DOT_N(F, 1); break; case 2: GROUP_DOT_N(F, 2); break; case 3: GROUP_DOT_N(F, 3); break; \
    case 4: GROUP_DOT_N(F, 4); break; case 5: GROUP_DOT_N(F, 5); break; case 6: GROUP_DOT_N(F, 6); break; \
    case 7: GROUP_DOT_N(F, 7); break; default: GROUP_DOT_N(F, GROUP_M); }

static void group_dot(int fmt, const uint8_t *row, int64_t nb, const int16_t *xg, const float *scales,
                      const float *sums, int n, float *y) {
    if (fmt == FMT_Q4_1) GROUP_DOT_FMT(FMT_Q4_1)
    else if (fmt == FMT_Q4_0) GROUP_DOT_FMT(FMT_Q4_0)
    else GROUP_DOT_FMT(FMT_Q8_0)
}

#ifndef LQ_GEMV_512
/* One x (m == 1) against ROWS_AT_ONCE consecutive rows: each block of x is loaded once for all of them, and their
 * independent accumulators keep the FMA and add chains apart. Per row and block: the weights' bytes, two integer
 * multiply-adds, one conversion and one FMA; the minimum's term, m * scale * sum(X), goes into a 2-lane vector
 * beside. */
static inline __attribute__((always_inline)) void rows_dot_fmt(int fmt, const uint8_t *row, int64_t row_bytes,
                                                               int64_t nb, const int16_t *xq, const float *pairs,
                                                               float *y) {
    __m256 acc[ROWS_AT_ONCE];
    __m128 mins[ROWS_AT_ONCE];
    int64_t bytes = LQ_BLOCK_BYTES[fmt];
    for (int r = 0; r < ROWS_AT_ONCE; r++) {
        acc[r] = _mm256_setzero_ps();
        mins[r] = _mm_setzero_ps();
    }
    const char *ahead = (const char *)row + PREFETCH_GROUPS * ROWS_AT_ONCE * row_bytes;
    for (int64_t i = 0; i < nb; i++) {
        /* the rows PREFETCH_GROUPS groups on, spread over the blocks: four rows read side by side are four streams,
         * which the hardware prefetcher follows worse than one */
        for (int64_t line = 0; line < ROWS_AT_ONCE * bytes; line += 64)
            _mm_prefetch(ahead + i * ROWS_AT_ONCE * bytes + line, _MM_HINT_T0);
        const int16_t *xb = xq + i * QK;
        __m128 scale_sum = _mm_castpd_ps(_mm_load_sd((const double *)(pairs + 2 * i)));
        for (int r = 0; r < ROWS_AT_ONCE; r++) {
            __m128 dm;
            __m256i w1, w0 = block_weights(fmt, row + r * row_bytes + i * bytes, &dm, &w1);
            __m256i p = dot_x(w0, w1, xb);
            __m128 prod = _mm_mul_ps(dm, scale_sum);
            mins[r] = _mm_add_ps(mins[r], prod);
            acc[r] = _mm256_fmadd_ps(_mm256_broadcastss_ps(prod), _mm256_cvtepi32_ps(p), acc[r]);
        }
    }
    for (int r = 0; r < ROWS_AT_ONCE; r++) y[r] = hsum(acc[r]) + _mm_cvtss_f32(_mm_movehdup_ps(mins[r]));
}

#endif

static void rows_dot(int fmt, const uint8_t *row, int64_t row_bytes, int64_t nb, const int16_t *xq,
                     const float *pairs, float *y) {
    if (fmt == FMT_Q4_1) rows_dot_fmt(FMT_Q4_1, row, row_bytes, nb, xq, pairs, y);
    else if (fmt == FMT_Q4_0) rows_dot_fmt(FMT_Q4_0, row, row_bytes, nb, xq, pairs, y);
    else rows_dot_fmt(FMT_Q8_0, row, row_bytes, nb, xq, pairs, y);
}

static void row_dot(int fmt, const uint8_t *row, int64_t nb, const int16_t *xq, const float *pairs, float *y) {
    if (fmt == FMT_Q4_1) row_dot_fmt(FMT_Q4_1, row, nb, xq, pairs, y);
    else if (fmt == FMT_Q4_0) row_dot_fmt(FMT_Q4_0, row, nb, xq, pairs, y);
    else row_dot_fmt(FMT_Q8_0, row, nb, xq, pairs, y);
}
#else
/* Without AVX2: the same sums in plain C. */
static void row_dot(int fmt, const uint8_t *row, int64_t nb, const int16_t *xq, const float *pairs,
                    int m, float *y) {
    int64_t bytes = LQ_BLOCK_BYTES[fmt];
    for (int t = 0; t < m; t++) y[t] = 0.0f;
    for (int64_t i = 0; i < nb; i++) {
        int32_t q[QK];
        float d, mn;
        lq_block_quants(fmt, row + i * bytes, q, &d, &mn);
        if (fmt == FMT_Q4_0) {   /* as above: q in 0..15 and the offset in the minimum */
            for (int j = 0; j < QK; j++) q[j] += 8;
            mn = -8.0f * d;
        }
        for (int t = 0; t < m; t++) {
            int32_t s = 0;
            for (int j = 0; j < QK; j++) s += q[j] * xq[(t * nb + i) * QK + j];
            y[t] += d * pairs[2 * (t * nb + i)] * (float)s + mn * pairs[2 * (t * nb + i) + 1];
        }
    }
}
#endif

typedef struct {
    int fmt;
    const uint8_t *w;
    int64_t rows, cols, m, ldy, chunk_rows;
    const int16_t *xq;            /* x quantized by row (m == 1), or as x_by_group lays it out (AVX2, m > 1) */
    const float *pairs;
    const float *scales, *sums;   /* AVX2, m > 1: x's block scales and scaled sums by group (group_dot) */
    float *y;
} matmul_job;

#ifdef __AVX2__
static void matmul_rows(void *ctx, int64_t chunk) {
    const matmul_job *j = ctx;
    int64_t nb = j->cols / QK, row_bytes = nb * LQ_BLOCK_BYTES[j->fmt], last = (chunk + 1) * j->chunk_rows;
    int64_t r = chunk * j->chunk_rows, end = last < j->rows ? last : j->rows;
    if (j->m == 1) {
        for (; r + ROWS_AT_ONCE <= end; r += ROWS_AT_ONCE)
            rows_dot(j->fmt, j->w + r * row_bytes, row_bytes, nb, j->xq, j->pairs, j->y + r);
        for (; r < end; r++) row_dot(j->fmt, j->w + r * row_bytes, nb, j->xq, j->pairs, j->y + r);
        return;
    }
    /* a group's x (nb * GROUP_M * 64 bytes: 9-24 KiB here) stays in L1 while the chunk's rows pass */
    for (int64_t t0 = 0; t0 < j->m; t0 += GROUP_M) {
        int n = (int)(j->m - t0 < GROUP_M ? j->m - t0 : GROUP_M);
        int64_t at = t0 * nb;   /* the group's first entry of the grouped layout */
        for (int64_t row = r; row < end; row++) {
            float out[GROUP_M];
            group_dot(j->fmt, j->w + row * row_bytes, nb, j->xq + at * QK, j->scales + at, j->sums + at, n, out);
            for (int t = 0; t < n; t++) j->y[(t0 + t) * j->ldy + row] = out[t];
        }
    }
}

/* x quantized [m, nb, QK] and pairs [m, nb, 2] -> the layout group_dot reads, by groups of GROUP_M x: xg [groups,
 * nb, GROUP_M, QK], scales and sums [groups, nb, GROUP_M] (zero past m) */
static void x_by_group(const int16_t *xq, const float *pairs, int64_t m, int64_t nb, int16_t *xg, float *scales,
                       float *sums) {
    int64_t groups = (m + GROUP_M - 1) / GROUP_M;
    memset(xg, 0, sizeof(int16_t) * (size_t)(groups * nb * GROUP_M * QK));
    memset(scales, 0, sizeof(float) * (size_t)(groups * nb * GROUP_M));
    memset(sums, 0, sizeof(float) * (size_t)(groups * nb * GROUP_M));
    for (int64_t t = 0; t < m; t++)
        for (int64_t i = 0; i < nb; i++) {
            int64_t at = ((t / GROUP_M) * nb + i) * GROUP_M + t % GROUP_M;
            memcpy(xg + at * QK, xq + (t * nb + i) * QK, sizeof(int16_t) * QK);
            scales[at] = pairs[2 * (t * nb + i)];
            sums[at] = pairs[2 * (t * nb + i) + 1];
        }
}
#else
static void matmul_rows(void *ctx, int64_t chunk) {
    const matmul_job *j = ctx;
    int64_t nb = j->cols / QK, row_bytes = nb * LQ_BLOCK_BYTES[j->fmt], last = (chunk + 1) * j->chunk_rows;
    for (int64_t r = chunk * j->chunk_rows; r < (last < j->rows ? last : j->rows); r++) {
        for (int64_t t0 = 0; t0 < j->m; t0 += MAX_M) {
            int n = (int)(j->m - t0 < MAX_M ? j->m - t0 : MAX_M);
            float out[MAX_M];
            row_dot(j->fmt, j->w + r * row_bytes, nb, j->xq + t0 * j->cols, j->pairs + 2 * t0 * nb, n, out);
            for (int t = 0; t < n; t++) j->y[(t0 + t) * j->ldy + r] = out[t];
        }
    }
}
#endif

/* y[t, r] (row stride ldy) = sum_k W[r, k] x[t, k] (row stride ldx) for t < m, x quantized per block first
 * (quantize_x). Q4_0 keeps its offset out of the quants here (q in 0..15, min = -8 d): the same weights. */
void lq_matmul(int fmt, const uint8_t *w, int64_t rows, int64_t cols, const float *x, int64_t m, int64_t ldx,
               float *y, int64_t ldy, int threads) {
#ifdef __AVX2__
    if (m >= GEMM_MIN_M) { lq_gemm(fmt, w, rows, cols, x, m, ldx, y, ldy, threads); return; }
#endif
    int64_t nb = cols / QK, grouped = (m + GROUP_M - 1) / GROUP_M * GROUP_M * nb;
    int16_t *xq = aligned_alloc(64, (size_t)(m * nb * XQ_BYTES)), *xg = NULL;
    float *pairs = malloc(sizeof(float) * (size_t)(2 * m * nb));
    float *scales = NULL, *sums = NULL;
    lq_quantize_x(x, m, ldx, cols, xq, pairs);
#ifdef __AVX2__
    if (m > 1) {
        xg = aligned_alloc(64, (size_t)(grouped * XQ_BYTES));
        scales = aligned_alloc(64, sizeof(float) * (size_t)(2 * grouped));
        sums = scales + grouped;
        x_by_group(xq, pairs, m, nb, xg, scales, sums);
    }
#endif
    int64_t chunks = (int64_t)(threads > 0 ? threads : 1) * CHUNKS_PER_THREAD;
    int64_t chunk_rows = ((rows + chunks - 1) / chunks + ROWS_AT_ONCE - 1) / ROWS_AT_ONCE * ROWS_AT_ONCE;
    if (chunk_rows < MIN_CHUNK_ROWS) chunk_rows = MIN_CHUNK_ROWS;
    matmul_job job = {fmt, w, rows, cols, m, ldy, chunk_rows, xg != NULL ? xg : xq, pairs, scales, sums, y};
    lq_parallel(matmul_rows, &job, (rows + chunk_rows - 1) / chunk_rows, threads);
    free(xg);
    free(xq);
    free(pairs);
    free(scales);
}
