/* test_data.c - datasets (controller/data.h): JSONL rows with FILE:LINE
 * errors, a stable held-out split, epochs each a permutation of the rows
 * (shuffled per epoch from the seed, the same for the same seed), the end of
 * the data, and a generator's tasks (deterministic, evaluation disjoint). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "check.h"
#include "controller/data.h"

static char dir[256];

static const char *write_file(const char *name, const char *text)
{
    static char path[512];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE *f = fopen(path, "wb");
    fputs(text, f);
    fclose(f);
    return path;
}

static void test_jsonl_errors(void)
{
    dataset *d = NULL;
    CHECK_STATUS(dataset_open_jsonl(write_file("a.jsonl", "{\"prompt\": \"x\"}\n[1, 2]\n"), "prompt", 0, 1, &d),
                 TIDAL_ERR_INVALID);
    CHECK(strstr(tidal_errmsg(), "a.jsonl:2: not a JSON object"));
    CHECK_STATUS(dataset_open_jsonl(write_file("b.jsonl", "{\"prompt\": \"x\"}\n\n{\"question\": \"y\"}\n"), "prompt", 0,
                                    1, &d), TIDAL_ERR_INVALID);
    CHECK(strstr(tidal_errmsg(), "b.jsonl:3: prompt is missing"));
    CHECK_STATUS(dataset_open_jsonl(write_file("c.jsonl", "{\"prompt\": 5}\n"), "prompt", 0, 1, &d), TIDAL_ERR_INVALID);
    CHECK(strstr(tidal_errmsg(), "c.jsonl:1: prompt is not a string"));
    CHECK_STATUS(dataset_open_jsonl(write_file("d.jsonl", "\n\n"), "prompt", 0, 1, &d), TIDAL_ERR_INVALID);
    CHECK(strstr(tidal_errmsg(), "no training rows"));
    CHECK_STATUS(dataset_open_jsonl("/nonexistent.jsonl", "prompt", 0, 1, &d), TIDAL_ERR_IO);
    /* a NUL byte inside a row (found by fuzz_jsonl: jansson read past it, and the row, kept as a C
     * string, could not be served later) */
    static const char nul_row[] = "{\"prompt\": \"x\"}\n{\"prompt\": \"y\", \"m\": null\0}\n";
    const char *e = write_file("e.jsonl", "");
    FILE *f = fopen(e, "wb");
    CHECK(f && fwrite(nul_row, 1, sizeof nul_row - 1, f) == sizeof nul_row - 1);
    if (f) fclose(f);
    CHECK_STATUS(dataset_open_jsonl(e, "prompt", 0, 1, &d), TIDAL_ERR_INVALID);
    CHECK_MSG(strstr(tidal_errmsg(), "e.jsonl:2: a NUL byte at column 26"), "%s", tidal_errmsg());
}

static void test_epochs_split_and_order(void)
{
    enum { N = 200 };
    static char text[N * 64];
    size_t at = 0;
    for (int i = 0; i < N; i++) at += (size_t)snprintf(text + at, sizeof text - at, "{\"q\": \"r%d\", \"answer\": %d}\n", i, i);
    const char *path = write_file("rows.jsonl", text);
    dataset *d = NULL, *d2 = NULL;
    CHECK_OK(dataset_open_jsonl(path, "q", 0.1, 7, &d));
    CHECK_OK(dataset_open_jsonl(path, "q", 0.1, 7, &d2));
    const size_t rows = dataset_train_rows(d), ev = dataset_eval_count(d);
    printf("  %zu training rows, %zu held out\n", rows, ev);
    CHECK(rows + ev == N && ev > 5 && ev < 40);
    int seen[2][N] = {{0}};
    int sorted = 1, epochs_differ = 0, prev = -1;
    for (uint64_t i = 0; i < 2 * rows; i++) {
        dataset_item it, it2;
        CHECK_OK(dataset_train_item(d, i, 2, true, &it));
        CHECK_OK(dataset_train_item(d2, i, 2, true, &it2));
        CHECK(!strcmp(it.task_json, it2.task_json) && !strcmp(it.prompt, it2.prompt)); /* same seed, same order */
        int r = atoi(it.prompt + 1);
        seen[i / rows][r]++;
        if (i < rows) {
            if (r < prev) sorted = 0; /* shuffled: not in file order */
            prev = r;
        }
        if (i >= rows) {
            dataset_item a;
            CHECK_OK(dataset_train_item(d2, i - rows, 2, true, &a));
            epochs_differ |= strcmp(a.prompt, it.prompt) != 0;
            dataset_item_clear(&a);
        }
        dataset_item_clear(&it);
        dataset_item_clear(&it2);
    }
    for (int e = 0; e < 2; e++) {
        size_t once = 0;
        for (int r = 0; r < N; r++) {
            CHECK(seen[e][r] <= 1);
            once += seen[e][r];
        }
        CHECK_MSG(once == rows, "epoch %d covered %zu of %zu rows", e, once, rows);
    }
    CHECK_MSG(!sorted && epochs_differ, "sorted %d, epochs differ %d", sorted, epochs_differ);
    /* the held-out rows never train */
    for (size_t k = 0; k < ev; k++) {
        dataset_item it;
        CHECK_OK(dataset_eval_item(d, k, &it));
        CHECK(seen[0][atoi(it.prompt + 1)] == 0);
        dataset_item_clear(&it);
    }
    dataset_item end;
    CHECK_STATUS(dataset_train_item(d, 2 * rows, 2, true, &end), TIDAL_ERR_NOT_FOUND);
    /* without shuffling: file order */
    dataset *plain = NULL;
    CHECK_OK(dataset_open_jsonl(path, "q", 0.1, 7, &plain));
    prev = -1;
    for (uint64_t i = 0; i < rows; i++) {
        dataset_item it;
        CHECK_OK(dataset_train_item(plain, i, 1, false, &it));
        CHECK(atoi(it.prompt + 1) > prev && it.source == (uint64_t)atoi(it.prompt + 1) + 1);
        prev = atoi(it.prompt + 1);
        dataset_item_clear(&it);
    }
    dataset_free(plain);
    dataset_free(d);
    dataset_free(d2);
}

static void test_generator(void)
{
    dataset *d = NULL;
    CHECK_OK(dataset_open_generator("arith", "{\"digits\": 2}", 3, 16, &d));
    CHECK(dataset_eval_count(d) == 16 && dataset_train_rows(d) == 0);
    dataset_item a, b;
    CHECK_OK(dataset_train_item(d, 5, 1, true, &a));
    CHECK_OK(dataset_train_item(d, 5, 1, true, &b));
    CHECK(!strcmp(a.task_json, b.task_json) && strstr(a.task_json, "answer") && a.prompt[0]);
    CHECK((a.source & 1) == 0);
    dataset_item_clear(&b);
    CHECK_OK(dataset_train_item(d, 100000, 1, true, &b)); /* unbounded */
    dataset_item e;
    CHECK_OK(dataset_eval_item(d, 0, &e));
    CHECK(e.source & 1);
    dataset_item_clear(&a), dataset_item_clear(&b), dataset_item_clear(&e);
    dataset_free(d);
    CHECK_STATUS(dataset_open_generator("gsm8k", NULL, 0, 4, &d), TIDAL_ERR_INVALID); /* it has no generator */
    CHECK(strstr(tidal_errmsg(), "data.generator gsm8k"));
    CHECK_STATUS(dataset_open_generator("nope", NULL, 0, 4, &d), TIDAL_ERR_NOT_FOUND);
}

int main(void)
{
    const char *tmp = getenv("TMPDIR");
    snprintf(dir, sizeof dir, "%s/tidal-data-XXXXXX", tmp && *tmp ? tmp : "/tmp");
    if (!mkdtemp(dir)) return 1;
    RUN(test_jsonl_errors);
    RUN(test_epochs_split_and_order);
    RUN(test_generator);
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", dir);
    return check_summary();
}
