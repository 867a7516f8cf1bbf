/* fuzz_remote.c - libFuzzer target for the readers of inference servers'
 * answers (rollout/remote_reply.c): a server's response is input from the
 * network, and a wrong reading would train on tokens nobody sampled.
 *
 * The input's first byte picks the reader (vLLM's /v1/completions or
 * SGLang's /generate) and the vocabulary size; the rest is the body.
 * Checked on every input: the reader returns OK or TIDAL_ERR_INVALID (never
 * a crash, a leak or another status); on OK every id is in [0, vocab), every
 * log-probability finite and <= 0, the finish reason one of the three, and
 * on error the reply holds nothing.
 *
 * Seeds: tests/fuzz/seeds/fuzz_remote/ (answers of both servers in their
 * documented shapes, a list, an abort, an error body).
 * Run by hand: fuzz_remote -max_total_time=60 CORPUS_DIR tests/fuzz/seeds/fuzz_remote
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>

#include "rollout/remote.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1) return 0;
    const int vocab = 1 + (data[0] >> 1) * 8;
    remote_reply r;
    tidal_status st = data[0] & 1 ? remote_parse_sglang((const char *)data + 1, size - 1, vocab, &r)
                                  : remote_parse_vllm((const char *)data + 1, size - 1, vocab, &r);
    if (st != TIDAL_OK) {
        if (st != TIDAL_ERR_INVALID || r.ids || r.logprobs || r.n) abort();
        return 0;
    }
    if (r.n < 0 || (r.n > 0 && (!r.ids || !r.logprobs))) abort();
    if (r.finish != ENGINE_FINISH_STOP && r.finish != ENGINE_FINISH_LENGTH && r.finish != ENGINE_FINISH_ABORT) abort();
    for (int i = 0; i < r.n; i++)
        if (r.ids[i] < 0 || r.ids[i] >= vocab || !(r.logprobs[i] <= 0.0f) || !isfinite(r.logprobs[i])) abort();
    remote_reply_clear(&r);
    return 0;
}
