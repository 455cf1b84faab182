/* quant_gemm.c's tiles with AVX-512 VNNI: 8 x rows at a time against a panel, included by quant_gemm.c in place of
 * its AVX2 tiles (the gemm_job, panels and constants are its own). A panel's ymm vectors of 8 rows x 2 columns are,
 * two by two, zmm vectors of 16 rows (the same bytes), and vpdpwssd multiplies and accumulates 32 pairs an
 * instruction, where AVX2 takes a vpmaddwd of 16 and a vpaddd. */

/* r[i] lane k <-> r[k] lane i, for 16 vectors of 16 int32: unpacks of 32- and 64-bit elements, then two rounds of
 * 128-bit lane shuffles. */
static inline __attribute__((always_inline)) void transpose16(__m512i r[16]) {
    __m512i t[16];
    for (int k = 0; k < 8; k++) {
        t[2 * k] = _mm512_unpacklo_epi32(r[2 * k], r[2 * k + 1]);
        t[2 * k + 1] = _mm512_unpackhi_epi32(r[2 * k], r[2 * k + 1]);
    }
    for (int k = 0; k < 4; k++) {
        r[4 * k] = _mm512_unpacklo_epi64(t[4 * k], t[4 * k + 2]);
        r[4 * k + 1] = _mm512_unpackhi_epi64(t[4 * k], t[4 * k + 2]);
        r[4 * k + 2] = _mm512_unpacklo_epi64(t[4 * k + 1], t[4 * k + 3]);
        r[4 * k + 3] = _mm512_unpackhi_epi64(t[4 * k + 1], t[4 * k + 3]);
    }
    for (int k = 0; k < 4; k++) {
        t[k] = _mm512_shuffle_i32x4(r[k], r[k + 4], 0x88);
        t[k + 4] = _mm512_shuffle_i32x4(r[k], r[k + 4], 0xdd);
        t[k + 8] = _mm512_shuffle_i32x4(r[k + 8], r[k + 12], 0x88);
        t[k + 12] = _mm512_shuffle_i32x4(r[k + 8], r[k + 12], 0xdd);
    }
    for (int k = 0; k < 4; k++) {
        r[k] = _mm512_shuffle_i32x4(t[k], t[k + 8], 0x88);
        r[k + 8] = _mm512_shuffle_i32x4(t[k], t[k + 8], 0xdd);
        r[k + 4] = _mm512_shuffle_i32x4(t[k + 4], t[k + 12], 0x88);
        r[k + 12] = _mm512_shuffle_i32x4(t[k + 4], t[k + 12], 0xdd);
    }
}

/* Panel `panel` in quant_gemm.c's layout (its AVX2 decode_panel says it), decoded 16 rows x 1 block at a time: a
 * row's block is one zmm of 16 int32 column pairs (lq_kernels.h's decoder), and the transpose of 16 of them is the
 * panel's 16 vectors of a column pair x 16 rows. About 5x faster than decoding weight by weight, which matters when
 * a batched decode step decodes every panel for a few x rows. */
static void decode_panel(const gemm_job *j, int64_t panel, int16_t *wp, float *d) {
    int64_t nb = j->cols / QK, row_bytes = lq_row_bytes(j->fmt, j->cols), bytes = LQ_BLOCK_BYTES[j->fmt];
    float *min = d + PANEL_ROWS * nb;
    for (int half = 0; half < PANEL_ROWS / 16; half++) {
        int64_t first = panel * PANEL_ROWS + 16 * half;
        int have = j->rows - first < 16 ? (int)(j->rows - first) : 16;   /* rows past the matrix are zero */
        /* the next 16 rows (one contiguous run of bytes), spread over this half's blocks: 16 rows read side by side
         * are 16 streams, which the hardware prefetcher does not follow */
        const char *next = (const char *)(j->w + (first + 16) * row_bytes);
        int64_t lines_per_block = (16 * bytes + 63) / 64;
        for (int64_t i = 0; i < nb; i++) {
            for (int64_t line = 0; line < lines_per_block; line++)
                _mm_prefetch(next + (i * lines_per_block + line) * 64, _MM_HINT_T0);
            __m512i v[16];
            float *di = d + i * PANEL_ROWS + 16 * half, *mi = min + i * PANEL_ROWS + 16 * half;
            for (int r = 0; r < 16; r++) {
                if (r >= have) {
                    v[r] = _mm512_setzero_si512();
                    di[r] = mi[r] = 0.0f;
                    continue;
                }
                __m128 dm;
                v[r] = block_weights_512(j->fmt, j->w + (first + r) * row_bytes + i * bytes, &dm);
                di[r] = _mm_cvtss_f32(dm);
                mi[r] = _mm_cvtss_f32(_mm_movehdup_ps(dm));
            }
            transpose16(v);
            for (int p = 0; p < QK / 2; p++)
                _mm512_store_si512(wp + ((i * QK / 2 + p) * PANEL_ROWS + 16 * half) * 2, v[p]);
        }
    }
}

/* x rounded, then laid out for panel_tile by groups of X_AT_ONCE rows, each pair of columns of the group's rows side
 * by side: ((int32_t *)xq)[(g * cols / 2 + p) * X_AT_ONCE + r] = columns 2p, 2p + 1 of row g * X_AT_ONCE + r (rows
 * past m zero). */
static void quantize_rows(void *ctx, int64_t chunk) {
    const gemm_job *j = ctx;
    int64_t t = chunk * QUANTIZE_ROWS, n = j->m - t < QUANTIZE_ROWS ? j->m - t : QUANTIZE_ROWS, nb = j->cols / QK;
    int64_t pairs = j->cols / 2;
    int32_t *rows = aligned_alloc(64, sizeof(int32_t) * (size_t)(X_AT_ONCE * pairs));
    for (int64_t g = t; g < t + n; g += X_AT_ONCE) {
        int64_t have = t + n - g < X_AT_ONCE ? t + n - g : X_AT_ONCE;
        lq_quantize_x(j->x + g * j->ldx, have, j->ldx, j->cols, (int16_t *)rows, j->pairs + 2 * g * nb);
        memset(rows + have * pairs, 0, sizeof(int32_t) * (size_t)((X_AT_ONCE - have) * pairs));
        int32_t *to = (int32_t *)(j->xq + g * j->cols);
        for (int64_t p = 0; p < pairs; p++)
            for (int r = 0; r < X_AT_ONCE; r++) to[p * X_AT_ONCE + r] = rows[r * pairs + p];
    }
    free(rows);
}

/* One block (32 columns) of X_AT_ONCE = 8 x rows (their pairs side by side at x, quantize_rows' layout) against a
 * panel's two zmm vectors of 16 rows, into acc[x][v] (16 int32 lanes each): per pair of columns 2 loads and 16
 * vpdpwssd, each taking its x pair as a broadcast operand (32 multiply-adds and their sums an instruction: 4x an
 * AVX2 vpmaddwd and its add). In assembly, as the AVX2 block_products is, so that weights and accumulators stay in
 * registers; the sixteen accumulators are zmm0-15, stored at the end (an asm statement takes at most 30 operands),
 * and the statement is volatile since its result is in memory. */
static inline __attribute__((always_inline)) void block_products(const int16_t *w, const int32_t *x,
                                                                  __m512i acc[X_AT_ONCE][2]) {
    const int16_t *end = w + QK * PANEL_ROWS;
#define LQ_ZERO(a) "vpxord %%zmm" #a ", %%zmm" #a ", %%zmm" #a "\n\t"
#define LQ_DP(off, a0, a1) "vpdpwssd " #off "(%[x])%{1to16%}, %%zmm16, %%zmm" #a0 "\n\t" \
                           "vpdpwssd " #off "(%[x])%{1to16%}, %%zmm17, %%zmm" #a1 "\n\t"
#define LQ_STORE(a) "vmovdqa64 %%zmm" #a ", " #a "*64(%[acc])\n\t"
    __asm__ volatile(LQ_ZERO(0) LQ_ZERO(1) LQ_ZERO(2) LQ_ZERO(3) LQ_ZERO(4) LQ_ZERO(5) LQ_ZERO(6) LQ_ZERO(7)
            LQ_ZERO(8) LQ_ZERO(9) LQ_ZERO(10) LQ_ZERO(11) LQ_ZERO(12) LQ_ZERO(13) LQ_ZERO(14) LQ_ZERO(15)
            "1:\n\t"
            "vmovdqa64 (%[w]), %%zmm16\n\t"
            "vmovdqa64 64(%[w]), %%zmm17\n\t"
            LQ_DP(0, 0, 1) LQ_DP(4, 2, 3) LQ_DP(8, 4, 5) LQ_DP(12, 6, 7)
            LQ_DP(16, 8, 9) LQ_DP(20, 10, 11) LQ_DP(24, 12, 13) LQ_DP(28, 14, 15)
            "add $128, %[w]\n\t"
            "add $32, %[x]\n\t"
            "cmp %[end], %[w]\n\t"
            "jne 1b\n\t"
            LQ_STORE(0) LQ_STORE(1) LQ_STORE(2) LQ_STORE(3) LQ_STORE(4) LQ_STORE(5) LQ_STORE(6) LQ_STORE(7)
            LQ_STORE(8) LQ_STORE(9) LQ_STORE(10) LQ_STORE(11) LQ_STORE(12) LQ_STORE(13) LQ_STORE(14) LQ_STORE(15)
            : [w] "+r"(w), [x] "+r"(x)
            : [end] "r"(end), [acc] "r"(acc)
            : "memory", "cc", "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6", "xmm7", "xmm8", "xmm9",
              "xmm10", "xmm11", "xmm12", "xmm13", "xmm14", "xmm15", "xmm16", "xmm17");
#undef LQ_ZERO
#undef LQ_DP
#undef LQ_STORE
}

/* X_AT_ONCE = 8 x rows from t (a multiple of 8) against a panel: out[x * PANEL_ROWS + r]. The float sums wait in
 * out between blocks, the registers being the accumulators'. */
static void panel_tile(const gemm_job *j, const int16_t *wp, const float *d, const float *min, int64_t t,
                       float *out) {
    int64_t nb = j->cols / QK;
    const int32_t *xgroup = (const int32_t *)(j->xq + t * j->cols);
    memset(out, 0, sizeof(float) * X_AT_ONCE * PANEL_ROWS);
    for (int64_t i = 0; i < nb; i++) {
        __m512i acc[X_AT_ONCE][2];
        block_products(wp + i * QK * PANEL_ROWS, xgroup + i * (QK / 2) * X_AT_ONCE, acc);
        for (int x = 0; x < X_AT_ONCE; x++) {
            const float *pair = j->pairs + 2 * ((t + x) * nb + i);
            __m512 scale = _mm512_set1_ps(pair[0]), scaled_sum = _mm512_set1_ps(pair[1]);
            for (int v = 0; v < 2; v++) {
                float *sum = out + x * PANEL_ROWS + 16 * v;
                __m512 dv = _mm512_load_ps(d + i * PANEL_ROWS + 16 * v);
                __m512 mv = _mm512_load_ps(min + i * PANEL_ROWS + 16 * v);
                __m512 s = _mm512_fmadd_ps(_mm512_cvtepi32_ps(acc[x][v]), _mm512_mul_ps(dv, scale),
                                           _mm512_load_ps(sum));
                _mm512_store_ps(sum, _mm512_fmadd_ps(mv, scaled_sum, s));
            }
        }
    }
}
