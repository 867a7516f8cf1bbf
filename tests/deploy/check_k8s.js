/* check_k8s.js - deploy/k8s renders, every object is a valid Kubernetes object, and every
 * container's command is one the real binaries accept.
 *
 * usage: node check_k8s.js SOURCE_DIR TIDAL_BINARY NATS_SERVER NPM_PREFIX
 *   (KUBECTL=path picks the kubectl; default: kubectl on PATH, Debian's kubernetes-client)
 *
 * 1. `kubectl kustomize deploy/k8s` renders the base.
 * 2. Every object validates against the Kubernetes schemas of the `kubernetes-models` npm
 *    package (installed into NPM_PREFIX on first use, with `yaml` to read the render). Those
 *    schemas check types, enums and required fields but let unknown fields through (as an API
 *    server without strict validation would, dropping them silently); so every field is also
 *    looked up in the package's type declarations, and one that is not there fails.
 * 3. References hold: each volume's ConfigMap, Secret or claim, each envFrom ConfigMap, each
 *    probe's and Prometheus annotation's port, the image the Containerfile builds.
 * 4. Each container runs: its volumes are written to a temporary directory from the rendered
 *    ConfigMaps and Secrets (and empty directories for claims), the pod paths in its arguments
 *    point there, $(VAR) references are expanded from its environment as the kubelet would, and
 *    then tidal's containers run with --dry-run (exit 0: flags, spec and env config parse, the
 *    files they name are readable) and nats-server's with -t (its configuration parses). The
 *    job the workers join, the env they call (and its config) and the metrics ports are compared
 *    with the spec and what the controller's and trainer's dry runs report from it.
 * 5. The overlay docs/deploy.md shows, with credentials from `tidal creds`, renders and passes
 *    the same checks, holding those credentials and no GPU request.
 * 6. The checks can fail: broken copies of the render (a mistyped field, a wrong type,
 *    unreadable credentials, an env configured unlike the spec's, an unknown flag, workers of
 *    another job) must each be refused.
 *
 * Prints one line per check and "N passed, N failed"; exit 1 on any failure. npm's registry
 * out of reach: SKIP, exit 77.
 */
"use strict";
const fs = require("fs");
const os = require("os");
const path = require("path");
const { spawnSync } = require("child_process");

const [src, tidal, natsServer, prefix] = process.argv.slice(2).map((a) => path.resolve(a));
let passed = 0, failed = 0;

function die(msg) {
  console.log(`FAIL: ${msg}`);
  console.log(`${passed} passed, ${failed + 1} failed`);
  process.exit(1);
}
if (!src || !tidal || !natsServer || !prefix) die("usage: check_k8s.js SOURCE_DIR TIDAL_BINARY NATS_SERVER NPM_PREFIX");

const { require_package } = require(path.join(__dirname, "..", "harness", "npm_package.js"));
const modelsPrefix = path.join(prefix, "kubernetes-models");
require_package("check_k8s", "kubernetes-models@4", modelsPrefix, "kubernetes-models/v1/Pod", die, 77);
const YAML = require(require_package("check_k8s", "yaml@2", path.join(prefix, "yaml"), "yaml", die, 77));
const modelsDir = path.join(modelsPrefix, "node_modules");

function check(name, errors) {
  if (errors.length === 0) {
    passed++;
    console.log(`ok: ${name}`);
  } else {
    failed++;
    for (const e of errors) console.log(`FAIL: ${name}: ${e}`);
  }
}

// ---------------------------------------------------------------- render

const kubectl = process.env.KUBECTL || "kubectl";
const r = spawnSync(kubectl, ["kustomize", path.join(src, "deploy", "k8s")], { encoding: "utf8" });
if (r.error && r.error.code === "ENOENT")
  die(`${kubectl} is not installed (make deps installs Debian's kubernetes-client)`);
if (r.status !== 0) die(`${kubectl} kustomize deploy/k8s (exit ${r.status}):\n${r.stderr}`);
const rendered = YAML.parseAllDocuments(r.stdout).map((d) => d.toJS()).filter((o) => o);
console.log(`rendered ${rendered.length} objects with ${kubectl} kustomize`);

const objName = (o) => `${o.kind}/${o.metadata && o.metadata.name}`;

// ---------------------------------------------------------------- schemas

function modelFile(o) {
  const [group, version] = o.apiVersion.includes("/") ? o.apiVersion.split("/") : [null, o.apiVersion];
  const dir = group ? path.join("kubernetes-models", group, version) : path.join("kubernetes-models", version);
  return path.join(modelsDir, dir, o.kind);
}

/* Type declarations: for each .d.ts file, its interface's fields and the file each named type
 * comes from. A field's type is walked when it names an interface (directly, in an Array, or as
 * the values of a map); aliases (Quantity, IntOrString) and plain types end the walk. */
const declCache = new Map();
function declarations(file) {
  if (declCache.has(file)) return declCache.get(file);
  const text = fs.readFileSync(file, "utf8");
  const imports = {};
  for (const m of text.matchAll(/^import \{ (\w+) \} from "([^"]+)";$/gm)) {
    const p = m[2].startsWith(".") ? path.resolve(path.dirname(file), m[2]) : path.join(modelsDir, m[2]);
    imports[m[1]] = p + ".d.ts";
  }
  const lines = text.split("\n");
  const start = lines.findIndex((l) => /^export interface \w+/.test(l));
  let fields = null;
  if (start >= 0) {
    fields = {};
    for (let i = start + 1; i < lines.length && lines[i] !== "}"; i++) {
      const m = /^ {4}"([^"]+)"\??: (.*)$/.exec(lines[i]);
      if (!m) continue;
      let type = m[2];
      if (type === "{") { // a map: its value type is on the next line
        const v = /\[key: string\]: (.*);$/.exec(lines[i + 1] || "");
        type = v ? `Map<${v[1]}>` : "Map<unknown>";
      }
      fields[m[1]] = type.replace(/;$/, "");
    }
  }
  const d = { fields, imports, file };
  declCache.set(file, d);
  return d;
}

/* Every field of value that its type (declarations d) does not have, as "path: ..." strings. */
function unknownFields(value, d, where, out) {
  if (!d.fields || value === null || typeof value !== "object" || Array.isArray(value)) return;
  for (const [key, v] of Object.entries(value)) {
    const type = d.fields[key];
    if (type === undefined) {
      out.push(`${where}.${key}: unknown field (${path.basename(d.file, ".d.ts")} has ${Object.keys(d.fields).join(", ")})`);
      continue;
    }
    walkType(v, type, d, `${where}.${key}`, out);
  }
}
function walkType(v, type, d, where, out) {
  let m;
  if ((m = /^Array<(.*)>$/.exec(type))) {
    if (Array.isArray(v)) v.forEach((e, i) => walkType(e, m[1], d, `${where}[${i}]`, out));
  } else if ((m = /^Map<(.*)>$/.exec(type))) {
    if (v && typeof v === "object") for (const [k, e] of Object.entries(v)) walkType(e, m[1], d, `${where}.${k}`, out);
  } else if (d.imports[type] && fs.existsSync(d.imports[type])) {
    unknownFields(v, declarations(d.imports[type]), where, out);
  }
}

function validate(o) {
  const errors = [];
  if (!o || typeof o.apiVersion !== "string" || typeof o.kind !== "string") return ["no apiVersion or kind"];
  const file = modelFile(o);
  if (!fs.existsSync(file + ".js")) return [`${o.apiVersion} ${o.kind}: not a Kubernetes kind kubernetes-models knows`];
  const Model = require(file + ".js")[o.kind];
  let checked = o;
  if (o.kind === "Secret" && o.data) { // newer kustomize wraps base64 at 70 columns; the API server's
    checked = { ...o, data: {} };     // decoder (Go's) skips the newlines, the schema's format does not
    for (const [k, v] of Object.entries(o.data)) checked.data[k] = String(v).replace(/\s/g, "");
  }
  try {
    new Model(checked).validate();
  } catch (e) {
    errors.push(e.message);
  }
  unknownFields(o, declarations(file + ".d.ts"), "", errors);
  return errors;
}

// ---------------------------------------------------------------- references

const byKind = (kind) => new Map(rendered.filter((o) => o.kind === kind).map((o) => [o.metadata.name, o]));

function podTemplates(objs) {
  const out = [];
  for (const o of objs)
    if (["Deployment", "StatefulSet", "Job", "DaemonSet"].includes(o.kind) && o.spec && o.spec.template)
      out.push({ owner: o, pod: o.spec.template });
  return out;
}

function imageName() {
  const text = fs.readFileSync(path.join(src, "deploy", "Containerfile"), "utf8");
  const tag = /\s-t\s+(\S+)/.exec(text);
  const entry = /^ENTRYPOINT\s+\["([^"]+)"\]/m.exec(text);
  if (!tag || !entry) die("deploy/Containerfile: no `-t IMAGE` in its build line or no ENTRYPOINT");
  return { image: tag[1], entrypoint: entry[1] };
}

function references(objs) {
  const errors = [];
  const cms = new Map(objs.filter((o) => o.kind === "ConfigMap").map((o) => [o.metadata.name, o]));
  const secrets = new Map(objs.filter((o) => o.kind === "Secret").map((o) => [o.metadata.name, o]));
  const claims = new Map(objs.filter((o) => o.kind === "PersistentVolumeClaim").map((o) => [o.metadata.name, o]));
  const { image } = imageName();
  for (const { owner, pod } of podTemplates(objs)) {
    const who = objName(owner);
    const spec = pod.spec || {};
    const templates = new Set(((owner.spec && owner.spec.volumeClaimTemplates) || []).map((t) => t.metadata.name));
    const vols = new Map((spec.volumes || []).map((v) => [v.name, v]));
    for (const v of vols.values()) {
      if (v.configMap && !cms.has(v.configMap.name)) errors.push(`${who}: volume ${v.name}: no ConfigMap ${v.configMap.name}`);
      if (v.secret && !secrets.has(v.secret.secretName)) errors.push(`${who}: volume ${v.name}: no Secret ${v.secret.secretName}`);
      // the image runs as user tidal: a secret's files are root's unless the pod has an fsGroup (the
      // kubelet then gives them that group, readable), so a mode that others cannot read needs one
      const mode = v.secret && v.secret.defaultMode !== undefined ? v.secret.defaultMode : 0o644;
      if (v.secret && !(mode & 0o004) && !(spec.securityContext && spec.securityContext.fsGroup))
        errors.push(`${who}: volume ${v.name}: mode 0${mode.toString(8)} and no fsGroup: user tidal cannot read it`);
      if (v.persistentVolumeClaim && !claims.has(v.persistentVolumeClaim.claimName))
        errors.push(`${who}: volume ${v.name}: no PersistentVolumeClaim ${v.persistentVolumeClaim.claimName}`);
    }
    const ann = (pod.metadata && pod.metadata.annotations) || {};
    let scraped = false;
    for (const c of spec.containers || []) {
      const cw = `${who} container ${c.name}`;
      if (c.image !== image) errors.push(`${cw}: image ${c.image}, but deploy/Containerfile builds ${image}`);
      for (const m of c.volumeMounts || [])
        if (!vols.has(m.name) && !templates.has(m.name)) errors.push(`${cw}: mount ${m.mountPath}: no volume ${m.name}`);
      for (const e of c.envFrom || [])
        if (e.configMapRef && !cms.has(e.configMapRef.name)) errors.push(`${cw}: envFrom: no ConfigMap ${e.configMapRef.name}`);
      const ports = new Map((c.ports || []).map((p) => [p.name, p.containerPort]));
      const numbers = new Set((c.ports || []).map((p) => p.containerPort));
      for (const probe of ["startupProbe", "readinessProbe", "livenessProbe"]) {
        const g = c[probe] && c[probe].httpGet;
        if (g && !(typeof g.port === "number" ? numbers.has(g.port) : ports.has(g.port)))
          errors.push(`${cw}: ${probe}: port ${g.port} is not one of its ports`);
      }
      if (numbers.has(Number(ann["prometheus.io/port"]))) scraped = true;
    }
    if (ann["prometheus.io/scrape"] === "true" && !scraped)
      errors.push(`${who}: prometheus.io/port ${ann["prometheus.io/port"]} is no container's port`);
  }
  return errors;
}

// ---------------------------------------------------------------- commands

/* $(VAR) as the kubelet expands it: $$ is a literal $, an unknown name stays as written. */
function expand(s, env) {
  return s.replace(/\$\$|\$\(([A-Za-z_][A-Za-z0-9_]*)\)/g, (m, name) =>
    m === "$$" ? "$" : Object.prototype.hasOwnProperty.call(env, name) ? env[name] : m);
}

function containerEnv(c, owner, cms) {
  const env = {};
  for (const e of c.envFrom || []) {
    const cm = e.configMapRef && cms.get(e.configMapRef.name);
    if (cm) Object.assign(env, cm.data || {});
  }
  for (const e of c.env || []) {
    if (e.value !== undefined) env[e.name] = expand(String(e.value), env);
    else if (e.valueFrom && e.valueFrom.fieldRef && e.valueFrom.fieldRef.fieldPath === "metadata.name")
      env[e.name] = `${owner.metadata.name}-0`; // a pod's name: its owner's and a suffix
    else if (e.valueFrom && e.valueFrom.configMapKeyRef) {
      const cm = cms.get(e.valueFrom.configMapKeyRef.name);
      if (cm && cm.data) env[e.name] = cm.data[e.valueFrom.configMapKeyRef.key];
    }
  }
  return env;
}

/* The container's mounts as directories under root: ConfigMap and Secret keys as files. */
function materialize(c, pod, owner, objs, root) {
  const cms = new Map(objs.filter((o) => o.kind === "ConfigMap").map((o) => [o.metadata.name, o]));
  const secrets = new Map(objs.filter((o) => o.kind === "Secret").map((o) => [o.metadata.name, o]));
  const vols = new Map(((pod.spec && pod.spec.volumes) || []).map((v) => [v.name, v]));
  const mounts = [];
  for (const m of c.volumeMounts || []) {
    const dir = path.join(root, m.mountPath);
    fs.mkdirSync(dir, { recursive: true });
    const v = vols.get(m.name) || {};
    let files = {};
    if (v.configMap && cms.get(v.configMap.name)) files = cms.get(v.configMap.name).data || {};
    if (v.secret && secrets.get(v.secret.secretName)) {
      const s = secrets.get(v.secret.secretName);
      for (const [k, b64] of Object.entries(s.data || {})) files[k] = Buffer.from(String(b64).replace(/\s/g, ""), "base64");
      Object.assign(files, s.stringData || {});
    }
    for (const [k, content] of Object.entries(files)) fs.writeFileSync(path.join(dir, k), content);
    mounts.push(m.mountPath);
  }
  mounts.sort((a, b) => b.length - a.length);
  return (arg) => {
    for (const mp of mounts) if (arg === mp || arg.startsWith(mp + "/")) return path.join(root, arg);
    return arg;
  };
}

/* Runs every container's command; returns errors and what tidal's dry runs reported. */
function commands(objs, quiet) {
  const errors = [];
  const reports = [];
  const { entrypoint } = imageName();
  const cms = new Map(objs.filter((o) => o.kind === "ConfigMap").map((o) => [o.metadata.name, o]));
  const bins = { "/usr/local/bin/tidal": tidal, "/usr/sbin/nats-server": natsServer };
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), "tidal-k8s-"));
  try {
    let n = 0;
    for (const { owner, pod } of podTemplates(objs)) {
      for (const c of (pod.spec && pod.spec.containers) || []) {
        const cw = `${objName(owner)} container ${c.name}`;
        const env = containerEnv(c, owner, cms);
        const mapPath = materialize(c, pod, owner, objs, path.join(tmp, String(n++)));
        const argv = [...(c.command || [entrypoint]), ...(c.args || [])].map((a) => mapPath(expand(String(a), env)));
        const unresolved = argv.find((a) => /\$\([A-Za-z_]/.test(a));
        if (unresolved) {
          errors.push(`${cw}: ${unresolved}: a variable its environment does not define`);
          continue;
        }
        const bin = bins[argv[0]];
        if (!bin) {
          errors.push(`${cw}: runs ${argv[0]}, neither tidal nor nats-server`);
          continue;
        }
        const isTidal = bin === tidal;
        const args = [...argv.slice(1), isTidal ? "--dry-run" : "-t"];
        const run = spawnSync(bin, args, { encoding: "utf8", env: { ...process.env, ...env }, timeout: 30000 });
        const shown = `${path.basename(argv[0])} ${argv.slice(1).join(" ")}`;
        if (run.status !== 0) {
          errors.push(`${cw}: \`${shown}\` exit ${run.status}: ${(run.stderr || "").trim()}`);
          continue;
        }
        if (!quiet) console.log(`  ${cw}: ${shown}: parses`);
        if (isTidal) reports.push({ owner, c, role: argv[1] === "env" ? "env" : argv[1], out: run.stdout, argv, pod });
      }
    }
  } finally {
    fs.rmSync(tmp, { recursive: true, force: true });
  }
  return { errors, reports };
}

/* The roles agree: workers join the job the controller and trainer run, the env the spec calls
 * on the bus is served, each role's scrape port is the port it serves its metrics on. */
function agreement(reports, objs) {
  const errors = [];
  const field = (rep, key) => {
    const m = new RegExp(`^  ${key}: (\\S+)`, "m").exec(rep.out);
    return m ? m[1] : null;
  };
  const spec = reports.filter((x) => x.role === "controller" || x.role === "trainer");
  if (spec.length === 0) errors.push("no controller or trainer container");
  const job = spec.length ? field(spec[0], "job") : null;
  for (const rep of reports) {
    const who = `${objName(rep.owner)} (${rep.role})`;
    if (rep.role !== "env" && field(rep, "job") !== job) errors.push(`${who}: job ${field(rep, "job")}, the spec's is ${job}`);
    const ann = (rep.pod.metadata && rep.pod.metadata.annotations) || {};
    const metrics = (/^  metrics: (.*)$/m.exec(rep.out) || [])[1] || "off";
    const port = (/:(\d+)\/metrics|port (\d+)/.exec(metrics) || []).slice(1).find((x) => x);
    if (rep.role !== "env" && ann["prometheus.io/scrape"] === "true" && port !== ann["prometheus.io/port"])
      errors.push(`${who}: scraped on port ${ann["prometheus.io/port"]}, but serves metrics ${metrics}`);
    if (/http:\/\/127\.0\.0\.1:/.test(metrics)) errors.push(`${who}: metrics on 127.0.0.1, out of the probes' reach`);
  }
  if (spec.length) {
    const envLine = (/^  env: (\S+) \((.*)\)$/m.exec(spec[0].out) || []);
    const served = reports.filter((x) => x.role === "env").map((x) => x.argv[3]);
    if (envLine[2] && envLine[2].startsWith("served on the bus") && !served.includes(envLine[1]))
      errors.push(`the spec's env ${envLine[1]} is served on the bus, but no container serves it (serves: ${served.join(", ") || "none"})`);
  }
  // an env served on the bus is configured by its own --config: it must be the spec's env.config
  const jobCm = objs.find((o) => o.kind === "ConfigMap" && o.data && o.data["job.yaml"]);
  const specDoc = jobCm ? YAML.parse(jobCm.data["job.yaml"]) : null;
  const canonical = (v) => JSON.stringify(v, (k, x) =>
    x && typeof x === "object" && !Array.isArray(x) ? Object.fromEntries(Object.entries(x).sort()) : x);
  for (const rep of reports.filter((x) => x.role === "env" && specDoc && specDoc.env && x.argv[3] === specDoc.env.name)) {
    const i = rep.argv.indexOf("--config");
    let config = null;
    try {
      config = i > 0 ? JSON.parse(rep.argv[i + 1]) : {};
    } catch (e) {
      errors.push(`${objName(rep.owner)}: --config is not JSON: ${e.message}`);
      continue;
    }
    if (canonical(config) !== canonical(specDoc.env.config || {}))
      errors.push(`${objName(rep.owner)}: serves ${specDoc.env.name} with --config ${canonical(config)}, the spec's env.config is ${canonical(specDoc.env.config || {})}`);
  }
  return errors;
}

/* Every check on one render; label: the prefix of its check lines, or null to only return the errors. */
function checkAll(objs, label) {
  const quiet = label === null;
  const errors = [];
  for (const o of objs) for (const e of validate(o)) errors.push(`${objName(o)}: ${e}`);
  errors.push(...references(objs));
  if (!quiet) {
    check(`${label}: ${objs.length} objects valid against kubernetes-models' schemas, no unknown field, references hold`, errors);
    errors.length = 0;
  }
  const { errors: cmdErrors, reports } = commands(objs, quiet);
  errors.push(...cmdErrors);
  if (cmdErrors.length === 0) errors.push(...agreement(reports, objs));
  if (!quiet) check(`${label}: every container's command parses (tidal --dry-run, nats-server -t) and the roles agree`, errors);
  return errors;
}

const find = (objs, kind, name) => objs.find((o) => o.kind === kind && o.metadata.name === name);
const trainerLimits = (objs) => {
  const t = find(objs, "Job", "tidal-trainer");
  return (t && t.spec.template.spec.containers[0].resources.limits) || {};
};

// ---------------------------------------------------------------- the base

checkAll(rendered, "deploy/k8s");
{
  const errors = [];
  if (String(trainerLimits(rendered)["nvidia.com/gpu"]) !== "1") errors.push("the trainer does not request nvidia.com/gpu: 1");
  const nats = find(rendered, "StatefulSet", "tidal-nats");
  if (!nats || nats.spec.replicas !== 3 || !(nats.spec.volumeClaimTemplates || []).length)
    errors.push("no StatefulSet tidal-nats of 3 replicas with a volume claim template");
  if (!find(rendered, "Deployment", "tidal-rollout")) errors.push("no Deployment tidal-rollout to scale");
  check("deploy/k8s: the trainer requests a GPU, the bus is 3 nodes with volumes, workers are a Deployment", errors);
}

// ---------------------------------------------------------------- docs/deploy.md's overlay

/* The overlay docs/deploy.md shows (its `# my-job/FILE` blocks), with credentials `tidal creds`
 * writes, rendered beside a link to deploy/: the real credentials replace the placeholders, the
 * trainer loses its GPU request, and everything above still holds. */
{
  const doc = fs.readFileSync(path.join(src, "docs", "deploy.md"), "utf8");
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), "tidal-k8s-overlay-"));
  try {
    fs.symlinkSync(path.join(src, "deploy"), path.join(tmp, "deploy"));
    const dir = path.join(tmp, "my-job");
    fs.mkdirSync(dir);
    let files = 0;
    for (const m of doc.matchAll(/```yaml\n# my-job\/(\S+)\n([\s\S]*?)```/g)) {
      fs.writeFileSync(path.join(dir, m[1]), m[2]);
      files++;
    }
    if (files < 2) die("docs/deploy.md: no `# my-job/kustomization.yaml` and `# my-job/trainer-cpu.yaml` blocks");
    const cr = spawnSync(tidal, ["creds", path.join(src, "deploy", "k8s", "job.yaml"), "--out", path.join(dir, "creds")],
                         { encoding: "utf8" });
    if (cr.status !== 0) die(`tidal creds deploy/k8s/job.yaml (exit ${cr.status}): ${cr.stderr}`);
    const ro = spawnSync(kubectl, ["kustomize", dir], { encoding: "utf8" });
    if (ro.status !== 0) die(`${kubectl} kustomize of docs/deploy.md's overlay (exit ${ro.status}):\n${ro.stderr}`);
    const objs = YAML.parseAllDocuments(ro.stdout).map((d) => d.toJS()).filter((o) => o);
    checkAll(objs, "docs/deploy.md's overlay");
    const errors = [];
    if (trainerLimits(objs)["nvidia.com/gpu"] !== undefined) errors.push("the trainer still requests a GPU");
    for (const role of ["controller", "trainer", "rollout", "env"]) {
      const want = fs.readFileSync(path.join(dir, "creds", `${role}.creds`));
      const s = objs.find((o) => o.kind === "Secret" && o.metadata.name.startsWith(`tidal-${role}-creds`));
      const got = s && s.data && Buffer.from(String(s.data[`${role}.creds`] || "").replace(/\s/g, ""), "base64");
      if (!got || !got.equals(want)) errors.push(`Secret tidal-${role}-creds does not hold the ${role}.creds tidal creds wrote`);
    }
    const cm = objs.find((o) => o.kind === "ConfigMap" && o.metadata.name.startsWith("tidal-nats-config"));
    const auth = fs.readFileSync(path.join(dir, "creds", "nats-auth.conf"), "utf8");
    if (!cm || cm.data["nats-auth.conf"] !== auth || !cm.data["nats.conf"])
      errors.push("ConfigMap tidal-nats-config does not hold nats.conf and the nats-auth.conf tidal creds wrote");
    check("docs/deploy.md's overlay: real credentials in place of the placeholders, the trainer on the CPU", errors);
  } finally {
    fs.rmSync(tmp, { recursive: true, force: true });
  }
}

/* The checks can fail: each broken copy must be refused, naming the object and the fault. */
const copy = () => JSON.parse(JSON.stringify(rendered));
const broken = [
  ["a mistyped field", (objs) => {
    const d = find(objs, "Deployment", "tidal-rollout");
    d.spec.template.spec.terminationGracePeriodSecond = 5;
  }, /unknown field/],
  ["a wrong type", (objs) => {
    find(objs, "StatefulSet", "tidal-nats").spec.replicas = "three";
  }, /must be integer/],
  ["credentials the image's user cannot read", (objs) => {
    delete find(objs, "Deployment", "tidal-rollout").spec.template.spec.securityContext;
  }, /user tidal cannot read/],
  ["an env configured unlike the spec's", (objs) => {
    const a = find(objs, "Deployment", "tidal-env").spec.template.spec.containers[0].args;
    a[a.indexOf("--config") + 1] = '{"length": 4, "alphabet": "digits", "ops": ["copy"], "prompt": "bare"}';
  }, /the spec's env.config is/],
  ["an unknown flag", (objs) => {
    find(objs, "Deployment", "tidal-rollout").spec.template.spec.containers[0].args.push("--metrics-prot", "9103");
  }, /unknown option/],
  ["workers joining another job", (objs) => {
    const a = find(objs, "Deployment", "tidal-rollout").spec.template.spec.containers[0].args;
    a[a.indexOf("--job") + 1] = "another-job";
  }, /job another-job/],
];
for (const [what, breakIt, expected] of broken) {
  const objs = copy();
  breakIt(objs);
  const errors = checkAll(objs, null);
  const hit = errors.find((e) => expected.test(e));
  check(`refuses ${what}`, hit ? [] : [`not refused as expected (${expected}); errors: ${errors.join("; ") || "none"}`]);
  if (hit) console.log(`  (${hit.split("\n")[0]})`);
}

console.log(`${passed} passed, ${failed} failed`);
process.exit(failed ? 1 : 0);
