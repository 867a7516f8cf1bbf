/* serve.c - `tidal serve` (serve.h): the engine thread, the HTTP routes, the
 * life of one request from its body to its response. */
#include <arpa/inet.h>
#include <errno.h>
#include <inttypes.h>
#include <jansson.h>
#include <microhttpd.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "base/json.h"
#include "model/chat.h"
#include "model/model.h"
#include "model/tokenizer.h"
#include "rollout/engine.h"
#include "serve/api.h"
#include "serve/serve.h"

#define BODY_CAP (64u << 20) /* a request body larger than this is refused (413) */
#define VERSION_CAP 64

typedef struct job job;

/* One sample: a sequence in the engine. Its arrays grow as tokens come
 * (engine thread, under srv->mu) and are read under the lock or once done. */
typedef struct seq {
    job *j;
    int prompt_index, sample_index;
    int32_t *prompt; /* borrowed from the job's prompts */
    int prompt_len;
    uint64_t engine_id; /* 0 until submitted */
    bool done;
    int32_t *ids;
    float *logprobs;
    int n, cap;
    engine_finish finish;
    int stop_string;    /* index into the request's stop strings, or -1 */
    size_t stop_offset; /* engine_result.stop_offset */
    char version[VERSION_CAP];
    struct seq *next_pending;
    /* streaming: what was sent */
    size_t sent_text;
    int sent_tok;
    bool sent_first, sent_last;
} seq;

struct job {
    struct serve_server *srv;
    serve_request req;
    int32_t **prompt_ids; /* [n_prompt_ids]: each prompt's ids (owned; chat has one) */
    int *prompt_lens;
    int n_prompt_ids;
    seq *seqs;
    int n_seqs, n_done;
    int32_t stop_ids[80];
    int n_stop_ids;
    bool cancelled; /* the client went away: abort what runs */
    bool moved;     /* tokens came since its waiter last looked (streams) */
    pthread_cond_t cv; /* its one waiter (the handler, or the stream's reader) waits here, not on changed:
                          one wake-up per job per step rather than every job's */
    int refs;       /* the handler (or the stream's response) and the engine side */
    char id[64];
    long long created;
    /* streaming output not yet handed to the HTTP library */
    char *out;
    size_t out_len, out_sent;
    bool done_sent;
};

struct serve_server {
    serve_opts o;
    char model_dir[4096], name[256];
    struct MHD_Daemon *d;
    model *m;
    tokenizer *tok; /* NULL: token-id prompts only */
    chat_format fmt;
    int32_t end_of_turn, eos;
    int max_len, vocab;
    engine *e;
    pthread_t thread;
    bool thread_started;
    pthread_mutex_t mu;
    pthread_cond_t work;    /* the engine thread waits here */
    pthread_cond_t changed; /* requests and control calls wait here */
    bool quit;
    seq *pending_head, *pending_tail;
    int running; /* submitted to the engine, not finished */
    bool paused;
    /* a weight swap the engine thread makes once nothing runs (or while paused) */
    bool swap_pending, swap_done;
    model *next_model;
    char next_version[VERSION_CAP];
    char version[VERSION_CAP];
    uint64_t version_num;
    uint64_t requests, seed_counter;
    job **jobs; /* jobs with sequences in flight, for cancellation */
    int n_jobs, cap_jobs;
};

/* ---------------------------------------------------------------- jobs */

static void job_free(job *j)
{
    if (!j) return;
    for (int i = 0; i < j->n_seqs; i++) {
        free(j->seqs[i].ids);
        free(j->seqs[i].logprobs);
    }
    free(j->seqs);
    for (int i = 0; j->prompt_ids && i < j->n_prompt_ids; i++) free(j->prompt_ids[i]);
    free(j->prompt_ids);
    free(j->prompt_lens);
    serve_request_clear(&j->req);
    free(j->out);
    pthread_cond_destroy(&j->cv);
    free(j);
}

/* Drop one reference; the last frees. Called with srv->mu held. */
static void job_release_locked(job *j)
{
    if (--j->refs == 0) job_free(j);
}

static void jobs_remove_locked(serve_server *s, job *j)
{
    for (int i = 0; i < s->n_jobs; i++)
        if (s->jobs[i] == j) {
            s->jobs[i] = s->jobs[--s->n_jobs];
            return;
        }
}

/* ---------------------------------------------------------------- engine thread */

/* engine_token_fn: append the token to its sequence (engine thread, inside engine_step). */
static void on_token(void *ctx, const engine_token_event *ev)
{
    serve_server *s = ctx;
    seq *q = ev->user;
    pthread_mutex_lock(&s->mu);
    if (q->n == q->cap) {
        int cap = q->cap ? 2 * q->cap : 64;
        int32_t *ids = realloc(q->ids, (size_t)cap * sizeof *ids);
        if (ids) q->ids = ids;
        float *lps = ids ? realloc(q->logprobs, (size_t)cap * sizeof *lps) : NULL;
        if (lps) q->logprobs = lps;
        if (ids && lps) q->cap = cap;
    }
    if (q->n < q->cap) { /* out of memory drops the token: the sample ends short, never corrupt */
        q->ids[q->n] = ev->token;
        q->logprobs[q->n] = ev->logprob;
        q->n++;
    }
    q->j->moved = true;
    pthread_mutex_unlock(&s->mu);
}

static const char *token_bytes(void *ctx, int32_t id, size_t *len)
{
    serve_server *s = ctx;
    return tokenizer_token_bytes(s->tok, id, len);
}

/* A sequence finished (engine thread, mu held). */
static void seq_finish_locked(serve_server *s, seq *q, engine_finish f, int stop_string, size_t stop_offset)
{
    q->done = true;
    q->finish = f;
    q->stop_string = stop_string;
    q->stop_offset = stop_offset;
    snprintf(q->version, sizeof q->version, "%s", s->version);
    job *j = q->j;
    pthread_cond_signal(&j->cv);
    if (++j->n_done == j->n_seqs) {
        jobs_remove_locked(s, j);
        job_release_locked(j); /* the engine side's reference */
    }
}

static void submit_pending_locked(serve_server *s)
{
    while (s->pending_head) {
        seq *q = s->pending_head;
        s->pending_head = q->next_pending;
        if (!s->pending_head) s->pending_tail = NULL;
        job *j = q->j;
        if (j->cancelled) {
            seq_finish_locked(s, q, ENGINE_FINISH_ABORT, -1, 0);
            continue;
        }
        const serve_request *r = &j->req;
        uint64_t seed = r->has_seed ? r->seed + (uint64_t)q->sample_index : ++s->seed_counter * 0x9E3779B97F4A7C15ull;
        engine_request rq = {.prompt = q->prompt,
                             .prompt_len = q->prompt_len,
                             .sampling = {.temperature = r->temperature, .top_k = r->top_k, .top_p = r->top_p,
                                          .min_p = r->min_p, .seed = seed},
                             .max_new_tokens = r->max_tokens,
                             .stop_ids = j->stop_ids,
                             .n_stop_ids = j->n_stop_ids,
                             .stop_strings = (const char *const *)r->stop,
                             .n_stop_strings = r->n_stop,
                             .user = q};
        if (engine_submit(s->e, &rq, &q->engine_id) != TIDAL_OK) { /* checked before queueing: should not happen */
            fprintf(stderr, "tidal serve: %s\n", tidal_errmsg());
            seq_finish_locked(s, q, ENGINE_FINISH_ABORT, -1, 0);
            continue;
        }
        s->running++;
    }
}

/* Queued sequences of cancelled jobs end at once (also while paused). */
static void drop_cancelled_pending_locked(serve_server *s)
{
    seq **link = &s->pending_head;
    s->pending_tail = NULL;
    while (*link) {
        seq *q = *link;
        if (q->j->cancelled) {
            *link = q->next_pending;
            seq_finish_locked(s, q, ENGINE_FINISH_ABORT, -1, 0);
        } else {
            s->pending_tail = q;
            link = &q->next_pending;
        }
    }
}

static void abort_cancelled_locked(serve_server *s)
{
    drop_cancelled_pending_locked(s);
    for (int i = 0; i < s->n_jobs; i++) {
        job *j = s->jobs[i];
        if (!j->cancelled) continue;
        for (int k = 0; k < j->n_seqs; k++)
            if (j->seqs[k].engine_id && !j->seqs[k].done) engine_abort(s->e, j->seqs[k].engine_id);
    }
}

static void take_results_locked(serve_server *s)
{
    engine_result *r;
    while ((r = engine_next_result(s->e))) {
        seq *q = r->user;
        s->running--;
        seq_finish_locked(s, q, r->finish, r->stop_string, r->stop_offset);
        engine_result_free(r);
    }
}

static void *engine_thread(void *arg)
{
    serve_server *s = arg;
    pthread_mutex_lock(&s->mu);
    while (!s->quit) {
        abort_cancelled_locked(s);
        take_results_locked(s);
        if (s->swap_pending && (s->running == 0 || s->paused)) {
            tidal_status st = engine_set_model(s->e, s->next_model, s->version_num + 1);
            if (st == TIDAL_OK) {
                model_free(s->m);
                s->m = s->next_model;
                s->version_num++;
                snprintf(s->version, sizeof s->version, "%s", s->next_version);
            } else {
                model_free(s->next_model); /* checked by shape before: should not happen */
            }
            s->next_model = NULL;
            s->swap_pending = false, s->swap_done = true;
            pthread_cond_broadcast(&s->changed);
        }
        if (!s->paused && !s->swap_pending) submit_pending_locked(s);
        if (s->paused || !engine_busy(s->e)) {
            pthread_cond_broadcast(&s->changed);
            pthread_cond_wait(&s->work, &s->mu);
            continue;
        }
        pthread_mutex_unlock(&s->mu);
        tidal_status st = engine_step(s->e);
        pthread_mutex_lock(&s->mu);
        if (st != TIDAL_OK) { /* the engine is unchanged: end everything that runs rather than spin */
            fprintf(stderr, "tidal serve: engine step: %s\n", tidal_errmsg());
            for (int i = 0; i < s->n_jobs; i++) s->jobs[i]->cancelled = true;
            abort_cancelled_locked(s);
        }
        take_results_locked(s);
        for (int i = 0; i < s->n_jobs; i++)
            if (s->jobs[i]->moved && s->jobs[i]->req.stream) {
                s->jobs[i]->moved = false;
                pthread_cond_signal(&s->jobs[i]->cv);
            }
        pthread_cond_broadcast(&s->changed); /* control calls: running counts, swaps */
    }
    /* shutting down: everything still queued or running ends as aborted */
    while (s->pending_head) {
        seq *q = s->pending_head;
        s->pending_head = q->next_pending;
        seq_finish_locked(s, q, ENGINE_FINISH_ABORT, -1, 0);
    }
    s->pending_tail = NULL;
    for (int i = 0; i < s->n_jobs; i++) s->jobs[i]->cancelled = true;
    abort_cancelled_locked(s);
    take_results_locked(s);
    pthread_cond_broadcast(&s->changed);
    pthread_mutex_unlock(&s->mu);
    return NULL;
}

/* ---------------------------------------------------------------- text */

static void bytes_append(tok_bytes *out, const char *b, size_t len)
{
    if (out->len + len + 1 > out->cap) {
        size_t cap = 2 * (out->len + len + 1);
        char *d = realloc(out->data, cap);
        if (!d) return; /* out of memory: the text ends short */
        out->data = d, out->cap = cap;
    }
    memcpy(out->data + out->len, b, len);
    out->len += len;
    out->data[out->len] = '\0';
}

/* The reported text of q's tokens [0, n): specials left out when asked, a
 * matched stop string (and a stop token) cut unless kept. With `partial`
 * (the sequence still runs) the end that could still turn into a stop string
 * or that holds an incomplete UTF-8 character is held back. Appends to out;
 * fills per-token texts when tt != NULL. Called with mu held. */
static void seq_text(const serve_server *s, const job *j, const seq *q, bool partial, tok_bytes *out)
{
    const serve_request *r = &j->req;
    out->len = 0;
    if (!s->tok) return;
    size_t raw = 0; /* bytes of the full decode so far, specials included: stop_offset's measure */
    const bool cut = q->done && q->stop_string >= 0 && !r->keep_stop_str;
    for (int i = 0; i < q->n; i++) {
        size_t len = 0;
        const char *b = tokenizer_token_bytes(s->tok, q->ids[i], &len);
        if (!b) continue;
        const bool last_stop_id = q->done && i == q->n - 1 && q->stop_string < 0 && q->finish == ENGINE_FINISH_STOP &&
                                  !r->keep_stop_str;
        if (last_stop_id) break; /* the stop token's text is not the model's answer */
        if (cut && raw + len > q->stop_offset) {
            if (q->stop_offset > raw && !(r->skip_special && tokenizer_is_special(s->tok, q->ids[i])))
                bytes_append(out, b, q->stop_offset - raw);
            break;
        }
        raw += len;
        if (r->skip_special && tokenizer_is_special(s->tok, q->ids[i])) continue;
        bytes_append(out, b, len);
    }
    if (!partial) return;
    size_t hold = 0; /* a stop string may still complete across the end */
    for (int k = 0; k < r->n_stop; k++) {
        size_t sl = strlen(r->stop[k]);
        if (sl - 1 > hold) hold = sl - 1;
    }
    size_t keep = out->len > hold ? out->len - hold : 0;
    /* back off to a character boundary: never send half a UTF-8 character */
    size_t b = keep;
    for (int cont = 0; b > 0 && cont < 3 && ((unsigned char)out->data[b - 1] & 0xC0) == 0x80; cont++) b--;
    if (b > 0) {
        const unsigned char lead = (unsigned char)out->data[b - 1];
        const size_t need = lead >= 0xF0 ? 4 : lead >= 0xE0 ? 3 : lead >= 0xC0 ? 2 : 1;
        if (need > 1 && keep - (b - 1) < need) keep = b - 1;
    }
    out->len = keep;
}

/* The per-sample view the response builders read (serve_sample), for q. The
 * token text arrays are allocated into tt / tl (freed by the caller). */
static void sample_of(const serve_server *s, const job *j, const seq *q, const tok_bytes *text, serve_sample *out,
                      const char **tt, size_t *tl)
{
    for (int i = 0; i < q->n; i++) {
        tt[i] = s->tok ? tokenizer_token_bytes(s->tok, q->ids[i], &tl[i]) : NULL;
        if (!tt[i]) tt[i] = "", tl[i] = 0;
    }
    const serve_request *r = &j->req;
    *out = (serve_sample){.prompt_index = q->prompt_index,
                          .sample_index = q->sample_index,
                          .ids = q->ids,
                          .logprobs = q->logprobs,
                          .n = q->n,
                          .prompt_tokens = q->prompt_len,
                          .text = text->data ? text->data : "",
                          .text_len = text->len,
                          .token_texts = tt,
                          .token_text_lens = tl,
                          .finish = q->done ? engine_finish_name(q->finish) : "length",
                          .matched_stop = q->done && q->stop_string >= 0 ? r->stop[q->stop_string] : NULL,
                          .matched_id = q->done && q->stop_string < 0 && q->finish == ENGINE_FINISH_STOP && q->n > 0
                                            ? q->ids[q->n - 1]
                                            : -1,
                          .weight_version = q->done ? q->version : s->version};
}

/* ---------------------------------------------------------------- HTTP helpers */

typedef struct conn {
    char *body;
    size_t len, cap;
    bool too_big;
} conn;

static enum MHD_Result reply(struct MHD_Connection *c, unsigned status, char *body /* freed */)
{
    if (!body) {
        static const char oom[] = "{\"error\":{\"message\":\"out of memory\",\"type\":\"server_error\",\"code\":500}}";
        status = 500;
        body = strdup(oom);
        if (!body) return MHD_NO;
    }
    struct MHD_Response *resp = MHD_create_response_from_buffer(strlen(body), body, MHD_RESPMEM_MUST_FREE);
    if (!resp) {
        free(body);
        return MHD_NO;
    }
    MHD_add_response_header(resp, "Content-Type", "application/json");
    enum MHD_Result ret = MHD_queue_response(c, status, resp);
    MHD_destroy_response(resp);
    return ret;
}

static enum MHD_Result reply_error(struct MHD_Connection *c, unsigned status, const char *message, const char *param)
{
    return reply(c, status, serve_error_body((int)status, message, param));
}

static enum MHD_Result reply_json(struct MHD_Connection *c, unsigned status, json_t *v)
{
    char *body = v ? json_dumps(v, JSON_COMPACT) : NULL;
    json_decref(v);
    return reply(c, status, body);
}

/* ---------------------------------------------------------------- generation */

/* Tokenize / render the request's prompts into the job; TIDAL_ERR_INVALID naming the field. */
static tidal_status job_prompts(serve_server *s, job *j, char *param, size_t cap)
{
    serve_request *r = &j->req;
    const int n_prompts = r->dialect == SERVE_CHAT ? 1 : r->n_prompts;
    j->prompt_ids = calloc((size_t)n_prompts, sizeof *j->prompt_ids);
    j->prompt_lens = calloc((size_t)n_prompts, sizeof *j->prompt_lens);
    if (!j->prompt_ids || !j->prompt_lens) return tidal_fail(TIDAL_ERR_NOMEM, "out of memory");
    j->n_prompt_ids = n_prompts;
    const char *field = r->dialect == SERVE_CHAT ? "messages" : r->dialect == SERVE_GENERATE ? "text" : "prompt";
    for (int i = 0; i < n_prompts; i++) {
        if (r->dialect != SERVE_CHAT && r->prompts[i].ids) { /* ids are taken as they are */
            j->prompt_ids[i] = r->prompts[i].ids, j->prompt_lens[i] = r->prompts[i].n;
            r->prompts[i].ids = NULL;
        } else {
            if (!s->tok) {
                snprintf(param, cap, "%s", field);
                return tidal_fail(TIDAL_ERR_INVALID, "%s: text needs the model's tokenizer and %s has no "
                                  "tokenizer.json: send token ids", field, s->model_dir);
            }
            char *rendered = NULL;
            const char *text;
            size_t len;
            if (r->dialect == SERVE_CHAT) {
                chat_message *msgs = calloc((size_t)r->n_messages, sizeof *msgs);
                if (!msgs) return tidal_fail(TIDAL_ERR_NOMEM, "out of memory");
                for (int k = 0; k < r->n_messages; k++) msgs[k] = (chat_message){r->messages[k].role, r->messages[k].content};
                tidal_status st = chat_render(s->fmt, msgs, (size_t)r->n_messages, true, &rendered, &len);
                free(msgs);
                if (st != TIDAL_OK) {
                    snprintf(param, cap, "messages");
                    return st;
                }
                text = rendered;
            } else {
                text = r->prompts[i].text, len = strlen(text);
            }
            tok_ids ids = {0};
            tidal_status st = tokenizer_encode(s->tok, text, len, false, &ids);
            free(rendered);
            if (st != TIDAL_OK) {
                snprintf(param, cap, "%s", field);
                return st;
            }
            j->prompt_ids[i] = ids.ids, j->prompt_lens[i] = (int)ids.n;
        }
        if (j->prompt_lens[i] < 1 || j->prompt_lens[i] >= s->max_len) {
            snprintf(param, cap, "%s", field);
            return tidal_fail(TIDAL_ERR_INVALID, "%s: the prompt has %d tokens; this server takes 1 to %d (--max-len)",
                              field, j->prompt_lens[i], s->max_len - 1);
        }
    }
    /* stop ids: the request's, eos unless ignored, and the chat format's end of turn */
    for (int k = 0; k < r->n_stop_ids && j->n_stop_ids < 64; k++) j->stop_ids[j->n_stop_ids++] = r->stop_ids[k];
    if (!r->ignore_eos && s->eos >= 0) j->stop_ids[j->n_stop_ids++] = s->eos;
    if (r->dialect == SERVE_CHAT && s->end_of_turn >= 0) j->stop_ids[j->n_stop_ids++] = s->end_of_turn;
    if (r->n_stop && !s->tok) {
        snprintf(param, cap, "stop");
        return tidal_fail(TIDAL_ERR_INVALID, "stop: stop strings need the model's tokenizer (%s has none); use "
                          "stop_token_ids", s->model_dir);
    }
    j->n_seqs = n_prompts * r->n;
    j->seqs = calloc((size_t)j->n_seqs, sizeof *j->seqs);
    if (!j->seqs) return tidal_fail(TIDAL_ERR_NOMEM, "out of memory");
    for (int p = 0; p < n_prompts; p++)
        for (int k = 0; k < r->n; k++) {
            seq *q = &j->seqs[p * r->n + k];
            *q = (seq){.j = j, .prompt_index = p, .sample_index = k, .prompt = j->prompt_ids[p],
                       .prompt_len = j->prompt_lens[p], .stop_string = -1};
        }
    return TIDAL_OK;
}

/* Queue every sequence of j (refs: +1 for the engine side). */
static tidal_status job_enqueue(serve_server *s, job *j)
{
    pthread_mutex_lock(&s->mu);
    if (s->quit) {
        pthread_mutex_unlock(&s->mu);
        return tidal_fail(TIDAL_ERR_CANCELLED, "the server is stopping");
    }
    if (s->n_jobs == s->cap_jobs) {
        int cap = s->cap_jobs ? 2 * s->cap_jobs : 64;
        job **a = realloc(s->jobs, (size_t)cap * sizeof *a);
        if (!a) {
            pthread_mutex_unlock(&s->mu);
            return tidal_fail(TIDAL_ERR_NOMEM, "out of memory");
        }
        s->jobs = a, s->cap_jobs = cap;
    }
    s->jobs[s->n_jobs++] = j;
    j->refs++;
    for (int i = 0; i < j->n_seqs; i++) {
        seq *q = &j->seqs[i];
        if (s->pending_tail) s->pending_tail->next_pending = q;
        else s->pending_head = q;
        s->pending_tail = q;
    }
    pthread_cond_signal(&s->work);
    pthread_mutex_unlock(&s->mu);
    return TIDAL_OK;
}

/* The whole response of a finished job. Called with mu held. */
static char *job_body_locked(serve_server *s, job *j)
{
    serve_sample *samples = calloc((size_t)j->n_seqs, sizeof *samples);
    tok_bytes *texts = calloc((size_t)j->n_seqs, sizeof *texts);
    const char ***tt = calloc((size_t)j->n_seqs, sizeof *tt);
    size_t **tl = calloc((size_t)j->n_seqs, sizeof *tl);
    char *body = NULL;
    if (!samples || !texts || !tt || !tl) goto cleanup;
    for (int i = 0; i < j->n_seqs; i++) {
        seq *q = &j->seqs[i];
        tt[i] = calloc((size_t)q->n + 1, sizeof *tt[i]);
        tl[i] = calloc((size_t)q->n + 1, sizeof *tl[i]);
        if (!tt[i] || !tl[i]) goto cleanup;
        seq_text(s, j, q, false, &texts[i]);
        sample_of(s, j, q, &texts[i], &samples[i], tt[i], tl[i]);
    }
    const serve_request *r = &j->req;
    if (r->dialect == SERVE_COMPLETIONS) body = serve_completions_body(r, samples, j->n_seqs, j->id, j->created, s->name);
    else if (r->dialect == SERVE_CHAT) body = serve_chat_body(r, samples, j->n_seqs, j->id, j->created, s->name);
    else body = serve_generate_body(r, samples, j->n_seqs, j->id);
cleanup:
    for (int i = 0; i < j->n_seqs; i++) {
        if (texts) tok_bytes_free(&texts[i]);
        if (tt) free(tt[i]);
        if (tl) free(tl[i]);
    }
    free(samples), free(texts), free(tt), free(tl);
    return body;
}

/* Append "data: TEXT\n\n" to the job's stream output. */
static void stream_put(job *j, const char *text)
{
    size_t n = strlen(text) + 8;
    char *o = realloc(j->out, j->out_len + n + 1);
    if (!o) return;
    j->out = o;
    j->out_len += (size_t)snprintf(o + j->out_len, n + 1, "data: %s\n\n", text);
}

/* New chunks for every sequence that moved. Called with mu held. */
static void stream_collect_locked(serve_server *s, job *j)
{
    tok_bytes text = {0};
    for (int i = 0; i < j->n_seqs; i++) {
        seq *q = &j->seqs[i];
        if (q->sent_last) continue;
        seq_text(s, j, q, !q->done, &text);
        const bool moved = q->n > q->sent_tok || text.len > q->sent_text || q->done;
        if (!moved) continue;
        const char **tt = calloc((size_t)q->n + 1, sizeof *tt);
        size_t *tl = calloc((size_t)q->n + 1, sizeof *tl);
        if (!tt || !tl) {
            free(tt), free(tl);
            break;
        }
        serve_sample smp;
        sample_of(s, j, q, &text, &smp, tt, tl);
        char *chunk = serve_chunk(&j->req, &smp, q->sent_text, q->sent_tok, !q->sent_first, q->done, j->id, j->created,
                                  s->name);
        free(tt), free(tl);
        if (!chunk) break;
        stream_put(j, chunk);
        free(chunk);
        q->sent_first = true;
        q->sent_text = text.len > q->sent_text ? text.len : q->sent_text;
        q->sent_tok = q->n;
        q->sent_last = q->done;
    }
    tok_bytes_free(&text);
    if (j->n_done == j->n_seqs && !j->done_sent) {
        bool all = true;
        for (int i = 0; i < j->n_seqs; i++) all = all && j->seqs[i].sent_last;
        if (all) {
            size_t n = j->out_len + 16;
            char *o = realloc(j->out, n + 1);
            if (o) {
                j->out = o;
                j->out_len += (size_t)snprintf(o + j->out_len, 17, "data: [DONE]\n\n");
                j->done_sent = true;
            }
        }
    }
}

static ssize_t stream_read(void *cls, uint64_t pos, char *buf, size_t max)
{
    (void)pos;
    job *j = cls;
    serve_server *s = j->srv;
    pthread_mutex_lock(&s->mu);
    for (;;) {
        if (j->out_sent < j->out_len) {
            size_t n = j->out_len - j->out_sent;
            if (n > max) n = max;
            memcpy(buf, j->out + j->out_sent, n);
            j->out_sent += n;
            if (j->out_sent == j->out_len) j->out_sent = j->out_len = 0;
            pthread_mutex_unlock(&s->mu);
            return (ssize_t)n;
        }
        if (j->done_sent) {
            pthread_mutex_unlock(&s->mu);
            return MHD_CONTENT_READER_END_OF_STREAM;
        }
        stream_collect_locked(s, j);
        if (j->out_len > 0 || j->done_sent) continue;
        if (s->quit && j->n_done < j->n_seqs) {
            pthread_mutex_unlock(&s->mu);
            return MHD_CONTENT_READER_END_WITH_ERROR;
        }
        pthread_cond_wait(&j->cv, &s->mu);
    }
}

static void stream_free(void *cls)
{
    job *j = cls;
    serve_server *s = j->srv;
    pthread_mutex_lock(&s->mu);
    if (j->n_done < j->n_seqs) { /* the client went away: abort its sequences */
        j->cancelled = true;
        pthread_cond_signal(&s->work);
    }
    job_release_locked(j);
    pthread_mutex_unlock(&s->mu);
}

static enum MHD_Result handle_generation(serve_server *s, struct MHD_Connection *c, serve_dialect dialect,
                                         const conn *cn)
{
    job *j = calloc(1, sizeof *j);
    if (!j) return reply_error(c, 500, "out of memory", NULL);
    j->srv = s;
    j->refs = 1; /* the handler's */
    pthread_cond_init(&j->cv, NULL);
    char param[96] = "";
    serve_limits lim = {.vocab = s->vocab, .max_n = 256, .max_sequences = 4096, .max_tokens = s->max_len};
    tidal_status st = serve_parse(dialect, cn->body ? cn->body : "", cn->len, &lim, &j->req, param, sizeof param);
    if (st == TIDAL_OK) st = job_prompts(s, j, param, sizeof param);
    if (st != TIDAL_OK) {
        job_free(j);
        return reply_error(c, st == TIDAL_ERR_NOMEM ? 500 : 400, tidal_errmsg(), param);
    }
    pthread_mutex_lock(&s->mu);
    const uint64_t n = ++s->requests;
    pthread_mutex_unlock(&s->mu);
    snprintf(j->id, sizeof j->id, "%s-%" PRIu64, dialect == SERVE_CHAT ? "chatcmpl" : "cmpl", n);
    if (dialect == SERVE_GENERATE && j->req.rid[0]) snprintf(j->id, sizeof j->id, "%.63s", j->req.rid);
    j->created = (long long)time(NULL);
    if (job_enqueue(s, j) != TIDAL_OK) {
        job_free(j);
        return reply_error(c, 503, tidal_errmsg(), NULL);
    }
    if (j->req.stream) {
        struct MHD_Response *resp = MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, 16 * 1024, stream_read, j,
                                                                      stream_free);
        if (!resp) {
            stream_free(j);
            return MHD_NO;
        }
        MHD_add_response_header(resp, "Content-Type", "text/event-stream");
        MHD_add_response_header(resp, "Cache-Control", "no-cache");
        enum MHD_Result ret = MHD_queue_response(c, 200, resp);
        MHD_destroy_response(resp);
        return ret;
    }
    pthread_mutex_lock(&s->mu);
    while (j->n_done < j->n_seqs) pthread_cond_wait(&j->cv, &s->mu);
    char *body = job_body_locked(s, j);
    job_release_locked(j);
    pthread_mutex_unlock(&s->mu);
    return reply(c, 200, body);
}

/* ---------------------------------------------------------------- control */

/* Load dir and swap it in (serve.h: once nothing runs, or at once while
 * paused). version NULL keeps the current name. 400 on a bad directory. */
static enum MHD_Result handle_reload(serve_server *s, struct MHD_Connection *c, const char *dir, const char *version,
                                     bool abort_all, bool vllm)
{
    model *m = NULL;
    tidal_status st = model_load(dir, &m);
    if (st == TIDAL_OK && (model_cfg(m)->vocab_size != model_cfg(s->m)->vocab_size ||
                           model_cfg(m)->hidden_size != model_cfg(s->m)->hidden_size ||
                           model_cfg(m)->num_layers != model_cfg(s->m)->num_layers))
        st = tidal_fail(TIDAL_ERR_INVALID, "%s: another model's shape than the one served (%s)", dir, s->model_dir);
    if (st != TIDAL_OK) {
        model_free(m);
        char msg[2048];
        snprintf(msg, sizeof msg, "failed to load weights from %s: %s", dir, tidal_errmsg());
        if (vllm) return reply_error(c, 400, msg, "weights_path");
        return reply_json(c, 400, json_pack("{sbsssi}", "success", 0, "message", msg, "num_paused_requests", 0));
    }
    pthread_mutex_lock(&s->mu);
    while (s->swap_pending && !s->quit) pthread_cond_wait(&s->changed, &s->mu); /* one swap at a time */
    if (s->quit) {
        pthread_mutex_unlock(&s->mu);
        model_free(m);
        return reply_error(c, 503, "the server is stopping", NULL);
    }
    if (abort_all)
        for (int i = 0; i < s->n_jobs; i++) s->jobs[i]->cancelled = true;
    s->next_model = m;
    snprintf(s->next_version, sizeof s->next_version, "%s", version ? version : s->version);
    s->swap_pending = true, s->swap_done = false;
    pthread_cond_signal(&s->work);
    while (!s->swap_done && !s->quit) pthread_cond_wait(&s->changed, &s->mu);
    char held[VERSION_CAP];
    snprintf(held, sizeof held, "%s", s->version);
    pthread_mutex_unlock(&s->mu);
    fprintf(stderr, "tidal serve: weights from %s, version %s\n", dir, held);
    if (vllm) return reply_json(c, 200, json_pack("{s[n]}", "results"));
    return reply_json(c, 200, json_pack("{sbsssi}", "success", 1, "message", "Succeeded to update model weights.",
                                        "num_paused_requests", 0));
}

/* mode: abort (end what runs), wait (let it finish first), anything else: in place. */
static enum MHD_Result handle_pause(serve_server *s, struct MHD_Connection *c, const char *mode)
{
    pthread_mutex_lock(&s->mu);
    if (mode && !strcmp(mode, "abort")) {
        for (int i = 0; i < s->n_jobs; i++) s->jobs[i]->cancelled = true;
        pthread_cond_signal(&s->work);
        while ((s->running > 0 || s->pending_head) && !s->quit) pthread_cond_wait(&s->changed, &s->mu);
    } else if (mode && !strcmp(mode, "wait")) { /* paused already: nothing would finish */
        while ((s->running > 0 || s->pending_head) && !s->paused && !s->quit) pthread_cond_wait(&s->changed, &s->mu);
    }
    s->paused = true;
    pthread_mutex_unlock(&s->mu);
    return reply_json(c, 200, json_pack("{sbss}", "success", 1, "message", "paused"));
}

static enum MHD_Result handle_resume(serve_server *s, struct MHD_Connection *c)
{
    pthread_mutex_lock(&s->mu);
    s->paused = false;
    pthread_cond_signal(&s->work);
    pthread_mutex_unlock(&s->mu);
    return reply_json(c, 200, json_pack("{sbss}", "success", 1, "message", "resumed"));
}

static json_t *body_json(const conn *cn)
{
    json_t *v = cn->len ? json_loadb(cn->body, cn->len, 0, NULL) : json_object();
    if (v && !json_is_object(v)) {
        json_decref(v);
        v = NULL;
    }
    return v;
}

static enum MHD_Result handle_control(serve_server *s, struct MHD_Connection *c, const char *url, const conn *cn)
{
    json_t *b = body_json(cn);
    if (!b) return reply_error(c, 400, "the body must be a JSON object", NULL);
    enum MHD_Result ret;
    char version[VERSION_CAP];
    if (!strcmp(url, "/update_weights_from_disk")) {
        json_t *path = jv_get(b, "model_path"), *v = jv_get(b, "weight_version"), *ab = jv_get(b, "abort_all_requests");
        if (!json_is_string(path) || !json_string_length(path))
            ret = reply_error(c, 400, "model_path: must be the path of a model directory", "model_path");
        else if (v && !json_is_string(v) && !json_is_integer(v))
            ret = reply_error(c, 400, "weight_version: must be a string", "weight_version");
        else {
            if (json_is_integer(v)) snprintf(version, sizeof version, "%" JSON_INTEGER_FORMAT, json_integer_value(v));
            else if (v) snprintf(version, sizeof version, "%s", json_string_value(v));
            ret = handle_reload(s, c, json_string_value(path), v ? version : NULL, json_is_true(ab), false);
        }
    } else if (!strcmp(url, "/collective_rpc")) {
        json_t *method = jv_get(b, "method"), *kw = jv_get(b, "kwargs");
        json_t *path = jv_get(kw, "weights_path");
        if (!json_is_string(method) || strcmp(json_string_value(method), "reload_weights") != 0)
            ret = reply_error(c, 400, "method: only reload_weights is served", "method");
        else if (!json_is_string(path) || !json_string_length(path))
            ret = reply_error(c, 400, "kwargs.weights_path: must be the path of a model directory", "kwargs");
        else
            ret = handle_reload(s, c, json_string_value(path), NULL, false, true);
    } else if (!strcmp(url, "/update_weight_version")) {
        json_t *v = jv_get(b, "version");
        if (!v) v = jv_get(b, "weight_version");
        if (!json_is_string(v) && !json_is_integer(v))
            ret = reply_error(c, 400, "version: must be a string", "version");
        else {
            pthread_mutex_lock(&s->mu);
            if (json_is_integer(v)) snprintf(s->version, sizeof s->version, "%" JSON_INTEGER_FORMAT, json_integer_value(v));
            else snprintf(s->version, sizeof s->version, "%s", json_string_value(v));
            pthread_mutex_unlock(&s->mu);
            ret = reply_json(c, 200, json_pack("{sb}", "success", 1));
        }
    } else if (!strcmp(url, "/pause_generation")) {
        json_t *mode = jv_get(b, "mode");
        ret = handle_pause(s, c, json_is_string(mode) ? json_string_value(mode) : "abort");
    } else if (!strcmp(url, "/pause")) {
        const char *mode = MHD_lookup_connection_value(c, MHD_GET_ARGUMENT_KIND, "mode");
        ret = handle_pause(s, c, mode ? mode : "abort");
    } else if (!strcmp(url, "/continue_generation") || !strcmp(url, "/resume")) {
        ret = handle_resume(s, c);
    } else { /* /reset_prefix_cache, /flush_cache: there is no prefix cache to drop */
        ret = reply_json(c, 200, json_pack("{sb}", "success", 1));
    }
    json_decref(b);
    return ret;
}

static enum MHD_Result handle_get(serve_server *s, struct MHD_Connection *c, const char *url)
{
    pthread_mutex_lock(&s->mu);
    char version[VERSION_CAP];
    snprintf(version, sizeof version, "%s", s->version);
    const bool paused = s->paused;
    pthread_mutex_unlock(&s->mu);
    if (!strcmp(url, "/health") || !strcmp(url, "/health_generate")) return reply_json(c, 200, json_object());
    if (!strcmp(url, "/v1/models"))
        return reply_json(c, 200, json_pack("{sss[{sssssssi}]}", "object", "list", "data", "id", s->name, "object",
                                            "model", "owned_by", "tidal", "max_model_len", s->max_len));
    if (!strcmp(url, "/get_model_info"))
        return reply_json(c, 200, json_pack("{sssssbss}", "model_path", s->model_dir, "tokenizer_path",
                                            s->tok ? s->model_dir : "", "is_generation", 1, "weight_version", version));
    if (!strcmp(url, "/get_weight_version") || !strcmp(url, "/weight_info"))
        return reply_json(c, 200, json_pack("{ss}", "weight_version", version));
    if (!strcmp(url, "/is_paused")) return reply_json(c, 200, json_pack("{sb}", "is_paused", paused));
    return reply_error(c, 404, "no such route", NULL);
}

static bool authorized(const serve_server *s, struct MHD_Connection *c)
{
    if (!s->o.token || !*s->o.token) return true;
    const char *h = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Authorization");
    if (!h || strncmp(h, "Bearer ", 7) != 0) return false;
    const char *given = h + 7, *want = s->o.token;
    size_t gl = strlen(given), wl = strlen(want);
    unsigned diff = (unsigned)(gl ^ wl);
    for (size_t i = 0; i < wl; i++) diff |= (unsigned char)want[i] ^ (unsigned char)(i < gl ? given[i] : 0);
    return diff == 0;
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *c, const char *url, const char *method,
                                  const char *version, const char *upload, size_t *upload_size, void **con_cls)
{
    (void)version;
    serve_server *s = cls;
    conn *cn = *con_cls;
    if (!cn) { /* the headers: make room for the body */
        if (!(cn = calloc(1, sizeof *cn))) return MHD_NO;
        *con_cls = cn;
        return MHD_YES;
    }
    if (*upload_size) {
        if (cn->len + *upload_size > BODY_CAP) cn->too_big = true;
        if (!cn->too_big) {
            if (cn->len + *upload_size + 1 > cn->cap) {
                size_t cap = 2 * (cn->len + *upload_size) + 1;
                char *b = realloc(cn->body, cap);
                if (!b) return MHD_NO;
                cn->body = b, cn->cap = cap;
            }
            memcpy(cn->body + cn->len, upload, *upload_size);
            cn->len += *upload_size;
            cn->body[cn->len] = '\0';
        }
        *upload_size = 0;
        return MHD_YES;
    }
    if (!authorized(s, c)) return reply_error(c, 401, "a valid bearer token is required (Authorization: Bearer ...)", NULL);
    if (cn->too_big) return reply_error(c, 413, "the request body is larger than 64 MiB", NULL);
    if (!strcmp(method, "GET")) return handle_get(s, c, url);
    if (strcmp(method, "POST") != 0) return reply_error(c, 405, "use GET or POST", NULL);
    if (!strcmp(url, "/v1/completions")) return handle_generation(s, c, SERVE_COMPLETIONS, cn);
    if (!strcmp(url, "/v1/chat/completions")) return handle_generation(s, c, SERVE_CHAT, cn);
    if (!strcmp(url, "/generate")) return handle_generation(s, c, SERVE_GENERATE, cn);
    static const char *const control[] = {"/update_weights_from_disk", "/collective_rpc", "/update_weight_version",
                                          "/pause_generation", "/continue_generation", "/pause", "/resume",
                                          "/reset_prefix_cache", "/flush_cache"};
    for (size_t i = 0; i < sizeof control / sizeof control[0]; i++)
        if (!strcmp(url, control[i])) return handle_control(s, c, url, cn);
    return reply_error(c, 404, "no such route", NULL);
}

static void on_completed(void *cls, struct MHD_Connection *c, void **con_cls, enum MHD_RequestTerminationCode toe)
{
    (void)cls, (void)c, (void)toe;
    conn *cn = *con_cls;
    if (cn) {
        free(cn->body);
        free(cn);
    }
    *con_cls = NULL;
}

/* ---------------------------------------------------------------- start, stop */

tidal_status serve_start(const serve_opts *o, serve_server **out)
{
    *out = NULL;
    serve_server *s = calloc(1, sizeof *s);
    if (!s) return tidal_fail(TIDAL_ERR_NOMEM, "serve: out of memory");
    s->o = *o;
    tidal_status st = TIDAL_OK;
    pthread_mutex_init(&s->mu, NULL);
    pthread_cond_init(&s->work, NULL);
    pthread_cond_init(&s->changed, NULL);
    snprintf(s->model_dir, sizeof s->model_dir, "%s", o->model_dir);
    if (o->served_name && *o->served_name) {
        snprintf(s->name, sizeof s->name, "%s", o->served_name);
    } else { /* the directory's last component: "runs/q/checkpoints/step-300/" -> "step-300" */
        char dir[4096];
        snprintf(dir, sizeof dir, "%s", o->model_dir);
        size_t n = strlen(dir);
        while (n > 1 && dir[n - 1] == '/') dir[--n] = '\0';
        const char *base = strrchr(dir, '/');
        snprintf(s->name, sizeof s->name, "%s", base && base[1] ? base + 1 : dir);
    }
    snprintf(s->version, sizeof s->version, "%s", o->weight_version && *o->weight_version ? o->weight_version : "0");
    TRY_GOTO(model_load(o->model_dir, &s->m));
    const model_config *cfg = model_cfg(s->m);
    s->vocab = cfg->vocab_size;
    s->eos = cfg->eos_token_id;
    s->end_of_turn = -1;
    s->fmt = CHAT_PLAIN;
    char tpath[4200];
    snprintf(tpath, sizeof tpath, "%s/tokenizer.json", o->model_dir);
    FILE *tf = fopen(tpath, "rb");
    if (tf) {
        fclose(tf);
        TRY_GOTO(tokenizer_load(o->model_dir, &s->tok));
        const char *tmpl = tokenizer_chat_template(s->tok);
        if (!tmpl || chat_format_detect(tmpl, &s->fmt) != TIDAL_OK) s->fmt = CHAT_PLAIN;
        const char *eot = chat_end_of_turn(s->fmt);
        s->end_of_turn = eot && *eot ? tokenizer_token_id(s->tok, eot) : -1;
        if (s->eos < 0) s->eos = tokenizer_eos_id(s->tok);
    }
    s->max_len = o->max_len > 0 ? o->max_len : 2048;
    if (s->max_len > cfg->max_position_embeddings) s->max_len = cfg->max_position_embeddings;
    if (s->max_len < 2) {
        st = tidal_fail(TIDAL_ERR_INVALID, "serve: --max-len: %d leaves no room to generate", s->max_len);
        goto cleanup;
    }
    engine_options eo = {.slots = o->slots > 0 ? o->slots : 16, .max_len = s->max_len, .on_token = on_token,
                         .on_token_ctx = s, .token_bytes = s->tok ? token_bytes : NULL, .token_bytes_ctx = s};
    TRY_GOTO(engine_create(s->m, 0, &eo, &s->e));
    if (pthread_create(&s->thread, NULL, engine_thread, s) != 0) {
        st = tidal_fail(TIDAL_ERR_IO, "serve: cannot start the engine thread");
        goto cleanup;
    }
    s->thread_started = true;
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons((uint16_t)o->port)};
    const char *host = o->host && *o->host ? o->host : "127.0.0.1";
    if (inet_pton(AF_INET, host, &addr.sin_addr) != 1) {
        st = tidal_fail(TIDAL_ERR_INVALID, "serve: --host %s is not an IPv4 address", host);
        goto cleanup;
    }
    s->d = MHD_start_daemon(MHD_USE_THREAD_PER_CONNECTION | MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_POLL, 0, NULL,
                            NULL, on_request, s, MHD_OPTION_SOCK_ADDR, (struct sockaddr *)&addr,
                            MHD_OPTION_NOTIFY_COMPLETED, on_completed, s, MHD_OPTION_CONNECTION_TIMEOUT,
                            (unsigned)600, MHD_OPTION_END);
    if (!s->d) {
        st = tidal_fail(TIDAL_ERR_IO, "serve: cannot listen on %s:%d: %s", host, o->port, strerror(errno));
        goto cleanup;
    }
    *out = s;
    return TIDAL_OK;
cleanup:
    serve_stop(s);
    return st;
}

int serve_port(const serve_server *s)
{
    const union MHD_DaemonInfo *i = MHD_get_daemon_info(s->d, MHD_DAEMON_INFO_BIND_PORT);
    return i ? (int)i->port : -1;
}

void serve_stop(serve_server *s)
{
    if (!s) return;
    if (s->thread_started) {
        pthread_mutex_lock(&s->mu);
        s->quit = true;
        pthread_cond_broadcast(&s->work);
        pthread_cond_broadcast(&s->changed);
        pthread_mutex_unlock(&s->mu);
        pthread_join(s->thread, NULL); /* every job's sequences end (aborted); waiting handlers wake */
    }
    if (s->d) MHD_stop_daemon(s->d); /* joins the connection threads */
    engine_free(s->e);
    model_free(s->m);
    model_free(s->next_model);
    tokenizer_free(s->tok);
    free(s->jobs);
    pthread_cond_destroy(&s->changed);
    pthread_cond_destroy(&s->work);
    pthread_mutex_destroy(&s->mu);
    free(s);
}
