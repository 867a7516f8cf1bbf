#!/usr/bin/env node
/* tokenizer_builtin_parity.js - the tokenizer.json tidal writes for its own
 * tokenizers (the byte-level one and model.init.alphabet's, carried by every
 * checkpoint of a model.init job) against the Hugging Face tokenizers'
 * JavaScript port.
 *
 * For each tokenizer below, `tidal tokenize --tokenizer T --save DIR` writes
 * DIR/tokenizer.json and DIR/tokenizer_config.json; the reference,
 * @lenml/tokenizers (a fork of transformers.js' tokenizers), loads those two
 * files with TokenizerLoader.fromPreTrained({tokenizerJSON, tokenizerConfig})
 * and encodes a corpus (random texts over the tokenizer's characters with the
 * special tokens and their fragments mixed in, empty and long texts) with
 * add_special_tokens false. Three encodings must give the same ids: the
 * reference's, tidal's reading of the written files (`tidal tokenize
 * --tokenizer DIR`), and tidal's built-in tokenizer (`--tokenizer T`); the
 * reference must decode the ids back to the text, and tidal must refuse a
 * character outside an alphabet from the written files as the built-in does.
 *
 * The package is installed with
 *   npm install --no-save --prefix PREFIX @lenml/tokenizers
 * into PREFIX (argument 2, else $TIDAL_NPM_PREFIX, else the folder `npm` next
 * to the tidal binary). When npm cannot reach its registry the test prints
 * SKIP and exits 0; any other install failure fails the test.
 *
 * usage: node tokenizer_builtin_parity.js PATH/TO/tidal [NPM_PREFIX]
 * The last line is "N passed, N failed"; exit 1 on any failure.
 */
"use strict";
const fs = require("fs");
const os = require("os");
const path = require("path");
const { spawnSync } = require("child_process");

const PKG = "@lenml/tokenizers";

function die(msg) {
  console.error("tokenizer_builtin_parity: " + msg);
  console.log("0 passed, 1 failed");
  process.exit(1);
}

const tidal = process.argv[2];
if (!tidal) die("usage: node tokenizer_builtin_parity.js PATH/TO/tidal [NPM_PREFIX]");
if (!fs.existsSync(tidal)) die(`${tidal}: no such file`);
const prefix = path.resolve(
  process.argv[3] || process.env.TIDAL_NPM_PREFIX || path.join(path.dirname(path.resolve(tidal)), "npm"));

/* ------------------------------------------------------------ the reference */

const { require_package } = require(path.join(__dirname, "..", "harness", "npm_package.js"));
const pkgMain = require_package("tokenizer_builtin_parity", PKG, prefix, PKG, die);
const { TokenizerLoader } = require(pkgMain);
/* the reference warns once per load that PreTrainedTokenizerFast is its base class */
const warn = console.warn;
console.warn = (...a) => { if (!/Unknown tokenizer class/.test(String(a[0]))) warn(...a); };

/* ------------------------------------------------------------ the tokenizers */

const SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"];
const cases = [
  { name: "quickstart", tok: "alphabet:0123456789\n" }, /* examples/quickstart.yaml */
  { name: "arithmetic", tok: "alphabet:0123456789+-*/=() \n\t" },
  { name: "special characters", tok: "alphabet:<|>_imstarendofx\n" }, /* the specials' own characters */
  { name: "non-ASCII", tok: "alphabet:aé€😀 \n" }, /* multi-byte characters: one token per byte */
  { name: "byte-level", tok: "byte-level" },
];

let seed = 0x1f2e3d4c;
function rnd() {
  /* xorshift32: deterministic across runs */
  seed ^= seed << 13;
  seed >>>= 0;
  seed ^= seed >>> 17;
  seed ^= seed << 5;
  seed >>>= 0;
  return seed / 4294967296;
}
const pick = (a) => a[Math.floor(rnd() * a.length)];

/* texts over chars (an array of characters), with specials and their fragments */
function corpus(chars) {
  const texts = ["", ...chars, ...SPECIALS, SPECIALS.join(""), chars.join(""), chars.join("").repeat(40)];
  const fragments = SPECIALS.flatMap((s) => [s.slice(0, 3), s.slice(2), s.slice(0, -1)])
    .filter((f) => [...f].every((c) => chars.includes(c)));
  for (let i = 0; i < 600; i++) {
    const k = Math.floor(rnd() * 30);
    let s = "";
    for (let j = 0; j < k; j++) {
      const r = rnd();
      s += r < 0.08 ? pick(SPECIALS) : r < 0.12 && fragments.length ? pick(fragments) : pick(chars);
    }
    texts.push(s);
  }
  return texts;
}

/* every character of a byte-level tokenizer's texts: ASCII, Latin-1, CJK, emoji, controls */
const ANY = [...Array(95).keys()].map((i) => String.fromCharCode(32 + i))
  .concat(["\n", "\t", "\r", "\u0000", "é", "ß", "Ω", "я", "中", "文", "😀", "👍🏽", "\u00a0", "\u200d", "ﬁ"]);

/* ------------------------------------------------------------ run */

function runTidal(args, input) {
  const r = spawnSync(tidal, ["tokenize", ...args], { input, maxBuffer: 1 << 30 });
  if (r.error) die(`cannot run ${tidal}: ${r.error.message}`);
  return r;
}
function encodeTidal(tok, texts) {
  const r = runTidal(["--tokenizer", tok, "--jsonl"], texts.map((t) => JSON.stringify(t)).join("\n") + "\n");
  if (r.status !== 0) die(`tidal tokenize --tokenizer ${JSON.stringify(tok)} exited ${r.status}: ${r.stderr}`);
  const l = r.stdout.toString("utf8").split("\n");
  l.pop();
  return l;
}

let passed = 0;
let failed = 0;
function fail(msg) {
  failed++;
  if (failed <= 25) console.log("FAIL " + msg);
}
const tmp = fs.mkdtempSync(path.join(os.tmpdir(), "tidal-tok-parity-"));
let total = 0;
for (const c of cases) {
  const dir = path.join(tmp, c.name.replace(/[^a-z]/g, "-"));
  const saved = runTidal(["--tokenizer", c.tok, "--save", dir], "");
  if (saved.status !== 0) {
    fail(`${c.name}: tidal tokenize --save exited ${saved.status}: ${saved.stderr}`);
    continue;
  }
  let ref;
  try {
    ref = TokenizerLoader.fromPreTrained({
      tokenizerJSON: JSON.parse(fs.readFileSync(path.join(dir, "tokenizer.json"), "utf8")),
      tokenizerConfig: JSON.parse(fs.readFileSync(path.join(dir, "tokenizer_config.json"), "utf8")),
    });
  } catch (e) {
    fail(`${c.name}: the reference cannot load the written files: ${e.message}`);
    continue;
  }
  const chars = c.tok === "byte-level" ? ANY : [...c.tok.slice("alphabet:".length)];
  const texts = corpus(chars);
  const fromFiles = encodeTidal(dir, texts);
  const builtin = encodeTidal(c.tok, texts);
  let ok = 0;
  for (let i = 0; i < texts.length; i++) {
    const want = JSON.stringify(ref.encode(texts[i], { add_special_tokens: false }));
    total += JSON.parse(want).length;
    if (fromFiles[i] !== want || builtin[i] !== want) {
      fail(`${c.name}: text ${JSON.stringify(texts[i]).slice(0, 120)}: reference ${want.slice(0, 80)}, ` +
        `tidal from the files ${String(fromFiles[i]).slice(0, 80)}, tidal built-in ${String(builtin[i]).slice(0, 80)}`);
      continue;
    }
    const ids = JSON.parse(want);
    const back = ids.length ? ref.decode(ids, { skip_special_tokens: false, clean_up_tokenization_spaces: false }) : "";
    if (back !== texts[i]) {
      fail(`${c.name}: the reference decodes text ${JSON.stringify(texts[i]).slice(0, 80)} as ${JSON.stringify(back).slice(0, 80)}`);
      continue;
    }
    ok++;
  }
  if (ok === texts.length) passed++;
  console.log(`${c.name}: ${ok} of ${texts.length} texts agree`);
  /* a character outside the alphabet: refused by the written files as by the built-in */
  if (c.tok !== "byte-level") {
    const outside = ["q", "Z", "\u00ff"].find((x) => !chars.includes(x));
    const a = runTidal(["--tokenizer", dir, "--jsonl"], JSON.stringify("1" + outside) + "\n");
    const b = runTidal(["--tokenizer", c.tok, "--jsonl"], JSON.stringify("1" + outside) + "\n");
    if (a.status !== 0 && b.status !== 0 && /not in the alphabet/.test(a.stderr.toString())) passed++;
    else fail(`${c.name}: "1${outside}": tidal from the files exited ${a.status} (${a.stderr}), built-in ${b.status}`);
  }
}
fs.rmSync(tmp, { recursive: true, force: true });
console.log(`corpus: ${total} reference tokens over ${cases.length} tokenizers`);
console.log(`${passed} passed, ${failed} failed`);
process.exit(failed ? 1 : 0);
