#!/usr/bin/python3
"""How far staleness can go: the quickstart task trained at staleness K, per method.

Every run is a real `tidal run` of examples/quickstart.yaml as shipped (private nats-server,
controller, trainer, two rollout workers) with `rollout.weights: oldest`, so each sample is
generated with the oldest weights the bound K allows and trained about K versions later.
`--minibatches N` (default 1, the quickstart's) sets trainer.minibatches: with N > 1 the
proximal policy moves away from the behaviour policy within a step and PPO's clip against it
has something to do.

Methods (docs/experiments/staleness.md):
  ppo         PPO-clip against the recomputed proximal policy, no behaviour correction
  ppo-bypass  PPO-clip anchored on the behaviour policy (no recompute pass)
  tis         decoupled PPO: PPO-clip against the proximal policy, times min(prox/beh, 2)
  m2po        M2PO: second-moment masking against the behaviour policy, no clip
  m2po-all    the same with every token a candidate for the mask (AReaL's variant)
  m2po-tis    M2PO's mask on the decoupled objective (recomputed proximal policy, TIS weight)
and, at K = 4 only, the other losses: cispo (with tis), gspo.

Writes OUT/<method>-k<K>-s<seed>/ (each run's directory), OUT/results.json, OUT/table.md,
OUT/curves.tsv and OUT/staleness.svg (gnuplot); with --doc DIR also DIR/staleness.svg and
DIR/staleness-table.md. Runs that exist with a summary.json are reused (so an interrupted study
continues). Progress: one line per run.

usage: staleness.py [--tidal build/tidal] [--out runs/staleness] [--seeds 1,2,3] [--ks 0,4,16,64]
                    [--methods ppo,ppo-bypass,tis,m2po,m2po-all,m2po-tis] [--steps 300] [--minibatches 1]
                    [--doc docs/experiments] [--name staleness]
"""
import argparse
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
METHODS = {
    "ppo": ["trainer.loss=ppo", "trainer.correction=none"],
    "ppo-bypass": ["trainer.loss=ppo", "trainer.correction=bypass"],
    "tis": ["trainer.loss=ppo", "trainer.correction=tis"],
    "m2po": ["trainer.loss=m2po", "trainer.correction=bypass"],
    "m2po-all": ["trainer.loss=m2po", "trainer.correction=bypass", "trainer.m2po_candidates=all"],
    "m2po-tis": ["trainer.loss=m2po", "trainer.correction=tis"],
    "cispo": ["trainer.loss=cispo", "trainer.correction=tis"],
    "gspo": ["trainer.loss=gspo", "trainer.correction=none"],
}
COMMON = ["rollout.weights=oldest"]
EXTRA_AT_K4 = ["cispo", "gspo"]


def read_jsonl(path):
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(l) for l in f if l.strip()]


def summarise(run_dir):
    m = read_jsonl(os.path.join(run_dir, "metrics.jsonl"))
    ev = read_jsonl(os.path.join(run_dir, "eval.jsonl"))
    if not m:
        return None
    rew = [r["reward_mean"] for r in m]
    avg5 = [sum(rew[max(0, i - 4):i + 1]) / len(rew[max(0, i - 4):i + 1]) for i in range(len(rew))]
    solved = next((m[i]["step"] for i in range(len(m)) if avg5[i] >= 0.9), None)
    mean = lambda k: sum(r.get(k, 0.0) for r in m) / len(m)
    return {
        "steps": len(m),
        "start": sum(rew[:5]) / min(5, len(rew)),
        "last10": sum(rew[-10:]) / min(10, len(rew)),
        "best10": max(sum(rew[i:i + 10]) / 10 for i in range(max(1, len(rew) - 9))),
        "solved_at": solved,
        "eval_final": ev[-1]["pass@1"] if ev else None,
        "eval_reward": ev[-1]["reward_mean"] if ev else None,
        "eval_final_step": ev[-1]["step"] if ev else None,
        "clip_frac": mean("clip_frac"),
        "masked_frac": mean("masked_frac"),
        "mismatch_k3": mean("mismatch_k3"),
        "mismatch_k1": mean("mismatch_k1"),
        "approx_kl": mean("approx_kl"),
        "is_mean": mean("is_mean"),
        "staleness_mean": mean("staleness_mean"),
        "staleness_max": max(r["staleness_max"] for r in m),
        "dropped_stale": m[-1].get("dropped_stale", 0),
        "reward_curve": rew,
    }


def run_one(tidal, out, method, K, seed, steps, minibatches):
    d = os.path.join(out, f"{method}-k{K}-s{seed}")
    if os.path.exists(os.path.join(d, "summary.json")):
        return d, 0.0, True
    if os.path.exists(d):
        subprocess.run(["rm", "-rf", d], check=True)
    sets = COMMON + METHODS[method] + [f"trainer.minibatches={minibatches}", f"buffer.max_staleness={K}", f"weights.keep={K + 2}",
                                       f"model.init.seed={seed}", f"data.seed={seed}", f"trainer.steps={steps}"]
    cmd = [tidal, "run", os.path.join(ROOT, "examples", "quickstart.yaml"), "--out", d]
    for s in sets:
        cmd += ["--set", s]
    t0 = time.time()
    with open(d + ".log", "w") as log:
        rc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT).returncode
    if rc != 0:
        print(f"  {method} K={K} seed {seed}: tidal run exited {rc} (log {d}.log)", file=sys.stderr)
    return d, time.time() - t0, False


def fmt(x, p=3):
    return "-" if x is None else (f"{x:.{p}f}" if isinstance(x, float) else str(x))


def table(results, methods, ks):
    head = ("| method | K | seeds | last-10 reward | best-10 | final eval reward | final eval pass@1 "
            "| solved at (5-step mean >= 0.9) | clip frac | masked frac | mismatch k3 | approx kl | staleness mean / max |")
    lines = [head, "|" + "---|" * 13]
    for meth in methods:
        for K in ks:
            rs = [r for r in results if r["method"] == meth and r["K"] == K and r["s"]]
            if not rs:
                continue
            avg = lambda k: sum(r["s"][k] for r in rs) / len(rs)
            solved = [r["s"]["solved_at"] for r in rs]
            sv = ", ".join("never" if x is None else str(x) for x in solved)
            evs = [r["s"]["eval_final"] for r in rs if r["s"]["eval_final"] is not None]
            evr = [r["s"]["eval_reward"] for r in rs if r["s"].get("eval_reward") is not None]
            mk3 = "-" if "bypass" in METHODS[meth][1] else f"{avg('mismatch_k3'):.3g}"  # bypass: no recompute
            lines.append(f"| {meth} | {K} | {len(rs)} | {avg('last10'):.3f} ({min(r['s']['last10'] for r in rs):.3f} - "
                         f"{max(r['s']['last10'] for r in rs):.3f}) | {avg('best10'):.3f} | "
                         f"{(sum(evr) / len(evr)) if evr else float('nan'):.3f} | "
                         f"{(sum(evs) / len(evs)) if evs else float('nan'):.3f} | {sv} | {avg('clip_frac'):.3f} | "
                         f"{avg('masked_frac'):.3f} | {mk3} | {avg('approx_kl'):.3g} | {avg('staleness_mean'):.1f} / "
                         f"{max(r['s']['staleness_max'] for r in rs):.0f} |")
    return "\n".join(lines) + "\n"


def plot(results, methods, ks, out_svg, tsv):
    """Mean training reward per step, one panel per K, one line per method (gnuplot)."""
    cols, names = [], []
    for K in ks:
        for meth in methods:
            rs = [r for r in results if r["method"] == meth and r["K"] == K and r["s"]]
            if not rs:
                continue
            n = min(len(r["s"]["reward_curve"]) for r in rs)
            cols.append([sum(r["s"]["reward_curve"][i] for r in rs) / len(rs) for i in range(n)])
            names.append((K, meth))
    if not cols:
        return
    n = max(len(c) for c in cols)
    with open(tsv, "w") as f:
        f.write("step\t" + "\t".join(f"{m}_k{K}" for K, m in names) + "\n")
        for i in range(n):
            f.write(f"{i + 1}\t" + "\t".join(f"{c[i]:.4f}" if i < len(c) else "NaN" for c in cols) + "\n")
    g = [f"set terminal svg size 1200,{420 * ((len(ks) + 1) // 2)} dynamic background rgb 'white'",
         f"set output '{out_svg}'", "set datafile separator '\\t'", "set key bottom right",
         "set yrange [0:1.05]", "set grid", "set xlabel 'trainer step'", "set ylabel 'training reward (mean of seeds)'",
         f"set multiplot layout {(len(ks) + 1) // 2},2"]
    for K in ks:
        parts = [f"'{tsv}' using 1:{j + 2} with lines lw 2 title '{m}'" for j, (k2, m) in enumerate(names) if k2 == K]
        if parts:
            g += [f"set title 'staleness K = {K}'", "plot " + ", ".join(parts)]
    g.append("unset multiplot")
    subprocess.run(["gnuplot"], input="\n".join(g), text=True, check=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tidal", default=os.path.join(ROOT, "build", "tidal"))
    ap.add_argument("--out", default=os.path.join(ROOT, "runs", "staleness"))
    ap.add_argument("--seeds", default="1,2,3")
    ap.add_argument("--ks", default="0,4,16,64")
    ap.add_argument("--methods", default="ppo,ppo-bypass,tis,m2po,m2po-all,m2po-tis")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--minibatches", type=int, default=1, help="trainer.minibatches (optimizer updates per step)")
    ap.add_argument("--doc", default=None, help="also write NAME.svg and NAME-table.md here")
    ap.add_argument("--name", default="staleness", help="the file names under --doc")
    a = ap.parse_args()
    seeds = [int(x) for x in a.seeds.split(",")]
    ks = [int(x) for x in a.ks.split(",")]
    methods = a.methods.split(",")
    for m in methods:
        if m not in METHODS:
            sys.exit(f"staleness.py: unknown method {m} (want one of {', '.join(METHODS)})")
    os.makedirs(a.out, exist_ok=True)
    plan = [(m, K, s) for K in ks for m in methods for s in seeds]
    if 4 in ks:
        plan += [(m, 4, s) for m in EXTRA_AT_K4 if m not in methods for s in seeds]
    results, t_all = [], time.time()
    for i, (m, K, s) in enumerate(plan):
        d, secs, reused = run_one(a.tidal, a.out, m, K, s, a.steps, a.minibatches)
        sm = summarise(d)
        results.append({"method": m, "K": K, "seed": s, "dir": d, "s": sm})
        tag = "reused" if reused else f"{secs:.0f} s"
        print(f"[{i + 1}/{len(plan)}] {m} K={K} seed {s}: last-10 {fmt(sm and sm['last10'])}, eval "
              f"{fmt(sm and sm['eval_final'])}, solved at {fmt(sm and sm['solved_at'])} ({tag})", flush=True)
    all_methods = methods + [m for m in EXTRA_AT_K4 if m not in methods and 4 in ks]
    tab = table(results, all_methods, ks)
    # the study's acceptance check: tis and m2po at K = 16 keep >= 90 % of their K = 0 reward
    checks = []
    for m in ("tis", "m2po", "m2po-all", "m2po-tis"):
        r0 = [r["s"]["last10"] for r in results if r["method"] == m and r["K"] == 0 and r["s"]]
        r16 = [r["s"]["last10"] for r in results if r["method"] == m and r["K"] == 16 and r["s"]]
        e0 = [r["s"]["eval_reward"] for r in results if r["method"] == m and r["K"] == 0 and r["s"]]
        e16 = [r["s"]["eval_reward"] for r in results if r["method"] == m and r["K"] == 16 and r["s"]]
        if r0 and r16:
            a0, a16 = sum(r0) / len(r0), sum(r16) / len(r16)
            b0, b16 = sum(e0) / len(e0), sum(e16) / len(e16)
            checks.append(f"{m}: K=16 / K=0: last-10 training reward {a16:.3f} / {a0:.3f} = {a16 / a0:.3f} "
                          f"({'>=' if a16 >= 0.9 * a0 else '<'} 0.9); final eval reward {b16:.3f} / {b0:.3f} = "
                          f"{b16 / b0:.3f} ({'>=' if b16 >= 0.9 * b0 else '<'} 0.9)")
    for m in all_methods:
        r4 = [r["s"]["last10"] for r in results if r["method"] == m and r["K"] == 4 and r["s"]]
        if r4:
            checks.append(f"{m}: K=4 last-10 {sum(r4) / len(r4):.3f} (min {min(r4):.3f}; want >= 0.8)")
    with open(os.path.join(a.out, "results.json"), "w") as f:
        json.dump([{k: v for k, v in r.items()} for r in results], f)
    with open(os.path.join(a.out, "table.md"), "w") as f:
        f.write(tab + "\n" + "\n".join(f"- {c}" for c in checks) + "\n")
    plot(results, all_methods, ks, os.path.join(a.out, "staleness.svg"), os.path.join(a.out, "curves.tsv"))
    if a.doc:
        os.makedirs(a.doc, exist_ok=True)
        plot(results, all_methods, ks, os.path.join(a.doc, a.name + ".svg"), os.path.join(a.out, "curves.tsv"))
        with open(os.path.join(a.doc, a.name + "-table.md"), "w") as f:
            f.write(tab + "\n" + "\n".join(f"- {c}" for c in checks) + "\n")
    print(tab)
    for c in checks:
        print(c)
    print(f"staleness.py: {len(plan)} runs in {time.time() - t_all:.0f} s; {a.out}/table.md, {a.out}/staleness.svg")


if __name__ == "__main__":
    main()
