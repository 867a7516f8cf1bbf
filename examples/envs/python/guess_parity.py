#!/usr/bin/env python3
"""guess_parity - a tiny multi-turn environment.

The task holds a list of numbers, e.g. {"numbers": [3, 8, 5]}. The episode
asks the model about each in turn: RESET's observation asks whether the first
is odd or even; STEP t scores the answer about number t (the last "odd" or
"even" in the model's text) and asks about the next, until the last one ends
the episode. Each correct answer is worth 1/len(numbers), so the episode's
reward - the sum over its steps - is the fraction answered correctly.

Like every tidal environment it keeps no state: the task and the turn number
say where the episode is, so any instance can answer any step.

    python3 examples/envs/python/guess_parity.py --bus nats://127.0.0.1:4222
"""
import os, sys; sys.path.insert(0, os.path.normpath(os.path.join(os.path.abspath(__file__), "../../../../envs/python")))
import re

import tidal_env


def question(n):
    return "Is %d odd or even? Answer with one word." % n


@tidal_env.env("guess_parity")
def step(request):
    numbers = request.task.get("numbers")
    if not isinstance(numbers, list) or not numbers or not all(isinstance(n, int) for n in numbers):
        raise ValueError("task needs \"numbers\": a non-empty list of integers")
    if request.op == tidal_env.RESET:
        return tidal_env.Step(observation=question(numbers[0]))
    t = request.turn  # 1 answers numbers[0], 2 answers numbers[1], ...
    if not 1 <= t <= len(numbers):
        raise ValueError("turn %d is past the end of the episode (%d numbers)" % (t, len(numbers)))
    words = re.findall(r"\b(odd|even)\b", request.action.lower())
    want = "even" if numbers[t - 1] % 2 == 0 else "odd"
    correct = bool(words) and words[-1] == want
    done = t == len(numbers)
    return tidal_env.Step(
        reward=(1.0 / len(numbers)) if correct else 0.0,
        done=done,
        observation="" if done else ("Right. " if correct else "No. ") + question(numbers[t]),
        metrics={"correct": float(correct), "turn": float(t)},
    )


tidal_env.serve()
