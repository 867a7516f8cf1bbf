/* chat.c - chat templates chatml, llama3 and plain (see chat.h).
 *
 * The formats are written out by hand rather than interpreted from the Jinja
 * templates: the three strings below are what Qwen's and Meta's templates
 * produce for plain system / user / assistant conversations, and
 * recognising a model's template needs only its markers.
 */
#include "model/chat.h"

#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

typedef struct {
    char *p;
    size_t len, cap;
    bool oom;
} buf;

static void put(buf *b, const char *s, size_t n)
{
    if (b->oom) return;
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->len + n + 1) cap *= 2;
        char *p = realloc(b->p, cap);
        if (!p) { b->oom = true; return; }
        b->p = p;
        b->cap = cap;
    }
    memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len] = '\0';
}

static void puts_(buf *b, const char *s) { put(b, s, strlen(s)); }

tidal_status chat_format_parse(const char *name, chat_format *out)
{
    static const struct { const char *name; chat_format f; } names[] = {
        {"chatml", CHAT_CHATML}, {"llama3", CHAT_LLAMA3}, {"plain", CHAT_PLAIN}, {"none", CHAT_NONE},
    };
    for (size_t i = 0; name && i < sizeof names / sizeof names[0]; i++)
        if (!strcmp(name, names[i].name)) { *out = names[i].f; return TIDAL_OK; }
    return tidal_fail(TIDAL_ERR_INVALID, "chat template \"%s\": not one of chatml, llama3, plain, none",
                      name ? name : "(null)");
}

const char *chat_format_name(chat_format f)
{
    switch (f) {
    case CHAT_CHATML: return "chatml";
    case CHAT_LLAMA3: return "llama3";
    case CHAT_PLAIN: return "plain";
    case CHAT_NONE: return "none";
    }
    return "unknown";
}

const char *chat_format_jinja(chat_format f)
{
    switch (f) {
    case CHAT_CHATML:
        return "{%- for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + "
               "'<|im_end|>' + '\\n' }}{%- endfor %}{%- if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}"
               "{%- endif %}";
    case CHAT_LLAMA3:
        return "{{ '<|begin_of_text|>' }}{%- for message in messages %}{{ '<|start_header_id|>' + message['role'] + "
               "'<|end_header_id|>\\n\\n' + message['content'] | trim + '<|eot_id|>' }}{%- endfor %}{%- if "
               "add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{%- endif %}";
    case CHAT_PLAIN:
        return "{%- for message in messages %}{{ message['role'] + ': ' + message['content'] + '\\n' }}{%- endfor %}"
               "{%- if add_generation_prompt %}{{ 'assistant:' }}{%- endif %}";
    case CHAT_NONE: return "{%- for message in messages %}{{ message['content'] + '\\n' }}{%- endfor %}";
    }
    return "";
}

tidal_status chat_format_detect(const char *chat_template, chat_format *out)
{
    if (!chat_template) return tidal_fail(TIDAL_ERR_NOT_FOUND, "no chat_template to recognise");
    /* tidal's own templates (a model directory it wrote for a tiny model) */
    if (!strcmp(chat_template, chat_format_jinja(CHAT_PLAIN))) { *out = CHAT_PLAIN; return TIDAL_OK; }
    if (!strcmp(chat_template, chat_format_jinja(CHAT_NONE))) { *out = CHAT_NONE; return TIDAL_OK; }
    if (strstr(chat_template, "<|im_start|>")) { *out = CHAT_CHATML; return TIDAL_OK; }
    if (strstr(chat_template, "<|start_header_id|>")) { *out = CHAT_LLAMA3; return TIDAL_OK; }
    return tidal_fail(TIDAL_ERR_NOT_FOUND,
                      "chat_template has neither <|im_start|> (chatml) nor <|start_header_id|> (llama3): name a "
                      "template (chatml, llama3, plain)");
}

tidal_status chat_template_of_config(const json_t *root, const char *name, const char **out)
{
    *out = NULL;
    json_t *tpl = jv_get(root, "chat_template");
    if (json_is_array(tpl)) { /* [{name, template}, ...]: the one named "default", else the first */
        json_t *pick = NULL;
        for (size_t i = 0; i < json_array_size(tpl); i++) {
            json_t *e = json_array_get(tpl, i), *nm = jv_get(e, "name");
            if (!pick || (json_is_string(nm) && !strcmp(json_string_value(nm), "default"))) pick = e;
        }
        tpl = pick ? jv_get(pick, "template") : NULL;
        if (pick && !json_is_string(tpl)) return jv_bad(name, "chat_template", "entries must hold a \"template\" string");
    } else if (tpl && !json_is_string(tpl)) {
        return jv_bad(name, "chat_template", "must be a string or a list of {name, template}");
    }
    if (json_is_string(tpl)) *out = json_string_value(tpl);
    return TIDAL_OK;
}

/* PATH can be opened for reading: NOT_FOUND or IO naming it otherwise. */
static tidal_status readable(const char *path)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return tidal_fail(errno == ENOENT ? TIDAL_ERR_NOT_FOUND : TIDAL_ERR_IO, "%s: open: %s", path, strerror(errno));
    fclose(f);
    return TIDAL_OK;
}

tidal_status chat_format_of_model_dir(const char *dir, chat_format *out)
{
    *out = CHAT_PLAIN;
    if (!dir) return tidal_fail(TIDAL_ERR_INVALID, "chat format: no model directory");
    struct stat sb;
    if (stat(dir, &sb) != 0)
        return tidal_fail(errno == ENOENT ? TIDAL_ERR_NOT_FOUND : TIDAL_ERR_IO, "%s: %s", dir, strerror(errno));
    if (!S_ISDIR(sb.st_mode)) return tidal_fail(TIDAL_ERR_INVALID, "%s: not a model directory", dir);
    char path[4200];
    snprintf(path, sizeof path, "%s/tokenizer.json", dir);
    TRY(readable(path));
    snprintf(path, sizeof path, "%s/tokenizer_config.json", dir);
    json_error_t jerr;
    /* integers as reals: Llama-3 sets model_max_length to 1e30 as an integer */
    json_t *root = json_load_file(path, JSON_REJECT_DUPLICATES | JSON_DECODE_INT_AS_REAL, &jerr);
    if (!root && access(path, F_OK) != 0 && errno == ENOENT) return TIDAL_OK; /* no config: no template */
    if (!root)
        return tidal_fail(TIDAL_ERR_INVALID, "%s: JSON at line %d column %d: %s", path, jerr.line, jerr.column,
                          jerr.text);
    const char *tmpl = NULL;
    tidal_status st = json_is_object(root) ? chat_template_of_config(root, path, &tmpl)
                                           : jv_bad(path, "(top level)", "must be an object");
    if (st == TIDAL_OK && tmpl && chat_format_detect(tmpl, out) != TIDAL_OK) { /* unrecognised: plain */
        *out = CHAT_PLAIN;
        tidal_clear();
    }
    json_decref(root);
    return st;
}

/* Length of the whitespace (Python's str.isspace, as Jinja's trim strips)
 * starting at s, or 0. */
static size_t space_at(const unsigned char *s, size_t n)
{
    if (!n) return 0;
    if ((s[0] >= 9 && s[0] <= 13) || (s[0] >= 0x1c && s[0] <= 0x20)) return 1;
    if (n >= 2 && s[0] == 0xC2 && (s[1] == 0x85 || s[1] == 0xA0)) return 2;
    if (n >= 3 && s[0] == 0xE1 && s[1] == 0x9A && s[2] == 0x80) return 3; /* U+1680 */
    if (n >= 3 && s[0] == 0xE2 && s[1] == 0x80 &&
        ((s[2] >= 0x80 && s[2] <= 0x8A) || s[2] == 0xA8 || s[2] == 0xA9 || s[2] == 0xAF))
        return 3; /* U+2000-200A, 2028, 2029, 202F */
    if (n >= 3 && s[0] == 0xE2 && s[1] == 0x81 && s[2] == 0x9F) return 3; /* U+205F */
    if (n >= 3 && s[0] == 0xE3 && s[1] == 0x80 && s[2] == 0x80) return 3; /* U+3000 */
    return 0;
}

/* content with leading and trailing whitespace removed: [*b, *e). */
static void trim(const char *s, size_t *b, size_t *e)
{
    const unsigned char *u = (const unsigned char *)s;
    size_t n = strlen(s), i = 0, l;
    while ((l = space_at(u + i, n - i))) i += l;
    size_t end = i, k = i;
    while (k < n) {
        l = space_at(u + k, n - k);
        if (l) { k += l; continue; }
        k++;
        while (k < n && (u[k] & 0xC0) == 0x80) k++;
        end = k;
    }
    *b = i;
    *e = end;
}

tidal_status chat_render(chat_format f, const chat_message *msgs, size_t n, bool add_generation_prompt, char **out,
                         size_t *len)
{
    *out = NULL;
    if (len) *len = 0;
    if (f != CHAT_CHATML && f != CHAT_LLAMA3 && f != CHAT_PLAIN && f != CHAT_NONE)
        return tidal_fail(TIDAL_ERR_INVALID, "chat template: unknown format %d", (int)f);
    if (n && !msgs) return tidal_fail(TIDAL_ERR_INVALID, "chat template: NULL messages");
    for (size_t i = 0; i < n; i++) {
        const char *r = msgs[i].role;
        if (!r || (strcmp(r, "system") && strcmp(r, "user") && strcmp(r, "assistant")))
            return tidal_fail(TIDAL_ERR_INVALID, "chat messages[%zu].role: \"%s\" is not system, user or assistant", i,
                              r ? r : "(null)");
        if (!msgs[i].content) return tidal_fail(TIDAL_ERR_INVALID, "chat messages[%zu].content: NULL", i);
    }
    buf b = {0};
    put(&b, "", 0);
    if (f == CHAT_LLAMA3) puts_(&b, "<|begin_of_text|>");
    for (size_t i = 0; i < n; i++) {
        const char *role = msgs[i].role, *c = msgs[i].content;
        switch (f) {
        case CHAT_CHATML:
            puts_(&b, "<|im_start|>");
            puts_(&b, role);
            puts_(&b, "\n");
            puts_(&b, c);
            puts_(&b, "<|im_end|>\n");
            break;
        case CHAT_LLAMA3: {
            size_t s, e;
            trim(c, &s, &e);
            puts_(&b, "<|start_header_id|>");
            puts_(&b, role);
            puts_(&b, "<|end_header_id|>\n\n");
            put(&b, c + s, e - s);
            puts_(&b, "<|eot_id|>");
            break;
        }
        case CHAT_PLAIN:
            puts_(&b, role);
            puts_(&b, ": ");
            puts_(&b, c);
            puts_(&b, "\n");
            break;
        case CHAT_NONE:
            puts_(&b, c);
            puts_(&b, "\n");
            break;
        }
    }
    if (add_generation_prompt) {
        switch (f) {
        case CHAT_CHATML: puts_(&b, "<|im_start|>assistant\n"); break;
        case CHAT_LLAMA3: puts_(&b, "<|start_header_id|>assistant<|end_header_id|>\n\n"); break;
        case CHAT_PLAIN: puts_(&b, "assistant:"); break;
        case CHAT_NONE: break;
        }
    }
    if (b.oom) {
        free(b.p);
        return tidal_fail(TIDAL_ERR_NOMEM, "chat template: out of memory");
    }
    *out = b.p;
    if (len) *len = b.len;
    return TIDAL_OK;
}

const char *chat_end_of_turn(chat_format f)
{
    switch (f) {
    case CHAT_CHATML: return "<|im_end|>";
    case CHAT_LLAMA3: return "<|eot_id|>";
    case CHAT_PLAIN: return "\n";
    case CHAT_NONE: return "\n";
    }
    return "";
}
