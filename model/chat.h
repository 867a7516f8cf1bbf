/* chat.h - chat templates: system / user / assistant messages rendered into
 * the text a chat model was trained on, before tokenization.
 *
 * Three formats, chosen by name (job spec) or recognised from
 * tokenizer_config.json's chat_template (see chat_format_detect):
 *
 *   chatml  (Qwen)   <|im_start|>ROLE\nCONTENT<|im_end|>\n      per message
 *                    generation prompt: <|im_start|>assistant\n
 *   llama3           <|begin_of_text|> once, then
 *                    <|start_header_id|>ROLE<|end_header_id|>\n\nCONTENT<|eot_id|>
 *                    per message, CONTENT trimmed of leading and trailing
 *                    whitespace as Meta's template does (`| trim`);
 *                    generation prompt: <|start_header_id|>assistant<|end_header_id|>\n\n
 *   plain            ROLE: CONTENT\n  per message (ROLE as given: "user: 2+2?\n");
 *                    generation prompt: "assistant:" - no trailing space, so a
 *                    BPE tokenizer sees the model's " CONTENT" as it saw it in
 *                    rendered conversations. For tiny models without special
 *                    tokens.
 *   none             CONTENT\n per message, no roles, no generation prompt:
 *                    the bare task for tiny models trained from scratch
 *                    (the completion follows the newline and ends with one).
 *
 * Nothing is added that the message list does not say: no default system
 * prompt (Qwen2.5's template adds one when there is none), no tools, no
 * reasoning-content handling. The rendered text is meant for
 * tokenizer_encode(..., add_special = false), which turns the special-token
 * strings into their ids (llama3's text already holds <|begin_of_text|>).
 */
#ifndef TIDAL_MODEL_CHAT_H
#define TIDAL_MODEL_CHAT_H

#include <stdbool.h>
#include <stddef.h>

#include "base/json.h"
#include "base/status.h"

typedef enum { CHAT_PLAIN = 0, CHAT_CHATML = 1, CHAT_LLAMA3 = 2, CHAT_NONE = 3 } chat_format;

typedef struct chat_message {
    const char *role;    /* "system", "user" or "assistant" */
    const char *content; /* NUL-terminated UTF-8 */
} chat_message;

/* "chatml", "llama3" or "plain" -> *out; TIDAL_ERR_INVALID naming the
 * accepted names otherwise. */
tidal_status chat_format_parse(const char *name, chat_format *out);

/* The name of a format ("chatml", ...). */
const char *chat_format_name(chat_format f);

/* A Jinja chat_template that renders as format f does (Hugging Face's
 * apply_chat_template then gives chat_render's text): what tidal writes into
 * tokenizer_config.json for its own tokenizers, so a tiny model's checkpoint
 * says how its prompts were rendered. Static; "" for an unknown f. */
const char *chat_format_jinja(chat_format f);

/* Recognise a Jinja chat_template from tokenizer_config.json by its markers:
 * "<|im_start|>" -> chatml, "<|start_header_id|>" -> llama3; tidal's own
 * plain and none templates (chat_format_jinja) exactly.
 * TIDAL_ERR_NOT_FOUND when the template is NULL or has neither marker (the
 * caller then names a format). */
tidal_status chat_format_detect(const char *chat_template, chat_format *out);

/* The chat_template of a parsed tokenizer_config.json (root): a string, or a
 * list of {name, template} entries (the one named "default", else the
 * first). *out borrows from root; NULL when there is none. TIDAL_ERR_INVALID
 * "NAME: chat_template: ..." for another shape. One reading for every role:
 * the tokenizer (tokenizer_chat_template) and chat_format_of_model_dir. */
tidal_status chat_template_of_config(const json_t *root, const char *name, const char **out);

/* The chat format a Hugging Face model directory asks for, from its files
 * and without loading its tokenizer: tokenizer_config.json's chat_template
 * recognised by chat_format_detect; CHAT_PLAIN when the file or its template
 * is absent or has neither marker (what a job's `data.template: auto`
 * means). The directory must hold tokenizer.json (it is only opened: the
 * workers load it), so a bad model.path fails here naming the file.
 * Errors: TIDAL_ERR_NOT_FOUND "DIR/tokenizer.json: ..." (or DIR itself),
 * TIDAL_ERR_IO, TIDAL_ERR_INVALID "DIR/tokenizer_config.json: ..." for a
 * file that is not a JSON object or a chat_template of another shape. */
tidal_status chat_format_of_model_dir(const char *dir, chat_format *out);

/* Render n messages, then the generation prompt when add_generation_prompt.
 * *out is a malloc'd NUL-terminated string (free it) of *len bytes (len may
 * be NULL). TIDAL_ERR_INVALID naming the message for a role other than
 * system / user / assistant or a NULL content. */
tidal_status chat_render(chat_format f, const chat_message *msgs, size_t n, bool add_generation_prompt, char **out,
                         size_t *len);

/* The text that ends an assistant turn - the stop string (or, through
 * tokenizer_token_id, the stop token) for generation: "<|im_end|>",
 * "<|eot_id|>", and "\n" for plain. */
const char *chat_end_of_turn(chat_format f);

#endif
