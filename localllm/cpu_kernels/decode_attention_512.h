/* decode_ops.c's decode-attention passes with AVX-512, included by it and taken for head sizes a multiple of 64 up to
 * MAX_DIM_512. The AVX2 dot products reduced each key's 8 lanes on their own (a quarter of their
 * instructions) and the value sums walked the keys once per 16 columns; here 16 keys' K rows are converted once into
 * a small float32 tile, each head's 16 dot products reduced together (hsum16, 45 instructions for 16 keys), and the
 * value sums take 64 columns a walk (16 accumulators). About 2.4x fewer instructions a key for 3 query heads of 64. */

enum { MAX_DIM_512 = 128, KEYS_A_TILE = 16 };

/* lane k = the sum of v[k]'s 16 lanes: pairs unpacked and added within 128-bit lanes, then the lanes combined */
static inline __m512 hsum16(const __m512 v[16]) {
    __m512 s[8], t[4];
    for (int i = 0; i < 8; i++)
        s[i] = _mm512_add_ps(_mm512_unpacklo_ps(v[2 * i], v[2 * i + 1]), _mm512_unpackhi_ps(v[2 * i], v[2 * i + 1]));
    for (int i = 0; i < 4; i++) {
        __m512d a = _mm512_castps_pd(s[2 * i]), b = _mm512_castps_pd(s[2 * i + 1]);
        t[i] = _mm512_add_ps(_mm512_castpd_ps(_mm512_unpacklo_pd(a, b)), _mm512_castpd_ps(_mm512_unpackhi_pd(a, b)));
    }
    __m512 u0 = _mm512_add_ps(_mm512_shuffle_f32x4(t[0], t[1], 0x88), _mm512_shuffle_f32x4(t[0], t[1], 0xdd));
    __m512 u1 = _mm512_add_ps(_mm512_shuffle_f32x4(t[2], t[3], 0x88), _mm512_shuffle_f32x4(t[2], t[3], 0xdd));
    return _mm512_add_ps(_mm512_shuffle_f32x4(u0, u1, 0x88), _mm512_shuffle_f32x4(u0, u1, 0xdd));
}

static inline __m512 cache16(const void *cache, int half, int64_t at) {
    return half ? _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)((const uint16_t *)cache + at)))
                : _mm512_loadu_ps((const float *)cache + at);
}

/* scores[g * stride + p] = scale * (query head g) . (key row rows[p]), for `heads` heads */
static inline __attribute__((always_inline)) void pass_dots_512(const float *q, int heads, int64_t dim,
                                                                const void *k_cache, int half, const int64_t *rows,
                                                                int64_t n, float scale, float *scores,
                                                                int64_t stride) {
    float tile[KEYS_A_TILE][MAX_DIM_512] __attribute__((aligned(64)));
    for (int64_t p0 = 0; p0 < n; p0 += KEYS_A_TILE) {
        int keys = n - p0 < KEYS_A_TILE ? (int)(n - p0) : KEYS_A_TILE;
        for (int k = 0; k < KEYS_A_TILE; k++)
            for (int64_t i = 0; i < dim; i += 16)
                _mm512_store_ps(tile[k] + i,
                                k < keys ? cache16(k_cache, half, rows[p0 + k] + i) : _mm512_setzero_ps());
        for (int g = 0; g < heads; g++) {
            __m512 part[KEYS_A_TILE];
            for (int k = 0; k < KEYS_A_TILE; k++) part[k] = _mm512_setzero_ps();
            for (int64_t i = 0; i < dim; i += 16) {
                __m512 qi = _mm512_loadu_ps(q + g * dim + i);
                for (int k = 0; k < KEYS_A_TILE; k++)
                    part[k] = _mm512_fmadd_ps(qi, _mm512_load_ps(tile[k] + i), part[k]);
            }
            __m512 dots = _mm512_mul_ps(hsum16(part), _mm512_set1_ps(scale));
            _mm512_mask_storeu_ps(scores + g * stride + p0, (__mmask16)((1u << keys) - 1), dots);
        }
    }
}

/* out[g * dim + i] = sum over p of weights[g * stride + p] * (value row rows[p])[i], 64 columns a walk over the keys */
static inline __attribute__((always_inline)) void pass_values_512(float *out, int heads, int64_t dim,
                                                                  const void *v_cache, int half, const int64_t *rows,
                                                                  int64_t n, const float *weights, int64_t stride) {
    for (int64_t i0 = 0; i0 < dim; i0 += 64) {
        __m512 acc[PASS_HEADS][4];
        for (int g = 0; g < heads; g++)
            for (int c = 0; c < 4; c++) acc[g][c] = _mm512_setzero_ps();
        for (int64_t p = 0; p < n; p++) {
            __m512 v[4];
            for (int c = 0; c < 4; c++) v[c] = cache16(v_cache, half, rows[p] + i0 + 16 * c);
            for (int g = 0; g < heads; g++) {
                __m512 w = _mm512_set1_ps(weights[g * stride + p]);
                for (int c = 0; c < 4; c++) acc[g][c] = _mm512_fmadd_ps(w, v[c], acc[g][c]);
            }
        }
        for (int g = 0; g < heads; g++)
            for (int c = 0; c < 4; c++) _mm512_storeu_ps(out + g * dim + i0 + 16 * c, acc[g][c]);
    }
}
