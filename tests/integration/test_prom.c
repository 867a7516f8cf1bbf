/* test_prom.c - base/prom: the exposition text a Prometheus server parses,
 * names made valid, non-finite values left out, and the endpoint itself over
 * HTTP (libcurl to the real listener on a loopback port). */
#include <curl/curl.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "base/prom.h"
#include "check.h"
#include "harness/http.h"

static void test_names(void)
{
    char n[64];
    prom_name("env.exact", n, sizeof n);
    CHECK(!strcmp(n, "env_exact"));
    prom_name("9lives-x:y", n, sizeof n);
    CHECK(!strcmp(n, "_lives_x:y"));
    prom_name("", n, sizeof n);
    CHECK(!strcmp(n, "_"));
}

static void test_text(void)
{
    prom *p = NULL;
    CHECK_OK(prom_start(NULL, 0, "tidal_job=\"q\"", &p));
    prom_set(p, "tidal_groups", "fate=\"trained\"", "groups by fate", 12);
    prom_set(p, "tidal_groups", "fate=\"stale\"", NULL, 3);
    prom_set(p, "tidal_groups", "fate=\"trained\"", NULL, 13); /* overwrites */
    prom_set(p, "env.exact", NULL, NULL, 0.25);
    prom_set(p, "tidal_reward", NULL, NULL, NAN);
    char *t = prom_text(p);
    CHECK(t != NULL);
    const char *want = "# HELP tidal_groups groups by fate\n# TYPE tidal_groups gauge\n"
                       "tidal_groups{tidal_job=\"q\",fate=\"trained\"} 13\n"
                       "tidal_groups{tidal_job=\"q\",fate=\"stale\"} 3\n"
                       "# TYPE env_exact gauge\nenv_exact{tidal_job=\"q\"} 0.25\n"
                       "# TYPE tidal_reward gauge\n";
    CHECK_MSG(!strcmp(t, want), "got:\n%s\nwant:\n%s", t, want);
    free(t);
    prom_stop(p);
    prom_stop(NULL);
    prom_set(NULL, "x", NULL, NULL, 1); /* no-op */
}

static long get(int port, const char *path, char **body)
{
    char url[128];
    snprintf(url, sizeof url, "http://127.0.0.1:%d%s", port, path);
    return harness_http(NULL, url, NULL, body);
}

static void test_http(void)
{
    prom *p = NULL;
    CHECK_OK(prom_start("127.0.0.1", 0, NULL, &p));
    prom_set(p, "tidal_step", NULL, "steps", 7);
    char *b = NULL;
    long st = get(prom_port(p), "/metrics", &b);
    CHECK_MSG(st == 200 && b && strstr(b, "\ntidal_step 7\n"), "%ld: %s", st, b ? b : "-");
    free(b);
    st = get(prom_port(p), "/other", &b);
    CHECK(st == 404);
    free(b);
    /* a port in use is an error naming it */
    prom *q = NULL;
    CHECK_STATUS(prom_start("127.0.0.1", prom_port(p), NULL, &q), TIDAL_ERR_IO);
    CHECK(strstr(tidal_errmsg(), "127.0.0.1:") != NULL);
    CHECK_STATUS(prom_start("localhost", 0, NULL, &q), TIDAL_ERR_INVALID);
    prom_stop(p);
}

int main(void)
{
    curl_global_init(CURL_GLOBAL_ALL);
    RUN(test_names);
    RUN(test_text);
    RUN(test_http);
    curl_global_cleanup();
    return check_summary();
}
