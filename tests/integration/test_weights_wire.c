/* Delta versions and the shared-directory transport (issue 21 parts 3-4:
 * trainer/publish_delta.h, trainer/publish_dir.h, rollout/weights_fetch.h)
 * on a real nats-server:
 *   - a worker that holds v-1 applies v's delta (a few bytes on the wire) and
 *     has the trainer's parameters bit for bit; a worker that joins later
 *     holds no base: it fetches the last full image and the deltas after it
 *     and gets the same bits; a full image comes every full_every versions
 *     and the blobs before it are deleted;
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

#include "check.h"
#include "harness/fixture.h"
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
    CHECK(s1.failed == 0);
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
    RUN(test_dir_full_disk);
    fixture_stop(&F);
    nats_Close();
    return check_summary();
}
