/* Weight publication, trainer -> bus -> rollout worker (trainer/publish.h,
 * rollout/weights.h) on a real nats-server: bit-identical fp32 parameters,
 * the newest of versions published in quick succession, take/wait semantics,
 * a manifest whose digest lies (and one that does not decode) skipped and
 * counted while the client goes on, bf16 on the wire, a background failure
 * reported by flush, the KV keys a worker reads, and manifests a rogue
 * writes (unsigned, another key, altered) refused while the worker goes on.
 * Faults, against the same real server: a trainer process SIGKILLed in the
 * middle of a publish (the workers keep their version and take the next
 * complete one), a worker process SIGKILLed in the middle of a fetch (others,
 * and a restarted worker, fetch that version whole), and a chunk corrupted
 * after it arrived (a test hook flips a bit) caught by its hash and fetched
 * again. The killed processes are this binary re-executed (--child), so
 * nothing of the parent's NATS client state is forked. */
#include <inttypes.h>
#include <pthread.h>
#include <stdatomic.h>
#include <math.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "base/digest.h"
#include "check.h"
#include "harness/fixture.h"
#include "model/model.h"
#include "base/sign.h"
#include "proto/codec.h"
#include "proto/manifest_sign.h"
#include "job/names.h"
#include "rollout/weights.h"
#include "trainer/publish.h"

static fixture F;

static const model_config TINY = {.type = MODEL_QWEN2, .vocab_size = 32, .hidden_size = 32, .num_layers = 2,
                                  .num_heads = 4, .num_kv_heads = 2, .head_dim = 8, .intermediate_size = 64,
                                  .max_position_embeddings = 64, .rope_theta = 10000.0, .rms_norm_eps = 1e-6,
                                  .tie_word_embeddings = true, .qkv_bias = true, .bos_token_id = -1,
                                  .eos_token_id = -1};

/* ~5 M parameters (20 MB): large enough that a publish is real work. */
static const model_config LARGER = {.type = MODEL_LLAMA, .vocab_size = 4096, .hidden_size = 256, .num_layers = 4,
                                    .num_heads = 4, .num_kv_heads = 2, .head_dim = 64, .intermediate_size = 1024,
                                    .max_position_embeddings = 256, .rope_theta = 500000.0, .rms_norm_eps = 1e-5,
                                    .tie_word_embeddings = false, .bos_token_id = 1, .eos_token_id = 2};

static model *make_model(const model_config *c, uint64_t seed)
{
    model *m = NULL;
    if (model_create(c, &m) != TIDAL_OK) {
        fprintf(stderr, "model_create: %s\n", tidal_errmsg());
        exit(1);
    }
    model_init_random(m, seed, 0.5f, true);
    return m;
}

/* A second connection: a worker has its own. */
static tidal_bus *connect_worker(void)
{
    tidal_bus *b = NULL;
    bus_opts bo = {.urls = tidal_server_url(F.srv), .name = "test-worker", .js_timeout_ms = 5000};
    if (bus_connect(&b, &bo) != TIDAL_OK) {
        fprintf(stderr, "connect: %s\n", tidal_errmsg());
        exit(1);
    }
    return b;
}

static bool same_params(model *a, model *b)
{
    size_t na = 0, nb = 0;
    const float *pa = model_params(a, &na), *pb = model_params(b, &nb);
    return na == nb && memcmp(pa, pb, na * sizeof *pa) == 0;
}

static bool same_config(const model_config *a, const model_config *b)
{
    return a->type == b->type && a->vocab_size == b->vocab_size && a->hidden_size == b->hidden_size &&
           a->num_layers == b->num_layers && a->num_heads == b->num_heads && a->num_kv_heads == b->num_kv_heads &&
           a->head_dim == b->head_dim && a->intermediate_size == b->intermediate_size &&
           a->max_position_embeddings == b->max_position_embeddings && a->rope_theta == b->rope_theta &&
           a->rms_norm_eps == b->rms_norm_eps && a->tie_word_embeddings == b->tie_word_embeddings &&
           a->qkv_bias == b->qkv_bias && a->o_bias == b->o_bias && a->bos_token_id == b->bos_token_id &&
           a->eos_token_id == b->eos_token_id;
}

/* Poll the client's counters until pred holds or ~10 s pass. */
static bool wait_stats(weights_client *c, bool (*pred)(const weights_stats *, uint64_t), uint64_t arg,
                       weights_stats *out)
{
    for (int i = 0; i < 1000; i++) {
        weights_client_stats(c, out);
        if (pred(out, arg)) return true;
        sleep_ms(10);
    }
    return false;
}

static bool failed_at_least(const weights_stats *s, uint64_t n) { return s->failed >= n; }

/* v0, v1, v2 handed over back to back: the client (created before any
 * weights exist) ends at v2 with exactly its parameters, and the KV keys say
 * what a worker needs. */
static void test_versions_in_quick_succession(void)
{
    job_names n;
    CHECK_OK(job_names_init(&n, "quick"));
    tidal_bus *wb = connect_worker();
    weights_client *c = NULL;
    CHECK_OK(weights_client_create(wb, &n, NULL, NULL, &c));
    CHECK(weights_client_take(c, UINT64_MAX, NULL) == NULL); /* nothing published yet */

    weights_publisher *p = NULL;
    weights_publisher_opts o = {.bus = F.bus, .names = &n};
    CHECK_OK(weights_publisher_create(&o, &p));
    CHECK(weights_published_version(p) == UINT64_MAX);
    model *m[3];
    for (int v = 0; v < 3; v++) {
        m[v] = make_model(&TINY, 100 + (uint64_t)v);
        CHECK_OK(weights_publish(p, m[v], (uint64_t)v));
    }
    CHECK_OK(weights_publisher_flush(p, 10000));
    CHECK(weights_published_version(p) == 2);
    CHECK_STATUS(weights_publish(p, m[0], 2), TIDAL_ERR_INVALID); /* versions increase */
    CHECK_MSG(strstr(tidal_errmsg(), "v2"), "%s", tidal_errmsg());

    model *got = NULL;
    uint64_t ver = 0;
    CHECK_OK(weights_client_wait(c, 2, 10000, &got, &ver));
    CHECK(ver == 2);
    CHECK(same_params(got, m[2]));
    CHECK(same_config(model_cfg(got), &TINY)); /* from the manifest's config.json */
    model_free(got);
    CHECK(weights_client_take(c, 2, &ver) == NULL);    /* nothing newer */
    CHECK(weights_client_take(c, UINT64_MAX, NULL) == NULL); /* and v2 was handed out once */
    CHECK_STATUS(weights_client_wait(c, 3, 200, &got, &ver), TIDAL_ERR_TIMEOUT);
    CHECK(got == NULL);
    CHECK_MSG(strstr(tidal_errmsg(), ">= 3") && strstr(tidal_errmsg(), "v2"), "%s", tidal_errmsg());
    weights_stats s;
    weights_client_stats(c, &s);
    CHECK(s.failed == 0 && s.latest_seen == 2 && s.fetched >= 1 && s.fetched <= 3 && s.bytes > 0);
    CHECK(s.fetch_ms_last > 0);

    /* the job's KV: trainer.version and the manifest itself */
    bus_kv *kv = NULL;
    CHECK_OK(bus_kv_open(F.bus, n.kv_bucket, &kv));
    void *val = NULL;
    size_t len = 0;
    tidal_status st = bus_kv_get(kv, JOB_KEY_VERSION, &val, &len, NULL);
    bool version_ok = st == TIDAL_OK && len == 1 && !memcmp(val, "2", 1);
    free(val);
    st = bus_kv_get(kv, JOB_KEY_WEIGHTS, &val, &len, NULL);
    bus_kv_close(kv);
    CHECK(version_ok);
    CHECK_OK(st);
    Tidal__V1__WeightsManifest *w = NULL;
    st = codec_decode_weights_manifest(val, len, &w);
    free(val);
    CHECK_OK(st);
    model_config back;
    bool manifest_ok = w->version == 2 && !strcmp(w->dtype, "fp32") && !strcmp(w->transport, "bus") &&
                       w->blob && !strcmp(w->blob->name, "2") && w->chunk_count == 1 && w->created_unix_ms > 0 &&
                       model_config_parse(w->model_config_json, strlen(w->model_config_json), "manifest", &back) == TIDAL_OK &&
                       same_config(&back, &TINY) && w->bytes > model_config_num_params(&TINY) * 4;
    tidal__v1__weights_manifest__free_unpacked(w, NULL);
    CHECK(manifest_ok);

    /* a worker that starts late gets the current weights from the watch's initial value */
    tidal_bus *wb2 = connect_worker();
    weights_client *late = NULL;
    CHECK_OK(weights_client_create(wb2, &n, &TINY, NULL, &late));
    st = weights_client_wait(late, 0, 10000, &got, &ver);
    bool late_ok = st == TIDAL_OK && ver == 2 && same_params(got, m[2]);
    model_free(got);
    weights_client_free(late);
    bus_close(wb2);
    CHECK_OK(st);
    CHECK(late_ok);

    weights_publisher_free(p);
    weights_client_free(c);
    bus_close(wb);
    for (int v = 0; v < 3; v++) model_free(m[v]);
}

/* Put a WeightsManifest for blob "<version>" (stored by the test itself,
 * the bytes of blob `from`): with `lie`, a digest that does not match those
 * bytes; with config_json, that config.json; signed with `key` (NULL:
 * unsigned). */
static tidal_status put_doctored(const job_names *n, const char *from, uint64_t version, bool lie,
                                 const char *config_json, const tidal_sign_key *key)
{
    bus_blob_store *bs = NULL;
    bus_kv *kv = NULL;
    void *img = NULL, *buf = NULL;
    uint64_t len = 0;
    size_t blen = 0;
    bus_msg *msg = NULL;
    Tidal__V1__BlobManifest *bm = NULL;
    char name[24], subj[200];
    snprintf(name, sizeof name, "%" PRIu64, version);
    snprintf(subj, sizeof subj, "%s.%s.m", n->weights_prefix, name);
    bus_blob_info info;
    tidal_status st = bus_blob_store_open(F.bus, n->weights_stream, n->weights_prefix, 0, &bs);
    if (st == TIDAL_OK) st = bus_blob_get(bs, from, &img, &len, NULL);
    if (st == TIDAL_OK) st = bus_blob_put(bs, name, img, len, &info);
    if (st == TIDAL_OK) st = bus_stream_get_last(F.bus, n->weights_stream, subj, &msg);
    if (st == TIDAL_OK) st = codec_decode_blob_manifest(bus_msg_data(msg), (size_t)bus_msg_len(msg), &bm);
    if (st == TIDAL_OK) {
        if (lie) { /* the same lie in both places, so the manifest itself is valid */
            info.digest[7] ^= 0x20;
            bm->digest.data[7] ^= 0x20;
        }
        Tidal__V1__WeightsManifest w = TIDAL__V1__WEIGHTS_MANIFEST__INIT;
        w.schema_version = CODEC_SCHEMA_VERSION;
        w.digest_algorithm = DIGEST_ALGORITHM;
        w.version = version;
        w.dtype = "fp32";
        w.bytes = len;
        w.chunk_count = info.chunk_count;
        w.digest.data = info.digest;
        w.digest.len = 32;
        w.transport = "bus";
        w.blob = bm;
        w.model_config_json = (char *)config_json;
        uint8_t sig[TIDAL_SIGN_SIG_BYTES];
        if (key) st = codec_manifest_sign(&w, n->job, key, sig);
        if (st == TIDAL_OK) st = codec_validate(&w.base);
        if (st == TIDAL_OK) st = codec_encode(&w.base, &buf, &blen);
    }
    if (st == TIDAL_OK) {
        bus_kv_cfg kc = {.bucket = n->kv_bucket};
        st = bus_kv_ensure(F.bus, &kc, &kv);
    }
    if (st == TIDAL_OK) st = bus_kv_put(kv, JOB_KEY_WEIGHTS, buf, blen, NULL);
    if (bm) tidal__v1__blob_manifest__free_unpacked(bm, NULL);
    bus_msg_destroy(msg);
    bus_kv_close(kv);
    bus_blob_store_close(bs);
    free(img);
    free(buf);
    return st;
}

/* A manifest that lies about the image's digest, a value that is no
 * manifest at all, and a config.json the image's shapes do not fit: each
 * skipped and counted; the next good version arrives. */
static void test_bad_manifest_skipped(void)
{
    job_names n;
    CHECK_OK(job_names_init(&n, "doctored"));
    tidal_sign_key *key = NULL; /* the doctored manifests are signed: what fails is what they say */
    CHECK_OK(tidal_sign_keygen(&key));
    weights_publisher *p = NULL;
    weights_publisher_opts o = {.bus = F.bus, .names = &n, .keep = 4, .signing_key = key};
    CHECK_OK(weights_publisher_create(&o, &p));
    tidal_bus *wb = connect_worker();
    weights_client *c = NULL;
    CHECK_OK(weights_client_create(wb, &n, &TINY, NULL, &c));
    model *m0 = make_model(&TINY, 7), *m2 = make_model(&TINY, 9);
    CHECK_OK(weights_publish(p, m0, 0));
    CHECK_OK(weights_publisher_flush(p, 10000));
    model *got = NULL;
    uint64_t ver = 0;
    CHECK_OK(weights_client_wait(c, 0, 10000, &got, &ver));
    CHECK(ver == 0 && same_params(got, m0));
    model_free(got);

    CHECK_OK(put_doctored(&n, "0", 1, true, NULL, key));
    weights_stats s;
    CHECK_MSG(wait_stats(c, failed_at_least, 1, &s), "failed = %" PRIu64, s.failed);
    CHECK(s.latest_seen == 1 && s.fetched == 1);
    CHECK(weights_client_take(c, 0, &ver) == NULL); /* v1 was not built */

    bus_kv *kv = NULL;
    CHECK_OK(bus_kv_open(F.bus, n.kv_bucket, &kv));
    tidal_status st = bus_kv_put(kv, JOB_KEY_WEIGHTS, "not a manifest", 14, NULL);
    bus_kv_close(kv);
    CHECK_OK(st);
    CHECK_MSG(wait_stats(c, failed_at_least, 2, &s), "failed = %" PRIu64, s.failed);

    model_config wide = TINY;
    wide.intermediate_size = 96; /* the image's MLP tensors are 64 wide */
    char *json = NULL;
    CHECK_OK(model_config_to_json(&wide, "float32", NULL, &json));
    st = put_doctored(&n, "0", 2, false, json, key);
    free(json);
    CHECK_OK(st);
    CHECK_MSG(wait_stats(c, failed_at_least, 3, &s), "failed = %" PRIu64, s.failed);
    CHECK(weights_client_take(c, 0, &ver) == NULL);

    CHECK_OK(weights_publish(p, m2, 3));
    CHECK_OK(weights_publisher_flush(p, 10000));
    CHECK_OK(weights_client_wait(c, 1, 10000, &got, &ver));
    CHECK(ver == 3 && same_params(got, m2));
    model_free(got);
    weights_client_stats(c, &s);
    CHECK(s.failed == 3 && s.fetched == 2 && s.latest_seen == 3 && s.refused == 0);

    weights_client_free(c);
    bus_close(wb);
    weights_publisher_free(p);
    tidal_sign_key_free(key);
    model_free(m0);
    model_free(m2);
}

/* The trainer's key: made once in the run directory (0600) and found there
 * again (a resumed trainer), or loaded from weights.signing_key; a
 * weights.public_key that is not its public half, a missing key file and a
 * malformed pin are refused by name. */
static void test_signing_key_open(void)
{
    char dir[64], file[128], text[TIDAL_SIGN_PUB_TEXT], other[TIDAL_SIGN_PUB_TEXT];
    snprintf(dir, sizeof dir, "/tmp/tidal-test-key-XXXXXX");
    CHECK(mkdtemp(dir) != NULL);
    snprintf(file, sizeof file, "%s/weights_signing_key.pem", dir);
    tidal_sign_key *a = NULL, *b = NULL, *c = NULL;
    uint8_t pa[TIDAL_SIGN_PUB_BYTES], pb[TIDAL_SIGN_PUB_BYTES];
    CHECK_OK(weights_signing_key_open("", dir, "", &a));
    struct stat fst;
    CHECK(stat(file, &fst) == 0 && (fst.st_mode & 0777) == 0600);
    CHECK_OK(weights_signing_key_open(NULL, dir, NULL, &b)); /* resumed: the same key */
    tidal_sign_key_public(a, pa);
    tidal_sign_key_public(b, pb);
    CHECK(memcmp(pa, pb, sizeof pa) == 0);
    tidal_sign_key_free(b);
    b = NULL;
    tidal_sign_pub_format(pa, text);
    CHECK_OK(weights_signing_key_open(file, "/nonexistent", text, &b)); /* given in the spec, pinned */
    tidal_sign_key_free(b);
    b = NULL;
    CHECK_OK(tidal_sign_keygen(&c));
    tidal_sign_key_public(c, pb);
    tidal_sign_pub_format(pb, other);
    CHECK_STATUS(weights_signing_key_open(file, dir, other, &b), TIDAL_ERR_INVALID);
    CHECK_MSG(b == NULL && strstr(tidal_errmsg(), "weights.public_key") && strstr(tidal_errmsg(), text), "%s",
              tidal_errmsg());
    CHECK_STATUS(weights_signing_key_open(file, dir, "ed25519:00", &b), TIDAL_ERR_INVALID);
    char missing[160];
    snprintf(missing, sizeof missing, "%s/none.pem", dir);
    CHECK_STATUS(weights_signing_key_open(missing, dir, "", &b), TIDAL_ERR_NOT_FOUND);
    CHECK_MSG(strstr(tidal_errmsg(), "weights.signing_key") && strstr(tidal_errmsg(), missing), "%s", tidal_errmsg());
    tidal_sign_key_free(a);
    tidal_sign_key_free(c);
    unlink(file);
    rmdir(dir);
}

static bool refused_at_least(const weights_stats *s, uint64_t n) { return s->refused >= n; }

/* A rogue with write access to the weights stream and `weights.latest`
 * (the test's own connection) stores a blob whose digest is right and puts
 * manifests for newer versions: unsigned, signed with its own key, and
 * signed by the trainer's key but altered after. Each is refused before
 * anything is fetched (counted, not a failure, latest_seen unmoved), the
 * worker keeps its good version, and the trainer's next version - lower than
 * the rogue's - still arrives. The job's key is set once: a publisher with
 * another key is refused, one with the same key (a resumed trainer) is not;
 * a client pinned to another key refuses the trainer's manifests. */
static void test_rogue_manifest_refused(void)
{
    job_names n;
    CHECK_OK(job_names_init(&n, "rogue"));
    tidal_sign_key *key = NULL, *rogue = NULL;
    CHECK_OK(tidal_sign_keygen(&key));
    CHECK_OK(tidal_sign_keygen(&rogue));
    weights_publisher *p = NULL;
    weights_publisher_opts o = {.bus = F.bus, .names = &n, .keep = 8, .signing_key = key};
    CHECK_OK(weights_publisher_create(&o, &p));
    tidal_bus *wb = connect_worker();
    weights_client *c = NULL;
    CHECK_OK(weights_client_create(wb, &n, &TINY, NULL, &c));
    model *m0 = make_model(&TINY, 11), *m1 = make_model(&TINY, 12);
    CHECK_OK(weights_publish(p, m0, 0));
    CHECK_OK(weights_publisher_flush(p, 10000));
    model *got = NULL;
    uint64_t ver = 0;
    CHECK_OK(weights_client_wait(c, 0, 10000, &got, &ver));
    CHECK(ver == 0 && same_params(got, m0));
    model_free(got);

    /* the job's state holds the trainer's public key */
    uint8_t pub[TIDAL_SIGN_PUB_BYTES];
    char text[TIDAL_SIGN_PUB_TEXT];
    tidal_sign_key_public(key, pub);
    tidal_sign_pub_format(pub, text);
    bus_kv *kv = NULL;
    CHECK_OK(bus_kv_open(F.bus, n.kv_bucket, &kv));
    void *val = NULL;
    size_t len = 0;
    CHECK_OK(bus_kv_get(kv, JOB_KEY_PUBKEY, &val, &len, NULL));
    CHECK(len == strlen(text) && !memcmp(val, text, len));
    free(val);

    weights_stats s;
    CHECK_OK(put_doctored(&n, "0", 1000, false, NULL, NULL)); /* unsigned */
    CHECK_MSG(wait_stats(c, refused_at_least, 1, &s), "refused = %" PRIu64, s.refused);
    CHECK_OK(put_doctored(&n, "0", 1001, false, NULL, rogue)); /* another key */
    CHECK_MSG(wait_stats(c, refused_at_least, 2, &s), "refused = %" PRIu64, s.refused);
    /* signed with the trainer's key, then put again with one signed field
     * changed on the wire (created_unix_ms: any field would do, test_sign
     * flips each) */
    CHECK_OK(put_doctored(&n, "0", 1002, false, NULL, key));
    CHECK_OK(bus_kv_get(kv, JOB_KEY_WEIGHTS, &val, &len, NULL));
    Tidal__V1__WeightsManifest *w = NULL;
    tidal_status st = codec_decode_weights_manifest(val, len, &w);
    free(val);
    CHECK_OK(st);
    w->created_unix_ms += 1;
    void *buf = NULL;
    size_t blen = 0;
    st = codec_encode(&w->base, &buf, &blen);
    tidal__v1__weights_manifest__free_unpacked(w, NULL);
    CHECK_OK(st);
    st = bus_kv_put(kv, JOB_KEY_WEIGHTS, buf, blen, NULL);
    free(buf);
    CHECK_OK(st);
    /* 1002 as signed is a good manifest: it is taken; the altered one is refused */
    CHECK_MSG(wait_stats(c, refused_at_least, 3, &s), "refused = %" PRIu64, s.refused);
    CHECK_OK(weights_client_wait(c, 1002, 10000, &got, &ver));
    CHECK(ver == 1002 && same_params(got, m0));
    model_free(got);
    weights_client_stats(c, &s);
    CHECK_MSG(s.refused == 3 && s.failed == 0 && s.latest_seen == 1002 && s.fetched == 2,
              "refused %" PRIu64 " failed %" PRIu64 " seen %" PRIu64 " fetched %" PRIu64, s.refused, s.failed,
              s.latest_seen, s.fetched);

    /* the rogue's v5000 does not hide the trainer's next version */
    CHECK_OK(put_doctored(&n, "0", 5000, false, NULL, rogue));
    CHECK_MSG(wait_stats(c, refused_at_least, 4, &s), "refused = %" PRIu64, s.refused);
    CHECK_OK(weights_publish(p, m1, 1003));
    CHECK_OK(weights_publisher_flush(p, 10000));
    CHECK_OK(weights_client_wait(c, 1003, 10000, &got, &ver));
    CHECK(ver == 1003 && same_params(got, m1));
    model_free(got);

    /* the key is the job's: another is refused, the same one (a resumed trainer) is not */
    weights_publisher *p2 = NULL;
    weights_publisher_opts o2 = {.bus = F.bus, .names = &n, .keep = 8, .signing_key = rogue};
    CHECK_STATUS(weights_publisher_create(&o2, &p2), TIDAL_ERR_CONFLICT);
    CHECK_MSG(strstr(tidal_errmsg(), JOB_KEY_PUBKEY) && strstr(tidal_errmsg(), text), "%s", tidal_errmsg());
    CHECK(p2 == NULL);
    CHECK_OK(weights_publisher_create(&o, &p2));
    weights_publisher_free(p2);

    /* a worker pinned to another key (weights.public_key) refuses the trainer's */
    uint8_t rogue_pub[TIDAL_SIGN_PUB_BYTES];
    tidal_sign_key_public(rogue, rogue_pub);
    weights_client *pinned = NULL;
    CHECK_OK(weights_client_create(wb, &n, &TINY, rogue_pub, &pinned));
    CHECK_MSG(wait_stats(pinned, refused_at_least, 1, &s), "refused = %" PRIu64, s.refused);
    CHECK(weights_client_take(pinned, UINT64_MAX, NULL) == NULL);
    weights_client_free(pinned);

    bus_kv_close(kv);
    weights_client_free(c);
    bus_close(wb);
    weights_publisher_free(p);
    tidal_sign_key_free(key);
    tidal_sign_key_free(rogue);
    model_free(m0);
    model_free(m1);
}

/* x rounded to bfloat16, nearest even, and back (an implementation of the test's own). */
static float bf16_round(float x)
{
    uint32_t u;
    memcpy(&u, &x, 4);
    uint32_t lsb = (u >> 16) & 1u;
    u = (u + 0x7fffu + lsb) & 0xffff0000u;
    float y;
    memcpy(&y, &u, 4);
    return y;
}

static void test_bf16_round_trip(void)
{
    job_names n;
    CHECK_OK(job_names_init(&n, "bf16"));
    weights_publisher *p = NULL;
    weights_publisher_opts o = {.bus = F.bus, .names = &n, .dtype = ST_BF16};
    CHECK_OK(weights_publisher_create(&o, &p));
    tidal_bus *wb = connect_worker();
    weights_client *c = NULL;
    CHECK_OK(weights_client_create(wb, &n, NULL, NULL, &c));
    model *m = make_model(&LARGER, 3);
    CHECK_OK(weights_publish(p, m, 5));
    CHECK_OK(weights_publisher_flush(p, 20000));
    model *got = NULL;
    uint64_t ver = 0;
    CHECK_OK(weights_client_wait(c, 5, 20000, &got, &ver));
    size_t na = 0, nb = 0;
    const float *a = model_params(m, &na), *b = model_params(got, &nb);
    size_t exact = 0, close = 0;
    for (size_t i = 0; i < na && na == nb; i++) {
        exact += b[i] == bf16_round(a[i]);
        close += fabsf(b[i] - a[i]) <= fabsf(a[i]) * 0x1p-8f;
    }
    bool cfg_ok = same_config(model_cfg(got), &LARGER);
    model_free(got);
    weights_stats s;
    weights_client_stats(c, &s);
    weights_client_free(c);
    bus_close(wb);
    weights_publisher_free(p);
    model_free(m);
    CHECK(na == nb && cfg_ok);
    CHECK_MSG(exact == na && close == na, "%zu exact, %zu within bf16 precision, of %zu", exact, close, na);
    /* two bytes a parameter on the wire, plus the header */
    CHECK_MSG(s.bytes > na * 2 && s.bytes < na * 2 + 65536, "%" PRIu64 " bytes for %zu parameters", s.bytes, na);
}

/* Five versions of a 20 MB model handed over as fast as the caller can: each
 * call only copies; after the flush the newest is on the bus and the client
 * reaches it exactly (versions in between may never have been sent). */
static void test_handover_burst(void)
{
    job_names n;
    CHECK_OK(job_names_init(&n, "burst"));
    weights_publisher *p = NULL;
    weights_publisher_opts o = {.bus = F.bus, .names = &n};
    CHECK_OK(weights_publisher_create(&o, &p));
    tidal_bus *wb = connect_worker();
    weights_client *c = NULL;
    CHECK_OK(weights_client_create(wb, &n, NULL, NULL, &c));
    model *m = make_model(&LARGER, 11);
    size_t np = 0;
    float *params = model_params(m, &np);
    tidal_status st = TIDAL_OK;
    for (uint64_t v = 1; v <= 5 && st == TIDAL_OK; v++) {
        params[v] += 1.0f; /* a new step's weights; the publisher has its own copy */
        st = weights_publish(p, m, v * 10);
    }
    CHECK_OK(st);
    CHECK_OK(weights_publisher_flush(p, 30000));
    CHECK(weights_published_version(p) == 50);
    model *got = NULL;
    uint64_t ver = 0;
    CHECK_OK(weights_client_wait(c, 50, 30000, &got, &ver));
    bool same = ver == 50 && same_params(got, m);
    model_free(got);
    weights_client_free(c);
    bus_close(wb);
    weights_publisher_free(p);
    model_free(m);
    CHECK(same);
}

/* A failure on the background thread comes back from flush, naming the
 * version; the publisher keeps going (and reports the next one too). */
static void test_background_failure_reported(void)
{
    job_names n;
    CHECK_OK(job_names_init(&n, "broken"));
    weights_publisher *p = NULL;
    weights_publisher_opts o = {.bus = F.bus, .names = &n};
    CHECK_OK(weights_publisher_create(&o, &p));
    model *m = make_model(&TINY, 5);
    CHECK_OK(weights_publish(p, m, 1));
    CHECK_OK(weights_publisher_flush(p, 10000));
    CHECK_OK(bus_stream_delete(F.bus, n.weights_stream)); /* pulled from under the publisher */
    CHECK_OK(weights_publish(p, m, 7));
    tidal_status st = weights_publisher_flush(p, 10000);
    bool named = strstr(tidal_errmsg(), "weights v7") != NULL;
    char msg[512];
    snprintf(msg, sizeof msg, "%s", tidal_errmsg());
    uint64_t pv = weights_published_version(p);
    tidal_status again = weights_publisher_flush(p, 1000); /* reported once */
    weights_publisher_free(p);
    model_free(m);
    CHECK(st != TIDAL_OK && st != TIDAL_ERR_TIMEOUT);
    CHECK_MSG(named, "%s", msg);
    CHECK_MSG(pv == 7, "published v%" PRIu64, pv); /* v7 went out live (its manifest with live set) before its store failed */
    CHECK_OK(again);
}

/* ---------------------------------------------------------------- faults */

static int child_signal_fd = -1;
static uint32_t child_stop_at;

/* The test hook of a child: at chunk child_stop_at, tell the parent (one byte
 * on the pipe) and wait to be killed. */
static void stop_at_chunk(uint32_t index)
{
    if (index != child_stop_at) return;
    if (write(child_signal_fd, "x", 1) != 1) _exit(3);
    for (;;) pause();
}

/* The child roles (argv: --child ROLE URL JOB KEYFILE VERSION STOP_AT FD):
 * "publish" publishes LARGER seed VERSION with the key and stops at chunk
 * STOP_AT of the blob; "fetch" starts a worker and stops at chunk STOP_AT of
 * its fetch. Neither returns normally: the parent kills it. */
static int child_main(char **argv)
{
    const char *role = argv[2], *url = argv[3], *job = argv[4], *keyfile = argv[5];
    const uint64_t version = strtoull(argv[6], NULL, 10);
    child_stop_at = (uint32_t)atoi(argv[7]);
    child_signal_fd = atoi(argv[8]);
    tidal_bus *b = NULL;
    bus_opts bo = {.urls = url, .name = "test-child", .js_timeout_ms = 5000};
    job_names n;
    if (bus_connect(&b, &bo) != TIDAL_OK || job_names_init(&n, job) != TIDAL_OK) goto fail;
    if (!strcmp(role, "publish")) {
        tidal_sign_key *k = NULL;
        weights_publisher *p = NULL;
        if (tidal_sign_key_load(keyfile, &k) != TIDAL_OK) goto fail;
        weights_publisher_opts o = {.bus = b, .names = &n, .signing_key = k};
        if (weights_publisher_create(&o, &p) != TIDAL_OK) goto fail;
        bus_blob_test_hooks(stop_at_chunk, NULL);
        model *m = make_model(&LARGER, 1000 + version);
        if (weights_publish(p, m, version) != TIDAL_OK) goto fail;
        weights_publisher_flush(p, 60000);
    } else {
        weights_client *c = NULL;
        bus_blob_test_hooks(NULL, stop_at_chunk);
        if (weights_client_create(b, &n, NULL, NULL, &c) != TIDAL_OK) goto fail;
        sleep(60);
    }
fail:
    fprintf(stderr, "child %s: did not stop at chunk %u: %s\n", role, child_stop_at, tidal_errmsg());
    return 2;
}

/* This binary re-executed as a child in `role`; returns its pid once it has
 * reached its stop (or -1 when it failed or took more than 20 s). */
static pid_t start_child(const char *role, const char *job, const char *keyfile, uint64_t version, uint32_t stop_at)
{
    int fds[2];
    if (pipe(fds) != 0) return -1;
    pid_t pid = fork();
    if (pid == 0) {
        close(fds[0]);
        char vs[24], ss[16], fs[16];
        snprintf(vs, sizeof vs, "%" PRIu64, version);
        snprintf(ss, sizeof ss, "%u", stop_at);
        snprintf(fs, sizeof fs, "%d", fds[1]);
        char *args[] = {"test_weights", "--child", (char *)role, (char *)tidal_server_url(F.srv), (char *)job,
                        (char *)keyfile, vs, ss, fs, NULL};
        execv("/proc/self/exe", args);
        _exit(127);
    }
    close(fds[1]);
    if (pid < 0) {
        close(fds[0]);
        return -1;
    }
    struct timeval tv = {20, 0};
    fd_set rs;
    FD_ZERO(&rs);
    FD_SET(fds[0], &rs);
    char x = 0;
    bool stopped = select(fds[0] + 1, &rs, NULL, NULL, &tv) == 1 && read(fds[0], &x, 1) == 1;
    close(fds[0]);
    if (!stopped) {
        kill(pid, SIGKILL);
        waitpid(pid, NULL, 0);
        return -1;
    }
    return pid;
}

static bool killed(pid_t pid)
{
    if (kill(pid, SIGKILL) != 0) return false;
    int ws = 0;
    return waitpid(pid, &ws, 0) == pid && WIFSIGNALED(ws) && WTERMSIG(ws) == SIGKILL;
}

/* A trainer killed after 2 of the 5 chunks of v2: no v2 manifest, so the
 * worker keeps v1 (nothing failed, nothing taken), and takes v3 whole when a
 * restarted trainer (the same key) publishes it. */
static void test_trainer_killed_mid_publish(void)
{
    char keyfile[64];
    snprintf(keyfile, sizeof keyfile, "/tmp/tidal_test_weights_kill_%d.pem", (int)getpid());
    tidal_sign_key *k = NULL;
    CHECK_OK(tidal_sign_keygen(&k));
    CHECK_OK(tidal_sign_key_save(k, keyfile));
    job_names n;
    CHECK_OK(job_names_init(&n, "killpub"));
    weights_publisher *p = NULL;
    weights_publisher_opts o = {.bus = F.bus, .names = &n, .signing_key = k};
    CHECK_OK(weights_publisher_create(&o, &p));
    model *m1 = make_model(&LARGER, 1001), *m3 = make_model(&LARGER, 1003);
    CHECK_OK(weights_publish(p, m1, 1));
    CHECK_OK(weights_publisher_flush(p, 20000));
    weights_publisher_free(p);
    tidal_bus *wb = connect_worker();
    weights_client *c = NULL;
    CHECK_OK(weights_client_create(wb, &n, NULL, NULL, &c));
    model *got = NULL;
    uint64_t ver = 0;
    CHECK_OK(weights_client_wait(c, 1, 20000, &got, &ver));
    CHECK(ver == 1 && same_params(got, m1));

    pid_t pid = start_child("publish", "killpub", keyfile, 2, 2);
    CHECK(pid > 0);
    CHECK(killed(pid));
    usleep(300 * 1000); /* what the worker would do with a v2, it has had time for */
    uint64_t have = ver;
    CHECK(weights_client_take(c, have, &ver) == NULL); /* still v1 */
    weights_stats s;
    weights_client_stats(c, &s);
    CHECK(s.failed == 0 && s.latest_seen == 1);

    CHECK_OK(weights_publisher_create(&o, &p)); /* the restarted trainer */
    CHECK_OK(weights_publish(p, m3, 3));
    CHECK_OK(weights_publisher_flush(p, 20000));
    weights_client_recycle(c, got); /* its memory is reused for v3 */
    got = NULL;
    CHECK_OK(weights_client_wait(c, 2, 20000, &got, &ver));
    CHECK(ver == 3 && same_params(got, m3));
    weights_client_stats(c, &s);
    CHECK(s.failed == 0 && s.fetched == 2);
    model_free(got);
    weights_client_free(c);
    bus_close(wb);
    weights_publisher_free(p);
    tidal_sign_key_free(k);
    unlink(keyfile);
    model_free(m1);
    model_free(m3);
}

/* A worker killed after fetching part of v1: another worker already running
 * and a restarted one both get v1 whole (a direct get leaves no state). */
static void test_worker_killed_mid_fetch(void)
{
    job_names n;
    CHECK_OK(job_names_init(&n, "killfetch"));
    weights_publisher *p = NULL;
    weights_publisher_opts o = {.bus = F.bus, .names = &n};
    CHECK_OK(weights_publisher_create(&o, &p));
    model *m1 = make_model(&LARGER, 2001);
    CHECK_OK(weights_publish(p, m1, 1));
    CHECK_OK(weights_publisher_flush(p, 20000));
    pid_t pid = start_child("fetch", "killfetch", "-", 1, 1);
    CHECK(pid > 0);
    CHECK(killed(pid));
    tidal_bus *wb = connect_worker();
    weights_client *c = NULL;
    CHECK_OK(weights_client_create(wb, &n, NULL, NULL, &c)); /* the restarted worker */
    model *got = NULL;
    uint64_t ver = 0;
    CHECK_OK(weights_client_wait(c, 1, 20000, &got, &ver));
    CHECK(ver == 1 && same_params(got, m1));
    weights_stats s;
    weights_client_stats(c, &s);
    CHECK(s.failed == 0 && s.refetched == 0);
    model_free(got);
    weights_client_free(c);
    bus_close(wb);
    weights_publisher_free(p);
    model_free(m1);
}

/* A publisher of job `job` that has published m1 as v1, and a worker *c (its
 * own connection *wb) that got v1 from the stored copy - the next `corrupt`
 * chunks it receives flipped by the test hook - handed it back, and has its
 * tap armed for the next version. *s: the worker's counters after v1. */
static void worker_at_v1(const char *job, job_names *n, weights_publisher **p, model *m1, unsigned corrupt,
                         tidal_bus **wb, weights_client **c, weights_stats *s)
{
    CHECK_OK(job_names_init(n, job));
    weights_publisher_opts o = {.bus = F.bus, .names = n};
    CHECK_OK(weights_publisher_create(&o, p));
    CHECK_OK(weights_publish(*p, m1, 1));
    CHECK_OK(weights_publisher_flush(*p, 20000));
    *wb = connect_worker();
    bus_blob_test_corrupt(corrupt);
    CHECK_OK(weights_client_create(*wb, n, NULL, NULL, c)); /* v1 by direct gets: no tap before it */
    model *got = NULL;
    uint64_t ver = 0;
    CHECK_OK(weights_client_wait(*c, 1, 20000, &got, &ver));
    CHECK(ver == 1 && same_params(got, m1));
    weights_client_stats(*c, s);
    weights_client_recycle(*c, got);
    sleep_ms(200); /* the tap armed */
}

/* One chunk corrupted after it arrived, on a fetch (by direct get) and on a
 * chunk the tap caught as it was published: each caught by its hash and
 * fetched again; the models are bit-identical to the trainer's. */
static void test_corrupted_chunk_fetched_again(void)
{
    job_names n;
    weights_publisher *p = NULL;
    model *m1 = make_model(&LARGER, 3001), *m2 = make_model(&LARGER, 3002), *got = NULL;
    uint64_t ver = 0;
    tidal_bus *wb = NULL;
    weights_stats s;
    weights_client *c = NULL;
    worker_at_v1("corrupt", &n, &p, m1, 1, &wb, &c, &s);
    CHECK(s.refetched == 1 && s.failed == 0);
    bus_blob_test_corrupt(1);
    CHECK_OK(weights_publish(p, m2, 2));
    CHECK_OK(weights_publisher_flush(p, 20000));
    CHECK_OK(weights_client_wait(c, 2, 20000, &got, &ver));
    bus_blob_test_corrupt(0);
    CHECK(ver == 2 && same_params(got, m2));
    weights_client_stats(c, &s);
    /* the flipped chunk: caught by the tap and refused (fetched), or fetched and fetched again */
    CHECK_MSG(s.failed == 0 && (s.refetched == 2 || (s.refetched == 1 && s.caught >= 1)), "refetched %" PRIu64
              " caught %" PRIu64, s.refetched, s.caught);
    model_free(got);
    weights_client_free(c);
    bus_close(wb);
    weights_publisher_free(p);
    model_free(m1);
    model_free(m2);
}

/* The publisher's chunk hook: blocks the second time it sees chunk 0 (the
 * stored copy's first chunk, after the broadcast) until released. */
static atomic_int store_zeros, store_blocked, store_release;
static void block_store(uint32_t index)
{
    if (index != 0 || atomic_fetch_add(&store_zeros, 1) != 1) return;
    atomic_store(&store_blocked, 1);
    while (!atomic_load(&store_release)) sleep_ms(1);
}

/* Live weights: a worker that is up (its tap armed since its last version)
 * builds the next version from the broadcast while the publisher is held at
 * the stored copy's first chunk - before anything of it is stored - with
 * every chunk caught and none fetched; a worker that joins after the store
 * builds the same version from the stored copy. */
static void test_live_before_stored(void)
{
    job_names n;
    weights_publisher *p = NULL;
    model *m1 = make_model(&LARGER, 4001), *m2 = make_model(&LARGER, 4002), *got = NULL;
    uint64_t ver = 0;
    tidal_bus *wb = NULL;
    weights_stats s;
    weights_client *c = NULL;
    worker_at_v1("live", &n, &p, m1, 0, &wb, &c, &s);
    CHECK_MSG(s.live == 0 && s.caught == 0, "live %" PRIu64 " caught %" PRIu64, s.live, s.caught);
    atomic_store(&store_zeros, 0), atomic_store(&store_blocked, 0), atomic_store(&store_release, 0);
    bus_blob_test_hooks(block_store, NULL);
    CHECK_OK(weights_publish(p, m2, 2));
    for (int i = 0; i < 2000 && !atomic_load(&store_blocked); i++) sleep_ms(5);
    CHECK(atomic_load(&store_blocked));
    tidal_status st = weights_client_wait(c, 2, 20000, &got, &ver); /* while nothing of v2 is stored */
    bus_msg *none = NULL;
    char subj[160];
    snprintf(subj, sizeof subj, "%s.2.m", n.weights_prefix);
    const tidal_status stored = bus_stream_get_last(F.bus, n.weights_stream, subj, &none);
    atomic_store(&store_release, 1);
    CHECK_OK(weights_publisher_flush(p, 20000));
    bus_blob_test_hooks(NULL, NULL);
    CHECK_OK(st);
    CHECK(stored == TIDAL_ERR_NOT_FOUND);
    CHECK(ver == 2 && same_params(got, m2));
    weights_client_stats(c, &s);
    CHECK_MSG(s.live == 1 && s.caught >= 1 && s.failed == 0 && s.refetched == 0, "live %" PRIu64 " caught %" PRIu64
              " failed %" PRIu64, s.live, s.caught, s.failed);
    model_free(got);
    weights_client *late = NULL; /* after the store: the stored manifest, the stored chunks */
    CHECK_OK(weights_client_create(wb, &n, NULL, NULL, &late));
    CHECK_OK(weights_client_wait(late, 2, 20000, &got, &ver));
    CHECK(ver == 2 && same_params(got, m2));
    weights_client_stats(late, &s);
    CHECK(s.live == 0 && s.fetched == 1);
    model_free(got);
    weights_client_free(late);
    weights_client_free(c);
    bus_close(wb);
    weights_publisher_free(p);
    model_free(m1);
    model_free(m2);
}

/* While the worker still holds version v-1, v is caught from the broadcast
 * and built (in the memory of the model handed back before), and v-1's
 * parameters are untouched; v-1 handed back is then reused. */
static void test_held_model_untouched_while_next_built(void)
{
    job_names n;
    weights_publisher *p = NULL;
    model *src[6] = {0};
    for (int v = 1; v < 6; v++) src[v] = make_model(&LARGER, 5000 + (uint64_t)v);
    tidal_bus *wb = NULL;
    weights_stats s;
    weights_client *c = NULL;
    worker_at_v1("heldmodel", &n, &p, src[1], 0, &wb, &c, &s);
    model *held = NULL;
    for (int v = 2; v < 6; v++) {
        CHECK_OK(weights_publish(p, src[v], (uint64_t)v));
        model *got = NULL;
        uint64_t ver = 0;
        CHECK_OK(weights_client_wait(c, (uint64_t)v, 20000, &got, &ver));
        CHECK(ver == (uint64_t)v && same_params(got, src[v]));
        CHECK_MSG(!held || same_params(held, src[v - 1]), "v%d changed while the worker held it", v - 1);
        if (held) weights_client_recycle(c, held);
        held = got;
        CHECK_OK(weights_publisher_flush(p, 20000));
        sleep_ms(100); /* the tap armed */
    }
    weights_client_stats(c, &s);
    CHECK_MSG(s.fetched == 5 && s.live >= 3 && s.failed == 0, "fetched %" PRIu64 " live %" PRIu64 " failed %" PRIu64,
              s.fetched, s.live, s.failed);
    model_free(held);
    weights_client_free(c);
    bus_close(wb);
    weights_publisher_free(p);
    for (int v = 1; v < 6; v++) model_free(src[v]);
}

/* A publisher thread: versions 1, 2, ... of one model every 5 ms until told to stop. */
typedef struct stream_args {
    weights_publisher *p;
    model *m;
    atomic_int stop;
    atomic_ullong last;
} stream_args;

static void *publish_stream(void *arg)
{
    stream_args *a = arg;
    for (uint64_t v = 1; !atomic_load(&a->stop); v++) {
        if (weights_publish(a->p, a->m, v) != TIDAL_OK) break;
        atomic_store(&a->last, v);
        sleep_ms(5);
    }
    return NULL;
}

/* A worker that starts while versions come faster than it could wait for
 * their broadcasts (a fresh worker has no tap buffer, so every live manifest
 * is useless to it) still gets a version within seconds, from the stored
 * copies: live manifests it caught nothing of never displace a stored one. */
static void test_fresh_worker_amid_live_versions(void)
{
    job_names n;
    CHECK_OK(job_names_init(&n, "fresh"));
    weights_publisher *p = NULL;
    weights_publisher_opts o = {.bus = F.bus, .names = &n};
    CHECK_OK(weights_publisher_create(&o, &p));
    stream_args a = {.p = p, .m = make_model(&TINY, 5001)};
    pthread_t th;
    CHECK(pthread_create(&th, NULL, publish_stream, &a) == 0);
    sleep_ms(300);
    tidal_bus *wb = connect_worker();
    weights_client *c = NULL;
    CHECK_OK(weights_client_create(wb, &n, NULL, NULL, &c));
    model *got = NULL;
    uint64_t ver = 0;
    const tidal_status st = weights_client_wait(c, 1, 5000, &got, &ver);
    char msg[512];
    snprintf(msg, sizeof msg, "%s", st == TIDAL_OK ? "" : tidal_errmsg());
    const uint64_t during = atomic_load(&a.last);
    atomic_store(&a.stop, 1);
    pthread_join(th, NULL);
    CHECK_OK(weights_publisher_flush(p, 20000));
    CHECK_MSG(st == TIDAL_OK, "no version within 5 s while the trainer published v1..v%" PRIu64 ": %s", during, msg);
    CHECK(got && same_params(got, a.m));
    model_free(got);
    weights_client_free(c);
    bus_close(wb);
    weights_publisher_free(p);
    model_free(a.m);
}

int main(int argc, char **argv)
{
    if (argc > 8 && !strcmp(argv[1], "--child")) return child_main(argv);
    fixture_start(&F);
    RUN(test_versions_in_quick_succession);
    RUN(test_bad_manifest_skipped);
    RUN(test_rogue_manifest_refused);
    RUN(test_signing_key_open);
    RUN(test_bf16_round_trip);
    RUN(test_handover_burst);
    RUN(test_background_failure_reported);
    RUN(test_trainer_killed_mid_publish);
    RUN(test_worker_killed_mid_fetch);
    RUN(test_corrupted_chunk_fetched_again);
    RUN(test_live_before_stored);
    RUN(test_held_model_untouched_while_next_built);
    RUN(test_fresh_worker_amid_live_versions);
    fixture_stop(&F);
    nats_Close();
    return check_summary();
}
