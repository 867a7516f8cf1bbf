/* test_tbevents.c - CRC-32C against RFC 3720's test vectors (base/crc32c.h),
 * and the TensorBoard event writer (controller/tbevents.h): the file it makes
 * is read back record by record - the TFRecord framing and both masked CRCs
 * checked, each Event decoded - and holds what was written, each record
 * readable as soon as it is written (flushed); a write that the file system
 * refuses (a file-size limit) fails with a message, and every later write
 * fails the same way without touching the file.
 * (tests/tools/read_tfevents.py is the independent reader; e2e_tensorboard runs it.) */
#include <dirent.h>
#include <jansson.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include "check.h"
#include "base/crc32c.h"
#include "base/fs.h"
#include "controller/tbevents.h"
#include "tensorboard.pb-c.h"

static void test_crc32c_vectors(void)
{
    unsigned char b[32];
    memset(b, 0, sizeof b);
    CHECK(tidal_crc32c(b, 32) == 0x8A9136AAu); /* RFC 3720 B.4: 32 bytes of zeros */
    memset(b, 0xFF, sizeof b);
    CHECK(tidal_crc32c(b, 32) == 0x62A8AB43u); /* 32 bytes of ones */
    for (int i = 0; i < 32; i++) b[i] = (unsigned char)i;
    CHECK(tidal_crc32c(b, 32) == 0x46DD794Eu); /* 32 incrementing bytes */
    for (int i = 0; i < 32; i++) b[i] = (unsigned char)(31 - i);
    CHECK(tidal_crc32c(b, 32) == 0x113FDB5Cu); /* 32 decrementing bytes */
    CHECK(tidal_crc32c("123456789", 9) == 0xE3069283u); /* the CRC catalogue's check value */
    CHECK(tidal_crc32c("", 0) == 0);
    CHECK(tidal_crc32c_mask(0) == 0xA282EAD8u);
    CHECK(tidal_crc32c_mask(0x00008000u) == 0xA282EAD9u); /* bit 15 rotates to bit 0 */
    CHECK(tidal_crc32c_mask(1u) == 0xA284EAD8u);            /* bit 0 rotates to bit 17 */
}

static char dir[256];

static uint64_t le64(const unsigned char *p)
{
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--) v = v << 8 | p[i];
    return v;
}

static uint32_t le32(const unsigned char *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

/* The file's events, each unpacked (caller frees them); -1 when the framing or a CRC is wrong. */
static int read_events(const char *path, Tensorboard__Event **ev, int max)
{
    FILE *f = fopen(path, "rb");
    if (!f) return -1;
    static unsigned char buf[1 << 20];
    size_t len = fread(buf, 1, sizeof buf, f), at = 0;
    fclose(f);
    int n = 0;
    while (at < len && n < max) {
        if (len - at < 12) return -1;
        const uint64_t m = le64(buf + at);
        if (le32(buf + at + 8) != tidal_crc32c_mask(tidal_crc32c(buf + at, 8))) return -1;
        if (len - at - 12 < m + 4) return -1;
        if (le32(buf + at + 12 + m) != tidal_crc32c_mask(tidal_crc32c(buf + at + 12, m))) return -1;
        if (!(ev[n] = tensorboard__event__unpack(NULL, m, buf + at + 12))) return -1;
        n++;
        at += 12 + m + 4;
    }
    return n;
}

/* The one file in dir (its path in out). */
static int the_file(char *out, size_t cap)
{
    DIR *d = opendir(dir);
    int n = 0;
    for (struct dirent *e; d && (e = readdir(d));)
        if (e->d_name[0] != '.') snprintf(out, cap, "%s/%s", dir, e->d_name), n++;
    if (d) closedir(d);
    return n;
}

static const Tensorboard__Summary__Value *value_of(const Tensorboard__Event *e, const char *tag)
{
    for (size_t i = 0; e->summary && i < e->summary->n_value; i++)
        if (!strcmp(e->summary->value[i]->tag, tag)) return e->summary->value[i];
    return NULL;
}

static void test_writer_round_trip(void)
{
    snprintf(dir, sizeof dir, "/tmp/tidal-test-tb-%d/tb", (int)getpid());
    tbevents *w = NULL;
    CHECK_OK(tbevents_open(dir, 1700000000.25, &w));
    char path[512], host[256] = "";
    CHECK(the_file(path, sizeof path) == 1);
    CHECK(!strcmp(path, tbevents_path(w)));
    gethostname(host, sizeof host - 1);
    char want[600];
    snprintf(want, sizeof want, "%s/events.out.tfevents.1700000000.%s", dir, host);
    CHECK_MSG(!strcmp(path, want), "file %s, want %s", path, want);
    const tbevents_scalar sc[] = {{"reward_mean", 0.625}, {"loss", -1.5e-3}, {"env.exact", 1.0 / 3.0}};
    CHECK_OK(tbevents_scalars(w, 7, 1700000001.5, sc, 3));
    CHECK_OK(tbevents_scalars(w, 8, 1700000002.0, sc, 0)); /* nothing */
    Tensorboard__Event *live[4] = {0}; /* flushed: a reader sees both records while the file is open */
    const int nlive = read_events(path, live, 4);
    for (int i = 0; i < nlive; i++) tensorboard__event__free_unpacked(live[i], NULL);
    CHECK_MSG(nlive == 2, "%d events readable before the close, want 2", nlive);
    json_t *o = json_pack("{s:i, s:f, s:n, s:s, s:b, s:i}", "step", 9, "pass@1", 0.75, "reward_mean", "error", "x",
                          "complete", 1, "prompts", 8);
    CHECK_OK(tbevents_json(w, 9, 1700000003.0, "eval/", o, "step"));
    json_decref(o);
    const char *texts[] = {"**row one**", "row two: `1+1` \xc3\xa9"};
    CHECK_OK(tbevents_texts(w, 9, 1700000003.5, "eval/sample_texts", texts, 2));
    tbevents_close(w);

    Tensorboard__Event *ev[8] = {0};
    const int n = read_events(path, ev, 8);
    CHECK_MSG(n == 4, "%d events read back (framing or CRC wrong when -1), want 4", n);
    CHECK(ev[0]->what_case == TENSORBOARD__EVENT__WHAT_FILE_VERSION);
    CHECK(!strcmp(ev[0]->file_version, "brain.Event:2") && ev[0]->wall_time == 1700000000.25);
    CHECK(ev[1]->step == 7 && ev[1]->wall_time == 1700000001.5 && ev[1]->summary->n_value == 3);
    for (int i = 0; i < 3; i++) {
        const Tensorboard__Summary__Value *v = value_of(ev[1], sc[i].tag);
        CHECK_MSG(v && v->value_case == TENSORBOARD__SUMMARY__VALUE__VALUE_SIMPLE_VALUE &&
                      v->simple_value == (float)sc[i].value, "scalar %s", sc[i].tag);
    }
    /* the JSON: numbers and the boolean, under the prefix; the step, null and string left out */
    CHECK(ev[2]->step == 9 && ev[2]->summary->n_value == 3);
    CHECK(value_of(ev[2], "eval/pass@1") && value_of(ev[2], "eval/pass@1")->simple_value == 0.75f);
    CHECK(value_of(ev[2], "eval/complete") && value_of(ev[2], "eval/complete")->simple_value == 1.0f);
    CHECK(value_of(ev[2], "eval/prompts") && value_of(ev[2], "eval/prompts")->simple_value == 8.0f);
    CHECK(!value_of(ev[2], "eval/step") && !value_of(ev[2], "eval/reward_mean") && !value_of(ev[2], "eval/error"));
    const Tensorboard__Summary__Value *t = value_of(ev[3], "eval/sample_texts");
    CHECK(ev[3]->step == 9 && t && t->value_case == TENSORBOARD__SUMMARY__VALUE__VALUE_TENSOR);
    CHECK(t->metadata && t->metadata->plugin_data && !strcmp(t->metadata->plugin_data->plugin_name, "text"));
    CHECK(t->metadata->data_class == TENSORBOARD__DATA_CLASS__DATA_CLASS_TENSOR);
    CHECK(t->tensor->dtype == TENSORBOARD__DATA_TYPE__DT_STRING && t->tensor->n_string_val == 2);
    CHECK(t->tensor->tensor_shape && t->tensor->tensor_shape->n_dim == 1 && t->tensor->tensor_shape->dim[0]->size == 2);
    for (int i = 0; i < 2; i++)
        CHECK(t->tensor->string_val[i].len == strlen(texts[i]) &&
              !memcmp(t->tensor->string_val[i].data, texts[i], strlen(texts[i])));
    for (int i = 0; i < n; i++) tensorboard__event__free_unpacked(ev[i], NULL);
}

/* A second writer in the same second appends to the same file: every record stays readable. */
static void test_writer_appends(void)
{
    tbevents *w = NULL;
    CHECK_OK(tbevents_open(dir, 1700000000.75, &w));
    const tbevents_scalar sc[] = {{"x", 2}};
    CHECK_OK(tbevents_scalars(w, 1, 1700000001, sc, 1));
    char path[512];
    snprintf(path, sizeof path, "%s", tbevents_path(w));
    tbevents_close(w);
    Tensorboard__Event *ev[8] = {0};
    const int n = read_events(path, ev, 8);
    CHECK_MSG(n == 6, "%d events after the second writer, want 6", n);
    CHECK(ev[4]->what_case == TENSORBOARD__EVENT__WHAT_FILE_VERSION && value_of(ev[5], "x"));
    for (int i = 0; i < n; i++) tensorboard__event__free_unpacked(ev[i], NULL);
}

/* The file system refuses a write (RLIMIT_FSIZE, SIGXFSZ ignored: EFBIG): that call and every later one
 * fail with the path in the message, and nothing more reaches the file. */
static void test_writer_write_fails(void)
{
    char d2[300];
    snprintf(d2, sizeof d2, "%s-full", dir);
    tbevents *w = NULL;
    CHECK_OK(tbevents_open(d2, 1700000100, &w));
    struct stat sb;
    CHECK(stat(tbevents_path(w), &sb) == 0);
    struct rlimit old, lim;
    getrlimit(RLIMIT_FSIZE, &old);
    lim = old;
    lim.rlim_cur = (rlim_t)sb.st_size + 40;
    void (*prev)(int) = signal(SIGXFSZ, SIG_IGN);
    CHECK(setrlimit(RLIMIT_FSIZE, &lim) == 0);
    static char big[4096];
    memset(big, 'a', sizeof big - 1);
    const char *texts[] = {big};
    tidal_status a = tbevents_texts(w, 1, 1700000101, "t", texts, 1);
    char msg[4608];
    snprintf(msg, sizeof msg, "%s", tidal_errmsg());
    setrlimit(RLIMIT_FSIZE, &old);
    signal(SIGXFSZ, prev);
    CHECK_MSG(a == TIDAL_ERR_IO && strstr(msg, tbevents_path(w)), "a refused write: %d (%s)", a, msg);
    CHECK(stat(tbevents_path(w), &sb) == 0);
    const off_t size = sb.st_size;
    const tbevents_scalar sc[] = {{"x", 1}};
    CHECK_STATUS(tbevents_scalars(w, 2, 1700000102, sc, 1), TIDAL_ERR_IO);
    CHECK(!strcmp(tidal_errmsg(), msg));
    CHECK(stat(tbevents_path(w), &sb) == 0 && sb.st_size == size);
    tbevents_close(w);
}

/* A directory that cannot be made: TIDAL_ERR_IO, no writer. */
static void test_open_fails(void)
{
    char file[300], sub[400];
    snprintf(file, sizeof file, "%s-file", dir);
    CHECK_OK(fs_write_file(file, "x", 1));
    snprintf(sub, sizeof sub, "%s/tb", file);
    tbevents *w = (tbevents *)1;
    CHECK_STATUS(tbevents_open(sub, 1700000000, &w), TIDAL_ERR_IO);
    CHECK(w == NULL && strstr(tidal_errmsg(), "tensorboard"));
}

int main(void)
{
    RUN(test_crc32c_vectors);
    RUN(test_writer_round_trip);
    RUN(test_writer_appends);
    RUN(test_writer_write_fails);
    RUN(test_open_fails);
    char root[300];
    snprintf(root, sizeof root, "/tmp/tidal-test-tb-%d", (int)getpid());
    fs_remove_tree(root, "test_tbevents");
    return check_summary();
}
