#!/usr/bin/env python3
"""dashboard_browser.py - the dashboard in a real browser (e2e_dashboard_browser).

Headless Chromium, driven over the Chrome DevTools protocol on a pipe
(--remote-debugging-pipe: no extra package), loads the dashboard

  1. of a running quickstart (`tidal run --dashboard PORT`, 60 steps): once
     steps land, the reward chart's points (its canvas's data-steps and
     data-values, set as it draws) are metrics.jsonl's reward_mean of those
     steps, the rollout viewer's samples (id, reward, generated text) are
     samples.jsonl's, the workers table lists the live workers; the page stays
     open while the run ends and then says the server is gone, keeping what it
     showed;
  2. of the finished run (`tidal view RUN --port N`): every chart point is
     metrics.jsonl's, the samples match, a sample opens by its id (#sample=ID)
     and an unknown id says so (the API's 404);
  3. of a truncated copy of the run (metrics.jsonl and samples.jsonl cut
     mid-line, summary.json gone): the whole lines are shown, the API answers
     404 with a JSON error for the summary and an unknown sample; `tidal view`
     of a directory that is no run exits 2 naming it.

Screenshots go to WORK (dashboard-live.png, dashboard-view.png,
dashboard-rollouts.png); docs/images/ holds copies the docs show.

  dashboard_browser.py TIDAL_BIN SOURCE_DIR WORK
exit 0 passed, 1 failed, 77 skipped (no Chromium that starts: the message says why) - except under
TIDAL_REQUIRE_CHROMIUM=1 (CI: .ci/run sets it, `make deps` installed Chromium), where that fails.
"""
import base64
import fcntl
import json
import os
import queue
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request

SKIP = 1 if os.environ.get("TIDAL_REQUIRE_CHROMIUM") == "1" else 77


def log(msg):
    print(f"dashboard_browser: {msg}", flush=True)


def fail(msg):
    log(f"FAIL: {msg}")
    sys.exit(1)


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


class Browser:
    """Headless Chromium and one page, over the DevTools protocol on fds 3 (to it) and 4 (from it)."""

    def __init__(self, exe, profile):
        to_r, to_w = os.pipe()
        from_r, from_w = os.pipe()
        # out of the way of 3 and 4, which the child's dup2 writes
        to_r2, from_w2 = fcntl.fcntl(to_r, fcntl.F_DUPFD, 100), fcntl.fcntl(from_w, fcntl.F_DUPFD, 100)
        os.close(to_r), os.close(from_w)

        def child():
            os.dup2(to_r2, 3)
            os.dup2(from_w2, 4)

        args = [exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--hide-scrollbars",
                "--no-first-run", "--no-default-browser-check", "--disable-extensions", "--mute-audio",
                f"--user-data-dir={profile}", "--remote-debugging-pipe", "about:blank"]
        self.proc = subprocess.Popen(args, preexec_fn=child, close_fds=False, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        os.close(to_r2), os.close(from_w2)
        self.w = to_w
        self.r = from_r
        self.next_id = 0
        self.replies = {}
        self.cv = threading.Condition()
        self.closed = False
        threading.Thread(target=self._reader, daemon=True).start()
        self.session = None

    def _reader(self):
        buf = b""
        while True:
            try:
                chunk = os.read(self.r, 1 << 20)
            except OSError:
                chunk = b""
            if not chunk:
                with self.cv:
                    self.closed = True
                    self.cv.notify_all()
                return
            buf += chunk
            while b"\0" in buf:
                msg, buf = buf.split(b"\0", 1)
                m = json.loads(msg)
                if "id" in m:
                    with self.cv:
                        self.replies[m["id"]] = m
                        self.cv.notify_all()

    def call(self, method, params=None, timeout=30, session=True):
        self.next_id += 1
        mid = self.next_id
        m = {"id": mid, "method": method, "params": params or {}}
        if session and self.session:
            m["sessionId"] = self.session
        os.write(self.w, json.dumps(m).encode() + b"\0")
        deadline = time.time() + timeout
        with self.cv:
            while mid not in self.replies:
                left = deadline - time.time()
                if self.closed or left <= 0:
                    raise RuntimeError(f"chromium: no answer to {method}" + (" (it exited)" if self.closed else ""))
                self.cv.wait(left)
            r = self.replies.pop(mid)
        if "error" in r:
            raise RuntimeError(f"chromium: {method}: {r['error']}")
        return r.get("result", {})

    def open(self, width=1400, height=1000):
        t = self.call("Target.createTarget", {"url": "about:blank"}, session=False)
        self.session = self.call("Target.attachToTarget", {"targetId": t["targetId"], "flatten": True},
                                 session=False)["sessionId"]
        self.call("Page.enable")
        self.call("Runtime.enable")
        self.call("Emulation.setDeviceMetricsOverride",
                  {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False})

    def goto(self, url):
        self.call("Page.navigate", {"url": url})

    def eval(self, expr):
        r = self.call("Runtime.evaluate", {"expression": expr, "returnByValue": True, "awaitPromise": True})
        if "exceptionDetails" in r:
            raise RuntimeError(f"page: {expr[:60]}...: {r['exceptionDetails'].get('text')}")
        return r["result"].get("value")

    def wait_for(self, expr, timeout, what):
        deadline = time.time() + timeout
        while time.time() < deadline:
            try:
                if self.eval(expr):
                    return
            except RuntimeError:
                pass
            time.sleep(0.2)
        fail(f"the page never showed {what} in {timeout} s")

    def screenshot(self, path, height=None, scroll_to=None):
        if scroll_to:
            self.eval(f"document.querySelector({json.dumps(scroll_to)}).scrollIntoView()")
            time.sleep(0.3)
        if height:
            self.call("Emulation.setDeviceMetricsOverride",
                      {"width": 1400, "height": height, "deviceScaleFactor": 1, "mobile": False})
            time.sleep(0.5)
        data = self.call("Page.captureScreenshot", {"format": "png"})["data"]
        with open(path, "wb") as f:
            f.write(base64.b64decode(data))
        log(f"screenshot {path}")

    def close(self):
        try:
            self.call("Browser.close", session=False, timeout=5)
        except RuntimeError:
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def find_chromium():
    for name in (os.environ.get("TIDAL_CHROMIUM"), "chromium", "chromium-browser", "google-chrome"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


def read_jsonl(path):
    """The whole lines of a JSONL file that parse (a last line cut short is left out)."""
    rows = []
    try:
        text = open(path, encoding="utf-8").read()
    except FileNotFoundError:
        return rows
    lines = text.split("\n")
    for line in lines[:-1]:  # the part after the last newline is a line being written
        try:
            rows.append(json.loads(line))
        except ValueError:
            pass
    return rows


def samples_by_id(run):
    out = {}
    for name in ("samples.1.jsonl", "samples.jsonl", "eval_samples.jsonl"):
        for line in read_jsonl(os.path.join(run, name)):
            for g in line.get("groups", []):
                for s in g["samples"]:
                    out[s["id"]] = s
    return out


# what the page shows, read through its DOM
CHART = """(() => { const c = document.getElementById('chart-%s');
  return c ? {n: +c.dataset.n, steps: (c.dataset.steps || '').split(',').filter(x => x).map(Number),
              values: (c.dataset.values || '').split(',').filter(x => x).map(Number)} : null; })()"""
SAMPLES = """[...document.querySelectorAll('#samples .sample')].map(s => ({id: s.dataset.id, reward: s.dataset.reward,
  gen: [...s.querySelectorAll('.seg.gen')].map(x => x.textContent).join(''),
  env: [...s.querySelectorAll('.seg.env')].map(x => x.textContent).join('')}))"""


def check_chart(b, run, key, chart, exact_count=None):
    c = b.eval(CHART % chart)
    rows = {r["step"]: r for r in read_jsonl(os.path.join(run, "metrics.jsonl"))}
    if not c or c["n"] < 1 or len(c["steps"]) != c["n"] or len(c["values"]) != c["n"]:
        fail(f"chart {chart}: no points ({c})")
    if exact_count is not None and c["n"] != exact_count:
        fail(f"chart {chart}: {c['n']} points, metrics.jsonl has {exact_count} steps")
    for step, v in zip(c["steps"], c["values"]):
        want = rows.get(step, {}).get(key)
        if want is None or abs(want - v) > 1e-9 * max(1.0, abs(want)):
            fail(f"chart {chart}: step {step} shows {v}, metrics.jsonl has {key} {want}")
    return c["n"]


def check_samples(b, run, want_some=True):
    shown = b.eval(SAMPLES)
    kept = samples_by_id(run)
    if want_some and not shown:
        fail("the rollout viewer lists no sample")
    for s in shown:
        k = kept.get(s["id"])
        if not k:
            fail(f"the rollout viewer shows sample {s['id']}, which samples.jsonl does not hold")
        gen = "".join(x["text"] for x in k["segments"] if x["kind"] == "gen")
        env = "".join(x["text"] for x in k["segments"] if x["kind"] == "env")
        if abs(float(s["reward"]) - k["reward"]) > 1e-12 or s["gen"] != gen or s["env"] != env:
            fail(f"sample {s['id']}: the page shows reward {s['reward']} text {s['gen']!r}, "
                 f"samples.jsonl has {k['reward']} {gen!r}")
    return len(shown)


def http_json(url):
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def start_view(tidal, run, port):
    p = subprocess.Popen([tidal, "view", run, "--port", str(port)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                         text=True)
    line = p.stdout.readline()
    if f":{port}/" not in line:
        p.kill()
        fail(f"tidal view {run}: {line.strip() or 'no URL printed'}")
    return p


def main():
    if len(sys.argv) != 4:
        print(__doc__, file=sys.stderr)
        return 2
    tidal, source, work = sys.argv[1:]
    exe = find_chromium()
    if not exe:
        print(f"{'FAIL' if SKIP == 1 else 'SKIP'}: dashboard_browser: no chromium on PATH (Debian's chromium package; `make deps` installs it)")
        return SKIP
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(work)
    profile = tempfile.mkdtemp(prefix="tidal-chromium-")
    try:
        b = Browser(exe, profile)
        b.call("Browser.getVersion", session=False, timeout=30)
    except (RuntimeError, OSError) as e:
        print(f"{'FAIL' if SKIP == 1 else 'SKIP'}: dashboard_browser: {exe} does not start headless: {e}")
        return SKIP
    procs = []
    try:
        return run_checks(b, tidal, source, work, procs)
    finally:
        b.close()
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    p.kill()
        shutil.rmtree(profile, ignore_errors=True)


def run_checks(b, tidal, source, work, procs):
    b.open()
    # ---- 1. a running quickstart
    run = os.path.join(work, "run")
    port = free_port()
    t0 = time.time()
    job = subprocess.Popen([tidal, "run", os.path.join(source, "examples", "quickstart.yaml"), "--set",
                            "trainer.steps=60", "--set", "eval.every=30", "--dashboard", str(port), "--out", run],
                           stdout=open(os.path.join(work, "run.log"), "w"), stderr=subprocess.STDOUT)
    procs.append(job)
    metrics = os.path.join(run, "metrics.jsonl")
    while len(read_jsonl(metrics)) < 3:
        if job.poll() is not None:
            fail(f"tidal run exited ({job.returncode}) before 3 steps: {work}/run.log")
        if time.time() - t0 > 240:
            fail("no 3 steps in 240 s")
        time.sleep(0.1)
    b.goto(f"http://127.0.0.1:{port}/")
    b.wait_for("document.body.dataset.loaded === '1' && +document.getElementById('chart-reward').dataset.n >= 3"
               " && document.querySelectorAll('#samples .sample').length > 0", 60, "3 steps and samples")
    if os.path.exists(os.path.join(run, "summary.json")):
        fail("the run ended before the live page could be checked (a faster machine than expected: give it more steps)")
    n = check_chart(b, run, "reward_mean", "reward")
    check_chart(b, run, "staleness_mean", "staleness")
    ns = check_samples(b, run)
    workers = b.eval("[...document.querySelectorAll('#workers tbody tr')].map(r => r.dataset.id)")
    if len([w for w in workers if w]) != 2:
        fail(f"the workers table lists {workers}, want the run's 2 workers")
    state = b.eval("document.getElementById('state').textContent")
    if state != "running":
        fail(f"the live page says {state!r}, want 'running'")
    log(f"live: {n} reward points and {ns} samples as in metrics.jsonl and samples.jsonl, workers {workers}")
    b.wait_for("+document.getElementById('chart-reward').dataset.n >= 20", 120, "20 steps")
    b.screenshot(os.path.join(work, "dashboard-live.png"), height=1000)
    # the page stays open while the run ends
    if job.wait(timeout=300) != 0:
        fail(f"tidal run exited {job.returncode}: {work}/run.log")
    b.wait_for("document.getElementById('state').textContent === 'disconnected'", 30, "that its server is gone")
    banner = b.eval("document.getElementById('banner').textContent")
    if "Lost the connection" not in banner:
        fail(f"the banner says {banner!r}")
    if b.eval(CHART % "reward")["n"] < 20:
        fail("the page dropped its charts when the server went")
    log(f"the run ended with the page open: it says {banner[:70]!r}... and keeps its charts")

    # ---- 2. the finished run, through tidal view
    vport = free_port()
    procs.append(start_view(tidal, run, vport))
    rows = read_jsonl(metrics)
    b.goto(f"http://127.0.0.1:{vport}/")
    b.wait_for(f"+document.getElementById('chart-reward').dataset.n === {len(rows)} &&"
               " document.getElementById('state').textContent === 'finished' &&"
               " document.querySelectorAll('#samples .sample').length > 0", 30, "the whole run")
    for key, chart in (("reward_mean", "reward"), ("staleness_mean", "staleness"), ("tokens_per_s", "throughput"),
                       ("loss", "loss"), ("entropy", "entropy"), ("mismatch_k3", "mismatch"),
                       ("grad_norm", "grad_norm")):
        check_chart(b, run, key, chart, exact_count=len(rows))
    hist = b.eval(CHART % "staleness_hist")
    if hist["n"] < 1 or sum(hist["values"]) <= 0:
        fail(f"the staleness histogram is empty: {hist}")
    ns = check_samples(b, run)
    if "\"stop_reason\"" not in b.eval("document.getElementById('summary').textContent"):
        fail("the page does not show summary.json")
    b.screenshot(os.path.join(work, "dashboard-view.png"), height=1000)
    # a sample by its id, through the page's own link form
    some = b.eval("document.querySelector('#samples .sample').dataset.id")
    b.eval(f"location.hash = '#sample={some}'")
    b.wait_for(f"document.querySelector('#detail .sample') && document.querySelector('#detail .sample').dataset.id === '{some}'",
               10, f"sample {some} opened")
    b.eval("document.getElementById('f-rmin').value = '0.6'; document.getElementById('f-rmin').dispatchEvent(new Event('change'))")
    b.wait_for("[...document.querySelectorAll('#samples .sample')].length > 0 && "
               "[...document.querySelectorAll('#samples .sample')].every(s => +s.dataset.reward >= 0.6)", 10,
               "only samples with reward >= 0.6")
    check_samples(b, run)
    b.screenshot(os.path.join(work, "dashboard-rollouts.png"), height=900, scroll_to="#samples-note")
    b.eval("location.hash = '#sample=g999999-0'")
    b.wait_for("document.getElementById('detail').textContent.includes('g999999-0: dashboard: sample g999999-0: not among')",
               10, "that sample g999999-0 is not kept")
    log(f"view: {len(rows)} steps on every chart, {ns} samples, sample {some} opened by id, the unknown one refused")
    code, body = http_json(f"http://127.0.0.1:{vport}/api/sample/g999999-0")
    if code != 404 or "g999999-0" not in body.get("error", ""):
        fail(f"/api/sample/g999999-0: {code} {body}")

    # ---- 3. a truncated run directory
    cut = os.path.join(work, "truncated")
    os.makedirs(cut)
    for name in ("spec.json", "metrics.jsonl", "samples.jsonl"):
        data = open(os.path.join(run, name), "rb").read()
        if name.endswith(".jsonl"):
            data = data[: len(data) // 2]  # mid-line
        open(os.path.join(cut, name), "wb").write(data)
    whole = len(read_jsonl(os.path.join(cut, "metrics.jsonl")))
    tport = free_port()
    procs.append(start_view(tidal, cut, tport))
    b.goto(f"http://127.0.0.1:{tport}/")
    b.wait_for(f"+document.getElementById('chart-reward').dataset.n === {whole} &&"
               " document.querySelectorAll('#samples .sample').length > 0", 30, f"the {whole} whole steps")
    check_chart(b, cut, "reward_mean", "reward", exact_count=whole)
    check_samples(b, cut)
    if b.eval("document.getElementById('state').textContent") != "partial run":
        fail("a run without summary.json is not shown as partial")
    code, body = http_json(f"http://127.0.0.1:{tport}/api/summary")
    if code != 404 or "summary.json" not in body.get("error", ""):
        fail(f"/api/summary of a truncated run: {code} {body}")
    code, body = http_json(f"http://127.0.0.1:{tport}/api/metrics")
    if code != 200 or len(body["rows"]) != whole or body["bad_lines"] != 1:
        fail(f"/api/metrics of a truncated run: {code}, {len(body.get('rows', []))} rows, want {whole} and 1 bad line")
    norun = os.path.join(work, "norun")
    os.makedirs(norun)
    r = subprocess.run([tidal, "view", norun], capture_output=True, text=True, timeout=30)
    if r.returncode != 2 or "not a run directory" not in r.stderr:
        fail(f"tidal view of an empty directory: exit {r.returncode}: {r.stderr.strip()}")
    log(f"truncated: {whole} whole steps shown, summary 404 with a JSON error, an empty directory refused (exit 2)")
    log(f"passed in {time.time() - t0:.0f} s; screenshots in {work}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
