#!/usr/bin/python3
"""Parity of tidal's policy loss (trainer/loss.c) with a PyTorch float64 reference.

For each configuration a random packed batch (fp32 logprobs, masked-out positions holding
-inf and NaN as prompt tokens may, an empty sample, a sample with nothing masked in) is
written as IN.safetensors with the config in its metadata; tests/parity/loss_driver (a
small C program over loss_compute) writes the loss, d loss / d lθ and the metrics. The
reference below is written from the published methods as docs/training.md states them ("The
losses": losses, corrections, aggregation, KL to the reference, log-ratio clamps), not from tidal's code:
it computes the loss in float64 and its gradient with autograd. Every value must agree
within 1e-5 relative error (vectors: ||tidal - ref|| / ||ref||). Bad inputs must fail
with exit status 2 and a message naming the problem.

usage: test_loss_parity.py PATH/TO/loss_driver
"""
import os
import subprocess
import sys
import tempfile

import numpy as np
import torch

torch.set_default_dtype(torch.float64)
TOL = 1e-5
RESULTS = {"passed": 0, "failed": 0, "worst": 0.0}

# ---------------------------------------------------------------- safetensors (numpy)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from safetensors_np import st_read, st_write  # noqa: E402


# ---------------------------------------------------------------- the reference (docs/training.md)
DEFAULTS = {"loss": "ppo", "m2po_tau": 0.04, "m2po_set": "harmful", "correction": "none", "agg": "token-mean", "eps_lo": 0.2, "eps_hi": 0.2, "dual_clip": 0,
            "dual_clip_c": 3.0, "tis_c": 2.0, "mis_lo": 0.0, "mis_hi": 5.0, "sum_norm": 0.0, "kl_beta": 0.0,
            "stale": "none", "stale_a": 0.5, "stale_b": 0.0}


# each loss's usual clip range and aggregation (docs/training.md: CISPO no lower bound, eps_hi 0.2-0.28;
# GSPO eps 3e-4 / 4e-4, seq-mean-token-mean)
LOSS_DEFAULTS = {"ppo": {}, "m2po": {}, "cispo": {"eps_lo": 1.0, "eps_hi": 0.28},
                 "gspo": {"eps_lo": 3e-4, "eps_hi": 4e-4, "agg": "seq-mean-token-mean"}}


def m2po_keep(d, A, m, tau, cand_set):
    """M2PO: drop candidates, largest d^2 first, until the mean d^2 of the remaining candidates <= tau;
    at least one candidate stays. Written as: the smallest k such that mean(sorted_desc[k:]) <= tau."""
    d, A, m = d.numpy(), A.numpy(), m.numpy()
    cand = m & ((A > 0) & (d > 0) | (A < 0) & (d < 0)) if cand_set == "harmful" else m.copy()
    idx = np.nonzero(cand)[0]
    keep = m.copy()
    if len(idx) == 0:
        return torch.tensor(keep)
    order = idx[np.lexsort((idx, -(d[idx] ** 2)))]  # d^2 descending, ties by position
    d2 = d[order] ** 2
    tail_sum = np.cumsum(d2[::-1])[::-1]  # sum of d2[k:]
    tail_n = np.arange(len(d2), 0, -1)
    ok = np.nonzero(tail_sum <= tau * tail_n)[0]
    k = min(int(ok[0]) if len(ok) else len(d2) - 1, len(d2) - 1)
    keep[order[:k]] = False
    return torch.tensor(keep)


def reference(inp, cfg, lp_graph=None):
    """The loss of batch inp under cfg, its gradient and metrics. lp_graph: lθ as a tensor with
    its own autograd graph (the step parity test's model forward); then inp["logp"] is not read,
    the backward reaches whatever lp_graph came from, and "grad" is not returned."""
    c = dict(DEFAULTS, **LOSS_DEFAULTS[cfg.get("loss", "ppo")])
    c.update(cfg)
    cu = inp["cu_seqlens"].astype(np.int64)
    S, T = len(cu) - 1, int(cu[-1])
    seg = torch.repeat_interleave(torch.arange(S), torch.tensor(np.diff(cu)))  # sample of each token
    m = torch.tensor(inp["mask"] != 0)
    zero = torch.zeros(T)

    def f64(name):
        # select, don't multiply: masked-out positions (maybe -inf / NaN) never enter the arithmetic
        return torch.where(m, torch.tensor(inp[name].astype(np.float64)), zero)

    def log_ratio(a, b):
        d = a - b
        return torch.where(torch.isfinite(d), d, zero).clamp(-20.0, 20.0)

    lp_leaf = lp_graph if lp_graph is not None else torch.tensor(inp["logp"].astype(np.float64), requires_grad=True)
    lp = torch.where(m, lp_leaf, zero)
    lbeh = f64("logp_beh") if "logp_beh" in inp else None
    lprox = lbeh if c["correction"] == "bypass" else f64("logp_prox")
    A = torch.tensor(inp["adv"])[seg]
    mf = m.double()
    n_seq = torch.zeros(S).index_add_(0, seg, mf)  # masked tokens per sample
    N = mf.sum()

    lo, hi = 1 - c["eps_lo"], 1 + c["eps_hi"]
    r_tok = log_ratio(lp, lprox)
    u = torch.exp(r_tok)

    def ppo_clip(x):
        """PPO-clip on ratio x, asymmetric, optional dual clip: (L, on a clip branch, on the dual clip)."""
        L1 = -A * x
        L2 = -A * torch.clamp(x, lo, hi)
        L = torch.maximum(L1, L2)
        clipped = L2 > L1
        dual = torch.zeros(T, dtype=torch.bool)
        if int(c["dual_clip"]):
            cap = -c["dual_clip_c"] * A
            dual = (A < 0) & (L > cap)
            L = torch.where(A < 0, torch.minimum(L, cap), L)
        return L, clipped, dual

    m2po_drop = torch.zeros(T, dtype=torch.bool)
    if c["loss"] == "ppo":
        L, clipped, dual = ppo_clip(u)
    elif c["loss"] == "cispo":  # -sg(clip(u)) A lθ
        L = -torch.clamp(u, lo, hi).detach() * A * lp
        clipped, dual = (u < lo) | (u > hi), torch.zeros(T, dtype=torch.bool)
    elif c["loss"] == "gspo":  # sequence ratio, token form sg(s_i) exp(r - sg(r))
        rho = torch.zeros(S).index_add(0, seg, torch.where(m, r_tok, zero)) / torch.clamp(n_seq, min=1)
        s_tok = torch.exp(rho.detach()[seg] + r_tok - r_tok.detach())
        L, clipped, dual = ppo_clip(s_tok)
    else:  # m2po: -A u, no clip, on the kept tokens
        L = -A * u
        clipped = dual = torch.zeros(T, dtype=torch.bool)
        with torch.no_grad():
            keep = m2po_keep(log_ratio(lp.detach(), f64("logp_beh")), A, m, c["m2po_tau"], c["m2po_set"])
        m2po_drop = m & ~keep

    # behaviour correction (no gradient)
    with torch.no_grad():
        w = torch.ones(T)
        masked_is = torch.zeros(T, dtype=torch.bool)
        mk1 = mk3 = torch.tensor(0.0)
        if lbeh is not None and c["correction"] != "bypass":
            d = log_ratio(lprox, lbeh)
            wt = torch.exp(d)
            mk1 = (torch.where(m, -d, zero)).sum() / N
            mk3 = (torch.where(m, (wt - 1 - d).clamp(-10, 10), zero)).sum() / N
            ws = torch.exp(torch.zeros(S).index_add_(0, seg, torch.where(m, d, zero)).clamp(-20, 20))[seg]
            corr = c["correction"]
            if corr == "tis":
                w = torch.clamp(wt, max=c["tis_c"])
            elif corr == "tis_seq":
                w = torch.clamp(ws, max=c["tis_c"])
            elif corr in ("mis", "mis_seq"):
                x = wt if corr == "mis" else ws
                masked_is = (x < c["mis_lo"]) | (x > c["mis_hi"])
                w = torch.where(masked_is, zero, x)
        # staleness weights, mean 1 over the sequences with a masked token
        f = torch.ones(S)
        if c["stale"] != "none":
            s = torch.tensor(inp["staleness"])
            if c["stale"] == "poly":
                f = (1 + s) ** (-c["stale_a"])
            else:
                f = torch.where(s <= c["stale_b"], torch.ones(S), 1 / (c["stale_a"] * (s - c["stale_b"]) + 1))
            valid = n_seq > 0
            f = f * valid.sum() / f[valid].sum()

    def agg(x):
        x = torch.where(m, x, zero)
        if c["agg"] == "token-mean":
            return x.sum() / torch.clamp(N, min=1)
        if c["agg"] == "seq-mean-token-mean":
            per = torch.zeros(S).index_add(0, seg, x)
            valid = n_seq > 0
            return (per[valid] / n_seq[valid]).sum() / max(int(valid.sum()), 1)
        return x.sum() / c["sum_norm"]

    policy = agg(torch.where(m2po_drop, zero, f[seg] * w * L))
    kl = torch.tensor(0.0)
    ref_kl = torch.tensor(0.0)
    if c["kl_beta"] > 0:
        dr = log_ratio(lp, f64("logp_ref"))
        k3 = (torch.exp(-dr) - 1 + dr).clamp(-10, 10)
        kl = c["kl_beta"] * agg(k3)
        ref_kl = torch.where(m, k3, zero).sum().detach() / N
    loss = policy + kl
    loss.backward()

    with torch.no_grad():
        wm = torch.where(m, w, zero)
        r = log_ratio(lp, lprox)
        out = {
            "grad": lp_leaf.grad.numpy() if lp_graph is None else None,
            "loss": loss.item(), "policy_loss": policy.item(), "kl_loss": kl.item(),
            "tokens": N.item(), "seqs": float((n_seq > 0).sum()),
            "clip_frac": ((clipped | dual) & m).double().sum().item() / N.item(),
            "dual_clip_frac": (dual & ~clipped & m).double().sum().item() / N.item(),
            "approx_kl": torch.where(m, -r, zero).sum().item() / N.item(),
            "mismatch_k1": mk1.item(), "mismatch_k3": mk3.item(),
            "is_mean": wm.sum().item() / N.item(), "is_max": wm.max().item(),
            "is_ess": (wm.sum() ** 2 / (wm ** 2).sum()).item() if (wm ** 2).sum() > 0 else 0.0,
            "masked_frac": ((masked_is | m2po_drop) & m).double().sum().item() / N.item(),
            "adv_mean": torch.where(m, A, zero).sum().item() / N.item(),
            "ref_kl": ref_kl.item(),
        }
    return out


# ---------------------------------------------------------------- batches and comparison
def make_batch(rng, S=14, extreme=False, stale=False, ref=False, far=False):
    lens = rng.integers(1, 40, size=S)
    lens[3] = 0  # an empty sample
    lens[7] = 1  # a sequence of length one
    cu = np.concatenate([[0], np.cumsum(lens)]).astype(np.int32)
    T = int(cu[-1])
    mask = np.zeros(T, dtype=np.uint8)
    for i in range(S):
        p = int(rng.integers(0, max(lens[i] // 2, 1)))  # a prompt-like prefix, masked out
        mask[cu[i] + p:cu[i + 1]] = rng.random(lens[i] - p) < 0.9
    mask[cu[5]:cu[6]] = 0  # a sample with nothing masked in
    mask[cu[7]] = 1
    lprox = -rng.exponential(1.5, T) - 0.01
    r = rng.normal(0, 0.3, T)
    wide = rng.random(T) < 0.15
    r[wide] = rng.uniform(-2.5, 2.5, wide.sum())  # past the dual clip too
    if extreme:
        r[rng.random(T) < 0.05] = 25.0  # clamped at 20
    lp = lprox + r
    lbeh = lprox + rng.normal(0, 0.6 if far else 0.15, T)  # far: a behaviour policy many versions back
    out = {"cu_seqlens": cu, "logp": lp.astype(np.float32), "logp_prox": lprox.astype(np.float32),
           "logp_beh": lbeh.astype(np.float32), "mask": mask, "adv": rng.normal(0, 1, S)}
    if ref:
        out["logp_ref"] = (lp + rng.normal(0, 0.3, T)).astype(np.float32)
    if stale:
        out["staleness"] = rng.integers(0, 6, S).astype(np.float64)
    if extreme:  # non-finite log-ratios on trained tokens too: replaced by 0 before exp
        on = np.nonzero(mask != 0)[0]
        pick = rng.choice(on, 6, replace=False)
        out["logp_prox"][pick[0:2]] = -np.inf
        out["logp_beh"][pick[2:4]] = np.nan
        out["logp_beh"][pick[4:6]] = -np.inf
    # masked-out positions hold what a prompt may: -inf, NaN
    off = np.nonzero(mask == 0)[0]
    for k in ("logp", "logp_prox", "logp_beh", "logp_ref"):
        if k in out:
            out[k][off[::2]] = -np.inf
            out[k][off[1::2]] = np.nan
    return out


def rel(got, want):
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    if not np.all(np.isfinite(got)):
        return np.inf
    den = np.linalg.norm(want)
    return float(np.linalg.norm(got - want) / den) if den > 1e-12 else float(np.linalg.norm(got - want))


def run_case(driver, tmp, name, cfg, seed, **batch_kw):
    rng = np.random.default_rng(seed)
    inp = make_batch(rng, **batch_kw)
    pin, pout = os.path.join(tmp, name + ".in.safetensors"), os.path.join(tmp, name + ".out.safetensors")
    st_write(pin, inp, cfg)
    p = subprocess.run([driver, pin, pout], capture_output=True, text=True)
    if p.returncode != 0:
        print(f"FAIL {name}: loss_driver exited {p.returncode}: {p.stderr.strip()}")
        RESULTS["failed"] += 1
        return
    got = st_read(pout)
    want = reference(inp, cfg)
    worst, worst_key, bad = 0.0, "", []
    for k, v in want.items():
        e = rel(got[k], v)
        if e > worst:
            worst, worst_key = e, k
        if e > TOL:
            bad.append(f"{k}: tidal {np.asarray(got[k]).ravel()[:4]} ref {np.asarray(v).ravel()[:4]} (error {e:.3g})")
    RESULTS["worst"] = max(RESULTS["worst"], worst)
    ok = not bad
    RESULTS["passed" if ok else "failed"] += 1
    info = f"loss {want['loss']:+.6f}, clip {want['clip_frac']:.3f}, dual {want['dual_clip_frac']:.3f}, " \
           f"mis {want['masked_frac']:.3f}, {int(want['tokens'])} tokens"
    print(f"{'ok  ' if ok else 'FAIL'} {name}: worst relative error {worst:.2e} ({worst_key}); {info}")
    for b in bad:
        print(f"     {b}")


def run_m2po_one_left(driver, tmp):
    """tau ~ 0 with every token a candidate: all tokens but one are masked, and exactly one stays."""
    rng = np.random.default_rng(7)
    inp = make_batch(rng, far=True)
    cfg = {"loss": "m2po", "m2po_set": "all", "m2po_tau": 1e-30}
    pin, pout = os.path.join(tmp, "one.in.safetensors"), os.path.join(tmp, "one.out.safetensors")
    st_write(pin, inp, cfg)
    p = subprocess.run([driver, pin, pout], capture_output=True, text=True)
    got = st_read(pout) if p.returncode == 0 else None
    n = float(np.sum(inp["mask"] != 0))
    ok = got is not None and abs(float(got["masked_frac"][0]) * n - (n - 1)) < 1e-6 and np.count_nonzero(got["grad"]) >= 1
    RESULTS["passed" if ok else "failed"] += 1
    print(f"{'ok  ' if ok else 'FAIL'} m2po keeps one of {int(n)} tokens when tau ~ 0: "
          f"{'exit ' + str(p.returncode) + ' ' + p.stderr.strip() if got is None else 'masked ' + str(float(got['masked_frac'][0]) * n)}")


def adv_reference(R, off, kind):
    """docs/training.md "Rewards and advantages", in float64 torch."""
    out = []
    for j in range(len(off) - 1):
        r = torch.tensor(R[off[j]:off[j + 1]])
        g = len(r)
        if g == 1:
            out.append(torch.zeros(1))
            continue
        if kind == "grpo":
            out.append((r - r.mean()) / (r.std(unbiased=True) + 1e-6))
        elif kind == "rloo":
            out.append(r - (r.sum() - r) / (g - 1))
        else:  # drgrpo, and reinforce_pp's group step
            out.append(r - r.mean())
    a = torch.cat(out)
    if kind == "reinforce_pp":
        a = (a - a.mean()) / torch.sqrt(a.var(unbiased=False) + 1e-8)
    return a.numpy()


def run_advantages(driver, tmp):
    """Every estimator on random groups of varied sizes (incl. groups of one and all-equal rewards),
    and DAPO's overlong shaping."""
    rng = np.random.default_rng(5)
    sizes = [1, 2, 5, 8, 8, 16, 3, 1, 4]
    off = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int32)
    R = rng.normal(0.3, 1.0, off[-1])
    R[off[3]:off[4]] = 0.75  # all-equal rewards
    R[off[6]:off[7]] = rng.integers(0, 2, sizes[6]).astype(np.float64)  # binary rewards
    lengths = rng.integers(1, 300, off[-1]).astype(np.float64)
    for kind in ("grpo", "drgrpo", "rloo", "reinforce_pp"):
        pin, pout = os.path.join(tmp, "adv.in.safetensors"), os.path.join(tmp, "adv.out.safetensors")
        meta = {"advantage": kind, "l_max": 256, "l_buf": 64, "factor": 0.5}
        st_write(pin, {"rewards": R, "group_off": off, "lengths": lengths}, meta)
        p = subprocess.run([driver, pin, pout], capture_output=True, text=True)
        if p.returncode != 0:
            RESULTS["failed"] += 1
            print(f"FAIL advantage {kind}: exit {p.returncode}: {p.stderr.strip()}")
            continue
        got = st_read(pout)
        want = adv_reference(R, off, kind)
        pen = np.minimum(-(lengths - (256 - 64)) / 64 * 0.5, 0.0)
        e, ep = rel(got["adv"], want), rel(got["overlong"], pen)
        equal_zero = np.all(np.abs(got["adv"][off[3]:off[4]] - (0 if kind != "reinforce_pp" else got["adv"][off[3]])) < 1e-9)
        ok = e <= TOL and ep <= TOL and equal_zero
        RESULTS["worst"] = max(RESULTS["worst"], e, ep)
        RESULTS["passed" if ok else "failed"] += 1
        print(f"{'ok  ' if ok else 'FAIL'} advantage {kind}: relative error {e:.2e}, overlong {ep:.2e}")


def run_errors(driver, tmp):
    """Bad inputs: exit 2 with a message naming the problem."""
    rng = np.random.default_rng(99)
    cases = []
    inp = make_batch(rng)
    cases.append(("unknown correction", inp, {"correction": "is"}, "\"is\""))
    cases.append(("dual_clip_c <= 1", inp, {"dual_clip": 1, "dual_clip_c": 0.5}, "dual_clip_c"))
    cases.append(("sum_norm missing", inp, {"agg": "seq-mean-token-sum-norm"}, "sum_norm"))
    empty = dict(inp, mask=np.zeros_like(inp["mask"]))
    cases.append(("all-masked batch", empty, {}, "entirely empty"))
    nan_adv = dict(inp, adv=inp["adv"].copy())
    nan_adv["adv"][2] = np.nan
    cases.append(("NaN advantage", nan_adv, {}, "sample 2"))
    no_ref = {k: v for k, v in inp.items() if k != "logp_ref"}
    cases.append(("kl without logp_ref", no_ref, {"kl_beta": 0.01}, "logp_ref"))
    cases.append(("unknown loss", inp, {"loss": "grpo"}, "\"grpo\""))
    cases.append(("m2po tau 0", inp, {"loss": "m2po", "m2po_tau": 0}, "m2po_tau"))
    no_beh = {k: v for k, v in inp.items() if k != "logp_beh"}
    cases.append(("m2po without logp_beh", no_beh, {"loss": "m2po"}, "logp_beh"))
    cases.append(("unknown m2po set", inp, {"loss": "m2po", "m2po_set": "some"}, "\"some\""))
    for label, x, cfg, needle in cases:
        pin = os.path.join(tmp, "err.in.safetensors")
        st_write(pin, x, cfg)
        p = subprocess.run([driver, pin, os.path.join(tmp, "err.out.safetensors")], capture_output=True, text=True)
        ok = p.returncode == 2 and needle in p.stderr
        RESULTS["passed" if ok else "failed"] += 1
        print(f"{'ok  ' if ok else 'FAIL'} error: {label}: exit {p.returncode}: {p.stderr.strip()}")


CASES = [
    ("ppo-none-token-mean", {}, {}),
    ("ppo-tis-asym-clip", {"correction": "tis", "eps_lo": 0.2, "eps_hi": 0.28}, {}),
    ("ppo-tis-c1.2", {"correction": "tis", "tis_c": 1.2}, {}),
    ("ppo-tis_seq-seq-mean", {"correction": "tis_seq", "agg": "seq-mean-token-mean"}, {}),
    ("ppo-mis-token-mean", {"correction": "mis", "mis_lo": 0.85, "mis_hi": 1.2}, {}),
    ("ppo-mis_seq-sum-norm", {"correction": "mis_seq", "mis_lo": 0.5, "mis_hi": 2.0, "agg": "seq-mean-token-sum-norm",
                              "sum_norm": 40}, {}),
    ("ppo-bypass-dual-clip", {"correction": "bypass", "dual_clip": 1}, {}),
    ("ppo-dual-clip-2-asym-seq-mean", {"dual_clip": 1, "dual_clip_c": 2.0, "eps_lo": 0.1, "eps_hi": 0.3,
                                       "agg": "seq-mean-token-mean"}, {}),
    ("ppo-kl-stale-poly", {"correction": "tis", "kl_beta": 0.05, "stale": "poly", "stale_a": 0.5,
                           "agg": "seq-mean-token-mean"}, {"stale": True, "ref": True}),
    ("ppo-kl-stale-hinge-sum-norm", {"correction": "mis", "kl_beta": 0.1, "stale": "hinge", "stale_a": 1.0,
                                     "stale_b": 2.0, "agg": "seq-mean-token-sum-norm", "sum_norm": 17,
                                     "dual_clip": 1}, {"stale": True, "ref": True}),
    ("ppo-clamped-ratios", {"correction": "tis", "dual_clip": 1}, {"extreme": True}),
    ("ppo-clamped-ratios-no-dual", {"correction": "mis_seq", "mis_hi": 3.0}, {"extreme": True}),
    ("ppo-big-batch", {"correction": "tis_seq", "eps_hi": 0.28}, {"S": 64}),
    # CISPO: the clipped ratio as a weight on lθ; no lower bound by default
    ("cispo-defaults", {"loss": "cispo"}, {}),
    ("cispo-tis-eps", {"loss": "cispo", "correction": "tis", "eps_lo": 0.5, "eps_hi": 0.2}, {}),
    ("cispo-mis_seq-stale", {"loss": "cispo", "correction": "mis_seq", "mis_hi": 3.0, "stale": "poly",
                             "stale_a": 1.0}, {"stale": True}),
    ("cispo-bypass-kl-clamped", {"loss": "cispo", "correction": "bypass", "kl_beta": 0.02}, {"extreme": True, "ref": True}),
    # GSPO: the sequence ratio, clipped per sequence
    ("gspo-defaults", {"loss": "gspo"}, {}),
    ("gspo-wide-clip-token-mean", {"loss": "gspo", "eps_lo": 0.2, "eps_hi": 0.2, "agg": "token-mean"}, {}),
    ("gspo-dual-tis", {"loss": "gspo", "eps_lo": 0.05, "eps_hi": 0.05, "dual_clip": 1, "correction": "tis"}, {}),
    ("gspo-bypass-clamped", {"loss": "gspo", "correction": "bypass", "eps_lo": 0.1, "eps_hi": 0.1}, {"extreme": True}),
    # M2PO: second-moment masking against the behaviour policy
    ("m2po-harmful", {"loss": "m2po"}, {}),
    ("m2po-all", {"loss": "m2po", "m2po_set": "all"}, {}),
    ("m2po-tau-0.2-tis", {"loss": "m2po", "m2po_tau": 0.2, "correction": "tis"}, {}),
    ("m2po-bypass-seq-mean", {"loss": "m2po", "correction": "bypass", "agg": "seq-mean-token-mean"}, {}),
    ("m2po-all-masked-but-one", {"loss": "m2po", "m2po_set": "all", "m2po_tau": 1e-30}, {"far": True}),
    ("m2po-clamped-stale-hinge", {"loss": "m2po", "stale": "hinge", "stale_a": 0.5, "stale_b": 1.0,
                                  "kl_beta": 0.05}, {"extreme": True, "stale": True, "ref": True, "far": True}),
    ("m2po-big-batch", {"loss": "m2po", "correction": "mis", "mis_hi": 4.0}, {"S": 64, "far": True}),
]


def main():
    driver = os.path.abspath(sys.argv[1])
    with tempfile.TemporaryDirectory(prefix="tidal-loss-parity-") as tmp:
        for i, (name, cfg, kw) in enumerate(CASES):
            run_case(driver, tmp, name, cfg, seed=100 + i, **kw)
        run_m2po_one_left(driver, tmp)
        run_advantages(driver, tmp)
        run_errors(driver, tmp)
    print(f"worst relative error over all cases: {RESULTS['worst']:.2e}")
    print(f"{RESULTS['passed']} passed, {RESULTS['failed']} failed")
    return 1 if RESULTS["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
