"""test_chat_template_parity.py - the Jinja chat templates tidal writes into
tokenizer_config.json for its own tokenizers (model/chat.h chat_format_jinja)
render, under jinja2 as transformers' apply_chat_template runs it (a sandboxed
environment with trim_blocks and lstrip_blocks), exactly the text tidal's
chat_render gives, for every format and a few conversations, with and
without the generation prompt. jinja2 missing: SKIP (exit 0).

  test_chat_template_parity.py PATH/TO/chat_driver
"""
import json
import subprocess
import sys

try:
    from jinja2.sandbox import ImmutableSandboxedEnvironment
except ImportError:
    print("SKIP: jinja2 is not installed (python3-jinja2)")
    sys.exit(0)

env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
out = subprocess.run([sys.argv[1]], capture_output=True, text=True)
if out.returncode != 0:
    sys.exit(f"chat_driver exited {out.returncode}: {out.stderr}")
passed = failed = 0
for line in out.stdout.splitlines():
    row = json.loads(line)
    got = env.from_string(row["template"]).render(messages=row["messages"],
                                                  add_generation_prompt=row["add_generation_prompt"])
    if got == row["rendered"]:
        passed += 1
    else:
        failed += 1
        print(f"FAIL {row['format']} {row['messages']} generation prompt {row['add_generation_prompt']}: "
              f"jinja2 {got!r}, tidal {row['rendered']!r}")
print(f"{passed} passed, {failed} failed")
sys.exit(1 if failed or passed == 0 else 0)
