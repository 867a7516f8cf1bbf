/* tokenizer.h - text <-> token ids: Hugging Face byte-level BPE tokenizers
 * (tokenizer.json of the GPT-2, Llama-3 and Qwen2/2.5/3 families) and the
 * byte-level tokenizer of tiny models built from a job spec.
 *
 * Encoding follows the Hugging Face `tokenizers` library with its defaults:
 * added and special tokens written in the text ("<|im_start|>") become their
 * ids before anything else; the rest goes through the file's normalizer (NFC
 * for Qwen), its pre-tokenizer (Split regexes compiled with PCRE2, then
 * ByteLevel) and the BPE merges. Special tokens the post-processor adds (the
 * BOS of Llama-3) are added only when asked for.
 *
 * Decoding gives back the exact bytes of the tokens: a token that holds part
 * of a UTF-8 character decodes to that partial byte sequence; nothing is
 * replaced by U+FFFD. For every input, decode(encode(x)) == normalize(x) (x
 * itself when the file declares no normalizer), invalid UTF-8 included:
 * invalid bytes never reach the normalizer or the regexes, they are
 * BPE-encoded as bytes of their own. (The one exception is Hugging Face's
 * own: an added token marked lstrip / rstrip swallows the whitespace beside
 * it; none of the supported families has one.)
 *
 * Refused when loading, with a message naming the file and the field: models
 * other than BPE (WordPiece, Unigram), BPE with byte_fallback (SentencePiece
 * style, Llama-2 / Mistral), dropout, subword prefixes or suffixes, and
 * normalizer, pre-tokenizer, post-processor or decoder types this reader does
 * not implement; a vocabulary without a token for every byte, except in a
 * file that encodes one token per byte (no merges, normalizer, Split steps or
 * prefix space: tidal's alphabet tokenizer as tokenizer_json_text writes it),
 * which then refuses text with a byte outside its vocabulary.
 *
 * A loaded tokenizer is immutable; encode and decode may be called from
 * several threads at once (each call borrows its scratch space from a small
 * pool inside the tokenizer).
 */
#ifndef TIDAL_MODEL_TOKENIZER_H
#define TIDAL_MODEL_TOKENIZER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "base/status.h"

typedef struct tokenizer tokenizer;

/* A growable array of token ids owned by the caller. Start from {0} (or
 * reuse one: set n = 0); the functions append and grow it; free with
 * tok_ids_free. */
typedef struct tok_ids {
    int32_t *ids;
    size_t n, cap;
} tok_ids;

/* A growable byte buffer owned by the caller, like tok_ids. data is always
 * NUL-terminated after a successful append (data[len] == 0), though the bytes
 * themselves may hold NULs. */
typedef struct tok_bytes {
    char *data;
    size_t len, cap;
} tok_bytes;

void tok_ids_free(tok_ids *v);
void tok_bytes_free(tok_bytes *b);

/* ---- loading ---- */

/* Load PATH: a tokenizer.json file, or a directory holding one. When the
 * same directory holds tokenizer_config.json, its bos_token, eos_token and
 * chat_template are read too (each token must be a token of the vocabulary).
 * Errors: TIDAL_ERR_NOT_FOUND (no such file), TIDAL_ERR_IO, TIDAL_ERR_INVALID
 * "PATH: field: what" for a malformed or unsupported tokenizer. */
tidal_status tokenizer_load(const char *path, tokenizer **out);

/* Load tokenizer.json text from memory (not NUL-terminated; copied as
 * needed, so the buffers may be freed afterwards), with an optional
 * tokenizer_config.json text (config NULL: none). `name` prefixes errors.
 * The fuzz target's entry point. */
tidal_status tokenizer_load_buffer(const char *json, size_t len, const char *config, size_t config_len,
                                   const char *name, tokenizer **out);

/* The byte-level tokenizer of tiny models: ids 0..255 are the bytes 0..255;
 * then the special tokens 256 "<|endoftext|>", 257 "<|im_start|>",
 * 258 "<|im_end|>" (vocab size 259; TOKENIZER_BYTE_LEVEL_VOCAB). No merges,
 * no normalizer; special-token strings in the text are matched as with a
 * tokenizer.json. eos is <|endoftext|>; there is no bos. */
#define TOKENIZER_BYTE_LEVEL_VOCAB 259
tidal_status tokenizer_byte_level(tokenizer **out);

/* A character-level tokenizer for tiny models on synthetic tasks: ids
 * 0 .. n-1 are the n distinct bytes of `alphabet` in order, then
 * "<|endoftext|>" (eos), "<|im_start|>", "<|im_end|>" (vocab n + 3). A small
 * vocabulary makes a random policy's chance of a useful token large enough
 * for RL alone to start. Text with a byte outside the alphabet is refused
 * (TIDAL_ERR_INVALID naming the byte). */
tidal_status tokenizer_alphabet(const char *alphabet, tokenizer **out);

void tokenizer_free(tokenizer *t);

/* ---- encoding and decoding ---- */

/* Encode len bytes of text (any bytes; need not be NUL-terminated) and
 * append the ids to *out. add_special: also add what the file's
 * post-processor adds around a single sequence (Llama-3's
 * <|begin_of_text|>; nothing for Qwen) - Hugging Face's
 * add_special_tokens=True; false is what chat rendering and the parity test
 * use. Special-token strings inside the text are matched either way.
 * Errors: TIDAL_ERR_NOMEM, TIDAL_ERR_INVALID (a text over 2 GB, or a regex
 * that failed on a resource limit; the message says which). On error *out
 * is as it was. */
tidal_status tokenizer_encode(tokenizer *t, const char *text, size_t len, bool add_special, tok_ids *out);

/* Append the exact bytes of ids[0..n) to *out (special tokens included, as
 * their text). TIDAL_ERR_INVALID naming the position for an id outside the
 * vocabulary. */
tidal_status tokenizer_decode(const tokenizer *t, const int32_t *ids, size_t n, tok_bytes *out);

/* The exact bytes of one token (not NUL-terminated; valid while t lives) and
 * their count in *len; NULL (and *len = 0) for an id that is not a token. */
const char *tokenizer_token_bytes(const tokenizer *t, int32_t id, size_t *len);

/* ---- vocabulary ---- */

/* One more than the largest id (model vocabulary and added tokens). */
int32_t tokenizer_vocab_size(const tokenizer *t);

/* The id of the token whose bytes are exactly the NUL-terminated `text`
 * (added tokens first: tokenizer_token_id(t, "<|im_end|>")); -1 when none. */
int32_t tokenizer_token_id(const tokenizer *t, const char *text);

/* Whether id is an added token marked special (<|im_end|>, <|eot_id|>). */
bool tokenizer_is_special(const tokenizer *t, int32_t id);

/* bos / eos ids from tokenizer_config.json; -1 when not given. */
int32_t tokenizer_bos_id(const tokenizer *t);
int32_t tokenizer_eos_id(const tokenizer *t);

/* tokenizer_config.json's chat_template string (for chat_format_detect);
 * NULL when there is none. Valid while t lives. */
const char *tokenizer_chat_template(const tokenizer *t);

/* The name errors use: the tokenizer.json path, or "byte-level". */
const char *tokenizer_name(const tokenizer *t);

/* ---- writing Hugging Face files (tokenizer_save.c) ---- */

/* tokenizer.json text for a tokenizer without merges - tidal's byte-level
 * and alphabet tokenizers: a byte-level BPE with an empty merge list, the
 * special tokens as added tokens, ByteLevel pre-tokenizer and decoder
 * without a prefix space. Hugging Face's tokenizers and tokenizer_load give
 * the ids this tokenizer gives (an alphabet's vocabulary holds only its
 * bytes; tokenizer_load then refuses other bytes as tokenizer_alphabet
 * does). *out is malloc'd. TIDAL_ERR_INVALID for a tokenizer with a token
 * of more bytes than one (a loaded BPE: copy its own files instead). */
tidal_status tokenizer_json_text(const tokenizer *t, char **out);

/* tokenizer_config.json text for t: bos_token, eos_token, pad_token (eos),
 * the special tokens as added_tokens_decoder, model_max_length (when > 0),
 * chat_template (NULL: t's own, when it has one), tokenizer_class
 * PreTrainedTokenizerFast. *out is malloc'd. */
tidal_status tokenizer_config_text(const tokenizer *t, int model_max_length, const char *chat_template, char **out);

#endif
