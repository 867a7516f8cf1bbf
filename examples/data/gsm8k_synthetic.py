#!/usr/bin/env python3
"""gsm8k_synthetic.py - a small SYNTHETIC dataset in GSM8K's format.

These are not GSM8K problems. tidal downloads nothing, so the tiny-model
recipe (examples/gsm8k-tiny.yaml) and its e2e test need rows in GSM8K's
shape that ship with the repository: a word problem in "question" and a
worked solution ending in "#### N" in "answer", exactly as GSM8K's train
split (openai/gsm8k, main) is laid out, so the same spec runs on the real
file by changing data.path. The problems come from a dozen templates of
one- to three-step arithmetic with names, items and numbers drawn from a
fixed xorshift generator: the output is the same on every machine and
Python version.

usage: gsm8k_synthetic.py [--rows N] [--seed S] [--out FILE]
       gsm8k_synthetic.py --check FILE   (exit 1 unless FILE is what the
                                          defaults write; a ctest runs it)
"""
import argparse
import json
import sys

NAMES = ["Ava", "Ben", "Chloe", "Diego", "Emma", "Farah", "Gus", "Hana", "Ivan", "Jade", "Kofi", "Lena",
         "Mateo", "Nora", "Omar", "Priya", "Quinn", "Rosa", "Sam", "Tara", "Umar", "Vera", "Wes", "Yuki"]
ITEMS = ["apples", "pencils", "stickers", "marbles", "cookies", "books", "stamps", "shells", "cards", "beads"]


class Rng:
    """xorshift64*: deterministic everywhere (Python's random is not promised to be)."""

    def __init__(self, seed):
        self.s = (seed * 0x9E3779B97F4A7C15 + 1) & 0xFFFFFFFFFFFFFFFF or 1

    def next(self):
        s = self.s
        s ^= (s >> 12)
        s ^= (s << 25) & 0xFFFFFFFFFFFFFFFF
        s ^= (s >> 27)
        self.s = s
        return (s * 0x2545F4914F6CDD1D) & 0xFFFFFFFFFFFFFFFF

    def int(self, lo, hi):
        return lo + self.next() % (hi - lo + 1)

    def pick(self, xs):
        return xs[self.next() % len(xs)]


def problem(r):
    """One (question, answer) pair; the answer is GSM8K-style steps and "#### N"."""
    n, m = r.pick(NAMES), r.pick(NAMES)
    while m == n:
        m = r.pick(NAMES)
    it = r.pick(ITEMS)
    kind = r.int(0, 11)
    if kind == 0:
        a, b = r.int(3, 40), r.int(2, 30)
        return (f"{n} has {a} {it}. {m} gives {n} {b} more {it}. How many {it} does {n} have now?",
                f"{n} has {a} + {b} = <<{a}+{b}={a + b}>>{a + b} {it} now.\n#### {a + b}")
    if kind == 1:
        b = r.int(2, 20)
        a = b + r.int(1, 40)
        return (f"{n} had {a} {it} and gave {b} of them to {m}. How many {it} does {n} have left?",
                f"{n} has {a} - {b} = <<{a}-{b}={a - b}>>{a - b} {it} left.\n#### {a - b}")
    if kind == 2:
        a, b = r.int(2, 12), r.int(2, 12)
        return (f"{n} buys {a} bags of {it}. Each bag holds {b} {it}. How many {it} does {n} buy?",
                f"{n} buys {a} * {b} = <<{a}*{b}={a * b}>>{a * b} {it}.\n#### {a * b}")
    if kind == 3:
        b, q = r.int(2, 9), r.int(2, 12)
        a = b * q
        return (f"{n} shares {a} {it} equally among {b} friends. How many {it} does each friend get?",
                f"Each friend gets {a} / {b} = <<{a}/{b}={q}>>{q} {it}.\n#### {q}")
    if kind == 4:
        p, k = r.int(2, 15), r.int(2, 9)
        return (f"A notebook costs ${p}. {n} buys {k} notebooks. How many dollars does {n} spend?",
                f"{n} spends {k} * {p} = <<{k}*{p}={k * p}>>{k * p} dollars.\n#### {k * p}")
    if kind == 5:
        a, b, c = r.int(5, 30), r.int(2, 20), r.int(1, 5)
        t = a + b
        return (f"{n} picked {a} {it} on Monday and {b} on Tuesday, then lost {c}. How many {it} are left?",
                f"{n} picked {a} + {b} = <<{a}+{b}={t}>>{t} {it}.\n"
                f"After losing {c}, {t} - {c} = <<{t}-{c}={t - c}>>{t - c} are left.\n#### {t - c}")
    if kind == 6:
        a, k = r.int(2, 25), r.int(2, 5)
        return (f"{n} has {a} {it}. {m} has {k} times as many. How many {it} do they have together?",
                f"{m} has {a} * {k} = <<{a}*{k}={a * k}>>{a * k} {it}.\n"
                f"Together they have {a} + {a * k} = <<{a}+{a * k}={a + a * k}>>{a + a * k} {it}.\n#### {a + a * k}")
    if kind == 7:
        h, w = r.int(2, 10), r.int(6, 25)
        return (f"{n} earns ${w} an hour and works {h} hours. How much does {n} earn?",
                f"{n} earns {h} * {w} = <<{h}*{w}={h * w}>>{h * w} dollars.\n#### {h * w}")
    if kind == 8:
        k, d = r.int(2, 8), r.int(3, 7)
        return (f"{n} reads {k} pages a day for {d} weeks. How many pages does {n} read?",
                f"{d} weeks is {d} * 7 = <<{d}*7={d * 7}>>{d * 7} days.\n"
                f"{n} reads {k} * {d * 7} = <<{k}*{d * 7}={k * d * 7}>>{k * d * 7} pages.\n#### {k * d * 7}")
    if kind == 9:
        a, b = r.int(10, 60), r.int(10, 60)
        s = a + b
        return (f"A class has {a} girls and {b} boys. Half of the students ride the bus. How many ride the bus?"
                if s % 2 == 0 else
                f"A class has {a} girls and {b} boys. How many students are in the class?",
                (f"There are {a} + {b} = <<{a}+{b}={s}>>{s} students.\n"
                 f"Half is {s} / 2 = <<{s}/2={s // 2}>>{s // 2}.\n#### {s // 2}") if s % 2 == 0 else
                f"There are {a} + {b} = <<{a}+{b}={s}>>{s} students.\n#### {s}")
    if kind == 10:
        p, c = r.int(20, 90), r.int(1, 15)
        return (f"{n} pays for a ${p - c} toy with ${p}. How much change does {n} get?",
                f"{n} gets {p} - {p - c} = <<{p}-{p - c}={c}>>{c} dollars in change.\n#### {c}")
    a, b, k = r.int(3, 12), r.int(3, 12), r.int(2, 4)
    return (f"{n} plants {a} rows of {b} trees, and {m} plants {k} more rows of {b}. How many trees in all?",
            f"{n} plants {a} * {b} = <<{a}*{b}={a * b}>>{a * b} trees.\n"
            f"{m} plants {k} * {b} = <<{k}*{b}={k * b}>>{k * b} trees.\n"
            f"In all, {a * b} + {k * b} = <<{a * b}+{k * b}={a * b + k * b}>>{a * b + k * b} trees.\n"
            f"#### {a * b + k * b}")


def rows(n, seed):
    r = Rng(seed)
    return [json.dumps({"question": q, "answer": a}, ensure_ascii=False) + "\n" for q, a in (problem(r) for _ in range(n))]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=256)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--out", default="-")
    ap.add_argument("--check", metavar="FILE")
    a = ap.parse_args()
    text = "".join(rows(a.rows, a.seed))
    if a.check:
        with open(a.check, encoding="utf-8") as f:
            if f.read() != text:
                print(f"{a.check}: not what gsm8k_synthetic.py --rows {a.rows} --seed {a.seed} writes", file=sys.stderr)
                return 1
        print(f"{a.check}: {a.rows} rows as generated")
        return 0
    if a.out == "-":
        sys.stdout.write(text)
    else:
        with open(a.out, "w", encoding="utf-8") as f:
            f.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
