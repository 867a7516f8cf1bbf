/* test_spec.c - the job spec (job/spec.h): a full spec read with its
 * values, defaults for the rest, every kind of error naming FILE:LINE and
 * the key path, --set, the JSON round trip, and docs/configuration.md
 * listing every key with its default. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "job/spec.h"

static const char GOOD[] = "job:\n"
                           "  name: quick-1\n"
                           "model:\n"
                           "  init:\n"
                           "    layers: 2\n"
                           "    hidden: 64\n"
                           "    heads: 4\n"
                           "    kv_heads: 2\n"
                           "data:\n"
                           "  generator: strings\n"
                           "  seed: 7\n"
                           "env:\n"
                           "  name: strings\n"
                           "  config:\n"
                           "    length: 3\n"
                           "    alphabet: digits\n"
                           "    ops: [reverse]\n"
                           "    label: \"007\"\n"
                           "rollout:\n"
                           "  workers: 2\n"
                           "  group_size: 8\n"
                           "  temperature: 0.7\n"
                           "buffer:\n"
                           "  max_staleness: 2\n"
                           "  filter_zero_variance: yes\n"
                           "trainer:\n"
                           "  lr: 3e-4\n"
                           "  correction: tis\n"
                           "  advantage: grpo\n";

/* Parse text expecting an error whose message contains every `want`. */
static int parse_fails(const char *yaml, const char *const *sets, int n_sets, const char *want1, const char *want2)
{
    job_spec s;
    tidal_status st = spec_parse(yaml, strlen(yaml), "job.yaml", sets, n_sets, &s);
    const char *m = tidal_errmsg();
    int ok = st == TIDAL_ERR_INVALID && strstr(m, want1) && (!want2 || strstr(m, want2));
    if (!ok) fprintf(stderr, "  want \"%s\"%s%s, got %s: %s\n", want1, want2 ? " + " : "", want2 ? want2 : "",
                     tidal_status_name(st), m);
    spec_release(&s);
    return ok;
}

static void test_good_spec_and_defaults(void)
{
    job_spec s;
    CHECK_OK(spec_parse(GOOD, strlen(GOOD), "job.yaml", NULL, 0, &s));
    CHECK(!strcmp(s.job.name, "quick-1") && s.model.init.on && s.model.init.layers == 2 &&
          s.model.init.hidden == 64 && !strcmp(s.model.init.arch, "qwen2"));
    CHECK(!strcmp(s.data.generator, "strings") && s.data.seed == 7 && s.data.shuffle);
    CHECK(s.rollout.workers == 2 && s.rollout.group_size == 8 && s.rollout.temperature == 0.7);
    CHECK(s.buffer.max_staleness == 2 && s.buffer.filter_zero_variance && !strcmp(s.buffer.sampling, "fifo"));
    CHECK(s.trainer.lr == 3e-4 && !strcmp(s.trainer.correction, "tis") && s.trainer.tis_c == 2.0);
    CHECK(s.trainer.steps == 100 && s.env.timeout_ms == 10000 && !strcmp(s.weights.transport, "bus"));
    /* env.config is kept as JSON, with YAML's types: plain numbers numbers, quoted strings strings */
    CHECK_MSG(!strcmp(s.env.config_json, "{\"alphabet\":\"digits\",\"label\":\"007\",\"length\":3,\"ops\":[\"reverse\"]}"),
              "%s", s.env.config_json);
    spec_release(&s);
}

static void test_errors_name_line_and_key(void)
{
    CHECK(parse_fails("job:\n  name: a\n  nmae: b\n", NULL, 0, "job.yaml:3: job.nmae: unknown key", "did you mean job.name"));
    CHECK(parse_fails("job: {name: a}\ntrainer:\n  lr: fast\n", NULL, 0, "job.yaml:3: trainer.lr", "not a finite number"));
    CHECK(parse_fails("trainer:\n  steps: \"3\"\n", NULL, 0, "job.yaml:2: trainer.steps", "not the string \"3\""));
    CHECK(parse_fails("rollout:\n  group_size: 0\n", NULL, 0, "job.yaml:2: rollout.group_size", "out of range [1, 65536]"));
    CHECK(parse_fails("trainer:\n  correction: tiss\n", NULL, 0, "job.yaml:2: trainer.correction",
                      "not one of none|tis|tis_seq|mis|mis_seq|bypass"));
    CHECK(parse_fails("buffer:\n  filter_zero_variance: maybe\n", NULL, 0, "job.yaml:2", "not true or false"));
    CHECK(parse_fails("trainer:\n  lr: [1, 2]\n", NULL, 0, "job.yaml:2: trainer.lr", "not a list"));
    CHECK(parse_fails("trainer: 5\n", NULL, 0, "job.yaml:1: trainer: unknown key", NULL));
    CHECK(parse_fails("job:\n  name: a\n  name: b\n", NULL, 0, "job.yaml:3", "name is given twice (first at line 2)"));
    CHECK(parse_fails("job:\n  name: [a\n", NULL, 0, "job.yaml:", "YAML"));
    CHECK(parse_fails("- a\n- b\n", NULL, 0, "job.yaml:1", "must be a mapping"));
    CHECK(parse_fails("", NULL, 0, "job.yaml: the spec is empty", NULL));
    CHECK(parse_fails("job: {name: a}\n---\njob: {name: b}\n", NULL, 0, "a second YAML document", NULL));
    CHECK(parse_fails("env:\n  config: 3\n", NULL, 0, "job.yaml:2: env.config", "a mapping is expected"));
}

static void test_rules_across_keys(void)
{
    CHECK(parse_fails("env: {name: arith}\ndata: {generator: arith}\nmodel: {init: {layers: 1}}\n", NULL, 0,
                      "job.name is required", NULL));
    CHECK(parse_fails("job: {name: 'a b'}\n", NULL, 0, "job.name", "outside [A-Za-z0-9_-]"));
    CHECK(parse_fails("job: {name: a}\ndata: {generator: arith}\nmodel: {init: {layers: 1}}\n", NULL, 0,
                      "env.name is required", NULL));
    CHECK(parse_fails("job: {name: a}\nenv: {name: arith}\ndata: {generator: arith}\n", NULL, 0,
                      "exactly one of model.path", NULL));
    CHECK(parse_fails("job: {name: a}\nenv: {name: arith}\ndata: {generator: arith}\n"
                      "model: {path: /m, init: {layers: 1}}\n", NULL, 0, "exactly one of model.path", NULL));
    CHECK(parse_fails("job: {name: a}\nenv: {name: arith}\nmodel: {path: /m}\n", NULL, 0, "exactly one of data.path",
                      NULL));
    CHECK(parse_fails("job: {name: a}\nenv: {name: arith}\ndata: {generator: arith}\n"
                      "model: {init: {heads: 4, kv_heads: 3}}\n", NULL, 0, "model.init.kv_heads: 3 does not divide", NULL));
    CHECK(parse_fails("job: {name: a}\nenv: {name: arith}\ndata: {generator: arith}\n"
                      "model: {init: {tokenizer: /t/tokenizer.json, alphabet: \"01\"}}\n", NULL, 0,
                      "at most one of model.init.tokenizer and model.init.alphabet", NULL));
    /* model.init.tokenizer alone makes a model.init spec */
    job_spec tk;
    const char *tk_yaml = "job: {name: a}\nenv: {name: gsm8k}\ndata: {path: /d.jsonl}\n"
                          "model: {init: {tokenizer: /t}}\n";
    CHECK_OK(spec_parse(tk_yaml, strlen(tk_yaml), "job.yaml", NULL, 0, &tk));
    CHECK(tk.model.init.on && !strcmp(tk.model.init.tokenizer, "/t"));
    spec_release(&tk);
    CHECK(parse_fails("job: {name: a}\nenv: {name: arith}\ndata: {generator: arith}\nmodel: {path: /m}\n"
                      "rollout: {backend: openai, dialect: tgi}\n", NULL, 0, "rollout.dialect", NULL));
    /* weights.public_key: "ed25519:" (optional) and 64 hex digits */
    const char *key_sets[] = {"weights.public_key=ed25519:0123"};
    CHECK(parse_fails(GOOD, key_sets, 1, "weights.public_key", "64 hex digits"));
    const char *hex_sets[] = {"weights.public_key=ed25519:"
                              "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdeg"};
    CHECK(parse_fails(GOOD, hex_sets, 1, "weights.public_key", "64 hex digits"));
    job_spec ok;
    const char *good_sets[] = {"weights.public_key=0123456789ABCDEF0123456789abcdef0123456789abcdef0123456789abcdef"};
    CHECK_OK(spec_parse(GOOD, strlen(GOOD), "job.yaml", good_sets, 1, &ok));
    spec_release(&ok);
    /* transport http: the bind is an IPv4 address and a port, the URL http:// */
    const char *bind_bad[][1] = {{"weights.http_bind=localhost:80"}, {"weights.http_bind=1.2.3.4"},
                                 {"weights.http_bind=1.2.3.4:70000"}, {"weights.http_bind=1.2.3.4:-1"},
                                 {"weights.http_bind=:80"}};
    for (int i = 0; i < 5; i++) CHECK(parse_fails(GOOD, bind_bad[i], 1, "weights.http_bind", "IPv4 address and a port"));
    const char *url_bad[] = {"weights.http_url=https://h:1"};
    CHECK(parse_fails(GOOD, url_bad, 1, "weights.http_url", "is not http://host:port"));
    const char *url_none[] = {"weights.transport=url"};
    CHECK(parse_fails(GOOD, url_none, 1, "weights.transport", NULL));
    const char *http_sets[] = {"weights.transport=http", "weights.http_bind=0.0.0.0:8470",
                               "weights.http_url=http://trainer-0:8470"};
    CHECK_OK(spec_parse(GOOD, strlen(GOOD), "job.yaml", http_sets, 3, &ok));
    CHECK(!strcmp(ok.weights.transport, "http") && !strcmp(ok.weights.http_bind, "0.0.0.0:8470") &&
          ok.weights.http_timeout_ms == 10000 && ok.weights.http_parallel == 4);
    spec_release(&ok);
}

static void test_set_overrides(void)
{
    const char *sets[] = {"trainer.steps=12", "rollout.temperature=0", "env.config.length=5",
                          "env.config.alphabet=letters", "buffer.max_staleness=0"};
    job_spec s;
    CHECK_OK(spec_parse(GOOD, strlen(GOOD), "job.yaml", sets, 5, &s));
    CHECK(s.trainer.steps == 12 && s.rollout.temperature == 0.0 && s.buffer.max_staleness == 0);
    CHECK_MSG(strstr(s.env.config_json, "\"length\":5") && strstr(s.env.config_json, "\"alphabet\":\"letters\""), "%s",
              s.env.config_json);
    spec_release(&s);
    const char *bad1[] = {"trainer.stepz=3"};
    CHECK(parse_fails(GOOD, bad1, 1, "--set trainer.stepz: unknown key", "did you mean trainer.steps"));
    const char *bad2[] = {"trainer.steps=many"};
    CHECK(parse_fails(GOOD, bad2, 1, "--set trainer.steps", "not an integer"));
    const char *bad3[] = {"novalue"};
    CHECK(parse_fails(GOOD, bad3, 1, "--set novalue: the form is key.path=value", NULL));
}

static void test_json_round_trip(void)
{
    job_spec a, b;
    CHECK_OK(spec_parse(GOOD, strlen(GOOD), "job.yaml", NULL, 0, &a));
    json_t *j = spec_to_json(&a);
    CHECK(j && json_is_object(json_object_get(json_object_get(j, "model"), "init")));
    tidal_status st = spec_from_json(j, "kv spec", &b);
    json_t *j2 = st == TIDAL_OK ? spec_to_json(&b) : NULL;
    int same = j2 && json_equal(j, j2);
    CHECK_OK(st);
    CHECK(same && b.trainer.lr == a.trainer.lr && !strcmp(b.env.config_json, a.env.config_json));
    /* a worker refuses a spec it cannot honour */
    json_object_set_new(json_object_get(j, "trainer"), "lr", json_string("fast"));
    job_spec c;
    CHECK_STATUS(spec_from_json(j, "kv spec", &c), TIDAL_ERR_INVALID);
    CHECK(strstr(tidal_errmsg(), "kv spec: trainer.lr"));
    json_object_set_new(j, "surprise", json_true());
    json_object_set_new(json_object_get(j, "trainer"), "lr", json_real(1e-5));
    CHECK_STATUS(spec_from_json(j, "kv spec", &c), TIDAL_ERR_INVALID);
    CHECK(strstr(tidal_errmsg(), "surprise: unknown key"));
    json_decref(j);
    json_decref(j2);
    spec_release(&a);
    spec_release(&b);
    /* a string with a newline and spaces survives (model.init.alphabet) */
    const char *sets[] = {"model.init.alphabet=0123 \nab"};
    CHECK_OK(spec_parse(GOOD, strlen(GOOD), "job.yaml", sets, 1, &a));
    j = spec_to_json(&a);
    CHECK_OK(spec_from_json(j, "kv spec", &b));
    CHECK_MSG(!strcmp(b.model.init.alphabet, a.model.init.alphabet) && strlen(a.model.init.alphabet) == 8,
              "alphabet '%s' -> '%s'", a.model.init.alphabet, b.model.init.alphabet);
    json_decref(j);
    spec_release(&a);
    spec_release(&b);
}

static void test_docs_list_every_key(void)
{
    const char *src = getenv("TIDAL_SOURCE_DIR");
    char path[1024];
    snprintf(path, sizeof path, "%s/docs/configuration.md", src ? src : ".");
    FILE *f = fopen(path, "rb");
    CHECK_MSG(f, "cannot open %s", path);
    static char doc[1 << 17];
    size_t n = fread(doc, 1, sizeof doc - 1, f);
    fclose(f);
    doc[n] = '\0';
    const spec_key_info *k;
    int nk = spec_keys(&k), missing = 0;
    for (int i = 0; i < nk; i++) {
        char row[512];
        snprintf(row, sizeof row, "| `%s` | %s | %s%s%s |", k[i].path, k[i].type, k[i].def[0] ? "`" : "",
                 k[i].def[0] ? k[i].def : "(empty)", k[i].def[0] ? "`" : "");
        if (!strstr(doc, row)) {
            fprintf(stderr, "  docs/configuration.md lacks the row: %s\n", row);
            missing++;
        }
    }
    CHECK_MSG(missing == 0, "%d of %d keys are not documented as they are", missing, nk);
}

static void test_file_errors(void)
{
    job_spec s;
    CHECK_STATUS(spec_load("/nonexistent/job.yaml", NULL, 0, &s), TIDAL_ERR_IO);
    CHECK(strstr(tidal_errmsg(), "/nonexistent/job.yaml: cannot open"));
    spec_release(&s);
}

/* The job specs the repository ships are valid as they are. */
static void test_examples_are_valid(void)
{
    const char *src = getenv("TIDAL_SOURCE_DIR");
    const char *files[] = {"examples/quickstart.yaml", "examples/gsm8k-qwen2.5-0.5b.yaml", "examples/gsm8k-tiny.yaml"};
    for (size_t i = 0; i < sizeof files / sizeof files[0]; i++) {
        char path[1024];
        snprintf(path, sizeof path, "%s/%s", src ? src : ".", files[i]);
        job_spec s;
        tidal_status st = spec_load(path, NULL, 0, &s);
        CHECK_MSG(st == TIDAL_OK, "%s: %s", files[i], tidal_errmsg());
        spec_release(&s);
    }
}

int main(void)
{
    RUN(test_good_spec_and_defaults);
    RUN(test_errors_name_line_and_key);
    RUN(test_rules_across_keys);
    RUN(test_set_overrides);
    RUN(test_json_round_trip);
    RUN(test_docs_list_every_key);
    RUN(test_file_errors);
    RUN(test_examples_are_valid);
    return check_summary();
}
