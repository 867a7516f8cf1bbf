#!/usr/bin/env python3
"""test_check_layers.py - the floors check passes on the tree and fails on planted violations.

A copy of the tree's sources and docs/architecture.md goes to a temp dir; the check must pass
on it as it is, and fail naming FILE:LINE once each violation below is planted (one at a time):
a sibling on the same floor, a floor above, an include of nothing, a folder on no floor.
"""
import os
import shutil
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(sys.argv[1] if len(sys.argv) > 1 else os.path.join(HERE, "..", ".."))
CHECK = os.path.join(HERE, "check_layers.py")
failures = 0


def run(tree):
    p = subprocess.run([sys.executable, CHECK, tree], capture_output=True, text=True)
    return p.returncode, p.stdout + p.stderr


def copy_tree(dst):
    for top in os.listdir(ROOT):
        src = os.path.join(ROOT, top)
        if top.startswith(".") or top.startswith("build") or not os.path.isdir(src):
            continue
        shutil.copytree(src, os.path.join(dst, top),
                        ignore=lambda d, names: [n for n in names if n.startswith(("build", "."))
                                                 or (os.path.isfile(os.path.join(d, n))
                                                     and not n.endswith((".c", ".h", ".md")))])


def expect(name, tree, plant_file, text, want_rc, want):
    global failures
    path = os.path.join(tree, plant_file)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    old = open(path).read() if os.path.exists(path) else None
    lines = (old or "").splitlines(keepends=True)
    lines.insert(min(3, len(lines)), text + "\n")
    open(path, "w").write("".join(lines))
    rc, out = run(tree)
    ok = rc == want_rc and all(w in out for w in want)
    print(f"{'ok  ' if ok else 'FAIL'} {name}: exit {rc}" + ("" if ok else f"\n{out}"))
    failures += not ok
    if old is None:
        os.remove(path)
    else:
        open(path, "w").write(old)


with tempfile.TemporaryDirectory() as tree:
    copy_tree(tree)
    rc, out = run(tree)
    print(f"{'ok  ' if rc == 0 else 'FAIL'} the tree as it is: {out.strip()}")
    failures += rc != 0
    line = min(3, len(open(os.path.join(tree, "rollout/worker.c")).read().splitlines())) + 1
    expect("rollout includes trainer (same floor)", tree, "rollout/worker.c",
           '#include "trainer/step.h"', 1, [f"rollout/worker.c:{line}:", "share floor"])
    expect("base includes controller (above)", tree, "base/str.c",
           '#include "controller/controller.h"', 1, ["base/str.c:4:", "above it"])
    expect("model includes job (above)", tree, "model/model.h",
           '#include "job/spec.h"', 1, ["model/model.h:4:", "above it"])
    expect("an include of nothing", tree, "buffer/buffer.c",
           '#include "nowhere.h"', 1, ["buffer/buffer.c:4:", "not a file of any floor"])
    expect("a folder on no floor", tree, "stray/x.c", '#include "base/str.h"', 1,
           ["stray/x.c:1:", "on no floor"])
    expect("an include from below is fine", tree, "trainer/loss.c", '#include "base/str.h"', 0,
           ["keep the floors"])

print(f"{6 + 1 - failures} passed, {failures} failed")
sys.exit(1 if failures else 0)
