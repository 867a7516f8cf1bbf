/* http.h - one HTTP request from a test, through libcurl: the status and the
 * whole body. What the tests of tidal's HTTP servers (the dashboard, the
 * Prometheus endpoint, the e2e scrapes) ask with. Static functions: include
 * it in one test file, which links libcurl. */
#ifndef TIDAL_TESTS_HTTP_H
#define TIDAL_TESTS_HTTP_H

#include <curl/curl.h>
#include <stdlib.h>
#include <string.h>

/* libcurl's write callback: appends to the NUL-terminated heap string *ctx. */
static size_t harness_http_collect(char *d, size_t size, size_t n, void *ctx)
{
    char **b = ctx;
    const size_t old = *b ? strlen(*b) : 0, k = size * n;
    char *nb = realloc(*b, old + k + 1);
    if (!nb) return 0;
    memcpy(nb + old, d, k);
    nb[old + k] = '\0';
    *b = nb;
    return k;
}

/* `method` (NULL: GET) url with one extra header line (NULL: none), at most
 * 10 s. Returns the HTTP status, 0 when no answer came (refused, timed out);
 * *body is the body (heap, NUL-terminated; NULL when there was none), which
 * the caller frees. The path goes as written (no dot-segment folding), so a
 * test can send what a browser would not. */
static long harness_http(const char *method, const char *url, const char *header, char **body)
{
    CURL *h = curl_easy_init();
    struct curl_slist *hdr = header ? curl_slist_append(NULL, header) : NULL;
    long status = 0;
    *body = NULL;
    if (!h) return 0;
    curl_easy_setopt(h, CURLOPT_URL, url);
    curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, harness_http_collect);
    curl_easy_setopt(h, CURLOPT_WRITEDATA, body);
    curl_easy_setopt(h, CURLOPT_PATH_AS_IS, 1L);
    curl_easy_setopt(h, CURLOPT_TIMEOUT, 10L);
    if (method) curl_easy_setopt(h, CURLOPT_CUSTOMREQUEST, method);
    if (hdr) curl_easy_setopt(h, CURLOPT_HTTPHEADER, hdr);
    if (curl_easy_perform(h) == CURLE_OK) curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &status);
    curl_easy_cleanup(h);
    curl_slist_free_all(hdr);
    return status;
}

#endif
