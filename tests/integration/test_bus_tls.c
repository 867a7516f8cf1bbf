/* TLS and token auth: a server requiring mutual TLS and a token (certificates
 * made here with the openssl CLI); the bus connects with CA + client cert +
 * token, and is refused - with an error saying why - without any of them. */
#include <sys/stat.h>

#include "check.h"
#include "harness/fixture.h"

static fixture F;
static char dir[256], ca[300], cert[300], key[300], url[128];

static int sh(const char *cmd)
{
    int rc = system(cmd);
    if (rc != 0) fprintf(stderr, "command failed (%d): %s\n", rc, cmd);
    return rc;
}

/* CA, a server certificate for 127.0.0.1/localhost and a client certificate. */
static int make_certs(void)
{
    char cmd[4096];
    snprintf(cmd, sizeof cmd,
             "cd '%s' && "
             "openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=tidal-test-ca -keyout ca-key.pem -out ca.pem 2>/dev/null && "
             "printf 'subjectAltName=DNS:localhost,DNS:127.0.0.1,IP:127.0.0.1\\nextendedKeyUsage=serverAuth\\n' > srv.ext && "
             "openssl req -newkey rsa:2048 -nodes -subj /CN=localhost -keyout server-key.pem -out server.csr 2>/dev/null && "
             "openssl x509 -req -in server.csr -CA ca.pem -CAkey ca-key.pem -CAcreateserial -days 2 -extfile srv.ext -out server.pem 2>/dev/null && "
             "printf 'extendedKeyUsage=clientAuth\\n' > cli.ext && "
             "openssl req -newkey rsa:2048 -nodes -subj /CN=rollout -keyout client-key.pem -out client.csr 2>/dev/null && "
             "openssl x509 -req -in client.csr -CA ca.pem -CAkey ca-key.pem -CAcreateserial -days 2 -extfile cli.ext -out client.pem 2>/dev/null && "
             "printf 'max_payload: 8MB\\nauthorization { token: \"tidal-token\" }\\n"
             "tls { cert_file: \"%s/server.pem\"\\n key_file: \"%s/server-key.pem\"\\n ca_file: \"%s/ca.pem\"\\n verify: true\\n timeout: 3 }\\n' > nats.conf",
             dir, dir, dir, dir);
    return sh(cmd);
}

static tidal_status try_connect(const char *u, const char *c_ca, const char *c_cert, const char *c_key,
                                const char *token, tidal_bus **b)
{
    bus_opts o = {.urls = u, .tls_ca = c_ca, .tls_cert = c_cert, .tls_key = c_key, .token = token,
                  .connect_timeout_ms = 3000};
    return bus_connect(b, &o);
}

static void test_mutual_tls_and_token(void)
{
    tidal_bus *b = NULL;
    CHECK_OK(try_connect(url, ca, cert, key, "tidal-token", &b));
    bus_sub *s = NULL;
    CHECK_OK(bus_subscribe_sync(b, "t.tls", NULL, &s));
    CHECK_OK(bus_publish(b, "t.tls", "over tls", 8));
    bus_msg *m = NULL;
    CHECK_OK(bus_next(s, 2000, &m));
    int ok = bus_msg_len(m) == 8 && !memcmp(bus_msg_data(m), "over tls", 8);
    bus_msg_destroy(m);
    bus_unsubscribe(s);
    bus_close(b);
    CHECK(ok);
}

static void test_refusals(void)
{
    tidal_bus *b = NULL;
    /* wrong token */
    CHECK_STATUS(try_connect(url, ca, cert, key, "nope", &b), TIDAL_ERR_PERMISSION);
    CHECK(b == NULL);
    /* no client certificate: the server's handshake refuses */
    tidal_status st = try_connect(url, ca, NULL, NULL, "tidal-token", &b);
    CHECK_MSG(st != TIDAL_OK && b == NULL, "connected without a client certificate");
    CHECK_MSG(strstr(tidal_errmsg(), url) && strstr(tidal_errmsg(), "bus.tls.cert"), "%s", tidal_errmsg());
    /* no TLS at all */
    st = try_connect(tidal_server_url(F.srv), NULL, NULL, NULL, "tidal-token", &b);
    CHECK_MSG(st != TIDAL_OK && b == NULL, "connected without TLS");
    CHECK_MSG(strstr(tidal_errmsg(), "bus.tls.ca") != NULL, "%s", tidal_errmsg());
    /* a CA file that does not exist: a clear error naming the option */
    CHECK_STATUS(try_connect(url, "/nonexistent/ca.pem", cert, key, "tidal-token", &b), TIDAL_ERR_INVALID);
    CHECK_MSG(strstr(tidal_errmsg(), "option") || strstr(tidal_errmsg(), "ca.pem"), "%s", tidal_errmsg());
}

int main(void)
{
    const char *tmp = getenv("TMPDIR");
    snprintf(dir, sizeof dir, "%s/tidal-tls-XXXXXX", tmp && *tmp ? tmp : "/tmp");
    if (!mkdtemp(dir) || make_certs() != 0) {
        fprintf(stderr, "cannot make test certificates in %s\n", dir);
        return 1;
    }
    snprintf(ca, sizeof ca, "%s/ca.pem", dir);
    snprintf(cert, sizeof cert, "%s/client.pem", dir);
    snprintf(key, sizeof key, "%s/client-key.pem", dir);
    char conf[300];
    snprintf(conf, sizeof conf, "%s/nats.conf", dir);
    fixture_start_cfg(&F, conf, 0);
    snprintf(url, sizeof url, "tls://127.0.0.1:%d", tidal_server_port(F.srv));
    RUN(test_mutual_tls_and_token);
    RUN(test_refusals);
    fixture_stop(&F);
    char cmd[400];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    sh(cmd);
    nats_Close();
    return check_summary();
}
