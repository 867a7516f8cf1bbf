/* test_creds.c - user nkeys (bus/nkey.h) and each role's permissions
 * (job/creds.h): the public key of the NATS documentation's example seed,
 * generated pairs that agree, damaged seeds refused without being quoted, seed
 * files; and no publish pattern of a role matches a subject outside its lane
 * (NATS subject matching: `*` one token, `>` the rest). The e2e scenario
 * `creds` runs the same lists against a real server. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "bus/nkey.h"
#include "check.h"
#include "job/creds.h"

/* nk -gen user -pubout, from docs.nats.io (nkey authentication) */
#define DOC_SEED "SUACSSL3UAHUDXKFSNVUZRF5UHPMWZ6BFDTJ7M6USDXIEDNPPQYYYCU3VY"
#define DOC_PUBLIC "UDXU4RCSJNZOIQHZNWXHXORDPRTGNJAHAHFRGZNEEJCPQTT2M7NLCNF4"

static void test_known_seed(void)
{
    char pub[BUS_NKEY_PUBLIC_LEN + 1];
    CHECK_OK(bus_nkey_public_of(DOC_SEED, pub));
    CHECK_MSG(!strcmp(pub, DOC_PUBLIC), "public key %s, want %s", pub, DOC_PUBLIC);
}

static void test_generated_pairs_agree(void)
{
    char pub[BUS_NKEY_PUBLIC_LEN + 1], seed[BUS_NKEY_SEED_LEN + 1], again[BUS_NKEY_PUBLIC_LEN + 1];
    char pub2[BUS_NKEY_PUBLIC_LEN + 1], seed2[BUS_NKEY_SEED_LEN + 1];
    CHECK_OK(bus_nkey_generate(pub, seed));
    CHECK_OK(bus_nkey_generate(pub2, seed2));
    CHECK_MSG(strlen(pub) == BUS_NKEY_PUBLIC_LEN && pub[0] == 'U', "public key %s", pub);
    CHECK(strlen(seed) == BUS_NKEY_SEED_LEN && seed[0] == 'S' && seed[1] == 'U');
    CHECK_OK(bus_nkey_public_of(seed, again));
    CHECK(!strcmp(pub, again));
    CHECK(strcmp(seed, seed2) != 0 && strcmp(pub, pub2) != 0);
}

static void test_damaged_seeds_refused(void)
{
    char pub[BUS_NKEY_PUBLIC_LEN + 1], s[BUS_NKEY_SEED_LEN + 8];
    snprintf(s, sizeof s, "%s", DOC_SEED);
    s[20] = s[20] == 'A' ? 'B' : 'A'; /* one character changed: the checksum no longer matches */
    CHECK_STATUS(bus_nkey_public_of(s, pub), TIDAL_ERR_INVALID);
    CHECK_MSG(strstr(tidal_errmsg(), "checksum") && !strstr(tidal_errmsg(), s), "%s", tidal_errmsg());
    CHECK_STATUS(bus_nkey_public_of(DOC_PUBLIC, pub), TIDAL_ERR_INVALID); /* a public key is no seed */
    CHECK_STATUS(bus_nkey_public_of("", pub), TIDAL_ERR_INVALID);
    CHECK_STATUS(bus_nkey_public_of(DOC_SEED "A", pub), TIDAL_ERR_INVALID);
    snprintf(s, sizeof s, "%s", DOC_SEED);
    s[30] = '1'; /* outside the base32 alphabet */
    CHECK_STATUS(bus_nkey_public_of(s, pub), TIDAL_ERR_INVALID);
}

static void test_seed_files(void)
{
    char path[] = "/tmp/tidal-test-creds-XXXXXX", seed[BUS_NKEY_SEED_LEN + 1];
    int fd = mkstemp(path);
    CHECK(fd >= 0);
    FILE *f = fdopen(fd, "w");
    fprintf(f, "# comment SU not at the start\n  SUSHORT\n\t%s  \n", DOC_SEED);
    fclose(f);
    CHECK_OK(bus_nkey_seed_in_file(path, seed));
    CHECK(!strcmp(seed, DOC_SEED));
    f = fopen(path, "w");
    fputs("# nothing here\n", f);
    fclose(f);
    CHECK_STATUS(bus_nkey_seed_in_file(path, seed), TIDAL_ERR_NOT_FOUND);
    unlink(path);
    CHECK_STATUS(bus_nkey_seed_in_file(path, seed), TIDAL_ERR_IO);
}

/* NATS subject matching: does pattern p (with * and >) match subject s? */
static bool matches(const char *p, const char *s)
{
    for (;;) {
        const size_t pl = strcspn(p, "."), sl = strcspn(s, ".");
        if (pl == 1 && p[0] == '>') return sl > 0;
        if (!(pl == 1 && p[0] == '*') && (pl != sl || strncmp(p, s, pl) != 0)) return false;
        if (!p[pl] || !s[sl]) return !p[pl] && !s[sl];
        p += pl + 1, s += sl + 1;
    }
}

static void test_matches(void)
{
    CHECK(matches("a.>", "a.b.c") && !matches("a.>", "a") && matches("a.*.c", "a.b.c") && !matches("a.*", "a.b.c"));
    CHECK(matches("a.b", "a.b") && !matches("a.b", "a.bc") && !matches("a.b.c", "a.b"));
}

/* No publish pattern of `role` matches any of `forbidden`. */
static bool lane_kept(const job_names *n, const char *role, const char *const *forbidden)
{
    job_perms p;
    if (job_creds_permissions(n, "strings", role, &p) != TIDAL_OK) return false;
    bool ok = true;
    for (size_t i = 0; p.publish[i]; i++)
        for (size_t j = 0; forbidden[j]; j++)
            if (matches(p.publish[i], forbidden[j])) {
                fprintf(stderr, "%s may publish %s (by %s)\n", role, forbidden[j], p.publish[i]);
                ok = false;
            }
    job_perms_clear(&p);
    return ok;
}

static void test_lanes(void)
{
    job_names n;
    CHECK_OK(job_names_init(&n, "j"));
    /* nobody but the trainer moves weights; the JetStream API is never open as a whole */
    const char *const rollout_not[] = {"tidal.j.weights.3.m", "tidal.j.weights.3.c.0", "tidal.j.ctl", "tidal.j.prompts",
                                       "$KV.TIDAL_j.weights.latest", "$KV.TIDAL_j.spec", "$KV.TIDAL_j.state",
                                       "$KV.TIDAL_j.trainer.version", "$JS.API.STREAM.DELETE.TIDAL_j_WEIGHTS",
                                       "$JS.API.STREAM.PURGE.TIDAL_j_WEIGHTS", "$JS.API.STREAM.UPDATE.TIDAL_j_WEIGHTS",
                                       "$JS.API.CONSUMER.DELETE.TIDAL_j_PROMPTS.rollout",
                                       "$JS.API.CONSUMER.MSG.NEXT.TIDAL_j_TRAJ.trainer", "$JS.ACK.TIDAL_j_TRAJ.trainer.1.2.3.4.5",
                                       "$JS.API.STREAM.MSG.DELETE.TIDAL_j_WEIGHTS", "tidal.other.traj", "_INBOX.x", NULL};
    CHECK(lane_kept(&n, "rollout", rollout_not));
    const char *const controller_not[] = {"tidal.j.weights.3.m", "$KV.TIDAL_j.weights.latest", "$KV.TIDAL_j.trainer.version",
                                          "tidal.j.traj", "$JS.API.STREAM.DELETE.TIDAL_j_PROMPTS",
                                          "$JS.API.CONSUMER.MSG.NEXT.TIDAL_j_PROMPTS.rollout", NULL};
    CHECK(lane_kept(&n, "controller", controller_not));
    const char *const trainer_not[] = {"tidal.j.prompts", "tidal.j.traj", "tidal.j.metrics.controller", "$KV.TIDAL_j.spec",
                                       "$KV.TIDAL_j.controller.cursor", "$JS.API.STREAM.DELETE.TIDAL_j_TRAJ", NULL};
    CHECK(lane_kept(&n, "trainer", trainer_not));
    const char *const status_not[] = {"$KV.TIDAL_j.state", "$KV.TIDAL_j_WORKERS.w", "tidal.j.ctl", "tidal.j.prompts",
                                      "$JS.API.STREAM.CREATE.TIDAL_j_PROMPTS", "$JS.API.CONSUMER.MSG.NEXT.TIDAL_j_PROMPTS.rollout",
                                      NULL};
    CHECK(lane_kept(&n, "status", status_not));
    job_perms p;
    CHECK_OK(job_creds_permissions(&n, "strings", "env", &p));
    const bool env_only_answers = !p.publish[0] && p.responses && p.subscribe[0] &&
                                  !strcmp(p.subscribe[0], "tidal.env.strings") && !p.subscribe[1];
    job_perms_clear(&p);
    CHECK_MSG(env_only_answers, "the env role may do more than answer on tidal.env.strings");
    /* what each role must be able to do, spot-checked */
    CHECK_OK(job_creds_permissions(&n, "strings", "rollout", &p));
    bool traj = false, env = false, ack = false;
    for (size_t i = 0; p.publish[i]; i++) {
        traj |= matches(p.publish[i], "tidal.j.traj");
        env |= matches(p.publish[i], "tidal.env.strings");
        ack |= matches(p.publish[i], "$JS.ACK.TIDAL_j_PROMPTS.rollout.1.7.7.1700000000.0");
    }
    job_perms_clear(&p);
    CHECK(traj && env && ack);
    CHECK_STATUS(job_creds_permissions(&n, NULL, "env", &p), TIDAL_ERR_INVALID);
    CHECK_STATUS(job_creds_permissions(&n, NULL, "admin", &p), TIDAL_ERR_INVALID);
}

int main(void)
{
    RUN(test_known_seed);
    RUN(test_generated_pairs_agree);
    RUN(test_damaged_seeds_refused);
    RUN(test_seed_files);
    RUN(test_matches);
    RUN(test_lanes);
    return check_summary();
}
