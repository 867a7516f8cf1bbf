#!/usr/bin/python3
"""Does the quickstart end the way its docs say? examples/quickstart.yaml over many seeds and timings.

Every run is a real `tidal run` of examples/quickstart.yaml (private nats-server, controller,
trainer, two rollout workers). Runs differ by seed and by timing (asynchrony), so a collapse after
the task is learned shows up only across many runs. Conditions:

  shipped    the file as it is, seeds 1 .. 20
  loaded     the same with a second process keeping both cores busy (two busy loops, as CI and
             laptops do), seeds 1 .. 10
  k16-tis    buffer.max_staleness 16 with rollout.weights: oldest (every sample 16 versions old, as
             in the staleness study), the shipped decoupled PPO with token TIS, seeds 1 .. 10
  k16-m2po   the same with trainer.loss: m2po (its mask on the decoupled objective), seeds 1 .. 10

A variant (--label NAME --set KEY=VALUE ...) runs every condition with extra keys, so a candidate
fix is measured exactly as the shipped file is. Per run: last-10 mean reward (steps 291 - 300),
the minimum reward after the first step that reached 0.95 ("floor"), and the gradient-norm spikes
(steps after 150 whose pre-clip norm exceeded trainer.grad_clip = 1).

Writes OUT/LABEL/COND-sS/ (each run; finished runs are reused, so an interrupted sweep goes on),
OUT/results.json, OUT/table.md, OUT/curves.tsv, OUT/quickstart-sweep.svg; with --doc FILE.md the
table replaces the block between `<!-- sweep -->` and `<!-- /sweep -->` in FILE.md and the plot goes
beside it (docs/experiments/quickstart-sweep.svg). Progress: one line per run.

usage: quickstart_sweep.py [--tidal build/tidal] [--out runs/quickstart-sweep] [--label shipped]
                           [--set KEY=VALUE ...] [--conditions shipped,loaded,k16-tis,k16-m2po]
                           [--seeds N (the first N of each condition's seeds)] [--doc docs/quickstart.md]
"""
import argparse
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
K16 = ["buffer.max_staleness=16", "weights.keep=18", "rollout.weights=oldest"]
CONDITIONS = {  # name: (seeds, extra keys, load both cores)
    "shipped": (range(1, 21), [], False),
    "loaded": (range(1, 11), [], True),
    "k16-tis": (range(1, 11), K16 + ["trainer.loss=ppo", "trainer.correction=tis"], False),
    "k16-m2po": (range(1, 11), K16 + ["trainer.loss=m2po", "trainer.correction=tis"], False),
}
SPIKE_AFTER = 150  # steps: the task is learned by then in every run of the shipped file
SPIKE_NORM = 1.0   # the shipped trainer.grad_clip


def read_jsonl(path):
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(l) for l in f if l.strip()]


def summarise(run_dir, wall):
    m = read_jsonl(os.path.join(run_dir, "metrics.jsonl"))
    if not m:
        return None
    rew = [r["reward_mean"] for r in m]
    first95 = next((i for i, x in enumerate(rew) if x >= 0.95), None)
    late = [r for r in m if r["step"] > SPIKE_AFTER]
    gn = [r.get("grad_norm", 0.0) for r in late]
    quarantined = None  # workers the trainer's worker check quarantined (None: a trainer without the check)
    summary = os.path.join(run_dir, "summary.json")
    if os.path.exists(summary):
        with open(summary) as f:
            wc = json.load(f).get("worker_check")
        if isinstance(wc, dict):
            quarantined = sum(1 for w in wc.get("workers", {}).values() if w.get("quarantined"))
    return {
        "quarantined": quarantined,
        "steps": len(m),
        "last10": sum(rew[-10:]) / min(10, len(rew)),
        "first95": None if first95 is None else m[first95]["step"],
        "floor": None if first95 is None else min(rew[first95:]),
        "spikes": sum(1 for g in gn if g > SPIKE_NORM),
        "grad_max_late": max(gn) if gn else 0.0,
        "k3_max_late": max((r.get("mismatch_k3", 0.0) for r in late), default=0.0),
        "entropy_last": m[-1].get("entropy", 0.0),
        "wall_s": wall,
        "reward_curve": rew,
    }


def run_one(tidal, out, label, cond, seed, extra):
    d = os.path.join(out, label, f"{cond}-s{seed}")
    wall_file = d + ".wall"
    if os.path.exists(os.path.join(d, "summary.json")) and os.path.exists(wall_file):
        with open(wall_file) as f:
            return d, float(f.read()), True
    if os.path.exists(d):
        subprocess.run(["rm", "-rf", d], check=True)
    os.makedirs(os.path.dirname(d), exist_ok=True)
    _, keys, loaded = CONDITIONS[cond]
    cmd = [tidal, "run", os.path.join(ROOT, "examples", "quickstart.yaml"), "--out", d]
    for s in keys + extra + [f"model.init.seed={seed}", f"data.seed={seed}"]:
        cmd += ["--set", s]
    load = []
    if loaded:  # two busy loops at normal priority: the run competes for both cores for its whole life
        load = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(2)]
    t0 = time.time()
    try:
        with open(d + ".log", "w") as log:
            rc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT).returncode
    finally:
        for p in load:
            p.kill()
            p.wait()
    wall = time.time() - t0
    if rc != 0:
        print(f"  {label} {cond} seed {seed}: tidal run exited {rc} (log {d}.log)", file=sys.stderr)
    else:
        with open(wall_file, "w") as f:
            f.write(f"{wall:.1f}")
    return d, wall, False


def fmt(x, p=3):
    return "-" if x is None else (f"{x:.{p}f}" if isinstance(x, float) else str(x))


def quarantine_cell(rs):
    checked = [s["quarantined"] for s in rs if s.get("quarantined") is not None]
    return f"{sum(checked)} ({len(checked)})" if checked else "-"


def table(results):
    head = ("| variant | condition | runs | last-10 mean (min - max) | runs with last-10 >= 0.95 | floor after 0.95: "
            "worst | runs below 0.9 after 0.95 | grad-norm spikes > 1 after step 150: runs, steps, max | "
            "max mismatch k3 after 150 | workers quarantined (runs with the check) | wall s |")
    lines = [head, "|" + "---|" * 11]
    keys = []
    for r in results:
        if (r["label"], r["cond"]) not in keys:
            keys.append((r["label"], r["cond"]))
    for label, cond in keys:
        rs = [r["s"] for r in results if r["label"] == label and r["cond"] == cond and r["s"]]
        if not rs:
            continue
        l10 = [s["last10"] for s in rs]
        floors = [s["floor"] for s in rs if s["floor"] is not None]
        never = sum(1 for s in rs if s["floor"] is None)
        below = sum(1 for f in floors if f < 0.9) + never
        spiky = sum(1 for s in rs if s["spikes"])
        lines.append(
            f"| {label} | {cond} | {len(rs)} | {sum(l10) / len(l10):.3f} ({min(l10):.3f} - {max(l10):.3f}) | "
            f"{sum(1 for x in l10 if x >= 0.95)} | {fmt(min(floors) if floors else None)} | "
            f"{below}{f' ({never} never reached 0.95)' if never else ''} | {spiky}, "
            f"{sum(s['spikes'] for s in rs)}, {max(s['grad_max_late'] for s in rs):.2f} | "
            f"{max(s['k3_max_late'] for s in rs):.3g} | {quarantine_cell(rs)} | "
            f"{sum(s['wall_s'] for s in rs) / len(rs):.0f} |")
    return "\n".join(lines) + "\n"


def plot(results, out_svg, tsv):
    """Per condition: every run's reward curve, one colour per variant."""
    conds = [c for c in CONDITIONS if any(r["cond"] == c and r["s"] for r in results)]
    labels = []
    for r in results:
        if r["label"] not in labels:
            labels.append(r["label"])
    cols, names = [], []
    for r in results:
        if r["s"]:
            cols.append(r["s"]["reward_curve"])
            names.append((r["label"], r["cond"], r["seed"]))
    if not cols:
        return
    n = max(len(c) for c in cols)
    with open(tsv, "w") as f:
        f.write("step\t" + "\t".join(f"{l}_{c}_s{s}" for l, c, s in names) + "\n")
        for i in range(n):
            f.write(f"{i + 1}\t" + "\t".join(f"{c[i]:.4f}" if i < len(c) else "NaN" for c in cols) + "\n")
    colours = ["#d62728", "#1f77b4", "#2ca02c", "#9467bd"]
    rows = (len(conds) + 1) // 2
    g = [f"set terminal svg size 1200,{400 * rows} dynamic background rgb 'white'", f"set output '{out_svg}'",
         "set datafile separator '\\t'", "set key bottom right", "set yrange [0:1.05]", "set grid",
         "set xlabel 'trainer step'", "set ylabel 'training reward (each run)'", f"set multiplot layout {rows},2"]
    for c in conds:
        parts = []
        for li, label in enumerate(labels):
            idx = [j for j, (l, cc, _) in enumerate(names) if l == label and cc == c]
            for k, j in enumerate(idx):
                title = f"title '{label} ({len(idx)} runs)'" if k == 0 else "notitle"
                parts.append(f"'{tsv}' using 1:{j + 2} with lines lw 1 lc rgb '{colours[li % len(colours)]}' {title}")
        if parts:
            g += [f"set title '{c}'", "plot " + ", ".join(parts)]
    g.append("unset multiplot")
    subprocess.run(["gnuplot"], input="\n".join(g), text=True, check=True)


def replace_block(path, text):
    with open(path) as f:
        doc = f.read()
    a, b = "<!-- sweep -->", "<!-- /sweep -->"
    if a not in doc or b not in doc:
        sys.exit(f"quickstart_sweep.py: {path} has no {a} ... {b} block to replace")
    head, rest = doc.split(a, 1)
    _, tail = rest.split(b, 1)
    with open(path, "w") as f:
        f.write(head + a + "\n" + text + b + tail)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tidal", default=os.path.join(ROOT, "build", "tidal"))
    ap.add_argument("--out", default=os.path.join(ROOT, "runs", "quickstart-sweep"))
    ap.add_argument("--label", default="shipped", help="the variant's name (a directory under --out)")
    ap.add_argument("--set", action="append", default=[], help="KEY=VALUE added to every run of this variant")
    ap.add_argument("--conditions", default=",".join(CONDITIONS))
    ap.add_argument("--seeds", type=int, default=0, help="only the first N seeds of each condition (0: all)")
    ap.add_argument("--doc", default=None, help="replace the sweep block of this markdown file (and plot beside it)")
    a = ap.parse_args()
    conds = a.conditions.split(",")
    for c in conds:
        if c not in CONDITIONS:
            sys.exit(f"quickstart_sweep.py: unknown condition {c} (want one of {', '.join(CONDITIONS)})")
    os.makedirs(a.out, exist_ok=True)
    plan = [(c, s) for c in conds for s in list(CONDITIONS[c][0])[:a.seeds or None]]
    t_all = time.time()
    for i, (c, s) in enumerate(plan):
        d, wall, reused = run_one(a.tidal, a.out, a.label, c, s, a.set)
        sm = summarise(d, wall)
        tag = "reused" if reused else f"{wall:.0f} s"
        print(f"[{i + 1}/{len(plan)}] {a.label} {c} seed {s}: last-10 {fmt(sm and sm['last10'])}, floor after 0.95 "
              f"{fmt(sm and sm['floor'])}, spikes {fmt(sm and sm['spikes'])} ({tag})", flush=True)
    # the table covers every variant and condition found under --out, not just this invocation's
    results = []
    for label in sorted(os.listdir(a.out)):
        ld = os.path.join(a.out, label)
        if not os.path.isdir(ld):
            continue
        for c in CONDITIONS:
            for s in CONDITIONS[c][0]:
                d = os.path.join(ld, f"{c}-s{s}")
                if os.path.exists(os.path.join(d, "summary.json")) and os.path.exists(d + ".wall"):
                    with open(d + ".wall") as f:
                        wall = float(f.read())
                    results.append({"label": label, "cond": c, "seed": s, "dir": d, "s": summarise(d, wall)})
    tab = table(results)
    with open(os.path.join(a.out, "results.json"), "w") as f:
        json.dump(results, f)
    with open(os.path.join(a.out, "table.md"), "w") as f:
        f.write(tab)
    plot(results, os.path.join(a.out, "quickstart-sweep.svg"), os.path.join(a.out, "curves.tsv"))
    if a.doc:
        svg = os.path.join(os.path.dirname(os.path.abspath(a.doc)), "experiments", "quickstart-sweep.svg")
        os.makedirs(os.path.dirname(svg), exist_ok=True)
        plot(results, svg, os.path.join(a.out, "curves.tsv"))
        replace_block(a.doc, tab)
    print(tab)
    print(f"quickstart_sweep.py: {len(plan)} runs in {time.time() - t_all:.0f} s; {a.out}/table.md, "
          f"{a.out}/quickstart-sweep.svg")


if __name__ == "__main__":
    main()
