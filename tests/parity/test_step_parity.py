#!/usr/bin/python3
"""Parity of a whole trainer step (trainer/step.c) with a PyTorch float64 reference.

Each case writes a tiny random Qwen2 model (and, for the KL cases, a perturbed reference
model) as Hugging Face directories and a batch of trajectories as IN.safetensors - groups of
several sizes (one of one sample), prompts and completions of random lengths (a completion of
length one, one of length zero), env tokens masked out, behaviour logprobs off the model's,
per-token behaviour versions - then runs `tidal debug step` with job-spec keys (--set), which
calls the trainer's own trainer_step_cfg_from_spec and trainer_step. The reference composes the
model of test_model_parity.py and the loss of test_loss_parity.py (both written from the
published architecture and methods (docs/training.md), not from tidal's code): the shaped rewards (overlong,
k1 in the reward), the advantages, lθ from the model's forward at each completion token,
the proximal policy (the live forward, the behaviour policy in bypass mode, a recompute under
the step's starting weights or the log-linear interpolation with trainer.minibatches 2), the
loss, and autograd down to every parameter; with two updates, AdamW between them. Every
parameter gradient must agree within 1e-4 relative error (fp32 model against float64), as
must the loss. A bad configuration must fail with exit status 2 naming the key.

usage: test_step_parity.py PATH/TO/tidal
"""
import json
import os
import subprocess
import sys
import tempfile

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from safetensors_np import st_read, st_write  # noqa: E402
import test_model_parity as MP  # noqa: E402
import test_loss_parity as LP  # noqa: E402

torch.set_default_dtype(torch.float64)
TOL = 1e-4
RESULTS = {"passed": 0, "failed": 0, "worst": 0.0}
MODEL = {"model_type": "qwen2", "vocab_size": 23, "hidden_size": 32, "num_hidden_layers": 2,
         "num_attention_heads": 4, "num_key_value_heads": 2, "intermediate_size": 48, "rope_theta": 10000.0,
         "rms_norm_eps": 1e-6, "tie_word_embeddings": True, "qkv_bias": True, "o_bias": False, "head_dim": 8}
VERSION = 10        # the trainer's version; behaviour versions are VERSION - 8 .. VERSION
MAX_TOKENS = 16


def write_model(d, W):
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "config.json"), "w") as f:
        json.dump(MP.hf_config(MODEL), f)
    st_write(os.path.join(d, "model.safetensors"), W)


def random_weights(rng, scale=0.3):
    W = {}
    for n, shp in MP.shapes(MODEL).items():
        if "layernorm" in n or n == "model.norm.weight":
            W[n] = (1.0 + 0.1 * rng.standard_normal(shp)).astype(np.float32)
        else:
            W[n] = (scale * rng.standard_normal(shp)).astype(np.float32)
    return W


def make_samples(rng):
    sizes = [3, 4, 1, 5, 3]
    goff = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int32)
    n, V = int(goff[-1]), MODEL["vocab_size"]
    P = rng.integers(1, 7, n)
    C = rng.integers(1, MAX_TOKENS + 1, n)
    C[2], C[5] = 1, 0          # a completion of one token, one of none
    P[5] = max(P[5], 2)        # (so that sample still has a position)
    prompts = [rng.integers(0, V, p).astype(np.int32) for p in P]
    comps = [rng.integers(0, V, c).astype(np.int32) for c in C]
    masks = [(rng.random(c) < 0.85).astype(np.uint8) for c in C]
    vers = [np.sort(rng.integers(VERSION - 8, VERSION + 1, c)).astype(np.float64) for c in C]
    rewards = rng.integers(0, 3, n).astype(np.float64) / 2.0 + 0.05 * rng.standard_normal(n)
    rewards[goff[1]:goff[2]] = 0.5  # a group whose rewards are all equal
    return {"goff": goff, "prompts": prompts, "comps": comps, "masks": masks, "vers": vers, "rewards": rewards}


def packed(smp):
    """Each sample's prompt + completion as one sequence: ids, targets, cu, and each completion
    token's position (completion token k is scored at P - 1 + k)."""
    ids, tg, cu, where = [], [], [0], []
    for p, c in zip(smp["prompts"], smp["comps"]):
        seq = np.concatenate([p, c])
        base = cu[-1]
        ids.append(seq[:-1])
        tg.append(seq[1:])
        cu.append(base + len(seq) - 1)
        where.append(base + len(p) - 1 + np.arange(len(c)))
    return (torch.tensor(np.concatenate(ids), dtype=torch.long), torch.tensor(np.concatenate(tg), dtype=torch.long),
            cu, np.concatenate(where).astype(np.int64))


def completion_logp(Wt, smp, inv_temp):
    ids, tg, cu, where = packed(smp)
    _, lp, _ = MP.forward(MODEL, Wt, ids, tg, cu, inv_temp)
    return lp[torch.tensor(where)]


def spec_to_ref(sets):
    """The reference loss config from the job-spec keys given to tidal (defaults as the spec's)."""
    kv = dict(s.split("=", 1) for s in sets)
    loss = kv.get("trainer.loss", "ppo")
    c = dict(LP.LOSS_DEFAULTS[loss])
    c["loss"] = loss
    c["correction"] = kv.get("trainer.correction", "tis")
    agg = kv.get("trainer.loss_agg", "auto")
    if agg != "auto":
        c["agg"] = agg
    for key, name in (("trainer.eps_lo", "eps_lo"), ("trainer.eps_hi", "eps_hi")):
        if float(kv.get(key, -1)) >= 0:
            c[name] = float(kv[key])
    dual = float(kv.get("trainer.dual_clip", 0))
    if dual > 1:
        c["dual_clip"], c["dual_clip_c"] = 1, dual
    for key, name, d in (("trainer.tis_c", "tis_c", 2.0), ("trainer.mis_lo", "mis_lo", 0.0),
                         ("trainer.mis_hi", "mis_hi", 5.0), ("trainer.m2po_tau", "m2po_tau", 0.04),
                         ("trainer.kl", "kl_beta", 0.0), ("trainer.stale_a", "stale_a", 0.5),
                         ("trainer.stale_b", "stale_b", 0.0)):
        c[name] = float(kv.get(key, d))
    c["m2po_set"] = kv.get("trainer.m2po_candidates", "harmful")
    c["stale"] = kv.get("trainer.stale_weight", "none")
    norm = float(kv.get("trainer.loss_agg_norm", 0))
    c["sum_norm"] = norm if norm > 0 else float(kv.get("rollout.max_tokens", 256))
    step = {"advantage": kv.get("trainer.advantage", "grpo"), "minibatches": int(kv.get("trainer.minibatches", 1)),
            "proximal": kv.get("trainer.proximal", "recompute"), "kl_reward": float(kv.get("trainer.kl_reward", 0)),
            "overlong_buffer": float(kv.get("trainer.overlong_buffer", 0)),
            "overlong_factor": float(kv.get("trainer.overlong_factor", 1.0)),
            "max_tokens": float(kv.get("rollout.max_tokens", 256)), "lr": float(kv.get("trainer.lr", 1e-6))}
    return c, step


def reference(W, Wref, smp, lbeh, sets, temperature):
    c, sp = spec_to_ref(sets)
    inv_temp = 1.0 / temperature
    P = {n: torch.tensor(w.astype(np.float64), requires_grad=True) for n, w in W.items()}
    goff, C = smp["goff"], np.array([len(x) for x in smp["comps"]])
    coff = np.concatenate([[0], np.cumsum(C)]).astype(np.int32)
    mask = np.concatenate(smp["masks"]).astype(np.uint8)
    vbeh = np.concatenate(smp["vers"])
    n = len(C)
    lref = None
    if c["kl_beta"] > 0 or sp["kl_reward"] > 0:
        with torch.no_grad():
            Pr = {k: torch.tensor(v.astype(np.float64)) for k, v in Wref.items()}
            lref = completion_logp(Pr, smp, inv_temp).numpy()
    # rewards: overlong shaping, then k1 = lbeh - lref in the reward
    R = smp["rewards"].copy()
    if sp["overlong_buffer"] > 0:
        R += np.minimum(-(C - (sp["max_tokens"] - sp["overlong_buffer"])) / sp["overlong_buffer"] * sp["overlong_factor"], 0)
    if sp["kl_reward"] > 0:
        for i in range(n):
            d = (lbeh[coff[i]:coff[i + 1]].astype(np.float64) - lref[coff[i]:coff[i + 1]])
            R[i] -= sp["kl_reward"] * np.clip(d, -20, 20)[mask[coff[i]:coff[i + 1]] != 0].sum()
    adv = LP.adv_reference(R, goff, sp["advantage"])
    stale = np.array([VERSION - (smp["vers"][i].min() if C[i] else 0) for i in range(n)], dtype=np.float64)
    # updates by whole groups
    G = len(goff) - 1
    U = min(max(sp["minibatches"], 1), G)
    with torch.no_grad():
        lprox_all = completion_logp(P, smp, inv_temp).numpy()  # the weights the step starts from
    opt = torch.optim.AdamW(list(P.values()), lr=sp["lr"], betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)
    out, losses = {}, []
    for u in range(U):
        g0, g1 = u * G // U, (u + 1) * G // U
        s0, s1 = int(goff[g0]), int(goff[g1])
        t0, t1 = int(coff[s0]), int(coff[s1])
        for p in P.values():
            p.grad = None
        lt = completion_logp(P, smp, inv_temp)[t0:t1]
        lb = lbeh[t0:t1]
        if c["correction"] == "bypass":
            lpx = lb.astype(np.float64)
        elif U == 1:
            lpx = lt.detach().numpy()
        elif sp["proximal"] == "loglinear":
            vb = vbeh[t0:t1]
            den = VERSION + u / U - vb
            a = np.where(den > 0, np.clip((VERSION - vb) / np.where(den > 0, den, 1), 0, 1), 1.0)
            lpx = lb + a * (lt.detach().numpy() - lb)
        else:
            lpx = lprox_all[t0:t1]
        inp = {"cu_seqlens": (coff[s0:s1 + 1] - coff[s0]).astype(np.int32), "logp": lt.detach().numpy(),
               "logp_prox": lpx, "logp_beh": lb, "mask": mask[t0:t1], "adv": adv[s0:s1], "staleness": stale[s0:s1]}
        if lref is not None:
            inp["logp_ref"] = lref[t0:t1]
        if mask[t0:t1].sum() == 0:
            continue
        r = LP.reference(inp, c, lp_graph=lt)
        losses.append(r["loss"])  # the step reports the mean of its updates' losses
        out = {"loss": sum(losses) / len(losses), "masked_frac": r["masked_frac"], "clip_frac": r["clip_frac"]}
        if u < U - 1:
            opt.step()
    out["grads"] = {k: v.grad.numpy() for k, v in P.items()}
    return out


def write_input(path, smp, lbeh, temperature):
    """The samples as `tidal debug step` reads them (see its --help)."""
    C = np.array([len(x) for x in smp["comps"]])
    st_write(path, {"prompt_ids": np.concatenate(smp["prompts"]).astype(np.int32),
                    "prompt_off": np.concatenate([[0], np.cumsum([len(p) for p in smp["prompts"]])]).astype(np.int32),
                    "completion_ids": np.concatenate(smp["comps"]).astype(np.int32),
                    "completion_off": np.concatenate([[0], np.cumsum(C)]).astype(np.int32),
                    "logprobs": lbeh, "loss_mask": np.concatenate(smp["masks"]).astype(np.uint8),
                    "versions": np.concatenate(smp["vers"]), "rewards": smp["rewards"], "group_off": smp["goff"],
                    "temperature": np.array([float(temperature)])})


def run_case(tidal, tmp, name, sets, seed, temperature=1.0, far=False):
    rng = np.random.default_rng(seed)
    W = random_weights(rng)
    Wref = {k: (v + 0.05 * rng.standard_normal(v.shape)).astype(np.float32) for k, v in W.items()}
    mdir, rdir = os.path.join(tmp, name + ".model"), os.path.join(tmp, name + ".ref")
    write_model(mdir, W)
    write_model(rdir, Wref)
    smp = make_samples(rng)
    with torch.no_grad():
        Pt = {k: torch.tensor(v.astype(np.float64)) for k, v in W.items()}
        lt0 = completion_logp(Pt, smp, 1.0 / temperature).numpy()
    lbeh = (lt0 + rng.normal(0, 0.6 if far else 0.2, len(lt0))).astype(np.float32)
    pin, pout = os.path.join(tmp, name + ".in.safetensors"), os.path.join(tmp, name + ".out.safetensors")
    write_input(pin, smp, lbeh, temperature)
    sets = [f"rollout.max_tokens={MAX_TOKENS}"] + sets
    cmd = [tidal, "debug", "step", "--model", mdir, "--ref", rdir, "--input", pin, "--out", pout,
           "--version", str(VERSION)]
    for s in sets:
        cmd += ["--set", s]
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != 0:
        print(f"FAIL {name}: tidal debug step exited {p.returncode}: {p.stderr.strip()}")
        RESULTS["failed"] += 1
        return
    got = st_read(pout)
    want = reference(W, Wref, smp, lbeh, sets, temperature)
    worst, worst_key, bad = 0.0, "", []
    for k, g in want["grads"].items():
        e = LP.rel(got["grad." + k], g)
        if e > worst:
            worst, worst_key = e, k
        if e > TOL:
            bad.append(f"grad.{k}: error {e:.3g}")
    e = LP.rel(got["loss"], [want["loss"]])
    if e > worst:
        worst, worst_key = e, "loss"
    if e > TOL:
        bad.append(f"loss: tidal {float(got['loss'][0]):.8g} ref {want['loss']:.8g}")
    RESULTS["worst"] = max(RESULTS["worst"], worst)
    ok = not bad
    RESULTS["passed" if ok else "failed"] += 1
    print(f"{'ok  ' if ok else 'FAIL'} {name}: worst relative error {worst:.2e} ({worst_key}); loss "
          f"{want['loss']:+.6f}, masked {want['masked_frac']:.3f}, clip {want['clip_frac']:.3f}, "
          f"{int(got['updates'][0])} update(s)")
    for b in bad:
        print(f"     {b}")


def run_errors(tidal, tmp):
    """A bad configuration: exit 2 with the key named."""
    rng = np.random.default_rng(3)
    mdir = os.path.join(tmp, "err.model")
    write_model(mdir, random_weights(rng))
    smp = make_samples(rng)
    pin = os.path.join(tmp, "err.in.safetensors")
    write_input(pin, smp, np.zeros(sum(len(c) for c in smp["comps"]), np.float32), 1.0)
    cases = [(["trainer.loss=dpo"], "trainer.loss"), (["trainer.kl=0.1"], "reference model"),
             (["trainer.dual_clip=0.5"], "trainer.dual_clip"), (["trainer.m2po_candidates=most"], "m2po_candidates")]
    for sets, needle in cases:
        cmd = [tidal, "debug", "step", "--model", mdir, "--input", pin, "--out", os.path.join(tmp, "err.out")]
        for s in sets:
            cmd += ["--set", s]
        p = subprocess.run(cmd, capture_output=True, text=True)
        ok = p.returncode == 2 and needle in p.stderr
        RESULTS["passed" if ok else "failed"] += 1
        print(f"{'ok  ' if ok else 'FAIL'} error {sets}: exit {p.returncode}: {p.stderr.strip()}")


CASES = [
    ("grpo-ppo-tis", [], {}),
    ("grpo-ppo-none-temp0.7", ["trainer.correction=none"], {"temperature": 0.7}),
    ("cispo-tis", ["trainer.loss=cispo", "trainer.correction=tis"], {}),
    ("gspo-none", ["trainer.loss=gspo", "trainer.correction=none"], {}),
    ("m2po-bypass", ["trainer.loss=m2po", "trainer.correction=bypass"], {"far": True}),
    ("m2po-all-tis-stale-poly", ["trainer.loss=m2po", "trainer.m2po_candidates=all", "trainer.stale_weight=poly",
                                 "trainer.stale_a=1"], {"far": True}),
    ("rloo-mis_seq-kl-klreward", ["trainer.advantage=rloo", "trainer.correction=mis_seq", "trainer.mis_hi=3",
                                  "trainer.kl=0.05", "trainer.kl_reward=0.02"], {}),
    ("drgrpo-sum-norm-overlong", ["trainer.advantage=drgrpo", "trainer.loss_agg=seq-mean-token-sum-norm",
                                  "trainer.overlong_buffer=6", "trainer.overlong_factor=0.5"], {}),
    ("reinforce_pp-hinge-dual-bypass", ["trainer.advantage=reinforce_pp", "trainer.stale_weight=hinge",
                                        "trainer.stale_a=0.5", "trainer.stale_b=2", "trainer.dual_clip=3",
                                        "trainer.correction=bypass"], {"temperature": 0.8}),
    ("ppo-tis-2-updates-recompute", ["trainer.minibatches=2", "trainer.lr=0.01", "trainer.eps_hi=0.28"], {}),
    ("ppo-tis-2-updates-loglinear", ["trainer.minibatches=2", "trainer.lr=0.01", "trainer.proximal=loglinear"], {}),
    ("m2po-2-updates", ["trainer.loss=m2po", "trainer.minibatches=2", "trainer.lr=0.01", "trainer.correction=tis"],
     {"far": True}),
    ("gspo-seq-mean-token-mean-2-updates-kl", ["trainer.loss=gspo", "trainer.minibatches=2", "trainer.lr=0.01",
                                               "trainer.eps_lo=0.02", "trainer.eps_hi=0.02", "trainer.kl=0.02"], {}),
]


def main():
    tidal = os.path.abspath(sys.argv[1])
    with tempfile.TemporaryDirectory(prefix="tidal-step-parity-") as tmp:
        for i, (name, sets, kw) in enumerate(CASES):
            run_case(tidal, tmp, name, sets, seed=200 + i, **kw)
        run_errors(tidal, tmp)
    print(f"worst relative error over all cases: {RESULTS['worst']:.2e}")
    print(f"{RESULTS['passed']} passed, {RESULTS['failed']} failed")
    return 1 if RESULTS["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
