/* Delta versions and the shared-directory transport (
 * trainer/publish_delta.h, trainer/publish_dir.h, rollout/weights_fetch.h)
 * on a real nats-server:
 *   - a worker that holds v-1 applies v's delta (a few bytes on the wire) and
 *     has the trainer's parameters bit for bit; a worker that joins later
 *     holds no base: it fetches the last full image and the deltas after it
 *     and gets the same bits; a full image comes every full_every versions
 *     and the blobs before it are deleted;
 *   - a delta whose rebuilt image is not the one its (signed) manifest names
 *     is refused, the worker keeps its version and takes the next one (from
 *     the full image: its own base went into the failed rebuild);
 *   - weights.transport dir: versions as directories read by a worker; a full
 *     disk (a 2.5-image tmpfs, or where mounting is not allowed a file size
 *     limit) fails the version with a clear error naming weights.dir while
 *     the versions already there stay intact and the worker keeps its own. */
#include <errno.h>
#include <inttypes.h>
#include <signal.h>
#include <sys/mount.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>


#include "base/digest.h"
#include "base/sign.h"
#include "check.h"
#include "harness/fixture.h"
#include "proto/codec.h"
#include "proto/manifest_sign.h"
#include "job/names.h"
#include "model/model.h"
#include "rollout/weights.h"
#include "trainer/publish.h"

static fixture F;

/* ~90 K parameters: 360 KB in fp32 */
static const model_config SMALL = {.type = MODEL_QWEN2, .vocab_size = 256, .hidden_size = 64, .num_layers = 2,
                                   .num_heads = 4, .num_kv_heads = 2, .head_dim = 16, .intermediate_size = 128,
                                   .max_position_embeddings = 64, .rope_theta = 10000.0, .rms_norm_eps = 1e-6,
                                   .tie_word_embeddings = true, .qkv_bias = true, .bos_token_id = -1,
                                   .eos_token_id = -1};

static model *make_model(uint64_t seed)
{
    model *m = NULL;
    if (model_create(&SMALL, &m) != TIDAL_OK) {
        fprintf(stderr, "model_create: %s\n", tidal_errmsg());
        exit(1);
    }
    model_init_random(m, seed, 0.5f, true);
    return m;
}

/* A training step's worth of change: 2% of the values moved a little. */
static void nudge(model *m, uint32_t step)
{
    size_t n = 0;
    float *p = model_params(m, &n);
    for (size_t i = 0; i < n / 50; i++) {
        const size_t k = (i * 7919u + step * 104729u) % n;
        p[k] += 1e-3f * (float)((k + step) % 7) - 3e-3f;
    }
}

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

static bool same_params(model *a, const model *b)
{
    size_t na = 0, nb = 0;
    const float *pa = model_params(a, &na), *pb = model_params((model *)b, &nb);
    return na == nb && memcmp(pa, pb, na * sizeof *pa) == 0;
}

static uint64_t image_bytes(void)
{
    model *m = make_model(1);
    size_t n = 0;
    model_params(m, &n);
    model_free(m);
    return 4 * (uint64_t)n;
}

/* Wait for version v on c and compare with the trainer's m; *bytes holds the
 * client's byte count before v (the version may be fetched before this is
 * called) and gets what it fetched for v. */
static void expect_version(weights_client *c, uint64_t v, const model *m, uint64_t *bytes)
{
    weights_stats s1;
    model *got = NULL;
    uint64_t ver = 0;
    CHECK_OK(weights_client_wait(c, v, 10000, &got, &ver));
    weights_client_stats(c, &s1);
    CHECK_MSG(ver == v, "got v%" PRIu64 ", want v%" PRIu64, ver, v);
    const bool same = same_params(got, m);
    model_free(got);
    CHECK_MSG(same, "v%" PRIu64 ": the worker's parameters are not the trainer's bit for bit", v);
    const uint64_t before = *bytes;
    *bytes = s1.bytes - before;
}

static void test_delta_chain(void)
{
    job_names n;
    CHECK_OK(job_names_init(&n, "delta"));
    const uint64_t image = image_bytes();
    tidal_bus *wa = connect_worker(), *wb = connect_worker();
    weights_client *a = NULL, *b = NULL;
    CHECK_OK(weights_client_create(wa, &n, NULL, NULL, &a));
    weights_publisher *p = NULL;
    weights_publisher_opts o = {.bus = F.bus, .names = &n, .keep = 2, .delta = true, .full_every = 4};
    CHECK_OK(weights_publisher_create(&o, &p));
    model *m = make_model(7);
    uint64_t got = 0, total_a = 0, total_b = 0;
    /* v0 is a full image; v1..v3 deltas, each applied by the worker holding the one before */
    for (uint32_t v = 0; v <= 3; v++) {
        if (v) nudge(m, v);
        CHECK_OK(weights_publish(p, m, v));
        CHECK_OK(weights_publisher_flush(p, 10000));
        got = total_a;
        expect_version(a, v, m, &got);
        total_a += got;
        if (v == 0) CHECK_MSG(got > image, "v0: %" PRIu64 " bytes, the image has %" PRIu64, got, image);
        else CHECK_MSG(got < image / 4, "v%u as a delta: %" PRIu64 " bytes for a %" PRIu64 "-byte image", v, got, image);
    }
    /* a worker without the base (it joins at v3): the full image v0, deltas 1 and 2, then v3's */
    CHECK_OK(weights_client_create(wb, &n, NULL, NULL, &b));
    got = 0;
    expect_version(b, 3, m, &got);
    total_b = got;
    CHECK_MSG(got > image, "the late worker fetched %" PRIu64 " bytes: not the full image and the deltas", got);
    /* v4: the chain holds full_every versions, so a full image; v5 a delta on it */
    for (uint32_t v = 4; v <= 5; v++) {
        nudge(m, v);
        CHECK_OK(weights_publish(p, m, v));
        CHECK_OK(weights_publisher_flush(p, 10000));
        got = total_a;
        expect_version(a, v, m, &got);
        total_a += got;
        if (v == 4) CHECK_MSG(got > image, "v4 should be a full image: %" PRIu64 " bytes", got);
        else CHECK_MSG(got < image / 4, "v5 as a delta: %" PRIu64 " bytes", got);
        got = total_b;
        expect_version(b, v, m, &got);
        total_b += got;
    }
    /* what no worker can need any more is gone from the stream; the chain stays */
    bus_blob_store *st = NULL;
    CHECK_OK(bus_blob_store_open(F.bus, n.weights_stream, n.weights_prefix, 0, &st));
    bus_blob_info info;
    CHECK_STATUS(bus_blob_stat(st, "0", &info), TIDAL_ERR_NOT_FOUND);
    CHECK_STATUS(bus_blob_stat(st, "3", &info), TIDAL_ERR_NOT_FOUND);
    CHECK_OK(bus_blob_stat(st, "4", &info));
    CHECK_OK(bus_blob_stat(st, "5", &info));
    bus_blob_store_close(st);
    weights_stats sa, sb;
    weights_client_stats(a, &sa);
    weights_client_stats(b, &sb);
    CHECK(sa.failed == 0 && sb.failed == 0);
    weights_client_free(a);
    weights_client_free(b);
    weights_publisher_free(p);
    model_free(m);
    bus_close(wa);
    bus_close(wb);
}

/* bf16 on the wire: deltas of 2-byte values; two workers (one applying each
 * delta, one rebuilding from the full image) end with the same bits. */
static void test_delta_bf16(void)
{
    job_names n;
    CHECK_OK(job_names_init(&n, "deltabf16"));
    tidal_bus *wa = connect_worker(), *wb = connect_worker();
    weights_client *a = NULL, *b = NULL;
    CHECK_OK(weights_client_create(wa, &n, NULL, NULL, &a));
    weights_publisher *p = NULL;
    weights_publisher_opts o = {.bus = F.bus, .names = &n, .dtype = ST_BF16, .delta = true, .full_every = 10};
    CHECK_OK(weights_publisher_create(&o, &p));
    model *m = make_model(9), *ga = NULL, *gb = NULL;
    for (uint32_t v = 0; v <= 2; v++) {
        if (v) nudge(m, v);
        CHECK_OK(weights_publish(p, m, v));
        CHECK_OK(weights_publisher_flush(p, 10000));
        model_free(ga);
        ga = NULL;
        CHECK_OK(weights_client_wait(a, v, 10000, &ga, NULL));
    }
    CHECK_OK(weights_client_create(wb, &n, NULL, NULL, &b));
    CHECK_OK(weights_client_wait(b, 2, 10000, &gb, NULL));
    CHECK(same_params(ga, gb));
    weights_stats s;
    weights_client_stats(a, &s);
    CHECK(s.failed == 0 && s.refused == 0);
    model_free(ga);
    model_free(gb);
    model_free(m);
    weights_client_free(a);
    weights_client_free(b);
    weights_publisher_free(p);
    bus_close(wa);
    bus_close(wb);
}

/* A delta version `version` signed with key: blob `from` (a delta on
 * from - 1) stored again as blob `version`, claimed to apply to delta_base
 * with chain {0 .. delta_base} and to rebuild an image of image_bytes with
 * digest image_digest. */
static tidal_status put_forged_delta(const job_names *n, const char *from, uint64_t version, uint64_t delta_base,
                                     uint64_t image_bytes, const uint8_t image_digest[32], const tidal_sign_key *key)
{
    bus_blob_store *bs = NULL;
    bus_kv *kv = NULL;
    void *blob = NULL, *buf = NULL;
    uint64_t len = 0;
    size_t blen = 0;
    bus_msg *msg = NULL;
    Tidal__V1__BlobManifest *bm = NULL;
    char name[24], subj[200];
    snprintf(name, sizeof name, "%" PRIu64, version);
    snprintf(subj, sizeof subj, "%s.%s.m", n->weights_prefix, name);
    bus_blob_info info;
    uint64_t chain[16];
    for (uint64_t i = 0; i <= delta_base && i < 16; i++) chain[i] = i;
    tidal_status st = bus_blob_store_open(F.bus, n->weights_stream, n->weights_prefix, 0, &bs);
    if (st == TIDAL_OK) st = bus_blob_get(bs, from, &blob, &len, NULL);
    if (st == TIDAL_OK) st = bus_blob_put(bs, name, blob, len, &info);
    if (st == TIDAL_OK) st = bus_stream_get_last(F.bus, n->weights_stream, subj, &msg);
    if (st == TIDAL_OK) st = codec_decode_blob_manifest(bus_msg_data(msg), (size_t)bus_msg_len(msg), &bm);
    if (st == TIDAL_OK) {
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
        w.delta = true;
        w.delta_base = delta_base;
        w.chain = chain;
        w.n_chain = (size_t)delta_base + 1;
        w.image_bytes = image_bytes;
        w.image_digest.data = (uint8_t *)image_digest;
        w.image_digest.len = 32;
        w.full_every = 10;
        uint8_t sig[TIDAL_SIGN_SIG_BYTES];
        st = codec_manifest_sign(&w, n->job, key, sig);
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
    free(blob);
    free(buf);
    return st;
}

static bool failed_at_least(const weights_stats *s, uint64_t want) { return s->failed >= want; }

/* Poll c's counters until pred holds or ~10 s pass. */
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

/* Signed deltas that do and do not rebuild what they claim. The delta
 * v0 -> v1 applied to v1 gives v0's image back (XOR undoes itself): claimed
 * with another digest it is refused after the rebuild (from the worker's
 * base, then from the full image); claimed with v0's digest it is v0's
 * weights, bit for bit. The trainer's next real delta still arrives. */
static void test_delta_rebuild_checked(void)
{
    job_names n;
    CHECK_OK(job_names_init(&n, "forged"));
    tidal_sign_key *key = NULL;
    CHECK_OK(tidal_sign_keygen(&key));
    tidal_bus *wa = connect_worker();
    weights_client *a = NULL;
    CHECK_OK(weights_client_create(wa, &n, &SMALL, NULL, &a)); /* the forged manifests carry no config.json */
    weights_publisher *p = NULL;
    weights_publisher_opts o = {.bus = F.bus, .names = &n, .keep = 8, .delta = true, .full_every = 10,
                                .signing_key = key};
    CHECK_OK(weights_publisher_create(&o, &p));
    model *m = make_model(21), *m0 = make_model(21);
    uint64_t got = 0;
    for (uint32_t v = 0; v <= 1; v++) {
        if (v) nudge(m, v);
        CHECK_OK(weights_publish(p, m, v));
        CHECK_OK(weights_publisher_flush(p, 10000));
        got = 0;
        expect_version(a, v, m, &got);
    }
    /* v0's image and its digest, as the trainer stored it */
    bus_blob_store *bs = NULL;
    CHECK_OK(bus_blob_store_open(F.bus, n.weights_stream, n.weights_prefix, 0, &bs));
    void *img0 = NULL;
    uint64_t len0 = 0;
    CHECK_OK(bus_blob_get(bs, "0", &img0, &len0, NULL));
    bus_blob_store_close(bs);
    uint8_t digest0[DIGEST_BYTES], wrong[DIGEST_BYTES];
    digest_compute(img0, (size_t)len0, digest0);
    free(img0);
    memcpy(wrong, digest0, 32);
    wrong[5] ^= 1;

    weights_stats s;
    CHECK_OK(put_forged_delta(&n, "1", 2, 1, len0, wrong, key));
    CHECK_MSG(wait_stats(a, failed_at_least, 1, &s), "the wrong rebuild was not refused (failed %" PRIu64 ")",
              s.failed);
    CHECK(weights_client_take(a, 1, NULL) == NULL); /* the worker keeps v1 */
    CHECK(s.refused == 0);

    CHECK_OK(put_forged_delta(&n, "1", 3, 1, len0, digest0, key));
    model *back = NULL;
    uint64_t ver = 0;
    CHECK_OK(weights_client_wait(a, 3, 10000, &back, &ver));
    CHECK(ver == 3);
    const bool same = same_params(back, m0);
    model_free(back);
    CHECK_MSG(same, "v3 (the delta undone) is not v0's weights");

    /* the trainer's next version: a delta on its v1, which this worker no longer holds */
    nudge(m, 4);
    CHECK_OK(weights_publish(p, m, 4));
    CHECK_OK(weights_publisher_flush(p, 10000));
    got = 0;
    expect_version(a, 4, m, &got);
    weights_client_stats(a, &s);
    CHECK(s.failed == 1);

    weights_client_free(a);
    weights_publisher_free(p);
    tidal_sign_key_free(key);
    model_free(m);
    model_free(m0);
    bus_close(wa);
}

static bool file_size_is(const char *dir, uint64_t v, const char *file, uint64_t *size)
{
    char path[1200];
    snprintf(path, sizeof path, "%s/step_%" PRIu64 "/%s", dir, v, file);
    struct stat sb;
    if (stat(path, &sb) != 0) return false;
    if (size) *size = (uint64_t)sb.st_size;
    return true;
}

static void test_dir_full_disk(void)
{
    char mnt[256], root[300];
    snprintf(mnt, sizeof mnt, "/tmp/tidal-test-wdir-%d", (int)getpid());
    snprintf(root, sizeof root, "%s/w", mnt);
    CHECK(mkdir(mnt, 0755) == 0 || errno == EEXIST);
    const uint64_t image = image_bytes();
    /* room for two versions and a half: the third does not fit */
    char opts[64];
    snprintf(opts, sizeof opts, "size=%" PRIu64 "k", (image * 5 / 2) / 1024);
    /* TIDAL_TEST_NO_MOUNT=1 tries the stand-in where mounting works */
    const bool mounted = !getenv("TIDAL_TEST_NO_MOUNT") && mount("tmpfs", mnt, "tmpfs", 0, opts) == 0;
    const char *why = getenv("TIDAL_TEST_NO_MOUNT") ? "TIDAL_TEST_NO_MOUNT is set" : strerror(errno);
    struct rlimit old_lim;
    getrlimit(RLIMIT_FSIZE, &old_lim);
    if (!mounted)
        fprintf(stderr, "  (no tmpfs: %s; a file size limit stands in for the full disk)\n", why);

    job_names n;
    CHECK_OK(job_names_init(&n, "wdir"));
    tidal_bus *wb = connect_worker();
    weights_client *c = NULL;
    CHECK_OK(weights_client_create(wb, &n, NULL, NULL, &c));
    weights_publisher *p = NULL;
    weights_publisher_opts o = {.bus = F.bus, .names = &n, .keep = 2, .dir = root};
    CHECK_OK(weights_publisher_create(&o, &p));
    model *m = make_model(11);
    uint64_t got = 0, size = 0;
    for (uint32_t v = 0; v <= 1; v++) {
        if (v) nudge(m, v);
        CHECK_OK(weights_publish(p, m, v));
        CHECK_OK(weights_publisher_flush(p, 10000));
        got = 0;
        expect_version(c, v, m, &got);
        CHECK(file_size_is(root, v, "config.json", NULL));
    }
    CHECK(file_size_is(root, 1, "model.safetensors", &size) && size > image);
    if (!mounted) { /* the next write of a whole image fails with EFBIG */
        signal(SIGXFSZ, SIG_IGN);
        struct rlimit lim = {.rlim_cur = image / 2, .rlim_max = old_lim.rlim_max};
        CHECK(setrlimit(RLIMIT_FSIZE, &lim) == 0);
    }
    nudge(m, 2);
    CHECK_OK(weights_publish(p, m, 2));
    tidal_status st = weights_publisher_flush(p, 10000);
    if (!mounted) setrlimit(RLIMIT_FSIZE, &old_lim);
    CHECK_STATUS(st, TIDAL_ERR_IO);
    fprintf(stderr, "  the error: %s\n", tidal_errmsg());
    CHECK_MSG(strstr(tidal_errmsg(), "weights v2") && strstr(tidal_errmsg(), "weights.dir") &&
              strstr(tidal_errmsg(), mounted ? "No space left on device" : "File too large"), "%s", tidal_errmsg());
    /* the versions there are intact, no temporary directory is left, the worker keeps v1 */
    uint64_t s1 = 0;
    CHECK(file_size_is(root, 1, "model.safetensors", &s1) && s1 == size);
    CHECK(file_size_is(root, 0, "model.safetensors", NULL));
    CHECK(!file_size_is(root, 2, "model.safetensors", NULL));
    char tmp[400];
    snprintf(tmp, sizeof tmp, "%s/.step_2.tmp", root);
    struct stat sb;
    CHECK(stat(tmp, &sb) != 0);
    CHECK(weights_published_version(p) == 1);
    sleep_ms(300);
    CHECK(weights_client_take(c, 1, NULL) == NULL);
    weights_stats s;
    weights_client_stats(c, &s);
    CHECK(s.latest_seen == 1 && s.failed == 0);

    weights_client_free(c);
    weights_publisher_free(p);
    model_free(m);
    bus_close(wb);
    if (mounted) umount(mnt);
    char cmd[400];
    snprintf(cmd, sizeof cmd, "rm -rf %s", mnt);
    if (system(cmd) != 0) fprintf(stderr, "cannot remove %s\n", mnt);
}

int main(void)
{
    fixture_start(&F);
    RUN(test_delta_chain);
    RUN(test_delta_bf16);
    RUN(test_delta_rebuild_checked);
    RUN(test_dir_full_disk);
    fixture_stop(&F);
    nats_Close();
    return check_summary();
}
