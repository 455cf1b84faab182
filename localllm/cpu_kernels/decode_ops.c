/* The small float32 operations around the matmuls of a CPU decode step, one call each instead of the ~5-20 torch
 * ops of their plain-torch references (kernels/*_ref.py), whose per-op dispatch dominates a batch-1 step:
 * RMSNorm with the residual add, SiLU-and-mul, rotary + K/V store, and paged decode attention.
 * They compute what the references compute in float32, in another order (sums, exp), so to float32 rounding.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>

#include "lq_kernels.h"

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

/* x [rows, 2 * inner] -> out [rows, inner] = silu(first half) * second half */
void lq_silu_mul(const float *x, int64_t rows, int64_t inner, float *out) {
    for (int64_t r = 0; r < rows; r++) {
        const float *g = x + r * 2 * inner, *u = g + inner;
        for (int64_t i = 0; i < inner; i++) out[r * inner + i] = g[i] / (1.0f + expf(-g[i])) * u[i];
    }
}

static void rotate(const float *x, const float *cos, const float *sin, int64_t dim, float *out) {
    int64_t half = dim / 2;
    for (int64_t i = 0; i < half; i++) {
        out[i] = x[i] * cos[i] - x[i + half] * sin[i];
        out[i + half] = x[i + half] * cos[i + half] + x[i] * sin[i + half];
    }
}

/* q [tokens, heads, dim], k and v [tokens, kv_heads, dim] (rows `stride` floats apart: views of one qkv
 * projection): q rotated into q_out [tokens, heads, dim]; k rotated and v stored into their caches
 * [slots, kv_heads, dim] at slots[t] (a negative slot, padding, is skipped). cos, sin: [tokens, dim]. */
void lq_rope_store(const float *q, const float *k, const float *v, int64_t stride, int64_t tokens, int64_t heads,
                   int64_t kv_heads, int64_t dim, const float *cos, const float *sin, const int64_t *slots,
                   float *q_out, float *k_cache, float *v_cache) {
    for (int64_t t = 0; t < tokens; t++) {
        const float *c = cos + t * dim, *s = sin + t * dim;
        for (int64_t h = 0; h < heads; h++) rotate(q + t * stride + h * dim, c, s, dim, q_out + (t * heads + h) * dim);
        if (slots[t] < 0) continue;
        float *kc = k_cache + slots[t] * kv_heads * dim, *vc = v_cache + slots[t] * kv_heads * dim;
        for (int64_t h = 0; h < kv_heads; h++) rotate(k + t * stride + h * dim, c, s, dim, kc + h * dim);
        for (int64_t i = 0; i < kv_heads * dim; i++) vc[i] = v[t * stride + i];
    }
}

typedef struct {
    const float *q, *k_cache, *v_cache;
    const int64_t *block_tables, *context_lens;
    int64_t table_width, heads, kv_heads, dim, block_size, window;
    float scale;
    float *out;
} attention_job;

/* The cache row of position p of a sequence: walks the block table without a division per key. */
typedef struct {
    const int64_t *table;
    int64_t block_size, block, offset;
} key_walk;

static key_walk walk_from(const int64_t *table, int64_t block_size, int64_t p) {
    key_walk w = {table, block_size, p / block_size, p % block_size};
    return w;
}

static int64_t next_slot(key_walk *w) {
    int64_t slot = w->table[w->block] * w->block_size + w->offset;
    if (++w->offset == w->block_size) {
        w->offset = 0;
        w->block++;
    }
    return slot;
}

/* The query heads of one KV head of one sequence (chunk = seq * kv_heads + kv head): softmax(q . k * scale) . v
 * over the visible keys, each key and value row read once for the whole group. */
static void attend_group(void *ctx, int64_t chunk) {
    const attention_job *j = ctx;
    int64_t b = chunk / j->kv_heads, kv = chunk % j->kv_heads, dim = j->dim, group = j->heads / j->kv_heads;
    int64_t len = j->context_lens[b], first = j->window > 0 && len > j->window ? len - j->window : 0, n = len - first;
    const int64_t *table = j->block_tables + b * j->table_width;
    const float *q = j->q + (b * j->heads + kv * group) * dim;
    float *out = j->out + (b * j->heads + kv * group) * dim;
    float *scores = malloc(sizeof(float) * (size_t)(n * group));
    key_walk keys = walk_from(table, j->block_size, first);
    for (int64_t p = first; p < len; p++) {
        int64_t slot = next_slot(&keys);
        const float *k = j->k_cache + (slot * j->kv_heads + kv) * dim;
        for (int64_t g = 0; g < group; g++) {
            float dot = 0.0f;
#pragma omp simd reduction(+ : dot)
            for (int64_t i = 0; i < dim; i++) dot += q[g * dim + i] * k[i];
            scores[g * n + p - first] = dot * j->scale;
        }
    }
    for (int64_t g = 0; g < group; g++) {   /* scores -> exp(score - max), their sum kept to normalise */
        float top = -INFINITY, total = 0.0f;
        for (int64_t p = 0; p < n; p++) top = scores[g * n + p] > top ? scores[g * n + p] : top;
        for (int64_t p = 0; p < n; p++) total += scores[g * n + p] = expf(scores[g * n + p] - top);
        for (int64_t p = 0; p < n; p++) scores[g * n + p] /= total;
    }
    for (int64_t i = 0; i < group * dim; i++) out[i] = 0.0f;
    key_walk values = walk_from(table, j->block_size, first);
    for (int64_t p = first; p < len; p++) {
        int64_t slot = next_slot(&values);
        const float *v = j->v_cache + (slot * j->kv_heads + kv) * dim;
        for (int64_t g = 0; g < group; g++) {
            float e = scores[g * n + p - first];
            for (int64_t i = 0; i < dim; i++) out[g * dim + i] += e * v[i];
        }
    }
    free(scores);
}

/* One query token per sequence (at position context_lens[b] - 1), q [seqs, heads, dim] -> out [seqs, heads, dim]
 * over caches [blocks, block_size, kv_heads, dim] reached through block_tables [seqs, table_width]; query heads
 * grouped over kv heads; window > 0 keeps only the last `window` keys. */
void lq_decode_attention(const float *q, const float *k_cache, const float *v_cache, const int64_t *block_tables,
                         int64_t table_width, const int64_t *context_lens, int64_t seqs, int64_t heads,
                         int64_t kv_heads, int64_t dim, int64_t block_size, float scale, int64_t window, float *out,
                         int threads) {
    attention_job job = {q, k_cache, v_cache, block_tables, context_lens, table_width, heads, kv_heads, dim,
                         block_size, window, scale, out};
    lq_parallel(attend_group, &job, seqs * kv_heads, threads);
}
