/* test_server.c - the private nats-server helper (bus/server.h) against the
 * real nats-server: start, answer, kill -9, restart on the same port and
 * store (JetStream data survives), two at once, clear errors for a bad
 * binary, a bad config and a taken port, and clean-up of the temp dirs. */
#include <dirent.h>
#include <errno.h>
#include <nats/nats.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "check.h"
#include "bus/server.h"

/* Connect a client to url (1 s timeout, no reconnect) and flush: 1 when the
 * server answered, 0 otherwise. */
static int answers(const char *url)
{
    natsOptions *o = NULL;
    natsConnection *nc = NULL;
    if (natsOptions_Create(&o) != NATS_OK) return 0;
    natsOptions_SetURL(o, url);
    natsOptions_SetTimeout(o, 1000);
    natsOptions_SetAllowReconnect(o, false);
    natsStatus s = natsConnection_Connect(&nc, o);
    if (s == NATS_OK) s = natsConnection_FlushTimeout(nc, 1000);
    natsConnection_Destroy(nc);
    natsOptions_Destroy(o);
    return s == NATS_OK;
}

static int dir_exists(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0 && S_ISDIR(st.st_mode);
}

/* Number of entries (other than . and ..) in dir, -1 when it cannot be read. */
static int dir_entries(const char *dir)
{
    DIR *d = opendir(dir);
    if (!d) return -1;
    int n = 0;
    for (struct dirent *de; (de = readdir(d)) != NULL;)
        if (strcmp(de->d_name, ".") != 0 && strcmp(de->d_name, "..") != 0) n++;
    closedir(d);
    return n;
}

static int rm_rf(const char *dir)
{
    char cmd[600];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    return system(cmd);
}

/* Publish one message into a file-storage stream TEST on subject test.x. */
static natsStatus js_put_one(const char *url)
{
    natsConnection *nc = NULL;
    jsCtx *js = NULL;
    jsStreamInfo *si = NULL;
    jsPubAck *pa = NULL;
    jsErrCode jerr = 0;
    natsStatus s = natsConnection_ConnectTo(&nc, url);
    if (s == NATS_OK) s = natsConnection_JetStream(&js, nc, NULL);
    if (s == NATS_OK) {
        jsStreamConfig cfg;
        jsStreamConfig_Init(&cfg);
        const char *subjects[] = {"test.x"};
        cfg.Name = "TEST";
        cfg.Subjects = subjects;
        cfg.SubjectsLen = 1;
        cfg.Storage = js_FileStorage;
        s = js_AddStream(&si, js, &cfg, NULL, &jerr);
    }
    if (s == NATS_OK) s = js_Publish(&pa, js, "test.x", "hello", 5, NULL, &jerr);
    jsPubAck_Destroy(pa);
    jsStreamInfo_Destroy(si);
    jsCtx_Destroy(js);
    natsConnection_Destroy(nc);
    return s;
}

/* Messages in stream TEST, or -1 when it cannot be read. */
static long js_count(const char *url)
{
    natsConnection *nc = NULL;
    jsCtx *js = NULL;
    jsStreamInfo *si = NULL;
    jsErrCode jerr = 0;
    long n = -1;
    natsStatus s = natsConnection_ConnectTo(&nc, url);
    if (s == NATS_OK) s = natsConnection_JetStream(&js, nc, NULL);
    if (s == NATS_OK) s = js_GetStreamInfo(&si, js, "TEST", NULL, &jerr);
    if (s == NATS_OK) n = (long)si->State.Msgs;
    jsStreamInfo_Destroy(si);
    jsCtx_Destroy(js);
    natsConnection_Destroy(nc);
    return n;
}

/* Runs first, before any nats.c thread exists, because it changes $TMPDIR:
 * everything the server creates lives in one temp dir that stop removes. */
static void test_stop_removes_temp_dirs(void)
{
    char tmp[] = "/tmp/tidal-test-server-XXXXXX";
    CHECK(mkdtemp(tmp) != NULL);
    char *old = getenv("TMPDIR") ? strdup(getenv("TMPDIR")) : NULL;
    setenv("TMPDIR", tmp, 1);
    tidal_server *s = NULL;
    tidal_status st = tidal_server_start(&s, NULL);
    if (old) setenv("TMPDIR", old, 1);
    else unsetenv("TMPDIR");
    free(old);
    char msg[1024], store[512] = "";
    snprintf(msg, sizeof msg, "%s", tidal_errmsg());
    int under = 0, existed = 0, entries = -1;
    if (st == TIDAL_OK) {
        snprintf(store, sizeof store, "%s", tidal_server_store_dir(s));
        under = strncmp(store, tmp, strlen(tmp)) == 0;
        existed = dir_exists(store);
        entries = dir_entries(tmp);
    }
    tidal_server_stop(s);
    int left = dir_entries(tmp);
    int store_left = store[0] && dir_exists(store);
    rm_rf(tmp);
    CHECK_MSG(st == TIDAL_OK, "start: %s", msg);
    CHECK_MSG(under && existed, "store %s not a dir under %s", store, tmp);
    CHECK_MSG(entries == 1, "%d entries in %s while running, want 1 work dir", entries, tmp);
    CHECK_MSG(!store_left, "store %s still there after stop", store);
    CHECK_MSG(left == 0, "%d entries left in %s after stop", left, tmp);
}

static void test_start_answers(void)
{
    tidal_server *s = NULL;
    CHECK_OK(tidal_server_start(&s, NULL));
    int port = tidal_server_port(s);
    char want[64];
    snprintf(want, sizeof want, "nats://127.0.0.1:%d", port);
    int ok = port > 0 && strcmp(tidal_server_url(s), want) == 0 && answers(tidal_server_url(s));
    tidal_server_stop(s);
    CHECK_MSG(ok, "url %s (port %d) does not answer", want, port);
}

/* opts.host: the server listens on that address and its URL names it (127.0.0.2 is loopback too,
 * and 127.0.0.1 then does not answer); a host that is no IPv4 address is refused by name. */
static void test_host(void)
{
    tidal_server *s = NULL;
    tidal_server_opts o = {.host = "127.0.0.2"};
    CHECK_OK(tidal_server_start(&s, &o));
    const int port = tidal_server_port(s);
    char want[64], other[64], url[64];
    snprintf(url, sizeof url, "%s", tidal_server_url(s));
    snprintf(want, sizeof want, "nats://127.0.0.2:%d", port);
    snprintf(other, sizeof other, "nats://127.0.0.1:%d", port);
    const int named = strcmp(url, want) == 0, there = answers(want), elsewhere = answers(other);
    tidal_server_stop(s);
    CHECK_MSG(named && there && !elsewhere, "url %s (want %s): answers %d, on 127.0.0.1 %d", url, want, there,
              elsewhere);
    tidal_server_opts bad = {.host = "node-a"};
    CHECK_STATUS(tidal_server_start(&s, &bad), TIDAL_ERR_INVALID);
    CHECK_MSG(s == NULL && strstr(tidal_errmsg(), "\"node-a\""), "message: %s", tidal_errmsg());
}

static void test_kill_restart_same_port_and_store(void)
{
    tidal_server *s = NULL;
    CHECK_OK(tidal_server_start(&s, NULL));
    char url[64], store[512];
    snprintf(url, sizeof url, "%s", tidal_server_url(s));
    snprintf(store, sizeof store, "%s", tidal_server_store_dir(s));
    int port = tidal_server_port(s);
    int ok = js_put_one(url) == NATS_OK && js_count(url) == 1;
    if (ok) ok = tidal_server_kill(s) == TIDAL_OK;
    if (ok) ok = !answers(url);
    if (ok) ok = tidal_server_kill(s) == TIDAL_ERR_INVALID; /* not running */
    if (ok) ok = tidal_server_restart(s) == TIDAL_OK;
    if (ok) ok = tidal_server_port(s) == port && strcmp(tidal_server_url(s), url) == 0 &&
                 strcmp(tidal_server_store_dir(s), store) == 0;
    if (ok) ok = tidal_server_restart(s) == TIDAL_ERR_INVALID; /* still running */
    long n = ok ? js_count(url) : -2;
    int answered = ok && answers(url);
    const char *msg = tidal_errmsg();
    char saved[1024];
    snprintf(saved, sizeof saved, "%s", msg);
    tidal_server_stop(s);
    CHECK_MSG(ok, "kill/restart on %s failed: %s", url, saved);
    CHECK(answered);
    CHECK_MSG(n == 1, "stream TEST has %ld messages after restart, want 1", n);
}

static void test_two_servers_different_ports(void)
{
    tidal_server *a = NULL, *b = NULL;
    CHECK_OK(tidal_server_start(&a, NULL));
    tidal_status st = tidal_server_start(&b, NULL);
    int ok = st == TIDAL_OK && tidal_server_port(a) != tidal_server_port(b) &&
             strcmp(tidal_server_store_dir(a), tidal_server_store_dir(b)) != 0 &&
             answers(tidal_server_url(a)) && answers(tidal_server_url(b));
    tidal_server_stop(b);
    tidal_server_stop(a);
    CHECK_MSG(ok, "two servers: %s", st == TIDAL_OK ? "same port or no answer" : tidal_errmsg());
}

static void test_taken_port_is_a_clear_error(void)
{
    tidal_server *a = NULL, *b = NULL;
    CHECK_OK(tidal_server_start(&a, NULL));
    tidal_server_opts o = {.port = tidal_server_port(a)};
    tidal_status st = tidal_server_start(&b, &o);
    char msg[1024], port[16];
    snprintf(msg, sizeof msg, "%s", tidal_errmsg());
    snprintf(port, sizeof port, "%d", tidal_server_port(a));
    tidal_server_stop(b);
    tidal_server_stop(a);
    CHECK(st != TIDAL_OK);
    CHECK(b == NULL);
    CHECK_MSG(strstr(msg, port) && strstr(msg, "address already in use"), "message: %s", msg);
}

static void test_bad_binary(void)
{
    tidal_server *s = NULL;
    tidal_server_opts o = {.binary = "/nonexistent/nats-server"};
    CHECK_STATUS(tidal_server_start(&s, &o), TIDAL_ERR_NOT_FOUND);
    CHECK(s == NULL);
    CHECK_MSG(strstr(tidal_errmsg(), "/nonexistent/nats-server"), "message: %s", tidal_errmsg());

    o.binary = "no-such-nats-server-binary";
    CHECK_STATUS(tidal_server_start(&s, &o), TIDAL_ERR_NOT_FOUND);
    CHECK_MSG(strstr(tidal_errmsg(), "no-such-nats-server-binary") && strstr(tidal_errmsg(), "PATH"),
              "message: %s", tidal_errmsg());

    /* A binary that runs but is no nats-server: exits at once. */
    o.binary = "/bin/false";
    tidal_status st = tidal_server_start(&s, &o);
    CHECK(st != TIDAL_OK);
    CHECK_MSG(strstr(tidal_errmsg(), "/bin/false") && strstr(tidal_errmsg(), "exited with status 1"),
              "message: %s", tidal_errmsg());
}

static void test_bad_config_shows_log_tail(void)
{
    char dir[] = "/tmp/tidal-test-conf-XXXXXX";
    CHECK(mkdtemp(dir) != NULL);
    char conf[600], logf[600];
    snprintf(conf, sizeof conf, "%s/bad.conf", dir);
    snprintf(logf, sizeof logf, "%s/server.log", dir);
    FILE *f = fopen(conf, "w");
    CHECK(f != NULL);
    fputs("max_payload: {{\n", f);
    fclose(f);
    tidal_server *s = NULL;
    tidal_server_opts o = {.config_file = conf, .log_file = logf};
    tidal_status st = tidal_server_start(&s, &o);
    char msg[1024];
    snprintf(msg, sizeof msg, "%s", tidal_errmsg());
    rm_rf(dir);
    CHECK(st != TIDAL_OK);
    CHECK(s == NULL);
    CHECK_MSG(strstr(msg, logf) && strstr(msg, "Parse error"), "message: %s", msg);

    o = (tidal_server_opts){.config_file = "/nonexistent/tidal.conf"};
    CHECK_STATUS(tidal_server_start(&s, &o), TIDAL_ERR_NOT_FOUND);
    CHECK_MSG(strstr(tidal_errmsg(), "/nonexistent/tidal.conf"), "message: %s", tidal_errmsg());
}

/* A store dir the caller names is used and survives stop; the default config
 * lets 4 MiB chunks through (max_payload 8 MiB). */
static void test_caller_store_and_max_payload(void)
{
    char dir[] = "/tmp/tidal-test-store-XXXXXX";
    CHECK(mkdtemp(dir) != NULL);
    char store[600];
    snprintf(store, sizeof store, "%s/js", dir);
    tidal_server *s = NULL;
    tidal_server_opts o = {.store_dir = store};
    tidal_status st = tidal_server_start(&s, &o);
    int64_t max_payload = -1;
    if (st == TIDAL_OK) {
        natsConnection *nc = NULL;
        if (natsConnection_ConnectTo(&nc, tidal_server_url(s)) == NATS_OK)
            max_payload = natsConnection_GetMaxPayload(nc);
        natsConnection_Destroy(nc);
    }
    tidal_server_stop(s);
    int kept = dir_exists(store);
    rm_rf(dir);
    CHECK_OK(st);
    CHECK_MSG(max_payload >= 8 * 1024 * 1024, "max_payload %lld", (long long)max_payload);
    CHECK_MSG(kept, "caller's store %s was removed", store);
}

int main(void)
{
    RUN(test_stop_removes_temp_dirs);
    RUN(test_start_answers);
    RUN(test_host);
    RUN(test_kill_restart_same_port_and_store);
    RUN(test_two_servers_different_ports);
    RUN(test_taken_port_is_a_clear_error);
    RUN(test_bad_binary);
    RUN(test_bad_config_shows_log_tail);
    RUN(test_caller_store_and_max_payload);
    nats_CloseAndWait(0);
    return check_summary();
}
