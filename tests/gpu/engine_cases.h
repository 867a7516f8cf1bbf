/* engine_cases.h - the generation engine's kernels (kernels/cuda/engine_cuda.h)
 * against their CPU references (kernels/cpu/engine_ref.h): the parity groups
 * kvstore, decode_attention and sampler of test_gpu_parity. Included by
 * test_gpu_parity.c after its helpers (record, dput, dfetch, rel_err, ...),
 * whose conventions it follows: NaN-poisoned outputs, reruns compared bit
 * for bit, one summary row per (op, dtype).
 *
 *   kvstore           tokens of a paged batch (a forked GRPO prompt, a
 *                     padding token, an unmapped position) stored into a
 *                     cache of random contents; the whole cache must equal
 *                     the CPU's bit for bit (stores are copies, bf16 rounding
 *                     RNE on both sides); the fork's tail block copy too.
 *   decode_attention  one query per row over paged keys (lengths 1 .. 1000,
 *                     blocks of 16, shared prompts), f32 and bf16 queries and
 *                     cache: out and lse against the CPU reference (1e-5 /
 *                     1e-2); a rerun and each row alone vs the batch of 64,
 *                     bit for bit.
 *   sampler           rows of V 1003 and 32007 logits with greedy, plain
 *                     temperature, top-k, top-p, both, min-p, ties: tokens and
 *                     truncation flags equal to the CPU's (a mismatch fails),
 *                     logprobs to 1e-6; rerun and each row alone vs the batch
 *                     of 64, bit for bit.
 *   decode            the GPU decode step (model/decode_cuda) on a tiny model
 *                     (2 layers, C 128, H 4/2, hd 64, V 1003, biases, untied):
 *                     a batch of 64 sequences (one a GRPO sample forked from
 *                     another: shared blocks, tail copy) prefilled in one step:
 *                     two prompts' logits against model.c's forward on the CPU
 *                     ops (1e-4 fp32, 3e-2 bf16); 8 greedy tokens each: the
 *                     forked sample equal to its parent, and in fp32 four
 *                     sequences token for token equal to greedy decoding on the
 *                     CPU and one sequence alone (its logits through the row
 *                     gather) equal to itself in the batch. The prompts are
 *                     prefill runs (the packed attention). Then one mixed
 *                     step on a decoder of 8 sequences: two prefill runs, two
 *                     decodes, a 30-token prompt over max_prefill 24 on the
 *                     paged path (4 chunks of 8 rows): every row's logits
 *                     against the CPU forward; a malformed run refused.
 */
#ifndef TIDAL_TESTS_GPU_ENGINE_CASES_H
#define TIDAL_TESTS_GPU_ENGINE_CASES_H

#include "kernels/cpu/engine_ref.h"
#include "kernels/cuda/engine_cuda.h"
#include "kernels/cuda/engine_index.h"
#include "model/decode_cuda.h"
#include "rollout/kvpages.h"

static void *dput_raw(const void *x, size_t bytes)
{
    void *d = NULL;
    if (cuda_alloc(&d, bytes + 16, "test raw buffer") != TIDAL_OK) fatal("alloc");
    if (bytes && cuda_check(cudaMemcpy(d, x, bytes, cudaMemcpyHostToDevice), "upload") != TIDAL_OK) fatal("upload");
    return d;
}

static void dget_raw(void *x, const void *d, size_t bytes)
{
    sync_or_die("download");
    if (cuda_check(cudaMemcpy(x, d, bytes, cudaMemcpyDeviceToHost), "download") != TIDAL_OK) fatal("download");
}

/* Values as stored in dt (bf16: rounded to nearest even), in place. */
static void round_to(float *x, size_t n, cuda_dtype dt)
{
    if (dt == CUDA_BF16)
        for (size_t i = 0; i < n; i++) x[i] = cuda_float_from_bf16(cuda_bf16_from_float(x[i]));
}

/* A paged layout for sequences of lens[0..nseq): sequence i forks from
 * fork_of[i] (>= 0: after the parent's first `prompt` tokens, a GRPO sample)
 * or stands alone; blocks handed out interleaved, so tables are not
 * contiguous. Copies of forked tails go to copies[] (*ncopies). */
static kvpages *make_pages(const int *lens, const int *fork_of, int nseq, int prompt, int block_size,
                           kvpages_copy *copies, int *ncopies)
{
    int maxlen = 1, total = 0;
    for (int i = 0; i < nseq; i++) maxlen = lens[i] > maxlen ? lens[i] : maxlen, total += lens[i];
    const int max_blocks = (maxlen + block_size - 1) / block_size;
    kvpages *p = NULL;
    if (kvpages_create(total / block_size + 2 * nseq + 1, block_size, nseq, max_blocks, &p) != TIDAL_OK)
        fatal("kvpages_create");
    *ncopies = 0;
    for (int i = 0; i < nseq; i++)
        if (fork_of[i] < 0 && kvpages_reserve(p, i, lens[i] < prompt ? lens[i] : prompt) != TIDAL_OK)
            fatal("kvpages_reserve");
    for (int i = 0; i < nseq; i++)
        if (fork_of[i] >= 0 && kvpages_fork(p, fork_of[i], i, &copies[(*ncopies)++]) != TIDAL_OK) fatal("kvpages_fork");
    for (int upto = prompt; upto < maxlen + block_size; upto += block_size)
        for (int i = 0; i < nseq; i++)
            if (kvpages_reserve(p, i, lens[i] < upto ? lens[i] : upto) != TIDAL_OK) fatal("kvpages_reserve");
    if (kvpages_check(p) != TIDAL_OK) fatal("kvpages_check");
    return p;
}

/* ---- kvstore ---- */

static void kvstore_case(int NKV, int HD, cuda_dtype in_dt, cuda_dtype cache_dt)
{
    char shape[96];
    snprintf(shape, sizeof shape, "NKV%d HD%d %s->%s cache", NKV, HD, cuda_dtype_name(in_dt), cuda_dtype_name(cache_dt));
    const int lens[4] = {21, 5, 21, 40}, fork_of[4] = {-1, -1, 0, -1}, prompt = 13, BS = 8;
    kvpages_copy copies[4];
    int ncopies = 0;
    kvpages *p = make_pages(lens, fork_of, 4, prompt, BS, copies, &ncopies);
    const size_t kvn = (size_t)NKV * HD;
    const int64_t n_slots = (int64_t)kvpages_total_blocks(p) * BS;
    const size_t ncache = (size_t)n_slots * kvn;
    /* tokens: every position of every sequence except the forked prompt (the parent stores it), plus padding */
    int T = 0;
    for (int i = 0; i < 4; i++) T += lens[i] - (fork_of[i] >= 0 ? prompt : 0);
    T += 2;
    int32_t *seq = xmalloc((size_t)T * 4), *pos = xmalloc((size_t)T * 4);
    int t = 0;
    for (int i = 0; i < 4; i++)
        for (int j = fork_of[i] >= 0 ? prompt : 0; j < lens[i]; j++) seq[t] = i, pos[t] = j, t++;
    seq[t] = -1, pos[t] = 0, t++;            /* padding */
    seq[t] = 1, pos[t] = lens[1] + BS * 4, t++; /* past its blocks: slot -1 */
    float *k = hrand((size_t)T * kvn, 1.0f, 0.0f, in_dt), *v = hrand((size_t)T * kvn, 1.0f, 0.0f, in_dt);
    float *kc = hrand(ncache, 1.0f, 0.0f, cache_dt), *vc = hrand(ncache, 1.0f, 0.0f, cache_dt);
    void *dkc = dput(kc, ncache, cache_dt), *dvc = dput(vc, ncache, cache_dt);
    void *dk = dput(k, (size_t)T * kvn, in_dt), *dv = dput(v, (size_t)T * kvn, in_dt);
    void *dseq = dput_i32(seq, (size_t)T), *dpos = dput_i32(pos, (size_t)T);
    const int max_blocks = kvpages_max_blocks(p);
    void *dtab = dput_i32(kvpages_table(p), (size_t)4 * max_blocks);
    cuda_kv_pages pg = {.tables = dtab, .max_blocks = max_blocks, .block_size = BS, .n_slots = n_slots, .NKV = NKV,
                        .HD = HD, .dt = cache_dt};
    /* the parent's prompt first (its tokens are in the batch), then the tail copies, as the engine orders them */
    cpu_ref_kv_store(kc, vc, kvpages_table(p), max_blocks, BS, k, v, seq, pos, T, NKV, HD);
    round_to(kc, ncache, cache_dt), round_to(vc, ncache, cache_dt);
    if (ran(cuda_kv_store(dkc, dvc, &pg, dk, dv, dseq, dpos, T, in_dt, stream), "kv_store", cache_dt, shape)) {
        float *gk = dfetch(dkc, ncache, cache_dt), *gv = dfetch(dvc, ncache, cache_dt);
        record("kv_store", cache_dt, shape, rel_err(gk, kc, ncache) + rel_err(gv, vc, ncache), 0.0);
        free(gk), free(gv);
    }
    /* the fork's tail copies, in both caches */
    int32_t src[4], dst[4], cnt[4];
    for (int c = 0; c < ncopies; c++) {
        src[c] = copies[c].src, dst[c] = copies[c].dst, cnt[c] = copies[c].n;
        memcpy(kc + (size_t)dst[c] * BS * kvn, kc + (size_t)src[c] * BS * kvn, (size_t)cnt[c] * kvn * sizeof(float));
        memcpy(vc + (size_t)dst[c] * BS * kvn, vc + (size_t)src[c] * BS * kvn, (size_t)cnt[c] * kvn * sizeof(float));
    }
    void *caches[2] = {dkc, dvc};
    void *dcaches = dput_raw(caches, sizeof caches), *dsrc = dput_i32(src, 4), *ddst = dput_i32(dst, 4);
    void *dcnt = dput_i32(cnt, 4);
    if (ran(cuda_kv_copy_blocks(dcaches, 2, &pg, dsrc, ddst, dcnt, ncopies, stream), "kv_copy_blocks", cache_dt,
            shape)) {
        float *gk = dfetch(dkc, ncache, cache_dt), *gv = dfetch(dvc, ncache, cache_dt);
        record("kv_copy_blocks", cache_dt, shape, rel_err(gk, kc, ncache) + rel_err(gv, vc, ncache), 0.0);
        free(gk), free(gv);
    }
    kvpages_free(p);
    free(seq), free(pos), free(k), free(v), free(kc), free(vc);
    cuda_free(dkc), cuda_free(dvc), cuda_free(dk), cuda_free(dv), cuda_free(dseq), cuda_free(dpos), cuda_free(dtab);
    cuda_free(dcaches), cuda_free(dsrc), cuda_free(ddst), cuda_free(dcnt);
}

/* ---- decode attention ---- */

static void decode_attention_case(int B, int NH, int NKV, int HD, int maxlen, cuda_dtype q_dt, cuda_dtype cache_dt)
{
    char shape[96];
    snprintf(shape, sizeof shape, "B%d H%d/%d/%d len<=%d %s q %s cache", B, NH, NKV, HD, maxlen, cuda_dtype_name(q_dt),
             cuda_dtype_name(cache_dt));
    const int BS = 16, prompt = 9;
    int *lens = xmalloc((size_t)B * sizeof(int)), *fork_of = xmalloc((size_t)B * sizeof(int));
    for (int b = 0; b < B; b++) { /* lengths 1 .. maxlen; every 4th row a GRPO sample of the row before */
        lens[b] = b == 0 ? maxlen : 1 + (int)((frand() + 1.0f) * 0.5f * (float)(maxlen - 1));
        fork_of[b] = (b % 4 == 3 && lens[b - 1] >= prompt) ? b - 1 : -1;
        if (fork_of[b] >= 0 && lens[b] < prompt) lens[b] = prompt;
    }
    kvpages_copy *copies = xmalloc((size_t)B * sizeof *copies);
    int ncopies = 0;
    kvpages *p = make_pages(lens, fork_of, B, prompt, BS, copies, &ncopies);
    const int max_blocks = kvpages_max_blocks(p);
    const size_t kvn = (size_t)NKV * HD;
    const int64_t n_slots = (int64_t)kvpages_total_blocks(p) * BS;
    const size_t ncache = (size_t)n_slots * kvn;
    /* the cache's contents: random everywhere (a shared prompt is one set of values by construction) */
    float *kc = hrand(ncache, 1.0f, 0.0f, cache_dt), *vc = hrand(ncache, 1.0f, 0.0f, cache_dt);
    float *q = hrand((size_t)B * NH * HD, 1.0f, 0.0f, q_dt);
    int32_t *seq = xmalloc((size_t)B * 4), *len = xmalloc((size_t)B * 4);
    for (int b = 0; b < B; b++) seq[b] = b, len[b] = lens[b];
    float *ref = xmalloc((size_t)B * NH * HD * sizeof(float)), *rlse = xmalloc((size_t)B * NH * sizeof(float));
    cpu_ref_decode_attention(ref, rlse, q, kc, vc, kvpages_table(p), max_blocks, BS, seq, len, B, NH, NKV, HD);
    void *dkc = dput(kc, ncache, cache_dt), *dvc = dput(vc, ncache, cache_dt), *dq = dput(q, (size_t)B * NH * HD, q_dt);
    void *dtab = dput_i32(kvpages_table(p), (size_t)B * max_blocks), *dseq = dput_i32(seq, (size_t)B);
    void *dlen = dput_i32(len, (size_t)B);
    void *dout = dnan((size_t)B * NH * HD, q_dt), *dout2 = dnan((size_t)B * NH * HD, q_dt);
    float *dlse = dnan((size_t)B * NH, CUDA_F32), *scratch = dnan((size_t)B * NH * maxlen, CUDA_F32);
    cuda_kv_pages pg = {.tables = dtab, .max_blocks = max_blocks, .block_size = BS, .n_slots = n_slots, .NKV = NKV,
                        .HD = HD, .dt = cache_dt};
    const size_t no = (size_t)B * NH * HD;
    if (ran(cuda_decode_attention(dout, dlse, dq, dkc, dvc, &pg, dseq, dlen, B, NH, maxlen, scratch, q_dt, stream),
            "decode_attention", q_dt, shape) &&
        ran(cuda_decode_attention(dout2, NULL, dq, dkc, dvc, &pg, dseq, dlen, B, NH, maxlen, scratch, q_dt, stream),
            "decode_attention", q_dt, shape)) {
        float *got = dfetch(dout, no, q_dt), *glse = dfetch(dlse, (size_t)B * NH, CUDA_F32);
        record("decode_attention", q_dt, shape, rel_err(got, ref, no), tol_of(q_dt));
        record("decode_attention lse", q_dt, shape, rel_err(glse, rlse, (size_t)B * NH), tol_of(q_dt));
        record_rerun("decode_attention", q_dt, shape, dout, dout2, no * cuda_dtype_size(q_dt));
        /* a row alone (B = 1, its own table row) equals the same row in the batch, bit for bit */
        const size_t row = (size_t)NH * HD * cuda_dtype_size(q_dt);
        unsigned char *batch = xmalloc(no * cuda_dtype_size(q_dt)), *alone = xmalloc(row);
        dget_raw(batch, dout, no * cuda_dtype_size(q_dt));
        bool same = true;
        for (int b = 0; b < B && same; b += (B > 8 ? 7 : 1)) {
            char *qb = (char *)dq + (size_t)b * row, *sb = (char *)dseq + (size_t)b * 4, *lb = (char *)dlen + (size_t)b * 4;
            if (!ran(cuda_decode_attention(dout2, NULL, qb, dkc, dvc, &pg, (const int32_t *)sb, (const int32_t *)lb, 1,
                                           NH, maxlen, scratch, q_dt, stream),
                     "decode_attention", q_dt, shape))
                break;
            dget_raw(alone, dout2, row);
            same = memcmp(alone, batch + (size_t)b * row, row) == 0;
        }
        record("decode_attn alone=batch (bits)", q_dt, shape, same ? 0.0 : INFINITY, 0.0);
        free(got), free(glse), free(batch), free(alone);
    }
    kvpages_free(p);
    free(lens), free(fork_of), free(copies), free(kc), free(vc), free(q), free(seq), free(len), free(ref), free(rlse);
    cuda_free(dkc), cuda_free(dvc), cuda_free(dq), cuda_free(dtab), cuda_free(dseq), cuda_free(dlen);
    cuda_free(dout), cuda_free(dout2), cuda_free(dlse), cuda_free(scratch);
}

/* ---- sampler ---- */

static void sampler_case(int B, int V)
{
    char shape[64];
    snprintf(shape, sizeof shape, "B%d V%d", B, V);
    float *logits = hrand((size_t)B * V, 4.0f, 0.0f, CUDA_F32);
    cuda_sample_params *P = xmalloc((size_t)B * sizeof *P);
    for (int b = 0; b < B; b++) {
        cuda_sample_params x = {.temperature = 0.6f + 0.1f * (float)(b % 7), .seed = 1000u + (uint64_t)b / 8,
                                .sequence = (uint64_t)b % 8, .step = (uint32_t)(b * 3)};
        switch (b % 7) {
        case 0: x.temperature = 0.0f; break;   /* greedy */
        case 1: break;                         /* temperature only */
        case 2: x.top_k = 1 + b % 50; break;
        case 3: x.top_p = 0.9f; break;
        case 4: x.top_k = 40, x.top_p = 0.7f; break;
        case 5: x.min_p = 0.05f; break;
        case 6: x.top_k = V - 1, x.top_p = 0.999f, x.min_p = 0.001f; break;
        }
        P[b] = x;
        if (b % 5 == 0) { /* ties at the top */
            float *r = logits + (size_t)b * V;
            r[V / 2] = r[V / 3] = r[1] = 9.0f;
        }
    }
    int32_t *rt = xmalloc((size_t)B * 4), *gt = xmalloc((size_t)B * 4), *gt2 = xmalloc((size_t)B * 4);
    float *rl = xmalloc((size_t)B * 4), *gl = xmalloc((size_t)B * 4);
    uint8_t *rtr = xmalloc((size_t)B), *gtr = xmalloc((size_t)B);
    if (cpu_ref_sample(rt, rl, rtr, logits, P, B, V) != 0) fatal("cpu_ref_sample");
    void *dlog = dput(logits, (size_t)B * V, CUDA_F32), *dP = dput_raw(P, (size_t)B * sizeof *P);
    void *dtok = dput_raw(rt, (size_t)B * 4), *dtok2 = dput_raw(rt, (size_t)B * 4);
    float *dlp = dnan((size_t)B, CUDA_F32), *dlp2 = dnan((size_t)B, CUDA_F32);
    void *dtr = dput_raw(rtr, (size_t)B), *dtr2 = dput_raw(rtr, (size_t)B);
    cudaMemset(dtok, 0xff, (size_t)B * 4);
    cudaMemset(dtr, 0xff, (size_t)B);
    if (ran(cuda_sample(dtok, dlp, dtr, dlog, dP, B, V, stream), "sample", CUDA_F32, shape) &&
        ran(cuda_sample(dtok2, dlp2, dtr2, dlog, dP, B, V, stream), "sample", CUDA_F32, shape)) {
        dget_raw(gt, dtok, (size_t)B * 4);
        dget_raw(gtr, dtr, (size_t)B);
        dget(gl, dlp, (size_t)B, CUDA_F32);
        int bad = 0;
        char first[96] = "";
        for (int b = 0; b < B; b++)
            if (gt[b] != rt[b] || gtr[b] != rtr[b]) {
                if (!bad++)
                    snprintf(first, sizeof first, "row %d (mode %d): token %d flag %d, cpu %d flag %d", b, b % 7, gt[b],
                             gtr[b], rt[b], rtr[b]);
            }
        if (bad) fprintf(stderr, "gpu parity: sample %s: %d rows differ, first %s\n", shape, bad, first);
        record("sample tokens+flags", CUDA_F32, shape, (double)bad / B, 0.0);
        record("sample logprob", CUDA_F32, shape, rel_err(gl, rl, (size_t)B), 1e-6);
        record_rerun("sample", CUDA_F32, shape, dtok, dtok2, (size_t)B * 4);
        record_rerun("sample logprob", CUDA_F32, shape, dlp, dlp2, (size_t)B * 4);
        /* each row alone equals itself in the batch */
        bool same = true;
        for (int b = 0; b < B && same; b++) {
            int32_t one;
            float onel, batchl;
            const char *lb = (const char *)dlog + (size_t)b * V * 4, *pb = (const char *)dP + (size_t)b * sizeof *P;
            if (!ran(cuda_sample(dtok2, dlp2, dtr2, (const float *)lb, (const cuda_sample_params *)pb, 1, V, stream),
                     "sample", CUDA_F32, shape))
                break;
            dget_raw(&one, dtok2, 4);
            dget_raw(&onel, dlp2, 4);
            memcpy(&batchl, &gl[b], 4);
            same = one == gt[b] && memcmp(&onel, &batchl, 4) == 0;
        }
        record("sample alone=batch (bits)", CUDA_F32, shape, same ? 0.0 : INFINITY, 0.0);
    }
    free(logits), free(P), free(rt), free(gt), free(gt2), free(rl), free(gl), free(rtr), free(gtr);
    cuda_free(dlog), cuda_free(dP), cuda_free(dtok), cuda_free(dtok2), cuda_free(dlp), cuda_free(dlp2);
    cuda_free(dtr), cuda_free(dtr2);
}


/* ---- the decode step ---- */

static int argmax_low(const float *z, int V)
{
    int a = 0;
    for (int j = 1; j < V; j++)
        if (z[j] > z[a]) a = j;
    return a;
}

/* Greedy generation on the GPU of `steps` tokens for the sequences whose
 * prompts are given (sequence i of nseq; fork_of[i] >= 0: a GRPO sample of
 * that sequence's prompt, forked after the prefill). gen[i * steps + s]
 * receives the tokens; prefill_logits (may be NULL) the logits of every
 * prompt row, in order. false when a call failed (recorded). */
static bool gpu_greedy(decode_cuda *g, const model_gpu_dims *d, const int32_t *const *prompts, const int *plen,
                       const int *fork_of, int nseq, int steps, int32_t *gen, float *prefill_logits, cuda_dtype dt,
                       const char *shape)
{
    const int V = d->vocab, BS = 16, MB = 4, ROWS = 64; /* decode_case's options: the table the step uploads */
    kvpages *p = NULL;
    if (nseq > ROWS || kvpages_create(256, BS, ROWS, MB, &p) != TIDAL_OK) fatal("kvpages_create");
    int32_t tok[1024], seq[1024], pos[1024], len[64], cu[65] = {0};
    int T = 0, runs = 0;
    bool ok = false;
    const float *dlog = NULL;
    float *row = xmalloc((size_t)V * 4);
    for (int i = 0; i < nseq; i++) {
        if (fork_of[i] >= 0) continue;
        if (kvpages_reserve(p, i, plen[i]) != TIDAL_OK) fatal("kvpages_reserve");
        for (int j = 0; j < plen[i]; j++) tok[T] = prompts[i][j], seq[T] = i, pos[T] = j, T++;
        cu[++runs] = T; /* each prompt a prefill run: the packed attention */
        len[i] = plen[i];
    }
    /* the prompts' last rows: every row's logits when the caller wants them, else only those (the gather) */
    int32_t lastrow[64];
    int nlast = 0;
    for (int i = 0, r = 0; i < nseq; i++)
        if (fork_of[i] < 0) r += plen[i], lastrow[nlast++] = r - 1;
    if (!ran(decode_cuda_step(g, tok, seq, pos, T, cu, runs, kvpages_table(p), prefill_logits ? NULL : lastrow, nlast,
                              &dlog),
             "decode step", dt, shape))
        goto done;
    if (prefill_logits) {
        if (cuda_check(cudaMemcpyAsync(prefill_logits, dlog, (size_t)T * V * 4, cudaMemcpyDeviceToHost,
                                       decode_cuda_stream(g)), "download") != TIDAL_OK)
            fatal("download");
    }
    /* the first generated token of each prompt: its last row's argmax */
    int32_t next[64];
    for (int i = 0, k = 0; i < nseq; i++) {
        if (fork_of[i] >= 0) continue;
        const int at = prefill_logits ? lastrow[k] : k;
        k++;
        if (cuda_check(cudaMemcpyAsync(row, dlog + (size_t)at * V, (size_t)V * 4, cudaMemcpyDeviceToHost,
                                       decode_cuda_stream(g)), "download") != TIDAL_OK ||
            cuda_check(cudaStreamSynchronize(decode_cuda_stream(g)), "decode step") != TIDAL_OK)
            fatal("decode step");
        next[i] = argmax_low(row, V);
    }
    /* the forks: shared prompt blocks, the tail copied */
    for (int i = 0; i < nseq; i++) {
        if (fork_of[i] < 0) continue;
        kvpages_copy cp;
        if (kvpages_fork(p, fork_of[i], i, &cp) != TIDAL_OK) fatal("kvpages_fork");
        if (cp.n > 0 && !ran(decode_cuda_copy_blocks(g, &cp.src, &cp.dst, &cp.n, 1), "decode step", dt, shape))
            goto done;
        len[i] = plen[fork_of[i]];
        next[i] = next[fork_of[i]];
    }
    for (int s = 0; s < steps; s++) {
        for (int i = 0; i < nseq; i++) {
            gen[i * steps + s] = next[i];
            if (kvpages_reserve(p, i, len[i] + 1) != TIDAL_OK) fatal("kvpages_reserve");
            tok[i] = next[i], seq[i] = i, pos[i] = len[i];
            len[i]++;
        }
        if (s + 1 == steps) break;
        if (!ran(decode_cuda_step(g, tok, seq, pos, nseq, NULL, 0, kvpages_table(p), NULL, nseq, &dlog), "decode step",
                 dt, shape))
            goto done;
        for (int i = 0; i < nseq; i++) {
            if (cuda_check(cudaMemcpyAsync(row, dlog + (size_t)i * V, (size_t)V * 4, cudaMemcpyDeviceToHost,
                                           decode_cuda_stream(g)), "download") != TIDAL_OK ||
                cuda_check(cudaStreamSynchronize(decode_cuda_stream(g)), "decode step") != TIDAL_OK)
                fatal("decode step");
            next[i] = argmax_low(row, V);
        }
    }
    ok = true;
done:
    free(row);
    kvpages_free(p);
    return ok;
}

/* One mixed step (the engine's: prefill runs first, then decodes, then a
 * prompt over max_prefill on the paged path) on a decoder of 8 sequences,
 * so its 32 paged rows attend in 4 chunks of max_seqs: every row's logits
 * against model.c's forward of that sequence so far; and a run that is not
 * a whole prompt from position 0 refused. */
static void decode_mixed_case(const model_gpu_dims *d, const float *P, cuda_dtype dt, const char *shape, double tol)
{
    enum { BS = 16, MB = 4, NB = 32, NS = 8, T2 = 11 + 6 + 2 + 30 };
    const int V = d->vocab;
    const decode_cuda_options o = {.max_rows = 128, .max_logit_rows = 128, .n_blocks = NB, .block_size = BS,
                                   .max_seqs = NS, .max_blocks = MB, .max_prefill = 24, .dt = dt, .cache_dt = dt};
    int32_t p0[6], p1[18], pa[11], pb[6], pc[30];
    for (int i = 0; i < 5; i++) p0[i] = (i * 37 + 11) % V;
    for (int i = 0; i < 17; i++) p1[i] = (i * 53 + 5) % V;
    for (int i = 0; i < 11; i++) pa[i] = (i * 71 + 2) % V;
    for (int i = 0; i < 6; i++) pb[i] = (i * 89 + 31) % V;
    for (int i = 0; i < 30; i++) pc[i] = (i * 97 + 13) % V;
    decode_cuda *g = NULL;
    kvpages *p = NULL;
    float *got = xmalloc((size_t)T2 * V * 4), *ref = xmalloc((size_t)T2 * V * 4), *tmp = xmalloc((size_t)30 * V * 4);
    int32_t tok[T2], seq[T2], pos[T2], first[2] = {4, 21};
    const float *dlog = NULL;
    if (kvpages_create(NB, BS, NS, MB, &p) != TIDAL_OK) fatal("kvpages_create");
    if (!ran(decode_cuda_create(d, &o, &g), "decode mixed step", dt, shape)) goto done;
    if (!ran(decode_cuda_set_params(g, P), "decode mixed step", dt, shape)) goto done;
    /* step 1: p0 and p1 prefilled (two runs); their greedy tokens */
    {
        int T = 0;
        const int32_t cu[3] = {0, 5, 22};
        if (kvpages_reserve(p, 0, 5) != TIDAL_OK || kvpages_reserve(p, 1, 17) != TIDAL_OK) fatal("kvpages_reserve");
        for (int j = 0; j < 5; j++) tok[T] = p0[j], seq[T] = 0, pos[T] = j, T++;
        for (int j = 0; j < 17; j++) tok[T] = p1[j], seq[T] = 1, pos[T] = j, T++;
        if (!ran(decode_cuda_step(g, tok, seq, pos, T, cu, 2, kvpages_table(p), first, 2, &dlog), "decode mixed step",
                 dt, shape))
            goto done;
        if (cuda_check(cudaMemcpyAsync(got, dlog, (size_t)2 * V * 4, cudaMemcpyDeviceToHost, decode_cuda_stream(g)),
                       "download") != TIDAL_OK ||
            cuda_check(cudaStreamSynchronize(decode_cuda_stream(g)), "decode mixed step") != TIDAL_OK)
            fatal("decode mixed step");
        p0[5] = argmax_low(got, V);
        p1[17] = argmax_low(got + V, V);
    }
    /* step 2: runs pa (seq 2), pb (seq 3); decodes of seqs 0 and 1; pc (seq 4, 30 > max_prefill) paged */
    {
        int T = 0;
        const int32_t cu[3] = {0, 11, 17};
        if (kvpages_reserve(p, 2, 11) != TIDAL_OK || kvpages_reserve(p, 3, 6) != TIDAL_OK ||
            kvpages_reserve(p, 0, 6) != TIDAL_OK || kvpages_reserve(p, 1, 18) != TIDAL_OK ||
            kvpages_reserve(p, 4, 30) != TIDAL_OK)
            fatal("kvpages_reserve");
        for (int j = 0; j < 11; j++) tok[T] = pa[j], seq[T] = 2, pos[T] = j, T++;
        for (int j = 0; j < 6; j++) tok[T] = pb[j], seq[T] = 3, pos[T] = j, T++;
        tok[T] = p0[5], seq[T] = 0, pos[T] = 5, T++;
        tok[T] = p1[17], seq[T] = 1, pos[T] = 17, T++;
        for (int j = 0; j < 30; j++) tok[T] = pc[j], seq[T] = 4, pos[T] = j, T++;
        /* a run that is not a whole prompt from 0 (the decode rows) is refused, nothing run */
        const int32_t bad[3] = {0, 11, 19};
        const bool refused = decode_cuda_step(g, tok, seq, pos, T, bad, 2, kvpages_table(p), NULL, T, &dlog) != TIDAL_OK;
        tidal_clear();
        record("decode mixed: bad run refused", dt, shape, refused ? 0.0 : INFINITY, 0.0);
        if (!ran(decode_cuda_step(g, tok, seq, pos, T, cu, 2, kvpages_table(p), NULL, T, &dlog), "decode mixed step",
                 dt, shape))
            goto done;
        if (cuda_check(cudaMemcpyAsync(got, dlog, (size_t)T * V * 4, cudaMemcpyDeviceToHost, decode_cuda_stream(g)),
                       "download") != TIDAL_OK ||
            cuda_check(cudaStreamSynchronize(decode_cuda_stream(g)), "decode mixed step") != TIDAL_OK)
            fatal("decode mixed step");
    }
    /* the oracle, row for row */
    cpu_decoder_logits(d, P, pa, 11, ref);
    cpu_decoder_logits(d, P, pb, 6, ref + (size_t)11 * V);
    cpu_decoder_logits(d, P, p0, 6, tmp);
    memcpy(ref + (size_t)17 * V, tmp + (size_t)5 * V, (size_t)V * 4);
    cpu_decoder_logits(d, P, p1, 18, tmp);
    memcpy(ref + (size_t)18 * V, tmp + (size_t)17 * V, (size_t)V * 4);
    cpu_decoder_logits(d, P, pc, 30, ref + (size_t)19 * V);
    record("decode mixed step logits", dt, shape, rel_err(got, ref, (size_t)T2 * V), tol);
    record("decode mixed: decode rows", dt, shape, rel_err(got + (size_t)17 * V, ref + (size_t)17 * V, (size_t)2 * V),
           tol);
done:
    decode_cuda_free(g);
    kvpages_free(p);
    free(got), free(ref), free(tmp);
}

static void decode_case(cuda_dtype dt)
{
    const model_gpu_dims d = {.layers = 2, .hidden = 128, .heads = 4, .kv_heads = 2, .head_dim = 64, .ffn = 352,
                              .vocab = 1003, .qkv_bias = true, .o_bias = true, .tied = false, .rms_eps = 1e-6f,
                              .rope_theta = 1e6f};
    const char *shape = "2 layers C128 H4/2 hd64 V1003 untied";
    const double tol = dt == CUDA_BF16 ? 3e-2 : 1e-4;
    const int V = d.vocab, steps = 8;
    const size_t n = model_gpu_params(&d);
    float *P = hrand(n, 0.1f, 0.0f, dt);
    for (int l = 0; l < d.layers; l++) {
        model_gpu_layer_offsets o = model_gpu_layer(&d, l);
        for (int c = 0; c < d.hidden; c++) P[o.ln1 + c] += 1.0f, P[o.ln2 + c] += 1.0f;
    }
    for (int c = 0; c < d.hidden; c++) P[model_gpu_norm(&d) + c] += 1.0f;
    if (dt == CUDA_BF16)
        for (size_t i = 0; i < n; i++) P[i] = cuda_float_from_bf16(cuda_bf16_from_float(P[i]));
    int32_t p0[5], p1[17];
    for (int i = 0; i < 5; i++) p0[i] = (i * 37 + 11) % V;
    for (int i = 0; i < 17; i++) p1[i] = (i * 53 + 5) % V;
    /* 64 sequences: p0, p1, a GRPO sample of p1, then 61 prompts of 1 .. 9 tokens */
    enum { NSEQ = 64 };
    int32_t others[NSEQ][9];
    const int32_t *prompts[NSEQ] = {p0, p1, p1};
    int plen[NSEQ] = {5, 17, 17}, fork_of[NSEQ] = {-1, -1, 1}, prefill_rows = 22;
    const int alone_fork[1] = {-1};
    for (int i = 3; i < NSEQ; i++) {
        plen[i] = 1 + i % 9, fork_of[i] = -1, prompts[i] = others[i];
        for (int j = 0; j < plen[i]; j++) others[i][j] = (i * 101 + j * 7) % V;
        prefill_rows += plen[i];
    }
    decode_cuda_options o = {.max_rows = 1024, .max_logit_rows = 1024, .n_blocks = 256, .block_size = 16,
                             .max_seqs = NSEQ, .max_blocks = 4, .max_prefill = 64, .dt = dt, .cache_dt = dt};
    decode_cuda *g = NULL;
    int32_t gen[NSEQ * 8], alone[8];
    float *pre = xmalloc((size_t)prefill_rows * V * 4), *ref = xmalloc((size_t)(17 + steps) * V * 4);
    if (!ran(decode_cuda_create(&d, &o, &g), "decode step", dt, shape)) goto cleanup;
    if (!ran(decode_cuda_set_params(g, P), "decode step", dt, shape)) goto cleanup;
    if (!gpu_greedy(g, &d, prompts, plen, fork_of, NSEQ, steps, gen, pre, dt, shape)) goto cleanup;
    /* prefill logits against the CPU forward of each prompt */
    cpu_decoder_logits(&d, P, p0, 5, ref);
    cpu_decoder_logits(&d, P, p1, 17, ref + (size_t)5 * V);
    record("decode prefill logits", dt, shape, rel_err(pre, ref, (size_t)22 * V), tol);
    /* the forked sample is its parent, token for token */
    record("decode fork = parent (tokens)", dt, shape, memcmp(gen + steps, gen + 2 * steps, steps * 4) ? INFINITY : 0.0,
           0.0);
    if (dt == CUDA_F32) { /* greedy on the CPU: the same tokens */
        int bad = 0;
        const int checked[4] = {0, 1, 3, 63};
        for (int c = 0; c < 4; c++) {
            const int i = checked[c];
            int32_t ids[17 + 8];
            int m = plen[i];
            memcpy(ids, prompts[i], (size_t)m * 4);
            for (int s = 0; s < steps; s++) {
                cpu_decoder_logits(&d, P, ids, m, ref);
                ids[m] = argmax_low(ref + (size_t)(m - 1) * V, V);
                if (ids[m] != gen[i * steps + s]) {
                    if (!bad) fprintf(stderr, "gpu parity: decode: sequence %d token %d: gpu %d, cpu %d\n", i, s,
                                      gen[i * steps + s], ids[m]);
                    bad++;
                    ids[m] = gen[i * steps + s]; /* follow the GPU to count later differences */
                }
                m++;
            }
        }
        record("decode greedy = cpu (tokens)", dt, shape, (double)bad / (4 * steps), 0.0);
        /* sequence 0 alone: the tokens it got in the batch of 64 */
        const int32_t *one[1] = {p0};
        if (gpu_greedy(g, &d, one, plen, alone_fork, 1, steps, alone, NULL, dt, shape))
            record("decode alone = batch (tokens)", dt, shape, memcmp(alone, gen, steps * 4) ? INFINITY : 0.0, 0.0);
    }
    decode_mixed_case(&d, P, dt, shape, tol);
cleanup:
    decode_cuda_free(g);
    free(P), free(pre), free(ref);
}

/* The three groups over the grid (quick: the small shapes). */
static void test_engine_kernels(bool kvstore, bool decode, bool sampler)
{
    static const int heads[][3] = {{14, 2, 64}, {12, 2, 128}, {8, 1, 64}, {4, 4, 128}};
    const int nh = quick ? 1 : 4;
    const cuda_dtype dts[] = {CUDA_F32, CUDA_BF16};
    for (int h = 0; h < nh && kvstore; h++)
        for (int a = 0; a < 2; a++)
            for (int c = 0; c < 2; c++) kvstore_case(heads[h][1], heads[h][2], dts[a], dts[c]);
    for (int h = 0; h < nh && decode; h++)
        for (int a = 0; a < 2; a++)
            for (int c = 0; c < 2; c++) {
                decode_attention_case(quick ? 9 : 64, heads[h][0], heads[h][1], heads[h][2], quick ? 40 : 1000, dts[a],
                                      dts[c]);
                if (!quick) decode_attention_case(3, heads[h][0], heads[h][1], heads[h][2], 17, dts[a], dts[c]);
            }
    if (sampler) {
        sampler_case(quick ? 14 : 64, 1003);
        if (!quick) sampler_case(64, 32007);
    }
    sync_or_die("engine kernels");
}

#endif
