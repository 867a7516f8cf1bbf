/* guess.c - the `guess` environment: a multi-turn number-guessing game
 * (docs/environments.md "guess").
 *
 * Stateless like every env: each STEP carries the task (the secret and its
 * range) and the turn number, and answers from those alone. RESET states the
 * game; each STEP reads the last integer of the model's turn and answers
 * "Higher." / "Lower." (done false), "Correct!" (reward 1, done), or at
 * turn max_turns ends the episode revealing the number (reward 0).
 */
#include "envs/builtin.h"
#include "base/str.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define RANGE_LIMIT 1000000000000LL /* |low|, |high| at most 10^12 */
#define MAX_TURNS 1000

typedef struct guess_cfg {
    int64_t low, high, max_turns;
} guess_cfg;

static const char *const guess_keys[] = {"low", "high", "max_turns", NULL};

static tidal_status guess_create(const json_t *config, void **state)
{
    tidal_status st = env_cfg_keys(config, guess_keys);
    if (st != TIDAL_OK) return st;
    guess_cfg c;
    if ((st = env_cfg_int(config, "low", 1, -RANGE_LIMIT, RANGE_LIMIT, &c.low)) != TIDAL_OK) return st;
    if ((st = env_cfg_int(config, "high", 100, -RANGE_LIMIT, RANGE_LIMIT, &c.high)) != TIDAL_OK) return st;
    if ((st = env_cfg_int(config, "max_turns", 7, 1, MAX_TURNS, &c.max_turns)) != TIDAL_OK) return st;
    if (c.low > c.high)
        return env_bad("config", "high", "must be at least low (%" PRId64 "), got %" PRId64, c.low, c.high);
    guess_cfg *s = malloc(sizeof *s);
    if (!s) return tidal_fail(TIDAL_ERR_NOMEM, "out of memory");
    *s = c;
    *state = s;
    return TIDAL_OK;
}

static void guess_destroy(void *state) { free(state); }

/* The game of this task: the secret, its range and the turn limit. */
typedef struct game {
    int64_t secret, low, high, max_turns;
} game;

static tidal_status read_game(const guess_cfg *c, const json_t *task, game *g)
{
    tidal_status st;
    if ((st = env_task_int(task, "low", false, c->low, &g->low)) != TIDAL_OK) return st;
    if ((st = env_task_int(task, "high", false, c->high, &g->high)) != TIDAL_OK) return st;
    if ((st = env_task_int(task, "max_turns", false, c->max_turns, &g->max_turns)) != TIDAL_OK) return st;
    if ((st = env_task_int(task, "secret", true, 0, &g->secret)) != TIDAL_OK) return st;
    if (g->low < -RANGE_LIMIT || g->high > RANGE_LIMIT || g->low > g->high)
        return env_bad("task_json", "high", "the range [%" PRId64 ", %" PRId64 "] is empty or beyond +-10^12", g->low,
                       g->high);
    if (g->max_turns < 1 || g->max_turns > MAX_TURNS)
        return env_bad("task_json", "max_turns", "must be in 1..%d, got %" PRId64, MAX_TURNS, g->max_turns);
    if (g->secret < g->low || g->secret > g->high)
        return env_bad("task_json", "secret", "%" PRId64 " is outside [%" PRId64 ", %" PRId64 "]", g->secret, g->low,
                       g->high);
    return TIDAL_OK;
}

static char *intro(const game *g)
{
    return str_printf("I am thinking of a number between %" PRId64 " and %" PRId64
                      ". Guess it: answer with a number. You have %" PRId64 " guesses.",
                      g->low, g->high, g->max_turns);
}

static tidal_status guess_generate(const void *state, uint64_t seed, char **task_json, char **prompt)
{
    const guess_cfg *c = state;
    *task_json = *prompt = NULL;
    env_rng rng;
    env_rng_seed(&rng, seed);
    game g = {.low = c->low, .high = c->high, .max_turns = c->max_turns};
    g.secret = g.low + (int64_t)env_rng_below(&rng, (uint64_t)(g.high - g.low) + 1);
    json_t *task = json_pack("{s:I, s:I, s:I, s:I}", "secret", (json_int_t)g.secret, "low", (json_int_t)g.low, "high",
                             (json_int_t)g.high, "max_turns", (json_int_t)g.max_turns);
    char *tj = task ? json_dumps(task, JSON_COMPACT) : NULL;
    json_decref(task);
    char *p = intro(&g);
    if (!tj || !p) {
        free(tj);
        free(p);
        return tidal_fail(TIDAL_ERR_NOMEM, "guess: out of memory");
    }
    *task_json = tj;
    *prompt = p;
    return TIDAL_OK;
}

static tidal_status guess_handle(const void *state, const env_request *rq, env_result *out)
{
    game g;
    tidal_status st = read_game(state, rq->task, &g);
    if (st != TIDAL_OK) return st;
    uint32_t turn = rq->call->turn;
    if (rq->call->op == ENV_OP_RESET) {
        char *o = intro(&g);
        if (!o) return tidal_fail(TIDAL_ERR_NOMEM, "guess: out of memory");
        out->observation = o;
        return TIDAL_OK;
    }
    if (turn < 1) return tidal_fail(TIDAL_ERR_INVALID, "turn: 0, but a STEP's turn counts from 1");
    if (turn > g.max_turns)
        return tidal_fail(TIDAL_ERR_INVALID, "turn: %" PRIu32 " is past max_turns %" PRId64 " (the episode has ended)",
                          turn, g.max_turns);
    env_numtok tok;
    int64_t guess = 0;
    bool have = env_last_number(rq->action, strlen(rq->action), &tok) && env_number_int64(&tok.value, &guess);
    bool correct = have && guess == g.secret;
    bool last = turn >= g.max_turns;
    out->reward = correct ? 1.0 : 0.0;
    out->done = correct || last;
    if (correct) st = env_result_observe(out, "Correct!");
    else if (last)
        st = env_result_observe(out, "%sOut of guesses: the number was %" PRId64 ".",
                                !have ? "" : guess < g.secret ? "Higher. " : "Lower. ", g.secret);
    else if (!have)
        st = env_result_observe(out, "Please answer with a whole number between %" PRId64 " and %" PRId64 ".", g.low,
                                g.high);
    else st = env_result_observe(out, "%s", guess < g.secret ? "Higher." : "Lower.");
    if (st == TIDAL_OK) st = env_result_metric(out, "turns", (double)turn);
    if (st == TIDAL_OK) st = env_result_metric(out, "correct", correct ? 1.0 : 0.0);
    return st;
}

const env_class env_guess = {
    .name = "guess",
    .summary = "multi-turn number guessing: Higher. / Lower. until correct or out of turns",
    .create = guess_create,
    .destroy = guess_destroy,
    .handle = guess_handle,
    .generate = guess_generate,
};
