#!/usr/bin/env node
/* env.js - a custom tidal environment in JavaScript, with no tidal code at all:
 * the official NATS client (`nats`) and protobufjs loading proto/tidal.proto at
 * run time are enough (docs/protocol.md, "A minimal environment").
 *
 * The reward: 1 when the completion, trimmed, ends with task.answer, else 0
 * (single turn: every STEP is done). RESET gets an empty response. Every
 * request gets exactly one EnvResponse: one that does not decode, a task that
 * is not a JSON object or has no `answer`, gets one with `error` set.
 *
 *   npm install            # here: nats and protobufjs (package.json)
 *   node env.js --bus nats://127.0.0.1:4222 [--name ends_with] [--proto PATH]
 *
 * It serves tidal.env.<name> in queue group tidal.env.<name> (start as many
 * copies as you like: they share the load) until SIGINT or SIGTERM, then
 * drains - answers what it had received - and exits 0.
 */
"use strict";
const path = require("path");
const { connect } = require("nats");
const protobuf = require("protobufjs");

function usage(code) {
  (code ? console.error : console.log)(
    "usage: node env.js [--bus URL] [--name NAME] [--proto PATH]\n" +
      "  --bus URL     NATS URL(s), comma separated (default: $TIDAL_BUS, else nats://127.0.0.1:4222)\n" +
      "  --name NAME   serve tidal.env.NAME (default: ends_with)\n" +
      "  --proto PATH  tidal.proto (default: ../../../proto/tidal.proto next to this file)");
  process.exit(code);
}

const opts = {
  bus: process.env.TIDAL_BUS || "nats://127.0.0.1:4222",
  name: "ends_with",
  proto: path.join(__dirname, "..", "..", "..", "proto", "tidal.proto"),
};
for (let i = 2; i < process.argv.length; i++) {
  const a = process.argv[i];
  if (a === "-h" || a === "--help") usage(0);
  const key = { "--bus": "bus", "--name": "name", "--proto": "proto" }[a];
  if (!key || i + 1 >= process.argv.length) usage(2);
  opts[key] = process.argv[++i];
}
if (!/^[A-Za-z0-9_-]{1,127}$/.test(opts.name)) {
  console.error(`env.js: bad name ${JSON.stringify(opts.name)}: 1-127 characters of [A-Za-z0-9_-]`);
  process.exit(2);
}

const root = protobuf.loadSync(opts.proto);
const EnvRequest = root.lookupType("tidal.v1.EnvRequest");
const EnvResponse = root.lookupType("tidal.v1.EnvResponse");
const EnvOp = root.lookupEnum("tidal.v1.EnvOp").values;
const SCHEMA_VERSION = 1;

/* The environment itself: the answer to one decoded request, a plain object
 * of EnvResponse fields. Throwing makes it an error response. */
function handle(req) {
  if (req.schemaVersion > SCHEMA_VERSION)
    throw new Error(`schema_version ${req.schemaVersion} not supported (max ${SCHEMA_VERSION})`);
  if (req.env && req.env !== opts.name) throw new Error(`this is env ${opts.name}, the request names ${req.env}`);
  if (req.op === EnvOp.ENV_OP_RESET) return {};
  if (req.op !== EnvOp.ENV_OP_STEP) throw new Error(`op ${req.op} is neither RESET nor STEP`);
  let task;
  try {
    task = JSON.parse(req.taskJson || "{}");
  } catch (e) {
    throw new Error(`task_json is not valid JSON: ${e.message}`);
  }
  if (task === null || typeof task !== "object" || Array.isArray(task))
    throw new Error("task_json is not a JSON object");
  if (task.answer === undefined || task.answer === null) throw new Error('task has no "answer"');
  const ok = (req.actionText || "").trim().endsWith(String(task.answer).trim());
  return { reward: ok ? 1 : 0, done: true, metrics: { correct: ok ? 1 : 0 } };
}

/* The encoded EnvResponse for one message body, and whether it is an error. */
function answer(data) {
  let rsp;
  try {
    let req;
    try {
      req = EnvRequest.decode(data);
    } catch (e) {
      throw new Error(`EnvRequest: ${data.length} bytes are not a valid message (${e.message})`);
    }
    rsp = handle(req);
  } catch (e) {
    rsp = { error: String(e.message || e) || "error" };
  }
  const buf = EnvResponse.encode(EnvResponse.create({ schemaVersion: SCHEMA_VERSION, ...rsp })).finish();
  return [buf, Boolean(rsp.error)];
}

async function main() {
  const nc = await connect({ servers: opts.bus.split(","), name: `tidal-env-js-${opts.name}` });
  const subject = `tidal.env.${opts.name}`;
  let served = 0;
  let failed = 0;
  const sub = nc.subscribe(subject, {
    queue: subject,
    callback: (err, msg) => {
      if (err) {
        console.error(`env.js: ${subject}: ${err.message}`);
        return;
      }
      const [out, isError] = answer(msg.data);
      served++;
      if (isError) failed++;
      if (!msg.respond(out)) console.error(`env.js: ${subject}: a request without a reply subject`);
    },
  });
  await nc.flush(); /* the subscription is live on the server */
  console.error(`env.js: serving ${subject} on ${opts.bus}`);

  let stopping = false;
  const stop = async (sig) => {
    if (stopping) process.exit(1); /* a second signal: at once */
    stopping = true;
    console.error(`env.js: ${sig}: draining (${served} served, ${failed} failed)`);
    await nc.drain(); /* unsubscribes, answers what was received, closes */
  };
  process.on("SIGINT", () => stop("SIGINT"));
  process.on("SIGTERM", () => stop("SIGTERM"));

  const closed = await nc.closed();
  if (closed && !stopping) {
    console.error(`env.js: connection closed: ${closed.message}`);
    process.exit(1);
  }
  void sub;
  process.exit(0);
}

main().catch((e) => {
  console.error(`env.js: ${e.message || e}`);
  process.exit(1);
});
