/* npm_package.js - an npm package a test needs, installed on first use.
 *
 * The tests that check tidal against a JavaScript reference (Hugging Face's
 * tokenizers port, OpenAI's client) install it with npm into a prefix in the
 * build directory. require_package(who, spec, prefix, entry, die) returns the
 * resolved path of `entry` (a module or a file inside the package) under
 * prefix, installing `spec` (for example "openai@4") first when it is not
 * there. When npm cannot reach its registry the test prints SKIP, the
 * "0 passed, 0 failed (skipped)" line and exits with skip_code (default 0;
 * a test registered with SKIP_RETURN_CODE 77 passes 77 so ctest shows the
 * skip); any other failure calls die(message), which must not return.
 */
"use strict";
const fs = require("fs");
const { spawnSync } = require("child_process");

function resolveIn(entry, prefix) {
  try {
    return require.resolve(entry, { paths: [prefix] });
  } catch (e) {
    return null;
  }
}

function require_package(who, spec, prefix, entry, die, skip_code = 0) {
  let found = resolveIn(entry, prefix);
  if (found) return found;
  console.error(`${who}: installing ${spec} into ${prefix}`);
  fs.mkdirSync(prefix, { recursive: true });
  const r = spawnSync("npm", ["install", "--no-save", "--no-audit", "--no-fund", "--prefix", prefix, spec], {
    encoding: "utf8",
    timeout: 300000,
  });
  const out = (r.stdout || "") + (r.stderr || "");
  if (r.error && r.error.code === "ENOENT") die("npm is not installed (apt-get install npm)");
  if (r.status !== 0) {
    const offline = /ENOTFOUND|EAI_AGAIN|ECONNREFUSED|ECONNRESET|ETIMEDOUT|ENETUNREACH|EHOSTUNREACH|network|socket hang up/i;
    if (offline.test(out)) {
      console.log(`SKIP: npm cannot reach its registry, so ${spec} is not available:`);
      console.log(out.trim().split("\n").slice(-5).join("\n"));
      console.log("0 passed, 0 failed (skipped)");
      process.exit(skip_code);
    }
    die(`npm install ${spec} failed (exit ${r.status}):\n${out}`);
  }
  found = resolveIn(entry, prefix);
  if (!found) die(`npm reported success but ${entry} is not under ${prefix}`);
  return found;
}

module.exports = { require_package };
