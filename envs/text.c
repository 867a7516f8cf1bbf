/* text.c - reading numbers out of model text, shared by the built-in envs
 * (see builtin.h "numbers in text"): a scanner for number tokens ("-$1,234.50",
 * "3/4", "25%"), exact rational values with a double beside them, and
 * whitespace trimming. Pure functions of their input, linear time.
 */
#include "envs/builtin.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#define MAX_SIG 19 /* significant digits that always fit uint64 (10^19 - 1 < 2^64) */

bool env_is_space(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\v' || c == '\f' || c == '\r'; }

void env_trim(const char **s, size_t *len)
{
    const char *p = *s;
    size_t n = *len;
    while (n > 0 && env_is_space(p[0])) p++, n--;
    while (n > 0 && env_is_space(p[n - 1])) n--;
    *s = p;
    *len = n;
}

static bool is_digit(char c) { return c >= '0' && c <= '9'; }
static bool is_alpha(char c) { return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z'); }
/* a character after which a `-` or `+` is an operator, not a sign */
static bool ends_operand(char c) { return is_digit(c) || is_alpha(c) || c == '_' || c == ')' || c == ']' || c == '}'; }

static uint64_t gcd_u64(uint64_t a, uint64_t b)
{
    while (b) {
        uint64_t t = a % b;
        a = b;
        b = t;
    }
    return a;
}

/* The digits of int part t[a, b) (commas skipped) and fraction t[fs, fe)
 * (trailing zeros already dropped) as num / 10^(fe - fs), exact when it fits;
 * *approx always. */
static void decimal_value(const char *t, size_t a, size_t b, size_t fs, size_t fe, uint64_t *num, uint64_t *den,
                          bool *exact, double *approx)
{
    uint64_t m = 0;
    int sig = 0;
    bool ok = fe - fs <= MAX_SIG;
    char buf[400];
    size_t nb = 0, int_digits = 0;
    for (size_t i = a; i < b; i++) {
        if (t[i] == ',') continue;
        int d = t[i] - '0';
        if (sig == 0 && d == 0) continue; /* leading zero */
        if (sig < MAX_SIG) m = m * 10 + (uint64_t)d;
        else ok = false;
        sig++;
        int_digits++;
        if (nb < 320) buf[nb++] = t[i];
    }
    if (nb == 0) buf[nb++] = '0';
    buf[nb++] = '.';
    for (size_t i = fs; i < fe; i++) {
        int d = t[i] - '0';
        if (sig == 0 && d == 0) {
            if (nb < 390) buf[nb++] = t[i];
            continue;
        }
        if (sig < MAX_SIG) m = m * 10 + (uint64_t)d;
        else ok = false;
        sig++;
        if (nb < 390) buf[nb++] = t[i];
    }
    buf[nb] = '\0';
    *approx = int_digits > 308 ? INFINITY : strtod(buf, NULL);
    *exact = ok;
    *num = m;
    *den = 1;
    if (ok)
        for (size_t i = fs; i < fe; i++) *den *= 10;
}

/* The token whose digits start at d (or whose lone "." is at d), not
 * reaching before lo. */
static void read_token(const char *t, size_t len, size_t lo, size_t d, env_numtok *tok)
{
    size_t j = d;
    size_t int_a = d, int_b, fs = 0, fe = 0, ds = 0, de = 0;
    bool has_frac = false, has_den = false;
    if (t[j] == '.') {
        int_b = j; /* empty int part */
    } else {
        while (j < len && is_digit(t[j])) j++;
        if (j - d <= 3) /* comma groups of exactly three digits */
            while (j + 3 < len && t[j] == ',' && is_digit(t[j + 1]) && is_digit(t[j + 2]) && is_digit(t[j + 3]) &&
                   (j + 4 >= len || !is_digit(t[j + 4])))
                j += 4;
        int_b = j;
    }
    if (j + 1 < len && t[j] == '.' && is_digit(t[j + 1])) {
        has_frac = true;
        fs = j + 1;
        j = fs;
        while (j < len && is_digit(t[j])) j++;
        fe = j;
    } else if (j + 1 < len && t[j] == '/' && is_digit(t[j + 1])) {
        size_t k = j + 1;
        bool nonzero = false;
        while (k < len && is_digit(t[k])) nonzero = nonzero || t[k] != '0', k++;
        if (nonzero) {
            has_den = true;
            ds = j + 1;
            de = k;
            j = k;
        }
    }
    if (j < len && t[j] == '%') j++;
    tok->end = j;

    /* what comes before: `$`, a sign, in either order */
    size_t s = d;
    bool dollar = false, neg = false;
    if (s > lo && t[s - 1] == '$') s--, dollar = true;
    size_t sl = 0;
    if (s > lo && (t[s - 1] == '-' || t[s - 1] == '+')) sl = 1;
    else if (s >= lo + 3 && (unsigned char)t[s - 3] == 0xE2 && (unsigned char)t[s - 2] == 0x88 &&
             (unsigned char)t[s - 1] == 0x92)
        sl = 3; /* U+2212 MINUS SIGN */
    if (sl && (s - sl == 0 || !ends_operand(t[s - sl - 1]))) {
        neg = t[s - sl] != '+';
        s -= sl;
        if (!dollar && s > lo && t[s - 1] == '$') s--;
    }
    tok->start = s;

    /* the value */
    env_number *v = &tok->value;
    memset(v, 0, sizeof *v);
    if (has_frac)
        while (fe > fs && t[fe - 1] == '0') fe--;
    uint64_t num, den;
    bool exact;
    double approx;
    decimal_value(t, int_a, int_b, has_frac ? fs : 0, has_frac ? fe : 0, &num, &den, &exact, &approx);
    if (has_den) {
        uint64_t n2, d2;
        bool e2;
        double a2;
        decimal_value(t, ds, de, 0, 0, &n2, &d2, &e2, &a2);
        exact = exact && e2;
        den = n2; /* nonzero: checked above */
        approx = approx / a2;
    }
    if (exact) {
        if (num == 0) {
            den = 1;
        } else {
            uint64_t g = gcd_u64(num, den);
            num /= g;
            den /= g;
        }
    }
    v->exact = exact;
    v->num = exact ? num : 0;
    v->den = exact ? den : 1;
    v->approx = neg ? -approx : approx;
    v->neg = neg && (exact ? num != 0 : approx != 0);
}

bool env_next_number(const char *text, size_t len, size_t *pos, env_numtok *tok)
{
    size_t lo = *pos;
    for (size_t i = lo; i < len; i++) {
        bool start = false;
        if (is_digit(text[i])) start = i == lo || !is_digit(text[i - 1]);
        else if (text[i] == '.' && i + 1 < len && is_digit(text[i + 1]))
            start = i == 0 || !(is_digit(text[i - 1]) || is_alpha(text[i - 1]));
        if (!start) continue;
        read_token(text, len, lo, i, tok);
        *pos = tok->end;
        return true;
    }
    return false;
}

bool env_last_number(const char *text, size_t len, env_numtok *tok)
{
    size_t pos = 0;
    bool found = false;
    env_numtok t;
    while (env_next_number(text, len, &pos, &t)) {
        *tok = t;
        found = true;
    }
    return found;
}

bool env_number_parse(const char *text, size_t len, env_number *out)
{
    env_trim(&text, &len);
    if (len == 0) return false;
    size_t pos = 0;
    env_numtok t;
    if (!env_next_number(text, len, &pos, &t) || t.start != 0 || t.end != len) return false;
    *out = t.value;
    return true;
}

bool env_number_equal(const env_number *a, const env_number *b)
{
    if (a->exact && b->exact) return a->neg == b->neg && a->num == b->num && a->den == b->den;
    if (!isfinite(a->approx) || !isfinite(b->approx)) return false;
    double m = fmax(fabs(a->approx), fabs(b->approx));
    return fabs(a->approx - b->approx) <= 1e-9 * m;
}

bool env_number_int64(const env_number *a, int64_t *out)
{
    if (!a->exact || a->den != 1) return false;
    if (a->neg) {
        if (a->num > (uint64_t)INT64_MAX + 1) return false;
        *out = a->num == (uint64_t)INT64_MAX + 1 ? INT64_MIN : -(int64_t)a->num;
    } else {
        if (a->num > (uint64_t)INT64_MAX) return false;
        *out = (int64_t)a->num;
    }
    return true;
}
