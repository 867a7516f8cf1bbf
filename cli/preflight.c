/* preflight.c - what `tidal run` checks before it starts anything.
 *
 * A job that cannot run should say so in a second, naming the spec file and
 * the key, not after a private nats-server and four roles have started and a
 * summary.json has been written for a run that never ran. So before any of
 * that, tidal run does here what the roles will do first, with no bus: the
 * paths exist, the model's shape and tokenizer load, the chat format
 * resolves, the data opens (every JSONL row parses and has its prompt key),
 * and a built-in env accepts its config; on the trainer's machine, that
 * trainer.device cuda finds a GPU (the self-check runs when the trainer
 * starts) and that trainer.precision bf16 is not asked of the CPU. An env
 * served on the bus cannot be checked before the bus exists; the workers
 * report it (docs/environments.md).
 */
#include <string.h>

#include "cli/preflight.h"
#include "controller/data.h"
#include "envs/env.h"
#include "job/jobmodel.h"
#include "rollout/engine_cuda.h"
#include "trainer/device.h"

tidal_status run_preflight(const job_spec *s, const char *spec_file)
{
    TRY(spec_check_paths(s, spec_file));
    /* model.init's errors name their keys already; model.path's name its files */
    const char *model_key = s->model.init.on ? "model.init" : "model.path";
    model_config cfg;
    TRY_WRAP(job_model_config(s, &cfg), s->model.init.on ? "%s" : "%s: model.path", spec_file);
    tokenizer *tok = NULL;
    TRY_WRAP(job_tokenizer(s, &tok), s->model.init.on ? "%s" : "%s: model.path", spec_file);
    const int vocab = tokenizer_vocab_size(tok);
    tokenizer_free(tok);
    if (vocab > cfg.vocab_size)
        return tidal_fail(TIDAL_ERR_INVALID, "%s: %s: the tokenizer has %d ids but the model's vocabulary holds %d",
                          spec_file, model_key, vocab, cfg.vocab_size);
    chat_format fmt;
    TRY_WRAP(job_chat_format(s, &fmt), "%s: data.template", spec_file);
    dataset *d = NULL;
    if (s->data.generator[0])
        TRY_WRAP(dataset_open_generator(s->data.generator, s->env.config_json, (uint64_t)s->data.seed,
                                        s->data.eval_size, &d),
                 "%s", spec_file);
    else
        TRY_WRAP(dataset_open_jsonl(s->data.path, s->data.prompt_key, s->data.eval_fraction, (uint64_t)s->data.seed,
                                    &d),
                 "%s: data.path", spec_file);
    dataset_free(d);
    if (!s->env.remote) {
        env *e = NULL;
        TRY_WRAP(env_create(s->env.name, s->env.config_json, &e), "%s", spec_file);
        env_free(e);
    }
    return TIDAL_OK;
}

tidal_status run_preflight_device(const job_spec *s, const char *spec_file)
{
    if (!strcmp(s->trainer.device, "cuda") && trainer_device_cuda_available() != TIDAL_OK)
        return tidal_wrap(TIDAL_ERR_UNAVAILABLE, "%s: trainer.device cuda", spec_file);
    /* bf16 on the CPU: refused here, not after the job has started (auto resolves as the trainer will) */
    trainer_device_kind k = TRAINER_DEVICE_CPU;
    trainer_precision p = TRAINER_PRECISION_FP32;
    TRY_WRAP(trainer_device_resolve(s->trainer.device, &k, NULL, 0), "%s", spec_file);
    TRY_WRAP(trainer_precision_resolve(s->trainer.precision, k, &p, NULL, 0), "%s", spec_file);
    return TIDAL_OK;
}

tidal_status run_preflight_rollout_device(const job_spec *s, const char *spec_file)
{
    if (!strcmp(s->rollout.device, "cuda") && strcmp(s->rollout.backend, "openai") != 0 &&
        engine_cuda_available() != TIDAL_OK)
        return tidal_wrap(TIDAL_ERR_UNAVAILABLE, "%s: rollout.device cuda", spec_file);
    return TIDAL_OK;
}
