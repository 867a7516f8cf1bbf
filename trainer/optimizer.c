/* optimizer.c - AdamW, clipping, schedules (see optimizer.h). */
#include "trainer/optimizer.h"

#include <math.h>
#include <stdlib.h>

adamw_cfg adamw_defaults(void) { return (adamw_cfg){.beta1 = 0.9f, .beta2 = 0.999f, .eps = 1e-8f, .weight_decay = 0.01f}; }

tidal_status adamw_create(size_t n, const adamw_cfg *cfg, adamw **out)
{
    *out = NULL;
    adamw *o = calloc(1, sizeof *o);
    if (!o) return tidal_fail(TIDAL_ERR_NOMEM, "adamw: out of memory");
    o->cfg = cfg ? *cfg : adamw_defaults();
    o->n = n;
    o->m = calloc(n ? n : 1, sizeof(float));
    o->v = calloc(n ? n : 1, sizeof(float));
    if (!o->m || !o->v) {
        adamw_free(o);
        return tidal_fail(TIDAL_ERR_NOMEM, "adamw: cannot allocate state for %zu parameters", n);
    }
    *out = o;
    return TIDAL_OK;
}

void adamw_free(adamw *o)
{
    if (!o) return;
    free(o->m);
    free(o->v);
    free(o);
}

void adamw_step(adamw *o, float *params, const float *grads, const uint8_t *decay_mask, float lr)
{
    o->step++;
    const float b1 = o->cfg.beta1, b2 = o->cfg.beta2, eps = o->cfg.eps, wd = o->cfg.weight_decay;
    /* bias corrections in double: 1 - beta^t loses digits in float for large t */
    const double bc1 = 1.0 - pow((double)b1, (double)o->step);
    const double bc2 = 1.0 - pow((double)b2, (double)o->step);
    const float step_size = (float)(lr / bc1);
    const float inv_sqrt_bc2 = (float)(1.0 / sqrt(bc2));
#pragma omp parallel for schedule(static)
    for (size_t i = 0; i < o->n; i++) {
        float g = grads[i];
        if (!decay_mask || decay_mask[i]) params[i] -= lr * wd * params[i];
        float m = o->m[i] = b1 * o->m[i] + (1.0f - b1) * g;
        float v = o->v[i] = b2 * o->v[i] + (1.0f - b2) * g * g;
        params[i] -= step_size * m / (sqrtf(v) * inv_sqrt_bc2 + eps);
    }
}

double clip_grad_norm(float *grads, size_t n, double max_norm)
{
    double s = 0.0;
#pragma omp parallel for reduction(+ : s) schedule(static)
    for (size_t i = 0; i < n; i++) s += (double)grads[i] * grads[i];
    double norm = sqrt(s);
    if (max_norm > 0.0 && norm > max_norm) {
        float scale = (float)(max_norm / (norm + 1e-6));
#pragma omp parallel for schedule(static)
        for (size_t i = 0; i < n; i++) grads[i] *= scale;
    }
    return norm;
}

double grad_clip_bound(const adamw *o, double max_norm, double spike)
{
    if (!(spike > 0.0) || o->norms_seen < GRAD_SPIKE_WARMUP || !(o->norm_mean > 0.0)) return max_norm;
    const double b = spike * o->norm_mean;
    return max_norm > 0.0 && max_norm < b ? max_norm : b;
}

void grad_norm_observe(adamw *o, double applied)
{
    if (!isfinite(applied)) return; /* a non-finite gradient is the step's news, not the scale */
    o->norm_mean = o->norms_seen ? GRAD_SPIKE_DECAY * o->norm_mean + (1.0 - GRAD_SPIKE_DECAY) * applied : applied;
    o->norms_seen++;
}

float lr_at(const lr_schedule *s, long step)
{
    if (s->warmup > 0 && step < s->warmup) return s->base * (float)(step + 1) / (float)s->warmup;
    if (s->kind == LR_CONSTANT || s->total <= s->warmup) return s->base;
    double progress = (double)(step - s->warmup) / (double)(s->total - s->warmup);
    if (progress > 1.0) progress = 1.0;
    double floor = s->min_ratio;
    return (float)(s->base * (floor + (1.0 - floor) * 0.5 * (1.0 + cos(3.141592653589793 * progress))));
}
