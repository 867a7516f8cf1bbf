/* test_threading.c - a role's threading (base/threading.h): the rule that picks
 * the thread count (flags, OMP_NUM_THREADS, the role's default, cores shared),
 * the cores of an affinity mask, and the re-execution that makes libgomp start
 * with OMP_WAIT_POLICY=passive and the chosen count - checked in a real child
 * of this binary through what libgomp itself reports (OMP_DISPLAY_ENV: its spin count) and
 * the thread count it starts with. */
#define _GNU_SOURCE /* sched_setaffinity */
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "base/spawn.h"
#include "base/threading.h"
#include "check.h"
#include "kernels/cpu/ops.h"

extern char **environ;

static threading_cores cores_of(int n) { return (threading_cores){.cores = n, .online = n}; }

static void test_rule(void)
{
    threading_ask a = {.cores = cores_of(8)};
    threading_choice c = threading_choose(&a);
    CHECK_MSG(c.threads == 8 && strstr(c.why, "all of 8 cores"), "alone: %d (%s)", c.threads, c.why);
    a.one_thread = true;
    c = threading_choose(&a);
    CHECK_MSG(c.threads == 1 && strstr(c.why, "runs no model"), "controller: %d (%s)", c.threads, c.why);
    a.one_thread = false, a.beside = 3;
    c = threading_choose(&a);
    CHECK_MSG(c.threads == 2 && strstr(c.why, "8 cores / 3 workers"), "beside 3: %d (%s)", c.threads, c.why);
    a.beside = 16;
    CHECK(threading_choose(&a).threads == 1); /* never 0 */
    a.env_threads = "4,2";                    /* nested levels: the first is this process's */
    c = threading_choose(&a);
    CHECK_MSG(c.threads == 4 && strstr(c.why, "OMP_NUM_THREADS=4,2 from the environment"), "env: %d (%s)", c.threads,
              c.why);
    a.one_thread = true; /* the user's variable wins over a role's default too */
    CHECK(threading_choose(&a).threads == 4);
    a.share = 3; /* --share wins over the environment */
    c = threading_choose(&a);
    CHECK_MSG(c.threads == 2 && strstr(c.why, "--share 3: 8 cores / 3"), "share: %d (%s)", c.threads, c.why);
    a.share = 9;
    CHECK(threading_choose(&a).threads == 1);
    a.threads = 5; /* --threads wins over everything, even above the cores */
    a.cores = cores_of(2);
    c = threading_choose(&a);
    CHECK_MSG(c.threads == 5 && strstr(c.why, "--threads 5; 2 cores"), "threads: %d (%s)", c.threads, c.why);
    static const char *const bad[] = {"abc", "0", "-2", "5000", "3x", ""};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        threading_ask b = {.env_threads = bad[i], .cores = cores_of(2)};
        c = threading_choose(&b);
        CHECK_MSG(c.threads == 2 && strstr(c.why, "ignored"), "OMP_NUM_THREADS=%s: %d (%s)", bad[i], c.threads, c.why);
    }
    threading_ask lim = {.cores = {.cores = 1, .online = 4, .limit = "affinity"}};
    c = threading_choose(&lim);
    CHECK_MSG(c.threads == 1 && strstr(c.why, "1 core (affinity; 4 online)"), "limited: %s", c.why);
}

/* A taskset of one CPU: one usable core, named as the affinity's limit. */
static void test_affinity(void)
{
    threading_cores all = threading_cores_now();
    CHECK_MSG(all.cores >= 1 && all.cores <= all.online, "%d of %d cores", all.cores, all.online);
    cpu_set_t saved, one;
    CHECK(sched_getaffinity(0, sizeof saved, &saved) == 0);
    int first = -1;
    for (int i = 0; i < CPU_SETSIZE && first < 0; i++)
        if (CPU_ISSET(i, &saved)) first = i;
    CPU_ZERO(&one);
    CPU_SET(first, &one);
    CHECK(sched_setaffinity(0, sizeof one, &one) == 0);
    threading_cores c = threading_cores_now();
    sched_setaffinity(0, sizeof saved, &saved);
    CHECK_MSG(c.cores == 1, "one CPU in the mask: %d cores", c.cores);
    if (all.online > 1) CHECK_MSG(c.limit && !strcmp(c.limit, "affinity"), "limit %s", c.limit ? c.limit : "none");
}

/* The environment a child of this test starts with: this one's, less the
 * variables threading_settle reads, plus `add` (NULL-terminated). */
static char **child_env(const char *const *add)
{
    size_t n = 0, k = 0;
    while (environ[n]) n++;
    char **env = calloc(n + 8, sizeof *env);
    for (size_t i = 0; env && i < n; i++)
        if (strncmp(environ[i], "OMP_", 4) && strncmp(environ[i], "GOMP_", 5) &&
            strncmp(environ[i], "TIDAL_THREADING_SET=", 20))
            env[k++] = environ[i];
    for (; env && add && *add; add++) env[k++] = (char *)*add;
    return env;
}

/* Run this binary as `reexec-child` with env; its stdout and stderr in *out. */
static int run_child(char **env, char **out)
{
    char *argv[] = {"test_threading", "reexec-child", NULL};
    size_t len = 0;
    int code = -1;
    *out = NULL;
    if (spawn_capture("/proc/self/exe", argv, env, out, &len, &code) != TIDAL_OK) return -1;
    return code;
}

/* Unset: the child sets both, re-executes once, and the libgomp of the
 * re-executed process reports PASSIVE and 3 threads; no marker is left. */
static void test_reexec(void)
{
    static const char *const add[] = {"OMP_DISPLAY_ENV=verbose", NULL};
    char **env = child_env(add), *out = NULL;
    const int code = run_child(env, &out);
    CHECK_MSG(code == 0 && out, "child exit %d", code);
    /* libgomp shows an unset policy as PASSIVE too; its spin count tells them apart (300000 when unset) */
    CHECK_MSG(strstr(out, "GOMP_SPINCOUNT = '0'") && strstr(out, "OMP_NUM_THREADS = '3'"),
              "libgomp did not start passive (spin count 0) with 3 threads:\n%s", out);
    CHECK_MSG(strstr(out, "child: threads 3, OMP_WAIT_POLICY=passive, by tidal 1, marker none, note -, re-executed yes"),
              "%s", out);
    /* the first process's libgomp printed to the test's stderr, before the child moved it: one report here */
    const char *a = strstr(out, "OPENMP DISPLAY ENVIRONMENT BEGIN");
    CHECK_MSG(a && !strstr(a + 1, "OPENMP DISPLAY ENVIRONMENT BEGIN"), "re-executed more than once, or never:\n%s", out);
    free(out);
    free(env);
}

/* The user's choices stay: OMP_WAIT_POLICY=active and OMP_NUM_THREADS=3 -> no
 * re-exec at all; GOMP_SPINCOUNT alone keeps the policy unset. */
static void test_user_choice_kept(void)
{
    static const char *const add[] = {"OMP_WAIT_POLICY=active", "OMP_NUM_THREADS=3", NULL};
    char **env = child_env(add), *out = NULL;
    int code = run_child(env, &out);
    CHECK_MSG(code == 0 && out && strstr(out, "child: threads 3, OMP_WAIT_POLICY=active, by tidal 0, marker none, note -"),
              "exit %d:\n%s", code, out ? out : "");
    CHECK_MSG(strstr(out, "re-executed no"), "%s", out);
    free(out);
    free(env);
    static const char *const spin[] = {"GOMP_SPINCOUNT=1000", NULL};
    env = child_env(spin);
    code = run_child(env, &out);
    CHECK_MSG(code == 0 && out && strstr(out, "child: threads 3, GOMP_SPINCOUNT=1000, by tidal 0, marker none"),
              "exit %d:\n%s", code, out ? out : "");
    free(out);
    free(env);
}

/* The marker stops a second re-exec: a process that finds it returns at once,
 * even when the environment is not what it asks for, and removes it. */
static void test_no_loop(void)
{
    setenv("TIDAL_THREADING_SET", "wait,threads", 1);
    setenv("OMP_NUM_THREADS", "7", 1);
    CHECK_MSG(threading_user_env_threads() == NULL, "the count tidal set read as the user's");
    threading_policy p;
    threading_settle(2, &p); /* would re-execute without the marker: OMP_NUM_THREADS is 7 */
    CHECK(p.set_by_tidal && !getenv("TIDAL_THREADING_SET") && !p.note[0]);
    CHECK(threading_user_env_threads() && !strcmp(threading_user_env_threads(), "7"));
    unsetenv("OMP_NUM_THREADS");
}

int main(int argc, char **argv)
{
    if (argc == 2 && !strcmp(argv[1], "reexec-child")) { /* a child of test_reexec, before and after its exec */
        dup2(1, 2); /* libgomp's OMP_DISPLAY_ENV goes to stderr: into the captured output */
        threading_policy p;
        const bool had_marker = getenv("TIDAL_THREADING_SET") != NULL;
        threading_settle(3, &p);
        printf("child: threads %d, %s, by tidal %d, marker %s, note %s, re-executed %s\n", cpu_threads(), p.wait,
               (int)p.set_by_tidal, getenv("TIDAL_THREADING_SET") ? "left" : "none", p.note[0] ? p.note : "-",
               had_marker ? "yes" : "no");
        return 0;
    }
    RUN(test_rule);
    RUN(test_affinity);
    RUN(test_reexec);
    RUN(test_user_choice_kept);
    RUN(test_no_loop);
    return check_summary();
}
