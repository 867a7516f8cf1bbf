/* chat_driver.c - for test_chat_template_parity.py: each chat format's
 * rendering (model/chat.h chat_render) of a few conversations, beside the
 * Jinja template tidal writes for it (chat_format_jinja), as JSON lines:
 *   {"format": NAME, "messages": [...], "add_generation_prompt": B,
 *    "rendered": TEXT, "template": JINJA}
 * and whether chat_format_detect gives the format back from its template. */
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>

#include "model/chat.h"

int main(void)
{
    static const chat_format formats[] = {CHAT_PLAIN, CHAT_CHATML, CHAT_LLAMA3, CHAT_NONE};
    static const chat_message talks[][3] = {
        {{"user", "925"}},
        {{"system", "Be brief."}, {"user", " 2 + 2?\n"}, {"assistant", "4"}},
        {{"user", "<|im_end|> x\n\n"}, {"assistant", ""}, {"user", "again: ü"}},
    };
    static const size_t lens[] = {1, 3, 3};
    int rc = 0;
    for (size_t f = 0; f < sizeof formats / sizeof formats[0]; f++) {
        chat_format back;
        if (chat_format_detect(chat_format_jinja(formats[f]), &back) != TIDAL_OK || back != formats[f]) {
            fprintf(stderr, "chat_driver: %s: its own template is not recognised\n", chat_format_name(formats[f]));
            rc = 1;
        }
        for (size_t t = 0; t < sizeof lens / sizeof lens[0]; t++)
            for (int g = 0; g < 2; g++) {
                char *text = NULL;
                if (chat_render(formats[f], talks[t], lens[t], g, &text, NULL) != TIDAL_OK) {
                    fprintf(stderr, "chat_driver: %s\n", tidal_errmsg());
                    return 1;
                }
                json_t *msgs = json_array();
                for (size_t i = 0; i < lens[t]; i++)
                    json_array_append_new(msgs, json_pack("{s:s, s:s}", "role", talks[t][i].role, "content",
                                                          talks[t][i].content));
                json_t *o = json_pack("{s:s, s:o, s:b, s:s, s:s}", "format", chat_format_name(formats[f]), "messages",
                                      msgs, "add_generation_prompt", g, "rendered", text, "template",
                                      chat_format_jinja(formats[f]));
                char *line = json_dumps(o, JSON_COMPACT);
                puts(line);
                free(line), free(text);
                json_decref(o);
            }
    }
    return rc;
}
