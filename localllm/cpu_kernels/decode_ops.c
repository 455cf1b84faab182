/* The small float32 operations around the matmuls of a CPU decode step, one call each instead of the ~5-20 torch
 * ops of their plain-torch references (kernels/*_ref.py), whose per-op dispatch dominates a batch-1 step:
 * RMSNorm with the residual add, SiLU-and-mul, rotary + K/V store, and paged decode attention.
 * They compute what the references compute in float32, in another order (sums, exp), so to float32 rounding.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "lq_kernels.h"
#if defined(__F16C__) || defined(__AVX2__)
#include <immintrin.h>
#endif

/* residual_out = x + residual (when residual is given), out = weight * (h / sqrt(mean(h^2) + eps)), h that sum. */
void lq_rms_norm(const float *x, const float *residual, const float *weight, int64_t rows, int64_t dim, float eps,
                 float *out, float *residual_out) {
    for (int64_t r = 0; r < rows; r++) {
        const float *h = x + r * dim;
        if (residual) {
            for (int64_t i = 0; i < dim; i++) residual_out[r * dim + i] = h[i] + residual[r * dim + i];
            h = residual_out + r * dim;
        }
        float ss = 0.0f;
#pragma omp simd reduction(+ : ss)
        for (int64_t i = 0; i < dim; i++) ss += h[i] * h[i];
        float inv = 1.0f / sqrtf(ss / (float)dim + eps);
        for (int64_t i = 0; i < dim; i++) out[r * dim + i] = weight[i] * (h[i] * inv);
    }
}

#ifdef __AVX2__
/* exp(x), 8 at a time, within a few ulp of expf: x = n ln2 + r (ln2 in two parts), exp(r) by its degree-8 Taylor
 * polynomial (|r| <= ln2 / 2: error below 1e-8), times 2^n built in the exponent bits. x is clamped to where
 * 2^n is a normal float; silu only needs exp(-g) to saturate there. */
static inline __m256 exp8(__m256 x) {
    x = _mm256_min_ps(_mm256_max_ps(x, _mm256_set1_ps(-87.0f)), _mm256_set1_ps(88.0f));
    __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504f)),
                               _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 r = _mm256_fmadd_ps(n, _mm256_set1_ps(-0.693145752f), x);
    r = _mm256_fmadd_ps(n, _mm256_set1_ps(-1.42860677e-6f), r);
    static const float taylor[] = {1.0f / 5040, 1.0f / 720, 1.0f / 120, 1.0f / 24, 1.0f / 6, 0.5f, 1.0f, 1.0f};
    __m256 p = _mm256_set1_ps(1.0f / 40320);
    for (int k = 0; k < 8; k++) p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(taylor[k]));
    __m256i scale = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
    return _mm256_mul_ps(p, _mm256_castsi256_ps(scale));
}
#endif

/* x [rows, 2 * inner] -> out [rows, inner] = silu(first half) * second half. With AVX2 the exponential is exp8's,
 * 8 at a time: a prefill's SiLU (3M values a layer for the embedded model's 16 x 128 tokens) took 9 ms with expf. */
void lq_silu_mul(const float *x, int64_t rows, int64_t inner, float *out) {
    for (int64_t r = 0; r < rows; r++) {
        const float *g = x + r * 2 * inner, *u = g + inner;
        int64_t i = 0;
#ifdef __AVX2__
        for (; i + 8 <= inner; i += 8) {
            __m256 gv = _mm256_loadu_ps(g + i);
            __m256 e = exp8(_mm256_sub_ps(_mm256_setzero_ps(), gv));
            __m256 silu = _mm256_div_ps(gv, _mm256_add_ps(_mm256_set1_ps(1.0f), e));
            _mm256_storeu_ps(out + r * inner + i, _mm256_mul_ps(silu, _mm256_loadu_ps(u + i)));
        }
#endif
        for (; i < inner; i++) out[r * inner + i] = g[i] / (1.0f + expf(-g[i])) * u[i];
    }
}

static void rotate(const float *x, const float *cos, const float *sin, int64_t dim, float *out) {
    int64_t half = dim / 2;
    for (int64_t i = 0; i < half; i++) {
        out[i] = x[i] * cos[i] - x[i + half] * sin[i];
        out[i + half] = x[i + half] * cos[i + half] + x[i] * sin[i + half];
    }
}

/* Whether a float16 KV cache can be used (`half` below): its conversions are F16C instructions. */
int lq_kv_half_available(void) {
#ifdef __F16C__
    return 1;
#else
    return 0;
#endif
}

/* Element `at` onward of a KV cache of float32, or of float16 (half) rounded to nearest, as torch's .half() does. */
static void cache_put(void *cache, int half, int64_t at, const float *x, int64_t n) {
    if (!half) {
        memcpy((float *)cache + at, x, sizeof(float) * (size_t)n);
        return;
    }
#ifdef __F16C__
    uint16_t *to = (uint16_t *)cache + at;
    for (int64_t i = 0; i < n; i++) to[i] = _cvtss_sh(x[i], _MM_FROUND_TO_NEAREST_INT);
#endif
}

/* n elements of a KV cache from `at` as float32: the float32 cache itself, or a float16 one converted into buf. */
static const float *cache_get(const void *cache, int half, int64_t at, int64_t n, float *buf) {
    if (!half) return (const float *)cache + at;
#ifdef __F16C__
    const uint16_t *from = (const uint16_t *)cache + at;
    for (int64_t i = 0; i < n; i++) buf[i] = _cvtsh_ss(from[i]);
#endif
    return buf;
}

/* q [tokens, heads, dim], k and v [tokens, kv_heads, dim] (rows `stride` floats apart: views of one qkv
 * projection): q rotated into q_out [tokens, heads, dim]; k rotated and v stored into their caches
 * [slots, kv_heads, dim] (float32, or float16 when half) at slots[t] (a negative slot, padding, is skipped).
 * cos, sin: [tokens, dim]. */
void lq_rope_store(const float *q, const float *k, const float *v, int64_t stride, int64_t tokens, int64_t heads,
                   int64_t kv_heads, int64_t dim, const float *cos, const float *sin, const int64_t *slots,
                   float *q_out, void *k_cache, void *v_cache, int half) {
    float *rotated = malloc(sizeof(float) * (size_t)dim);
    for (int64_t t = 0; t < tokens; t++) {
        const float *c = cos + t * dim, *s = sin + t * dim;
        for (int64_t h = 0; h < heads; h++) rotate(q + t * stride + h * dim, c, s, dim, q_out + (t * heads + h) * dim);
        if (slots[t] < 0) continue;
        for (int64_t h = 0; h < kv_heads; h++) {
            rotate(k + t * stride + h * dim, c, s, dim, rotated);
            cache_put(k_cache, half, (slots[t] * kv_heads + h) * dim, rotated, dim);
        }
        cache_put(v_cache, half, slots[t] * kv_heads * dim, v + t * stride, kv_heads * dim);
    }
    free(rotated);
}

/* Query heads a pass of the vector path takes together: with two 8-lane accumulators each, their value sums stay in
 * registers (AVX2 has 16). */
enum { PASS_HEADS = 4 };
/* keys a range of a split (sequence, KV head) takes at least: shorter contexts are not worth the merge */
enum { MIN_RANGE_KEYS = 256 };
#if defined(__AVX512F__) && defined(__F16C__)
#define LQ_ATTENTION_512 1   /* the passes of decode_attention_512.h */
#endif

#if defined(__AVX2__) && defined(__F16C__)
/* 8 elements of a KV cache from `at` as float32 (float16 ones converted by F16C) */
static inline __m256 cache8(const void *cache, int half, int64_t at) {
    return half ? _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)((const uint16_t *)cache + at)))
                : _mm256_loadu_ps((const float *)cache + at);
}

static inline float sum8(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    return _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)));
}

/* scores[g * n + p] = scale * (query head g) . (key row rows[p]) for g < heads (a constant where it is inlined, so
 * the loops unroll and the sums live in registers): each key row is read and converted once for all the heads. */
static inline __attribute__((always_inline)) void pass_dots(const float *q, int heads, int64_t dim,
                                                            const void *k_cache, int half, const int64_t *rows,
                                                            int64_t n, float scale, float *scores, int64_t stride) {
    for (int64_t p = 0; p < n; p++) {
        __m256 acc[PASS_HEADS];
        for (int g = 0; g < heads; g++) acc[g] = _mm256_setzero_ps();
        for (int64_t i = 0; i < dim; i += 8) {
            __m256 k = cache8(k_cache, half, rows[p] + i);
            for (int g = 0; g < heads; g++) acc[g] = _mm256_fmadd_ps(_mm256_loadu_ps(q + g * dim + i), k, acc[g]);
        }
        for (int g = 0; g < heads; g++) scores[g * stride + p] = sum8(acc[g]) * scale;
    }
}

/* out[g * dim + i] = sum over p of weights[g * stride + p] * (value row rows[p])[i], 16 columns at a time: their sums
 * stay in registers over all the keys (the value rows, read once per 16 columns, stay in the caches). */
static inline __attribute__((always_inline)) void pass_values(float *out, int heads, int64_t dim,
                                                              const void *v_cache, int half, const int64_t *rows,
                                                              int64_t n, const float *weights, int64_t stride) {
    for (int64_t i = 0; i < dim; i += 16) {
        __m256 acc[PASS_HEADS][2];
        for (int g = 0; g < heads; g++) acc[g][0] = acc[g][1] = _mm256_setzero_ps();
        for (int64_t p = 0; p < n; p++) {
            __m256 v0 = cache8(v_cache, half, rows[p] + i), v1 = cache8(v_cache, half, rows[p] + i + 8);
            for (int g = 0; g < heads; g++) {
                __m256 w = _mm256_set1_ps(weights[g * stride + p]);
                acc[g][0] = _mm256_fmadd_ps(w, v0, acc[g][0]);
                acc[g][1] = _mm256_fmadd_ps(w, v1, acc[g][1]);
            }
        }
        for (int g = 0; g < heads; g++) {
            _mm256_storeu_ps(out + g * dim + i, acc[g][0]);
            _mm256_storeu_ps(out + g * dim + i + 8, acc[g][1]);
        }
    }
}

#ifdef LQ_ATTENTION_512
#include "decode_attention_512.h"
#endif

/* pass_dots (values: 0) or pass_values (1) for up to PASS_HEADS heads, `heads` made a constant for each; with
 * AVX-512, decode_attention_512.h's for head sizes a multiple of 64 up to MAX_DIM_512. */
static void vector_pass(int values, const float *q, float *out, int heads, int64_t dim, const void *cache, int half,
                        const int64_t *rows, int64_t n, float scale, float *scores, int64_t stride) {
#ifdef LQ_ATTENTION_512
#define PASS(H) (values ? pass_values_512(out, H, dim, cache, half, rows, n, scores, stride) \
                        : pass_dots_512(q, H, dim, cache, half, rows, n, scale, scores, stride))
    if (dim % 64 == 0 && dim <= MAX_DIM_512) {
        switch (heads) {
            case 1: PASS(1); break;
            case 2: PASS(2); break;
            case 3: PASS(3); break;
            default: PASS(4); break;
        }
        return;
    }
#undef PASS
#endif
#define PASS(H) (values ? pass_values(out, H, dim, cache, half, rows, n, scores, stride) \
                        : pass_dots(q, H, dim, cache, half, rows, n, scale, scores, stride))
    switch (heads) {
        case 1: PASS(1); break;
        case 2: PASS(2); break;
        case 3: PASS(3); break;
        default: PASS(4); break;
    }
#undef PASS
}
#endif

/* The scalar path (no AVX2, or a head size that is not a multiple of 16), over the same rows. */
static void scalar_dots(const float *q, int64_t heads, int64_t dim, const void *k_cache, int half,
                        const int64_t *rows, int64_t n, float scale, float *scores, float *buf) {
    for (int64_t p = 0; p < n; p++) {
        const float *k = cache_get(k_cache, half, rows[p], dim, buf);
        for (int64_t g = 0; g < heads; g++) {
            float dot = 0.0f;
#pragma omp simd reduction(+ : dot)
            for (int64_t i = 0; i < dim; i++) dot += q[g * dim + i] * k[i];
            scores[g * n + p] = dot * scale;
        }
    }
}

static void scalar_values(float *out, int64_t heads, int64_t dim, const void *v_cache, int half,
                          const int64_t *rows, int64_t n, const float *weights, float *buf) {
    for (int64_t i = 0; i < heads * dim; i++) out[i] = 0.0f;
    for (int64_t p = 0; p < n; p++) {
        const float *v = cache_get(v_cache, half, rows[p], dim, buf);
        for (int64_t g = 0; g < heads; g++)
            for (int64_t i = 0; i < dim; i++) out[g * dim + i] += weights[g * n + p] * v[i];
    }
}

typedef struct {
    const float *q;
    const void *k_cache, *v_cache;   /* float32, or float16 when half */
    const int64_t *block_tables, *context_lens;
    int64_t table_width, heads, kv_heads, dim, block_size, window;
    float scale;
    float *out;
    int half;
    int64_t splits;   /* key ranges a (sequence, KV head) is cut into; above 1 each writes partial below */
    float *partial;   /* by chunk: [group] maxima, [group] sums of exp, [group, dim] unnormalised value sums */
} attention_job;

/* row[p] = exp(row[p] - top) for p < n (exp8's, 8 at a time, with AVX2), and their sum */
static float exp_minus(float *row, int64_t n, float top) {
    float total = 0.0f;
    int64_t p = 0;
#ifdef __AVX2__
    __m256 sums = _mm256_setzero_ps();
    for (; p + 8 <= n; p += 8) {
        __m256 e = exp8(_mm256_sub_ps(_mm256_loadu_ps(row + p), _mm256_set1_ps(top)));
        _mm256_storeu_ps(row + p, e);
        sums = _mm256_add_ps(sums, e);
    }
    float lanes[8];
    _mm256_storeu_ps(lanes, sums);
    for (int i = 0; i < 8; i++) total += lanes[i];
#endif
    for (; p < n; p++) total += row[p] = expf(row[p] - top);
    return total;
}

/* scores [group, n] -> exp(score - the row's max) along each row, normalised when stats is NULL; otherwise the
 * row maxima and sums go to stats [group] and [group] (a key range's partial softmax, merged later). */
static void softmax_rows(float *scores, int64_t group, int64_t n, float *stats) {
    for (int64_t g = 0; g < group; g++) {
        float top = -INFINITY, *row = scores + g * n;
        for (int64_t p = 0; p < n; p++) top = row[p] > top ? row[p] : top;
        float total = exp_minus(row, n, top);
        if (stats != NULL) {
            stats[g] = top;
            stats[group + g] = total;
            continue;
        }
        for (int64_t p = 0; p < n; p++) row[p] /= total;
    }
}

/* attend_group's work on the vector path, PASS_HEADS query heads a pass; 0 where that path is not built or the head
 * size is not a multiple of 16. */
static int vector_attention(const attention_job *j, const float *q, float *out, int64_t group, const int64_t *rows,
                            int64_t n, float *scores, float *stats) {
#if defined(__AVX2__) && defined(__F16C__)
    int64_t dim = j->dim;
    if (dim % 16) return 0;
    for (int64_t g = 0; g < group; g += PASS_HEADS)
        vector_pass(0, q + g * dim, NULL, (int)(group - g < PASS_HEADS ? group - g : PASS_HEADS), dim, j->k_cache,
                    j->half, rows, n, j->scale, scores + g * n, n);
    softmax_rows(scores, group, n, stats);
    for (int64_t g = 0; g < group; g += PASS_HEADS)
        vector_pass(1, NULL, out + g * dim, (int)(group - g < PASS_HEADS ? group - g : PASS_HEADS), dim,
                    j->v_cache, j->half, rows, n, 0.0f, scores + g * n, n);
    return 1;
#else
    (void)j, (void)q, (void)out, (void)group, (void)rows, (void)n, (void)scores, (void)stats;
    return 0;
#endif
}

/* The query heads of one KV head of one sequence over one range of its visible keys (chunk = (seq * kv_heads + kv
 * head) * splits + range): softmax(q . k * scale) . v, or with several ranges the range's partial softmax and its
 * unnormalised value sums (merge_ranges adds them up). The cache rows of the keys are looked up once (rows[p], in
 * elements). */
static void attend_group(void *ctx, int64_t chunk) {
    const attention_job *j = ctx;
    int64_t range = chunk % j->splits, pair = chunk / j->splits;
    int64_t b = pair / j->kv_heads, kv = pair % j->kv_heads, dim = j->dim, group = j->heads / j->kv_heads;
    int64_t len = j->context_lens[b], first = j->window > 0 && len > j->window ? len - j->window : 0;
    int64_t per = (len - first + j->splits - 1) / j->splits, start = first + range * per;
    int64_t n = len - start < per ? len - start : per;
    const int64_t *table = j->block_tables + b * j->table_width;
    const float *q = j->q + (b * j->heads + kv * group) * dim;
    float *out = j->out + (b * j->heads + kv * group) * dim, *stats = NULL;
    if (j->splits > 1) {
        stats = j->partial + chunk * group * (2 + dim);
        out = stats + 2 * group;
        if (n <= 0) {   /* an empty range: weight 0 in the merge */
            for (int64_t g = 0; g < group; g++) stats[g] = -INFINITY, stats[group + g] = 0.0f;
            return;
        }
    }
    float *scores = malloc(sizeof(float) * (size_t)(n * group)), *buf = malloc(sizeof(float) * (size_t)dim);
    int64_t *rows = malloc(sizeof(int64_t) * (size_t)n);
    for (int64_t p = 0; p < n; p++) {
        int64_t pos = start + p;
        rows[p] = ((table[pos / j->block_size] * j->block_size + pos % j->block_size) * j->kv_heads + kv) * dim;
    }
    if (!vector_attention(j, q, out, group, rows, n, scores, stats)) {
        scalar_dots(q, group, dim, j->k_cache, j->half, rows, n, j->scale, scores, buf);
        softmax_rows(scores, group, n, stats);
        scalar_values(out, group, dim, j->v_cache, j->half, rows, n, scores, buf);
    }
    free(scores);
    free(buf);
    free(rows);
}

/* out for every (sequence, KV head) from its ranges' partials: each range's sums rescaled by exp(its max - the
 * overall max), then divided by the rescaled total. */
static void merge_ranges(const attention_job *j, int64_t seqs) {
    int64_t group = j->heads / j->kv_heads, dim = j->dim, width = group * (2 + dim);
    for (int64_t pair = 0; pair < seqs * j->kv_heads; pair++) {
        const float *first = j->partial + pair * j->splits * width;
        float *out = j->out + pair * group * dim;
        for (int64_t g = 0; g < group; g++) {
            float top = -INFINITY, total = 0.0f;
            for (int64_t r = 0; r < j->splits; r++) top = first[r * width + g] > top ? first[r * width + g] : top;
            for (int64_t i = 0; i < dim; i++) out[g * dim + i] = 0.0f;
            for (int64_t r = 0; r < j->splits; r++) {
                const float *part = first + r * width;
                if (part[group + g] == 0.0f) continue;
                float w = expf(part[g] - top);
                total += w * part[group + g];
                for (int64_t i = 0; i < dim; i++) out[g * dim + i] += w * part[2 * group + g * dim + i];
            }
            if (total > 0.0f)   /* no keys at all (a context of 0) leaves zeros, as the unsplit path does */
                for (int64_t i = 0; i < dim; i++) out[g * dim + i] /= total;
        }
    }
}

/* One query token per sequence (at position context_lens[b] - 1), q [seqs, heads, dim] -> out [seqs, heads, dim]
 * over caches [blocks, block_size, kv_heads, dim] (float32, or float16 when half) reached through block_tables
 * [seqs, table_width]; query heads grouped over kv heads; window > 0 keeps only the last `window` keys. */
void lq_decode_attention(const float *q, const void *k_cache, const void *v_cache, const int64_t *block_tables,
                         int64_t table_width, const int64_t *context_lens, int64_t seqs, int64_t heads,
                         int64_t kv_heads, int64_t dim, int64_t block_size, float scale, int64_t window, float *out,
                         int half, int threads) {
    /* Fewer (sequence, KV head) pairs than two a thread (batch-1 decode: 3 KV heads over 2 threads left a thread idle
     * a third of the time) and long contexts: each pair's keys are cut into ranges, merged after */
    int64_t pairs = seqs * kv_heads, splits = 1, longest = 0;
    for (int64_t b = 0; b < seqs; b++) longest = context_lens[b] > longest ? context_lens[b] : longest;
    if (window > 0 && longest > window) longest = window;
    if (threads > 1 && pairs < 2 * threads) {
        splits = (2 * threads + pairs - 1) / pairs;
        if (splits > longest / MIN_RANGE_KEYS) splits = longest / MIN_RANGE_KEYS;
        if (splits < 1) splits = 1;
    }
    attention_job job = {q, k_cache, v_cache, block_tables, context_lens, table_width, heads, kv_heads, dim,
                         block_size, window, scale, out, half, splits,
                         splits > 1 ? malloc(sizeof(float) * (size_t)(pairs * splits * (heads / kv_heads) * (2 + dim)))
                                    : NULL};
    lq_parallel(attend_group, &job, pairs * splits, threads);
    if (splits > 1) merge_ranges(&job, seqs);
    free(job.partial);
}
