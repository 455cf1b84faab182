/* quant_gemv.c's batched-decode and batch-1 dot products with AVX-512 (VNNI), included by quant_gemv.c in place of
 * its AVX2 ones (constants, layouts and the block decoder are quant_gemv.c's and lq_kernels.h's). */

/* quant_gemv.c's group_dot_fmt with AVX-512: a block's 32 weights are one zmm vector of int16 in x's order, so that
 * per x and block there is one integer multiply-add (x's block its memory operand), one conversion and one FMA
 * (d * scale its broadcast memory operand), over 16 lanes, where AVX2 takes two multiply-adds, an add, a conversion
 * and an FMA over 8. The accumulators are named variables, not an array, and the FMA is written out, since GCC
 * otherwise kept the array on the stack or took each d * scale out of a register with two shuffles. */
#define LQ_GROUP_STEP(t)                                                                                      \
    if (t < N) {                                                                                              \
        __m512 p = _mm512_cvtepi32_ps(_mm512_madd_epi16(w, _mm512_load_si512(xg + t * QK)));                  \
        __asm__("vfmadd231ps %[ds]%{1to16%}, %[p], %[acc]" : [acc] "+v"(acc##t) : [p] "v"(p), [ds] "m"(dsx[t])); \
    }
static inline __attribute__((always_inline)) void group_dot_fmt(int fmt, const uint8_t *row, int64_t nb,
                                                                const int16_t *xg, const float *scales,
                                                                const float *sums, const int N, float *y) {
    __m512 acc0 = _mm512_setzero_ps(), acc1 = acc0, acc2 = acc0, acc3 = acc0, acc4 = acc0, acc5 = acc0,
           acc6 = acc0, acc7 = acc0;
    __m256 mins = _mm256_setzero_ps();
    float dsx[GROUP_M] __attribute__((aligned(32)));
    int64_t bytes = LQ_BLOCK_BYTES[fmt];
    for (int64_t i = 0; i < nb; i++, xg += GROUP_M * QK, scales += GROUP_M, sums += GROUP_M) {
        __m128 dm;
        __m512i w = block_weights_512(fmt, row + i * bytes, &dm);
        _mm256_store_ps(dsx, _mm256_mul_ps(_mm256_broadcastss_ps(dm), _mm256_load_ps(scales)));
        if (fmt != FMT_Q8_0)
            mins = _mm256_fmadd_ps(_mm256_broadcastss_ps(_mm_movehdup_ps(dm)), _mm256_load_ps(sums), mins);
        LQ_GROUP_STEP(0) LQ_GROUP_STEP(1) LQ_GROUP_STEP(2) LQ_GROUP_STEP(3)
        LQ_GROUP_STEP(4) LQ_GROUP_STEP(5) LQ_GROUP_STEP(6) LQ_GROUP_STEP(7)
    }
    float minv[GROUP_M] __attribute__((aligned(32)));
    _mm256_store_ps(minv, mins);
    __m512 acc[GROUP_M] = {acc0, acc1, acc2, acc3, acc4, acc5, acc6, acc7};
    for (int t = 0; t < N; t++) y[t] = _mm512_reduce_add_ps(acc[t]) + minv[t];
}
#undef LQ_GROUP_STEP

/* quant_gemv.c's rows_dot_fmt with AVX-512 VNNI, for the 4-bit formats: two rows' blocks in one zmm (32 bytes of
 * nibbles widened to 32 int16 lanes: row r's 16 bytes, then row r + 1's), their low nibbles (weights 0-15) against x's
 * first 16 values repeated, their high nibbles (16-31) against the last 16, one vpmaddwd and one vpdpwssd; lanes 0-7
 * are row r's sums, 8-15 row r + 1's, each scaled by its own d * scale(x) (a permute of the pair's [d, min] products).
 * Per row and block about 8 instructions, against 13 for AVX2's. Q8_0 (32 bytes a row's block) goes a row a zmm. */
static inline __attribute__((always_inline)) void rows_dot_fmt(int fmt, const uint8_t *row, int64_t row_bytes,
                                                               int64_t nb, const int16_t *xq, const float *pairs,
                                                               float *y) {
    __m512 acc[ROWS_AT_ONCE];
    __m128 mins[ROWS_AT_ONCE];   /* 4-bit: by pair of rows, lanes 1 and 3; Q8_0 has no minimum */
    int64_t bytes = LQ_BLOCK_BYTES[fmt], quants = fmt == FMT_Q4_1 ? 4 : 2;
    const __m512i nibble = _mm512_set1_epi16(0x0F);
    const __m512i pick = _mm512_setr_epi32(0, 0, 0, 0, 0, 0, 0, 0, 2, 2, 2, 2, 2, 2, 2, 2);
    for (int r = 0; r < ROWS_AT_ONCE; r++) {
        acc[r] = _mm512_setzero_ps();
        mins[r] = _mm_setzero_ps();
    }
    const char *ahead = (const char *)row + PREFETCH_GROUPS * ROWS_AT_ONCE * row_bytes;
    for (int64_t i = 0; i < nb; i++) {
        for (int64_t line = 0; line < ROWS_AT_ONCE * bytes; line += 64)   /* as in the AVX2 rows_dot_fmt */
            _mm_prefetch(ahead + i * ROWS_AT_ONCE * bytes + line, _MM_HINT_T0);
        const uint8_t *b = row + i * bytes;
        if (fmt == FMT_Q8_0) {
            __m512i xb = _mm512_load_si512(xq + i * QK);
            for (int r = 0; r < ROWS_AT_ONCE; r++, b += row_bytes) {
                __m512i w = _mm512_cvtepi8_epi16(_mm256_loadu_si256((const __m256i *)(b + 2)));
                float ds = _cvtsh_ss(*(const uint16_t *)b) * pairs[2 * i];
                acc[r] = _mm512_fmadd_ps(_mm512_set1_ps(ds), _mm512_cvtepi32_ps(_mm512_madd_epi16(w, xb)), acc[r]);
            }
            continue;
        }
        __m512i xlo = _mm512_broadcast_i64x4(_mm256_load_si256((const __m256i *)(xq + i * QK)));
        __m512i xhi = _mm512_broadcast_i64x4(_mm256_load_si256((const __m256i *)(xq + i * QK + 16)));
        __m128 scale_sum = _mm_castpd_ps(_mm_load1_pd((const double *)(pairs + 2 * i)));
        for (int h = 0; h < ROWS_AT_ONCE / 2; h++, b += 2 * row_bytes) {
            __m256i q = _mm256_inserti128_si256(_mm256_castsi128_si256(_mm_loadu_si128((const __m128i *)(b + quants))),
                                                _mm_loadu_si128((const __m128i *)(b + row_bytes + quants)), 1);
            __m512i w = _mm512_cvtepu8_epi16(q);
            __m512i p = _mm512_dpwssd_epi32(_mm512_madd_epi16(_mm512_and_si512(w, nibble), xlo),
                                            _mm512_srli_epi16(w, 4), xhi);
            __m128 prod = _mm_mul_ps(_mm_movelh_ps(block_dm(fmt, b), block_dm(fmt, b + row_bytes)), scale_sum);
            mins[h] = _mm_add_ps(mins[h], prod);
            acc[h] = _mm512_fmadd_ps(_mm512_permutexvar_ps(pick, _mm512_castps128_ps512(prod)),
                                     _mm512_cvtepi32_ps(p), acc[h]);
        }
    }
    if (fmt == FMT_Q8_0) {
        for (int r = 0; r < ROWS_AT_ONCE; r++) y[r] = _mm512_reduce_add_ps(acc[r]);
        return;
    }
    for (int h = 0; h < ROWS_AT_ONCE / 2; h++) {
        float m[4];
        _mm_storeu_ps(m, mins[h]);
        y[2 * h] = hsum(_mm512_castps512_ps256(acc[h])) + m[1];
        y[2 * h + 1] = hsum(_mm512_extractf32x8_ps(acc[h], 1)) + m[3];
    }
}
