#!/usr/bin/python3
"""Is a job started role by role as fast as `tidal run`? The quickstart both ways.

Modes, each a real run of examples/quickstart.yaml (with --set keys) on this machine:

  run      `tidal run examples/quickstart.yaml --out DIR`: a private nats-server, the controller,
           the trainer and rollout.workers workers as children of one parent
  byhand   README's recipe: a fresh `nats-server -js`, then `tidal controller`, `tidal trainer` and
           rollout.workers `tidal rollout` started as separate processes with no flag and no OMP_*
           variable: each role chooses its own threading (docs/architecture.md, "Threads of a role")
  before   the same with what roles started by hand got before they chose: libgomp's spinning
           default (GOMP_SPINCOUNT=300000 is that default written out; tidal leaves a spin count
           the user set alone) and every core for every role (OMP_NUM_THREADS = the cores)

Every mode's environment has OMP_WAIT_POLICY, OMP_NUM_THREADS and GOMP_SPINCOUNT removed first, as
a new user's shell would. The modes alternate (run, byhand, before, run, ...) so that a change in the
machine's load falls on all of them. Per run: wall seconds from the first process started to the
last one ended (nats-server's start not counted for byhand and before; tidal run's includes its
own), the controller's wall_s from summary.json, the last-10 mean reward, and the 1-minute load
average before the run. Then per mode the median, and the ratios byhand / run and before / run.

usage: byhand.py [--tidal build/tidal] [--out runs/byhand] [--set KEY=VALUE ...] [--repeat N]
                 [--modes run,byhand,before] [--rollout-flag ARG ...] [--json FILE]
  --rollout-flag ARG   extra argument for each `tidal rollout` of byhand (e.g. --rollout-flag=--share
                       --rollout-flag=2), to measure a flag
"""
import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SPEC = os.path.join(ROOT, "examples", "quickstart.yaml")
OMP_VARS = ("OMP_WAIT_POLICY", "OMP_NUM_THREADS", "GOMP_SPINCOUNT")


def clean_env(extra=None):
    env = {k: v for k, v in os.environ.items() if k not in OMP_VARS}
    env.update(extra or {})
    return env


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, timeout=10):
    t0 = time.time()
    while time.time() - t0 < timeout:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return True
        except OSError:
            time.sleep(0.05)
    return False


def spec_value(key, sets, default):
    """A top-level-and-one key (rollout.workers) from --set, else the quickstart's, else default."""
    for s in sets:
        k, _, v = s.partition("=")
        if k == key:
            return int(v)
    section, name = key.split(".")
    cur = None
    with open(SPEC) as f:
        for line in f:
            if line and not line.startswith((" ", "#")) and line.strip().endswith(":"):
                cur = line.strip()[:-1]
            elif cur == section and line.strip().startswith(name + ":"):
                return int(line.split(":", 1)[1].split("#")[0])
    return default


def summary(run_dir):
    path = os.path.join(run_dir, "summary.json")
    if not os.path.exists(path):
        return None, None
    with open(path) as f:
        s = json.load(f)
    return s.get("wall_s"), (s.get("reward") or {}).get("last10_mean")


def wait_all(procs, timeout):
    t_end = time.time() + timeout
    ok = True
    for p in procs:
        try:
            p.wait(max(1, t_end - time.time()))
        except subprocess.TimeoutExpired:
            ok = False
    for p in procs:
        if p.poll() is None:
            p.terminate()
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
    return ok and all(p.returncode == 0 for p in procs)


def run_mode(tidal, mode, d, sets, workers, rollout_flags, cores, timeout):
    if os.path.exists(d):
        shutil.rmtree(d)
    os.makedirs(os.path.join(d, "logs"))
    set_args = [a for s in sets for a in ("--set", s)]
    load = os.getloadavg()[0]
    if mode == "run":
        t0 = time.time()
        with open(os.path.join(d, "logs", "tidal-run.log"), "w") as log:
            p = subprocess.Popen([tidal, "run", SPEC, "--out", os.path.join(d, "run")] + set_args,
                                 stdout=log, stderr=subprocess.STDOUT, env=clean_env())
            ok = wait_all([p], timeout)
        wall = time.time() - t0
    else:
        env = clean_env({"GOMP_SPINCOUNT": "300000", "OMP_NUM_THREADS": str(cores)} if mode == "before" else None)
        nats = shutil.which(os.environ.get("TIDAL_NATS_SERVER", "nats-server")) or "nats-server"
        port = free_port()
        url = f"nats://127.0.0.1:{port}"
        srv_log = open(os.path.join(d, "logs", "nats-server.log"), "w")
        srv = subprocess.Popen([nats, "-js", "-a", "127.0.0.1", "-p", str(port), "-sd", os.path.join(d, "nats")],
                               stdout=srv_log, stderr=subprocess.STDOUT)
        if not wait_port(port):
            srv.kill()
            sys.exit(f"byhand.py: nats-server did not listen on {port} (log {d}/logs/nats-server.log)")
        run = os.path.join(d, "run")
        cmds = [("controller", [tidal, "controller", SPEC, "--bus", url, "--out", run] + set_args),
                ("trainer", [tidal, "trainer", SPEC, "--bus", url, "--out", run] + set_args)]
        flags = rollout_flags if mode == "byhand" else []
        for i in range(workers):
            cmds.append((f"rollout-{i}", [tidal, "rollout", "--bus", url, "--job", "quickstart", "--id", f"w{i}"] + flags))
        logs, procs = [], []
        t0 = time.time()
        for name, cmd in cmds:
            logs.append(open(os.path.join(d, "logs", name + ".log"), "w"))
            procs.append(subprocess.Popen(cmd, stdout=logs[-1], stderr=subprocess.STDOUT, env=env))
        ok = wait_all(procs, timeout)
        wall = time.time() - t0
        for f in logs:
            f.close()
        srv.terminate()
        srv.wait()
        srv_log.close()
    ctl_wall, last10 = summary(os.path.join(d, "run"))
    return {"mode": mode, "ok": ok and ctl_wall is not None, "wall_s": round(wall, 1),
            "controller_wall_s": ctl_wall, "last10": last10, "load1": round(load, 2), "dir": d}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tidal", default=os.path.join(ROOT, "build", "tidal"))
    ap.add_argument("--out", default="runs/byhand")
    ap.add_argument("--set", action="append", default=[], dest="sets")
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--modes", default="run,byhand,before")
    ap.add_argument("--rollout-flag", action="append", default=[], dest="rollout_flags")
    ap.add_argument("--timeout", type=float, default=1800, help="seconds per run before it is killed")
    ap.add_argument("--json", help="write every run and the medians here")
    a = ap.parse_args()
    modes = a.modes.split(",")
    for m in modes:
        if m not in ("run", "byhand", "before"):
            sys.exit(f"byhand.py: --modes: {m} is not run, byhand or before")
    tidal = os.path.abspath(a.tidal)
    if not os.access(tidal, os.X_OK):
        sys.exit(f"byhand.py: {tidal}: not an executable (build first, or --tidal PATH)")
    workers = spec_value("rollout.workers", a.sets, 1)
    cores = len(os.sched_getaffinity(0))
    print(f"byhand.py: {SPEC} {' '.join(a.sets)}; {workers} workers; {cores} cores; modes {a.modes} x {a.repeat}",
          file=sys.stderr)
    rows = []
    for r in range(a.repeat):
        for m in modes:
            row = run_mode(tidal, m, os.path.join(a.out, f"{m}-{r}"), a.sets, workers, a.rollout_flags, cores,
                           a.timeout)
            rows.append(row)
            print(f"  {m:7s} #{r}: {row['wall_s']:7.1f} s wall, controller {row['controller_wall_s']} s, "
                  f"last-10 reward {row['last10']}, load {row['load1']}{'' if row['ok'] else '  FAILED (' + row['dir'] + ')'}",
                  file=sys.stderr)
    med = {}
    for m in modes:
        w = [x["wall_s"] for x in rows if x["mode"] == m and x["ok"]]
        if w:
            med[m] = statistics.median(w)
    out = {"spec": SPEC, "sets": a.sets, "workers": workers, "cores": cores, "runs": rows, "median_wall_s": med}
    for m in ("byhand", "before"):
        if m in med and "run" in med:
            out[f"ratio_{m}_to_run"] = round(med[m] / med["run"], 2)
    print(json.dumps({k: v for k, v in out.items() if k != "runs"}, indent=2))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(out, f, indent=2)
    return 0 if all(x["ok"] for x in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
