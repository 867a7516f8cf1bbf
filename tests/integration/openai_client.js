#!/usr/bin/env node
/* openai_client.js - OpenAI's own client library (the npm package `openai`,
 * version 4) against `tidal serve`: what users point their scripts at must
 * answer as the library expects.
 *
 * The model is the quickstart's initial model, written by
 * `tidal init-model examples/quickstart.yaml` (its alphabet tokenizer comes
 * as a tokenizer.json, so text prompts and chat work). Checked: models.list
 * names the model; completions.create gives text, logprobs and usage, and
 * with a seed the same answer twice; chat.completions.create gives an
 * assistant message; both stream (the chunks add up to the text, the last
 * says why it ended); a bad request is an APIError with status 400 and the
 * parameter named; a wrong bearer token is a 401.
 *
 * `openai` is installed with npm into PREFIX (argument 3, else the folder
 * `npm-openai` next to the tidal binary). When npm cannot reach its registry
 * the test prints SKIP and exits 0; any other install failure fails it.
 *
 * usage: node openai_client.js PATH/TO/tidal SOURCE_DIR [NPM_PREFIX]
 * The last line is "N passed, N failed"; exit 1 on any failure.
 */
"use strict";
const fs = require("fs");
const os = require("os");
const path = require("path");
const { spawn, spawnSync } = require("child_process");

function die(msg) {
  console.error("openai_client: " + msg);
  console.log("0 passed, 1 failed");
  process.exit(1);
}

const tidal = process.argv[2], source = process.argv[3];
if (!tidal || !source) die("usage: node openai_client.js PATH/TO/tidal SOURCE_DIR [NPM_PREFIX]");
const prefix = path.resolve(process.argv[4] || path.join(path.dirname(path.resolve(tidal)), "npm-openai"));

const { require_package } = require(path.join(__dirname, "..", "harness", "npm_package.js"));
const OpenAI = require(require_package("openai_client", "openai@4", prefix, "openai", die));

/* ------------------------------------------------------------ the server */

const work = fs.mkdtempSync(path.join(os.tmpdir(), "tidal-openai-"));
const modelDir = path.join(work, "quickstart-v0");
const init = spawnSync(tidal, ["init-model", path.join(source, "examples/quickstart.yaml"), "--out", modelDir], {
  encoding: "utf8",
});
if (init.status !== 0) die(`tidal init-model failed: ${init.stderr}`);

function startServer(extra) {
  return new Promise((resolve, reject) => {
    const p = spawn(tidal, ["serve", "--model", modelDir, "--port", "0", "--threads", "1", ...extra], {
      stdio: ["ignore", "pipe", "pipe"],
    });
    let out = "", err = "";
    p.stderr.on("data", (d) => (err += d));
    p.stdout.on("data", (d) => {
      out += d;
      const m = out.match(/^(http:\/\/\S+)\n/);
      if (m) resolve({ proc: p, url: m[1] });
    });
    p.on("exit", (code) => reject(new Error(`tidal serve exited ${code}: ${err}`)));
    setTimeout(() => reject(new Error("tidal serve printed no URL in 30 s")), 30000);
  });
}

/* ------------------------------------------------------------ the checks */

let passed = 0, failed = 0;
async function check(name, fn) {
  try {
    await fn();
    passed++;
    console.log(`ok   ${name}`);
  } catch (e) {
    failed++;
    console.log(`FAIL ${name}: ${e && e.stack ? e.stack : e}`);
  }
}
function assert(cond, msg) {
  if (!cond) throw new Error(msg);
}

async function main() {
  const server = await startServer([]);
  const client = new OpenAI({ baseURL: server.url + "/v1", apiKey: "unused", maxRetries: 0 });
  const model = path.basename(modelDir);

  await check("models.list names the served model", async () => {
    const list = await client.models.list();
    assert(list.data.length === 1 && list.data[0].id === model, JSON.stringify(list.data));
  });

  await check("completions: text, logprobs, usage; a seed repeats", async () => {
    const req = { model, prompt: "925\n", max_tokens: 3, temperature: 1.0, seed: 5, logprobs: 0 };
    const a = await client.completions.create(req);
    const b = await client.completions.create(req);
    const c = a.choices[0];
    assert(a.object === "text_completion" && typeof c.text === "string", JSON.stringify(a));
    assert(c.logprobs.token_logprobs.length === a.usage.completion_tokens, "one logprob per token");
    assert(c.logprobs.token_logprobs.every((x) => x <= 0), "logprobs <= 0");
    assert(a.usage.prompt_tokens === 4, `prompt_tokens ${a.usage.prompt_tokens}`);
    assert(/^[0-9\n]*$/.test(c.text), `the alphabet is digits and newline: ${JSON.stringify(c.text)}`);
    assert(c.text === b.choices[0].text, "the same seed gave another answer");
    assert(["stop", "length"].includes(c.finish_reason), c.finish_reason);
  });

  await check("chat.completions: an assistant message", async () => {
    const r = await client.chat.completions.create({
      model,
      messages: [{ role: "user", content: "925" }],
      max_tokens: 3,
      temperature: 0,
      logprobs: true,
    });
    const m = r.choices[0].message;
    assert(r.object === "chat.completion" && m.role === "assistant" && typeof m.content === "string", JSON.stringify(r));
    assert(r.choices[0].logprobs.content.length === r.usage.completion_tokens, "one logprob entry per token");
  });

  await check("completions stream: the chunks add up to the answer", async () => {
    const req = { model, prompt: "777\n", max_tokens: 3, temperature: 1.0, seed: 9 };
    const whole = await client.completions.create(req);
    const stream = await client.completions.create({ ...req, stream: true });
    let text = "", last = null, chunks = 0;
    for await (const ch of stream) {
      chunks++;
      text += ch.choices[0].text;
      if (ch.choices[0].finish_reason) last = ch.choices[0].finish_reason;
    }
    assert(chunks >= 1 && text === whole.choices[0].text, `streamed ${JSON.stringify(text)}, whole ${JSON.stringify(whole.choices[0].text)}`);
    assert(last === whole.choices[0].finish_reason, `finish ${last}`);
  });

  await check("chat stream: role first, then content", async () => {
    const stream = await client.chat.completions.create({
      model,
      messages: [{ role: "user", content: "031" }],
      max_tokens: 3,
      temperature: 0,
      stream: true,
    });
    let role = null, text = "", last = null;
    for await (const ch of stream) {
      const d = ch.choices[0].delta;
      if (d.role) role = role || d.role;
      if (d.content) text += d.content;
      if (ch.choices[0].finish_reason) last = ch.choices[0].finish_reason;
    }
    assert(role === "assistant" && last && typeof text === "string", `role ${role}, finish ${last}`);
  });

  await check("a bad request is an APIError 400 naming the parameter", async () => {
    let err = null;
    try {
      await client.completions.create({ model, prompt: "925\n", max_tokens: 3, temperature: -1 });
    } catch (e) {
      err = e;
    }
    assert(err instanceof OpenAI.APIError && err.status === 400, `got ${err}`);
    assert(err.param === "temperature" && /temperature/.test(err.message), `${err.param}: ${err.message}`);
  });
  server.proc.kill("SIGTERM");

  const locked = await startServer(["--token", "s3cret"]);
  await check("a wrong bearer token is a 401; the right one works", async () => {
    let err = null;
    try {
      await new OpenAI({ baseURL: locked.url + "/v1", apiKey: "wrong", maxRetries: 0 }).models.list();
    } catch (e) {
      err = e;
    }
    assert(err instanceof OpenAI.AuthenticationError && err.status === 401, `got ${err}`);
    const ok = await new OpenAI({ baseURL: locked.url + "/v1", apiKey: "s3cret", maxRetries: 0 }).models.list();
    assert(ok.data.length === 1, "listed");
  });
  locked.proc.kill("SIGTERM");
}

main()
  .catch((e) => {
    failed++;
    console.log(`FAIL setup: ${e && e.stack ? e.stack : e}`);
  })
  .finally(() => {
    fs.rmSync(work, { recursive: true, force: true });
    console.log(`${passed} passed, ${failed} failed`);
    process.exit(failed ? 1 : 0);
  });
