#!/usr/bin/env python3
"""reward_contains - a single-turn reward: 1 when the completion contains task["answer"].

    python3 examples/envs/python/reward_contains.py --bus nats://127.0.0.1:4222

serves tidal.env.reward_contains (--name NAME to serve it under another name)
until SIGINT or SIGTERM. The SDK is envs/python/tidal_env.py over
build/libtidal_env.so (or $TIDAL_ENV_LIB); the sys.path line finds it in
this source tree - drop it when tidal_env.py is on PYTHONPATH.
"""
import os, sys; sys.path.insert(0, os.path.normpath(os.path.join(os.path.abspath(__file__), "../../../../envs/python")))

import tidal_env

@tidal_env.reward("reward_contains")
def score(prompt, completion, task):
    return 1.0 if str(task["answer"]) in completion else 0.0

tidal_env.serve()
