/* A matmul over GGUF block rows (Q4_0, Q4_1, Q8_0) for many rows of x (a prefill), x rounded to int16 per 32 values
 * as lq_matmul rounds it (lq_quantize_x, quant_blocks.c), the products summed by vpmaddwd: 16 multiply-adds an
 * instruction against a float32 FMA's 8. Measured on AVX2 Zen 3 cores, a multiply-add and the add that accumulates
 * it cost about 1.5 FMAs, so this runs at 1.2-1.3x torch's float32 GEMM over dequantized weights, and skips the
 * dequantizing.
 *
 * The weights are decoded once into int16 panels of PANEL_ROWS rows, laid out for the inner loop (a vector = 8 rows
 * x 2 consecutive columns), x is rounded once, then tiles (a panel x a chunk of x rows small enough to stay in L2)
 * run 2 x rows at a time against the panel's 4 vectors: per pair of columns 4 loads, 2 broadcasts of an x pair and
 * 8 integer multiply-adds into 8 int32 accumulators (32 rows x 2 x). After each block of 32 columns the accumulators
 * are scaled, d * scale(x), and the minimum's term m * scale(x) * sum(X) added, into float32 sums: the sums
 * sum_i d_i scale_i sum_j q_ij X_ij + m_i scale_i sum_j X_ij that the GEMV kernel computes, added in another order.
 * Each of the three steps is shared out over work_pool.c's threads. With AVX-512 VNNI the tiles are
 * quant_gemm_512.h's: 8 x rows at a time, 2.6x the multiply-adds an instruction (1.6x faster at 2,048 rows of x
 * on a Zen 5 core, the same sums).
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "lq_kernels.h"
#ifdef __AVX2__
#include <immintrin.h>
#endif

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VNNI__)
#define LQ_GEMM_512 1
#endif
/* x rows a tile takes at once: as many as the accumulators of 16 (AVX2) or 32 (AVX-512) registers hold */
#ifdef LQ_GEMM_512
enum { X_AT_ONCE = 8 };
#else
enum { X_AT_ONCE = 2 };
#endif
enum { QK = 32, LANES = 8, ROW_VECTORS = 4, PANEL_ROWS = LANES * ROW_VECTORS };
/* x rows a tile runs against its panel: as many as fit this many bytes of int16 (L2 holds them between panels);
 * x rows rounded per chunk of the pool */
enum { X_CHUNK_BYTES = 192 * 1024, QUANTIZE_ROWS = 32 };
/* a one-chunk x's panels go in this many contiguous runs a thread (quant_gemv.c's CHUNKS_PER_THREAD says why) */
enum { PANEL_RUNS_PER_THREAD = 2 };

/* Whether lq_gemm is built (it needs AVX2); without it lq_matmul is only fit for a few rows of x. */
int lq_gemm_available(void) {
#ifdef __AVX2__
    return 1;
#else
    return 0;
#endif
}

#ifdef __AVX2__
typedef struct {
    int fmt;
    const uint8_t *w;
    int64_t rows, cols, m, ldx, ldy, x_chunk, panels, panels_per_chunk;
    const float *x;
    int16_t *xq;     /* [m rounded up to X_AT_ONCE, cols] (AVX-512: by groups of X_AT_ONCE, quantize_rows) */
    float *pairs;    /* [that, cols / 32, 2]: x's block scale, scale * sum(X) */
    int16_t *wp;     /* the decoded panels, decode_panel's layout one after the other */
    float *dmin;     /* by panel: d [nb, PANEL_ROWS], then min [nb, PANEL_ROWS] */
    float *y;
} gemm_job;

#ifdef LQ_GEMM_512
#include "quant_gemm_512.h"
#else
/* Panel `panel` (PANEL_ROWS rows; rows past the matrix are zero) as int16 into wp, d: wp[(p * ROW_VECTORS + v) * 16
 * + 2 * lane + h] = q[8 v + lane][2 p + h], and by block i: d[i * PANEL_ROWS + r], min[i * PANEL_ROWS + r],
 * lq_block_quants' q, d and min: w = d q + min in every format (Q4_0's q - 8 and min 0). */
static void decode_panel(const gemm_job *j, int64_t panel, int16_t *wp, float *d) {
    int64_t nb = j->cols / QK, row_bytes = lq_row_bytes(j->fmt, j->cols), first = panel * PANEL_ROWS;
    float *min = d + PANEL_ROWS * nb;
    memset(wp, 0, sizeof(int16_t) * (size_t)(PANEL_ROWS * j->cols));
    memset(d, 0, sizeof(float) * (size_t)(2 * PANEL_ROWS * nb));
    for (int r = 0; r < PANEL_ROWS && first + r < j->rows; r++) {
        const uint8_t *row = j->w + (first + r) * row_bytes;
        int16_t *to = wp + (r / LANES) * 16 + 2 * (r % LANES);
        for (int64_t i = 0; i < nb; i++) {
            int32_t q[QK];
            lq_block_quants(j->fmt, row + i * (row_bytes / nb), q, d + i * PANEL_ROWS + r, min + i * PANEL_ROWS + r);
            for (int k = 0; k < QK; k += 2) {
                int16_t *at = to + ((i * QK + k) / 2) * ROW_VECTORS * 16;
                at[0] = (int16_t)q[k];
                at[1] = (int16_t)q[k + 1];
            }
        }
    }
}

static void quantize_rows(void *ctx, int64_t chunk) {
    const gemm_job *j = ctx;
    int64_t t = chunk * QUANTIZE_ROWS, n = j->m - t < QUANTIZE_ROWS ? j->m - t : QUANTIZE_ROWS, nb = j->cols / QK;
    lq_quantize_x(j->x + t * j->ldx, n, j->ldx, j->cols, j->xq + t * j->cols, j->pairs + 2 * t * nb);
}

/* One block (32 columns) of X_AT_ONCE = 2 x rows (int32 pairs at x, x + xstride) against a panel's ROW_VECTORS = 4
 * vectors of 8 rows: acc[x][v] += the products, 8 int32 lanes each; per pair of columns 4 loads, 2 broadcasts, 8
 * multiply-adds, 8 adds. Written in assembly because the compiler, short of registers, took the weights as memory
 * operands of each multiply-add (8 loads a step instead of 4) and copied every accumulator each step: ~15% slower. */
static inline __attribute__((always_inline)) void block_products(const int16_t *w, const int32_t *x, int64_t xstride,
                                                                  __m256i acc[X_AT_ONCE][ROW_VECTORS]) {
    const int16_t *end = w + QK * ROW_VECTORS * LANES;
    int64_t xstride_bytes = 4 * xstride;
    /* ymm8-11: the step's weights, ymm12-13: the two x pairs, ymm14-15: products */
    __asm__("1:\n\t"
            "vmovdqa (%[w]), %%ymm8\n\t"
            "vmovdqa 32(%[w]), %%ymm9\n\t"
            "vmovdqa 64(%[w]), %%ymm10\n\t"
            "vmovdqa 96(%[w]), %%ymm11\n\t"
            "vpbroadcastd (%[x]), %%ymm12\n\t"
            "vpbroadcastd (%[x], %[xs]), %%ymm13\n\t"
            "vpmaddwd %%ymm8, %%ymm12, %%ymm14\n\t"
            "vpmaddwd %%ymm9, %%ymm12, %%ymm15\n\t"
            "vpaddd %%ymm14, %[a0], %[a0]\n\t"
            "vpaddd %%ymm15, %[a1], %[a1]\n\t"
            "vpmaddwd %%ymm10, %%ymm12, %%ymm14\n\t"
            "vpmaddwd %%ymm11, %%ymm12, %%ymm15\n\t"
            "vpaddd %%ymm14, %[a2], %[a2]\n\t"
            "vpaddd %%ymm15, %[a3], %[a3]\n\t"
            "vpmaddwd %%ymm8, %%ymm13, %%ymm14\n\t"
            "vpmaddwd %%ymm9, %%ymm13, %%ymm15\n\t"
            "vpaddd %%ymm14, %[a4], %[a4]\n\t"
            "vpaddd %%ymm15, %[a5], %[a5]\n\t"
            "vpmaddwd %%ymm10, %%ymm13, %%ymm14\n\t"
            "vpmaddwd %%ymm11, %%ymm13, %%ymm15\n\t"
            "vpaddd %%ymm14, %[a6], %[a6]\n\t"
            "vpaddd %%ymm15, %[a7], %[a7]\n\t"
            "add $128, %[w]\n\t"
            "add $4, %[x]\n\t"
            "cmp %[end], %[w]\n\t"
            "jne 1b"
            : [a0] "+x"(acc[0][0]), [a1] "+x"(acc[0][1]), [a2] "+x"(acc[0][2]), [a3] "+x"(acc[0][3]),
              [a4] "+x"(acc[1][0]), [a5] "+x"(acc[1][1]), [a6] "+x"(acc[1][2]), [a7] "+x"(acc[1][3]),
              [w] "+r"(w), [x] "+r"(x)
            : [xs] "r"(xstride_bytes), [end] "r"(end)
            : "memory", "cc", "xmm8", "xmm9", "xmm10", "xmm11", "xmm12", "xmm13", "xmm14", "xmm15");
}

/* X_AT_ONCE x rows from t against a panel: out[x * PANEL_ROWS + r]. */
static void panel_tile(const gemm_job *j, const int16_t *wp, const float *d, const float *min, int64_t t,
                       float *out) {
    int64_t nb = j->cols / QK;
    __m256 sums[X_AT_ONCE][ROW_VECTORS];
    for (int x = 0; x < X_AT_ONCE; x++)
        for (int v = 0; v < ROW_VECTORS; v++) sums[x][v] = _mm256_setzero_ps();
    const int32_t *xrow = (const int32_t *)(j->xq + t * j->cols);
    int64_t xstride = j->cols / 2;
    for (int64_t i = 0; i < nb; i++) {
        __m256i acc[X_AT_ONCE][ROW_VECTORS];
        for (int x = 0; x < X_AT_ONCE; x++)
            for (int v = 0; v < ROW_VECTORS; v++) acc[x][v] = _mm256_setzero_si256();
        block_products(wp + i * (QK / 2) * ROW_VECTORS * 16, xrow + i * (QK / 2), xstride, acc);
        for (int x = 0; x < X_AT_ONCE; x++) {
            const float *pair = j->pairs + 2 * ((t + x) * nb + i);
            __m256 scale = _mm256_set1_ps(pair[0]), scaled_sum = _mm256_set1_ps(pair[1]);
            for (int v = 0; v < ROW_VECTORS; v++) {
                __m256 dv = _mm256_load_ps(d + i * PANEL_ROWS + v * LANES);
                __m256 mv = _mm256_load_ps(min + i * PANEL_ROWS + v * LANES);
                sums[x][v] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(acc[x][v]), _mm256_mul_ps(dv, scale), sums[x][v]);
                sums[x][v] = _mm256_fmadd_ps(mv, scaled_sum, sums[x][v]);
            }
        }
    }
    for (int x = 0; x < X_AT_ONCE; x++)
        for (int v = 0; v < ROW_VECTORS; v++) _mm256_storeu_ps(out + x * PANEL_ROWS + v * LANES, sums[x][v]);
}

#endif

/* X rows t0..t_end against panel `panel`, decoded at wp, d (decode_panel's layout), into y. */
static void panel_rows(const gemm_job *j, int64_t panel, const int16_t *wp, const float *d, int64_t t0,
                       int64_t t_end) {
    int64_t nb = j->cols / QK, first = panel * PANEL_ROWS;
    int64_t width = j->rows - first < PANEL_ROWS ? j->rows - first : PANEL_ROWS;
    float out[X_AT_ONCE * PANEL_ROWS] __attribute__((aligned(64)));
    for (int64_t t = t0; t < t_end; t += X_AT_ONCE) {
        int n = t_end - t < X_AT_ONCE ? (int)(t_end - t) : X_AT_ONCE;
        panel_tile(j, wp, d, d + PANEL_ROWS * nb, t, out);
        for (int x = 0; x < n; x++)
            memcpy(j->y + (t + x) * j->ldy + first, out + x * PANEL_ROWS, sizeof(float) * width);
    }
}

static void decode_one_panel(void *ctx, int64_t panel) {
    const gemm_job *j = ctx;
    decode_panel(j, panel, j->wp + panel * PANEL_ROWS * j->cols, j->dmin + panel * 2 * PANEL_ROWS * (j->cols / QK));
}

/* Tile = a chunk of x rows against one panel of the decoded matrix; consecutive tiles share the chunk (it stays in
 * L2). */
static void run_tile(void *ctx, int64_t tile) {
    const gemm_job *j = ctx;
    int64_t panel = tile % j->panels, t0 = (tile / j->panels) * j->x_chunk;
    panel_rows(j, panel, j->wp + panel * PANEL_ROWS * j->cols, j->dmin + panel * 2 * PANEL_ROWS * (j->cols / QK), t0,
               t0 + j->x_chunk < j->m ? t0 + j->x_chunk : j->m);
}

/* All of x against the panels of chunk `chunk` (a contiguous run of panels_per_chunk), each decoded here into the
 * thread's cache rather than into a whole decoded matrix first: for an x small enough to be one chunk (a batched
 * decode step), so that the decoded weights never go to memory. Contiguous runs, not panels taken in turn, so that
 * each thread streams its weights in one run the prefetcher follows. */
static void decode_and_run_panels(void *ctx, int64_t chunk) {
    const gemm_job *j = ctx;
    int16_t *wp = aligned_alloc(64, sizeof(int16_t) * (size_t)(PANEL_ROWS * j->cols));
    float *d = aligned_alloc(64, sizeof(float) * (size_t)(2 * PANEL_ROWS * (j->cols / QK)));
    int64_t end = (chunk + 1) * j->panels_per_chunk < j->panels ? (chunk + 1) * j->panels_per_chunk : j->panels;
    for (int64_t panel = chunk * j->panels_per_chunk; panel < end; panel++) {
        decode_panel(j, panel, wp, d);
        panel_rows(j, panel, wp, d, 0, j->m);
    }
    free(wp);
    free(d);
}

/* y[t, r] (row stride ldy) = sum_k W[r, k] x[t, k] (row stride ldx) for t < m, x rounded by lq_quantize_x: x
 * rounded, then either (x one chunk) each panel decoded and multiplied by the thread that takes it, or the weights
 * decoded once into panels and then the tiles; each step over all threads. */
void lq_gemm(int fmt, const uint8_t *w, int64_t rows, int64_t cols, const float *x, int64_t m, int64_t ldx,
             float *y, int64_t ldy, int threads) {
    int64_t nb = cols / QK, x_chunk = X_CHUNK_BYTES / (2 * cols) / X_AT_ONCE * X_AT_ONCE;
    if (x_chunk < X_AT_ONCE) x_chunk = X_AT_ONCE;
    int64_t padded = (m + X_AT_ONCE - 1) / X_AT_ONCE * X_AT_ONCE, panels = (rows + PANEL_ROWS - 1) / PANEL_ROWS;
    int fused = m <= x_chunk;   /* one chunk of x: each panel decoded where it is used */
    int64_t runs = (int64_t)(threads > 0 ? threads : 1) * PANEL_RUNS_PER_THREAD;
    gemm_job job = {fmt, w, rows, cols, m, ldx, ldy, x_chunk, panels, (panels + runs - 1) / runs, x,
                    aligned_alloc(64, sizeof(int16_t) * (size_t)(padded * cols)),
                    calloc((size_t)(2 * padded * nb), sizeof(float)),
                    fused ? NULL : aligned_alloc(64, sizeof(int16_t) * (size_t)(panels * PANEL_ROWS * cols)),
                    fused ? NULL : aligned_alloc(64, sizeof(float) * (size_t)(panels * 2 * PANEL_ROWS * nb)), y};
    memset(job.xq + m * cols, 0, sizeof(int16_t) * (size_t)((padded - m) * cols));   /* whole tiles only */
    lq_parallel(quantize_rows, &job, (m + QUANTIZE_ROWS - 1) / QUANTIZE_ROWS, threads);
    if (fused) {
        lq_parallel(decode_and_run_panels, &job, (panels + job.panels_per_chunk - 1) / job.panels_per_chunk, threads);
    } else {
        lq_parallel(decode_one_panel, &job, panels, threads);
        lq_parallel(run_tile, &job, panels * ((m + x_chunk - 1) / x_chunk), threads);
    }
    free(job.xq);
    free(job.pairs);
    free(job.wp);
    free(job.dmin);
}
#endif
