/* A whole decode step of a Llama-style decoder in one call (the float32 model of localllm.models.llama: pre-norm
 * layers of attention and SwiGLU MLP, no biases, no q/k norms), so that a batch-1 step costs one call from Python
 * instead of ~300 module calls. Every sequence of the step decodes exactly one token. The caller
 * (layers/cpu_decode.py) describes the model once in an lq_model; the KV caches are the engine's paged pool. */
#include <stdlib.h>
#include <string.h>

#include "lq_kernels.h"

typedef struct {
    const uint8_t *qkv, *o, *gate_up, *down;   /* block rows of the four matrices */
    const float *input_norm, *post_norm;
    void *k_cache, *v_cache;                   /* [blocks, block_size, kv_heads, head_dim], see kv_half */
    int64_t qkv_fmt, o_fmt, gate_up_fmt, down_fmt, window;   /* window 0 = full attention */
} lq_layer;

typedef struct {
    int64_t layers, hidden, heads, kv_heads, head_dim, inter, block_size, embed_fmt, kv_half;   /* 1: float16 KV */
    float eps, scale;
    const uint8_t *embed;          /* block rows of the token embedding */
    const float *final_norm;
    const float *cos, *sin;        /* rotary tables [max_position, head_dim] */
    const lq_layer *layer;
} lq_model;

static void add_into(float *acc, const float *x, int64_t n) {
    for (int64_t i = 0; i < n; i++) acc[i] += x[i];
}

/* out [tokens, hidden] = the final norm of the last layer's residual stream, from token ids and positions. */
void lq_decode_step(const lq_model *m, const int64_t *ids, const int64_t *positions, const int64_t *slots,
                    const int64_t *block_tables, int64_t table_width, const int64_t *context_lens, int64_t tokens,
                    float *out, int threads) {
    int64_t h = m->hidden, hd = m->head_dim, q_width = m->heads * hd, qkv_width = (m->heads + 2 * m->kv_heads) * hd;
    int64_t widest = qkv_width > 2 * m->inter ? qkv_width : 2 * m->inter;
    float *residual = malloc(sizeof(float) * tokens * h), *normed = malloc(sizeof(float) * tokens * h);
    float *wide = malloc(sizeof(float) * tokens * widest), *q = malloc(sizeof(float) * tokens * q_width);
    float *attn = malloc(sizeof(float) * tokens * q_width), *act = malloc(sizeof(float) * tokens * m->inter);
    float *proj = malloc(sizeof(float) * tokens * h);
    float *cos = malloc(sizeof(float) * tokens * hd), *sin = malloc(sizeof(float) * tokens * hd);
    int64_t embed_row = lq_row_bytes((int)m->embed_fmt, h);
    for (int64_t t = 0; t < tokens; t++) {
        lq_dequantize((int)m->embed_fmt, m->embed + ids[t] * embed_row, 1, h, residual + t * h, 1);
        memcpy(cos + t * hd, m->cos + positions[t] * hd, sizeof(float) * hd);
        memcpy(sin + t * hd, m->sin + positions[t] * hd, sizeof(float) * hd);
    }
    for (int64_t l = 0; l < m->layers; l++) {
        const lq_layer *y = m->layer + l;
        lq_rms_norm(residual, NULL, y->input_norm, tokens, h, m->eps, normed, NULL);
        lq_matmul((int)y->qkv_fmt, y->qkv, qkv_width, h, normed, tokens, h, wide, qkv_width, threads);
        lq_rope_store(wide, wide + q_width, wide + q_width + m->kv_heads * hd, qkv_width, tokens, m->heads,
                      m->kv_heads, hd, cos, sin, slots, q, y->k_cache, y->v_cache, (int)m->kv_half);
        lq_decode_attention(q, y->k_cache, y->v_cache, block_tables, table_width, context_lens, tokens, m->heads,
                            m->kv_heads, hd, m->block_size, m->scale, y->window, attn, (int)m->kv_half, threads);
        lq_matmul((int)y->o_fmt, y->o, h, q_width, attn, tokens, q_width, proj, h, threads);
        add_into(residual, proj, tokens * h);
        lq_rms_norm(residual, NULL, y->post_norm, tokens, h, m->eps, normed, NULL);
        lq_matmul((int)y->gate_up_fmt, y->gate_up, 2 * m->inter, h, normed, tokens, h, wide, 2 * m->inter, threads);
        lq_silu_mul(wide, tokens, m->inter, act);
        lq_matmul((int)y->down_fmt, y->down, h, m->inter, act, tokens, m->inter, proj, h, threads);
        add_into(residual, proj, tokens * h);
    }
    lq_rms_norm(residual, NULL, m->final_norm, tokens, h, m->eps, out, NULL);
    free(residual); free(normed); free(wide); free(q); free(attn); free(act); free(proj); free(cos); free(sin);
}
