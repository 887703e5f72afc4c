/* Shipyard's shim over libllama: the few calls the llama.cpp engine needs, with plain C types only, so Python
 * (ctypes) never depends on the layout of llama.cpp's structs. Compiled against the llama.h of the very source
 * libllama is built from (scripts/build_llama.py), hence ABI-safe by construction. */
#include <stdio.h>
#include <stdlib.h>
#include "llama.h"

typedef struct {
    struct llama_model *model;
    struct llama_context *ctx;
    llama_memory_t mem;
    struct llama_batch batch;
    int n_batch, n_vocab, n_ctx_train, n_ctx_seq;
} sy_rt;

static void sy_log(enum ggml_log_level level, const char *text, void *user_data) {
    (void) user_data;
    if (level == GGML_LOG_LEVEL_ERROR) fputs(text, stderr); /* warnings (quantization fallbacks, ...) stay quiet */
}

void sy_init(void) {
    llama_log_set(sy_log, NULL);
    llama_backend_init();
}

const char *sy_system_info(void) { return llama_print_system_info(); }

/* n_ctx_seq cells per sequence (clamped to the trained context), n_seq sequences, n_batch tokens per decode. */
sy_rt *sy_load(const char *path, int n_ctx_seq, int n_seq, int n_batch, int n_threads) {
    struct llama_model_params mp = llama_model_default_params();
    mp.n_gpu_layers = 0;
    struct llama_model *model = llama_model_load_from_file(path, mp);
    if (!model) return NULL;
    sy_rt *rt = calloc(1, sizeof(sy_rt));
    rt->model = model;
    rt->n_ctx_train = llama_model_n_ctx_train(model);
    rt->n_ctx_seq = (rt->n_ctx_train > 0 && n_ctx_seq > rt->n_ctx_train) ? rt->n_ctx_train : n_ctx_seq;
    rt->n_vocab = llama_vocab_n_tokens(llama_model_get_vocab(model));
    struct llama_context_params cp = llama_context_default_params();
    cp.n_ctx = (uint32_t) rt->n_ctx_seq * (uint32_t) n_seq;
    cp.n_batch = cp.n_ubatch = (uint32_t) n_batch;
    cp.n_seq_max = (uint32_t) n_seq;
    cp.kv_unified = false; /* each sequence owns its cells: a long row never starves the others */
    cp.n_threads = cp.n_threads_batch = n_threads;
    rt->ctx = llama_init_from_model(model, cp);
    if (!rt->ctx) {
        llama_model_free(model);
        free(rt);
        return NULL;
    }
    rt->mem = llama_get_memory(rt->ctx);
    rt->n_batch = n_batch;
    rt->batch = llama_batch_init(n_batch, 0, 1);
    return rt;
}

int sy_n_vocab(const sy_rt *rt) { return rt->n_vocab; }
int sy_n_ctx_train(const sy_rt *rt) { return rt->n_ctx_train; }
int sy_n_ctx_seq(const sy_rt *rt) { return rt->n_ctx_seq; }

/* One llama_decode of n <= n_batch entries; returns llama_decode's code (-100: n too large). */
int sy_decode(sy_rt *rt, int n, const int *tokens, const int *pos, const int *seq, const signed char *want) {
    if (n <= 0 || n > rt->n_batch) return -100;
    struct llama_batch *b = &rt->batch;
    b->n_tokens = n;
    for (int i = 0; i < n; i++) {
        b->token[i] = tokens[i];
        b->pos[i] = pos[i];
        b->n_seq_id[i] = 1;
        b->seq_id[i][0] = seq[i];
        b->logits[i] = want[i];
    }
    return llama_decode(rt->ctx, *b);
}

/* The logits asked for by the last decode, [outputs][n_vocab], in batch order. */
const float *sy_logits(sy_rt *rt) { return llama_get_logits(rt->ctx); }

void sy_seq_rm(sy_rt *rt, int seq) { llama_memory_seq_rm(rt->mem, seq, -1, -1); }

void sy_free(sy_rt *rt) {
    if (!rt) return;
    llama_batch_free(rt->batch);
    llama_free(rt->ctx);
    llama_model_free(rt->model);
    free(rt);
}

/* llama-quantize's core: src GGUF -> dst with ftype (enum llama_ftype); 0 on success. */
int sy_quantize(const char *src, const char *dst, int ftype, int nthread) {
    llama_model_quantize_params p = llama_model_quantize_default_params();
    p.ftype = (enum llama_ftype) ftype;
    p.nthread = nthread;
    return (int) llama_model_quantize(src, dst, &p);
}
