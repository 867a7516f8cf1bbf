#!/usr/bin/python3
"""Churn: a job whose rollout workers come and go all the time still completes, balances and trains
nothing twice.

`tidal run` of the quickstart job (examples/quickstart.yaml: the tiny model, the strings copy task)
with `rollout.workers: 0` - a private nats-server, the controller and the trainer only - and a pool of
up to --max-workers (64) `tidal rollout` processes started by this script, each single-threaded
(OMP_NUM_THREADS=1, OMP_WAIT_POLICY=passive) and simulating a GPU's generation time through the bench
hook (`--token-ms T --tail A`: each group is held T ms per generated token times a Pareto(A) factor,
the prompt kept alive meanwhile), so that most of them sleep and 64 fit on 2 cores. Every --period
seconds the script kills -9 some live workers (their prompts come back after rollout.ack_wait_ms),
SIGTERMs others (they leave cleanly: the group in hand is published, the rest returned) and starts new
ones, keeping between --min-workers and --max-workers alive, until the job ends.

Checks (exit 1 when one fails, each printed):
  - the job completed: `tidal run` exits 0, summary.json done at version = steps;
  - balance: summary.json groups dispatched = trained + dropped + failed + in flight, trained =
    steps x groups_per_step;
  - staleness: no trained token more than buffer.max_staleness (2) versions old;
  - trained once: the last checkpoint's trained_ids (every trajectory trained) has each id once, and
    steps x groups_per_step x group_size of them;
  - every worker sent SIGTERM left with exit 0, and no process outlived the run (each is SIGTERMed
    at the end and must exit within 15 s).
Figures: prompts redelivered, groups dropped by reason (stale...), failed, duplicate samples, samples
trained per second over the run, workers started / killed / terminated, the controller's and the
trainer's RSS early and at the end (a leak would show). One JSON line at the end carries them all.

usage: churn.py [--tidal build/tidal] [--out /tmp/churn] [--steps 150] [--groups 24] [--max-workers 64]
                [--min-workers 40] [--period 3] [--kill 3] [--term 3] [--token-ms 30] [--tail 2]
                [--ack-wait-ms 3000] [--seed 1] [--timeout 1800]
"""
import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def read_jsonl(path):
    if not os.path.exists(path):
        return []
    out = []
    with open(path) as f:
        for line in f:
            try:
                out.append(json.loads(line))
            except ValueError:
                pass  # a line being written
    return out


def last_step(run):
    rows = read_jsonl(os.path.join(run, "metrics.jsonl"))
    return max((r.get("step", 0) for r in rows), default=0)


def pids_of(run):
    """RUN/pids: role -> pid, and the nats-server's URL."""
    out = {}
    try:
        with open(os.path.join(run, "pids")) as f:
            for line in f:
                k, v = line.split()
                out[k] = v
    except (OSError, ValueError):
        pass
    return out


def rss_mb(pid):
    try:
        with open("/proc/%s/status" % pid) as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return None


class Pool:
    """The rollout workers this script started: id -> Popen, and what became of each."""

    def __init__(self, a, url, logs):
        self.a, self.url, self.logs = a, url, logs
        self.live = {}
        self.sigtermed = set()
        self.n_started = self.n_killed = self.n_termed = 0
        self.bad_exits = []  # (id, returncode) of a worker that ended other than as told
        self.late = 0  # started as the job ended: found the private bus gone (exit 1), as it should
        self.max_live = 0
        self.env = dict(os.environ, OMP_NUM_THREADS="1", OMP_WAIT_POLICY="passive")

    def start(self):
        wid = "c%04d" % self.n_started
        self.n_started += 1
        log = open(os.path.join(self.logs, wid + ".log"), "w")
        self.live[wid] = subprocess.Popen(
            [self.a.tidal, "rollout", "--bus", self.url, "--job", "quickstart", "--id", wid, "--token-ms",
             str(self.a.token_ms), "--tail", str(self.a.tail)],
            stdout=log, stderr=subprocess.STDOUT, env=self.env)
        log.close()

    def reap(self):
        for wid, p in list(self.live.items()):
            rc = p.poll()
            if rc is None:
                continue
            del self.live[wid]
            killed = rc == -signal.SIGKILL and wid not in self.sigtermed
            if rc == 1 and self.no_bus(wid):  # the private bus stops with the job; any earlier would show as a failed job
                self.late += 1
            elif rc != 0 and not killed:  # a clean leave (SIGTERM, the job done) exits 0
                self.bad_exits.append((wid, rc, "after SIGTERM" if wid in self.sigtermed else "untouched"))

    def no_bus(self, wid):
        try:
            with open(os.path.join(self.logs, wid + ".log")) as f:
                return "No server available" in f.read()
        except OSError:
            return False

    def signal(self, wid, sig):
        p = self.live.get(wid)
        if p is None or p.poll() is not None:
            return
        if sig == signal.SIGTERM:
            self.sigtermed.add(wid)
            self.n_termed += 1
        else:
            self.n_killed += 1
        p.send_signal(sig)

    def churn(self, rng):
        self.reap()
        ids = [w for w in self.live if w not in self.sigtermed]
        rng.shuffle(ids)
        k = rng.randint(0, self.a.kill) if ids else 0
        t = rng.randint(0, self.a.term) if len(ids) > k else 0
        for wid in ids[:k]:
            self.signal(wid, signal.SIGKILL)
        for wid in ids[k:k + t]:
            self.signal(wid, signal.SIGTERM)
        want = rng.randint(self.a.min_workers, self.a.max_workers)
        alive = len([w for w in self.live if w not in self.sigtermed]) - k
        for _ in range(max(0, want - alive)):
            self.start()
        self.max_live = max(self.max_live, len([w for w in self.live if w not in self.sigtermed]) - k)

    def finish(self, grace_s):
        """SIGTERM every worker still there; returns the ids that did not exit within grace_s (then killed)."""
        for wid in list(self.live):
            self.signal(wid, signal.SIGTERM)
        t0 = time.time()
        while self.live and time.time() - t0 < grace_s:
            self.reap()
            time.sleep(0.2)
        hung = sorted(self.live)
        for p in self.live.values():
            p.kill()
            p.wait()
        self.live.clear()
        return hung


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tidal", default=os.path.join(ROOT, "build", "tidal"))
    ap.add_argument("--out", default="/tmp/churn")
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--groups", type=int, default=24, help="trainer.groups_per_step")
    ap.add_argument("--max-workers", type=int, default=64)
    ap.add_argument("--min-workers", type=int, default=40)
    ap.add_argument("--period", type=float, default=3.0, help="seconds between two rounds of churn")
    ap.add_argument("--kill", type=int, default=3, help="at most this many kill -9 per round")
    ap.add_argument("--term", type=int, default=3, help="at most this many SIGTERM per round")
    ap.add_argument("--token-ms", type=float, default=30)
    ap.add_argument("--tail", type=float, default=2)
    ap.add_argument("--ack-wait-ms", type=int, default=3000,
                    help="rollout.ack_wait_ms: how soon a killed worker's prompt comes back")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--timeout", type=float, default=1800)
    a = ap.parse_args()
    if not 0 < a.min_workers <= a.max_workers:
        sys.exit("churn.py: want 0 < --min-workers <= --max-workers")
    rng = random.Random(a.seed)
    shutil.rmtree(a.out, ignore_errors=True)
    os.makedirs(os.path.join(a.out, "workers"))
    run = os.path.join(a.out, "run")
    sets = ["rollout.workers=0", "trainer.steps=%d" % a.steps, "trainer.groups_per_step=%d" % a.groups,
            "rollout.ack_wait_ms=%d" % a.ack_wait_ms, "eval.every=0", "trainer.checkpoint_every=50"]
    cmd = [a.tidal, "run", os.path.join(ROOT, "examples", "quickstart.yaml"), "--out", run]
    for s in sets:
        cmd += ["--set", s]
    print("churn: " + " ".join(cmd), flush=True)
    run_log = open(os.path.join(a.out, "run.out"), "w")
    t0 = time.time()
    job = subprocess.Popen(cmd, stdout=run_log, stderr=subprocess.STDOUT)
    url = None
    while url is None and job.poll() is None and time.time() - t0 < 60:
        url = pids_of(run).get("nats-server")
        time.sleep(0.1)
    if url is None:
        job.kill()
        sys.exit("churn.py: tidal run gave no bus URL (see %s/run.out)" % a.out)
    pool = Pool(a, url, os.path.join(a.out, "workers"))
    rss = {}
    next_round, next_print = 0.0, 0.0
    while job.poll() is None and time.time() - t0 < a.timeout:
        now = time.time()
        if now >= next_round:
            pool.churn(rng)
            next_round = now + a.period
        step = last_step(run)
        if "early" not in rss and step >= min(20, a.steps // 4):
            p = pids_of(run)
            rss["early"] = {"step": step, "controller_mb": rss_mb(p.get("controller")),
                            "trainer_mb": rss_mb(p.get("trainer"))}
        if step >= a.steps - 2 or "early" in rss:
            p = pids_of(run)
            c, t = rss_mb(p.get("controller")), rss_mb(p.get("trainer"))
            if c and t:
                rss["end"] = {"step": step, "controller_mb": c, "trainer_mb": t}
        if now >= next_print:
            print("churn: %5.0fs step %d/%d, %d workers live, %d started, %d killed, %d terminated" %
                  (now - t0, step, a.steps, len(pool.live), pool.n_started, pool.n_killed, pool.n_termed), flush=True)
            next_print = now + 10
        time.sleep(0.2)
    timed_out = job.poll() is None
    if timed_out:
        job.send_signal(signal.SIGTERM)
        try:
            job.wait(30)
        except subprocess.TimeoutExpired:
            job.kill()
    rc = job.wait()
    wall = time.time() - t0
    churned = (pool.n_killed, pool.n_termed)  # during the job; finish() SIGTERMs the rest
    hung = pool.finish(15)
    pool.reap()

    failures = []

    def check(ok, what):
        if not ok:
            failures.append(what)
            print("churn: FAILED: " + what, flush=True)

    check(not timed_out, "the job did not end within %.0f s" % a.timeout)
    check(rc == 0, "tidal run exit %s" % rc)
    try:
        with open(os.path.join(run, "summary.json")) as f:
            s = json.load(f)
    except (OSError, ValueError) as e:
        s = {}
        check(False, "no summary.json: %s" % e)
    g = s.get("groups", {})
    dropped = g.get("dropped", {})
    n_dropped = sum(dropped.values())
    disp, trained, failed, inflight = (g.get(k, 0) for k in ("dispatched", "trained", "failed", "in_flight"))
    check(s.get("done") is True and s.get("version") == a.steps,
          "summary: done %s at version %s, want version %d" % (s.get("done"), s.get("version"), a.steps))
    check(disp == trained + n_dropped + failed + inflight and inflight >= 0,
          "balance: dispatched %d != trained %d + dropped %d + failed %d + in flight %d" %
          (disp, trained, n_dropped, failed, inflight))
    check(trained == a.steps * a.groups, "trained %d groups, want %d" % (trained, a.steps * a.groups))
    try:
        with open(os.path.join(run, "checkpoints", "step-%d" % a.steps, "state.json")) as f:
            ids = json.load(f).get("trained_ids", [])
    except (OSError, ValueError) as e:
        ids = []
        check(False, "no last checkpoint: %s" % e)
    group_size = 16  # examples/quickstart.yaml
    twice = len(ids) - len(set(ids))
    check(twice == 0, "%d trajectories trained twice" % twice)
    check(len(ids) == a.steps * a.groups * group_size,
          "%d trajectories trained, want %d" % (len(ids), a.steps * a.groups * group_size))
    check(not pool.bad_exits, "workers that ended other than as told (id, returncode, what it was sent): %s" % pool.bad_exits[:10])
    check(not hung, "workers still there 15 s after SIGTERM at the end: %s" % hung[:10])
    rows = read_jsonl(os.path.join(run, "metrics.jsonl"))
    stale_max = max((r.get("staleness_max", 0) for r in rows), default=None)
    stale_mean = sum(r.get("staleness_mean", 0) for r in rows) / len(rows) if rows else None
    K = 2  # examples/quickstart.yaml buffer.max_staleness
    check(stale_max is not None and stale_max <= K, "a trained token %s versions old, bound %d" % (stale_max, K))
    wall_s = s.get("wall_s") or wall
    fig = {
        "steps": a.steps, "groups_per_step": a.groups, "group_size": group_size, "ok": not failures,
        "exit": rc, "wall_s": round(wall, 1), "controller_wall_s": round(wall_s, 1),
        "samples_per_s": round(trained * group_size / wall_s, 1) if wall_s else None,
        "steps_per_s": round(a.steps / wall_s, 3) if wall_s else None,
        "workers_started": pool.n_started, "workers_killed": churned[0], "workers_terminated": churned[1],
        "workers_left_at_end": pool.n_termed - churned[1],
        "max_live_workers": pool.max_live, "workers_too_late": pool.late,
        "groups_dispatched": disp, "groups_trained": trained, "groups_dropped": dropped, "groups_failed": failed,
        "groups_in_flight": inflight,
        "prompts_redelivered": s.get("prompts", {}).get("redelivered"),
        "duplicate_samples": s.get("duplicate_samples"), "trained_twice": twice,
        "reward_last10": s.get("reward", {}).get("last10_mean"),
        "staleness_mean": round(stale_mean, 3) if stale_mean is not None else None, "staleness_max": stale_max,
        "rss": rss, "token_ms": a.token_ms, "tail": a.tail, "period_s": a.period, "ack_wait_ms": a.ack_wait_ms,
    }
    print(json.dumps(fig), flush=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
