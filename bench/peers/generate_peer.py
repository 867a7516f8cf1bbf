"""The PyTorch peer of `tidal bench generate` (embedded into the tidal binary at build time).

Loads the model directory and the prompts tidal wrote, builds the same Qwen2/Llama decoder in
float32 with the same number of threads, and runs a greedy KV-cache decode loop: a preallocated
cache [B, NKV, max_len, HD] per layer, one batched prefill of the prompts, then one forward of
B tokens per step (GQA without repeating K/V, inference mode), the log-probability of each chosen
token as the engine reports it. For batch sizes 1 (the first prompt) and B (all of them), times
the decode steps after the prefill. Prints one JSON line with tokens/s and the first tokens and
logprobs of every sequence (tidal checks they are its own).

argv: MODEL_DIR PROMPTS.safetensors THREADS NEW_TOKENS CHECK_STEPS
"""
import json
import resource
import struct
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

DT = {"F32": np.float32, "I32": np.int32, "F64": np.float64, "I64": np.int64}


def st_read(path):
    with open(path, "rb") as f:
        data = f.read()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n])
    out = {}
    for name, e in header.items():
        if name == "__metadata__":
            continue
        a, b = e["data_offsets"]
        out[name] = np.frombuffer(data[8 + n + a:8 + n + b], dtype=DT[e["dtype"]]).reshape(e["shape"])
    return out


def main():
    mdir, ppath, threads, N, K = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
    torch.set_num_threads(threads)
    with open(mdir + "/config.json") as f:
        cfg = json.load(f)
    W = {k: torch.from_numpy(v.copy()) for k, v in st_read(mdir + "/model.safetensors").items()}
    prompts = torch.from_numpy(st_read(ppath)["prompts"].astype(np.int64))
    C, NH = cfg["hidden_size"], cfg["num_attention_heads"]
    NKV = cfg.get("num_key_value_heads", NH)
    HD = cfg.get("head_dim", C // NH)
    G = NH // NKV
    L = cfg["num_hidden_layers"]
    eps, theta = cfg["rms_norm_eps"], cfg["rope_theta"]
    head = W["model.embed_tokens.weight"] if cfg.get("tie_word_embeddings") else W["lm_head.weight"]
    lay = []
    for l in range(L):
        p = f"model.layers.{l}."
        g = lambda n: W.get(p + n)
        lay.append((g("input_layernorm.weight"), g("self_attn.q_proj.weight"), g("self_attn.q_proj.bias"),
                    g("self_attn.k_proj.weight"), g("self_attn.k_proj.bias"), g("self_attn.v_proj.weight"),
                    g("self_attn.v_proj.bias"), g("self_attn.o_proj.weight"), g("self_attn.o_proj.bias"),
                    g("post_attention_layernorm.weight"), g("mlp.gate_proj.weight"), g("mlp.up_proj.weight"),
                    g("mlp.down_proj.weight")))

    def rms(x, w):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w

    def generate(ids, n_new):
        B, P = ids.shape
        max_len = P + n_new
        inv = 1.0 / (theta ** (torch.arange(0, HD, 2, dtype=torch.float32) / HD))
        emb = torch.cat([torch.arange(max_len, dtype=torch.float32)[:, None] * inv[None, :]] * 2, dim=-1)
        cos_t, sin_t = emb.cos(), emb.sin()
        kc = [torch.zeros(B, NKV, max_len, HD) for _ in range(L)]
        vc = [torch.zeros(B, NKV, max_len, HD) for _ in range(L)]

        def forward(x_ids, p0):
            T = x_ids.shape[1]
            cos, sin = cos_t[p0:p0 + T], sin_t[p0:p0 + T]

            def rope(x):
                x1, x2 = x[..., : HD // 2], x[..., HD // 2:]
                return x * cos + torch.cat([-x2, x1], -1) * sin

            mask = None
            if T > 1:
                mask = torch.ones(T, p0 + T, dtype=torch.bool).triu(p0 + 1)
            x = F.embedding(x_ids, W["model.embed_tokens.weight"])
            for l, (ln1, wq, bq, wk, bk, wv, bv, wo, bo, ln2, wg, wu, wd) in enumerate(lay):
                a = rms(x, ln1)
                q = rope(F.linear(a, wq, bq).view(B, T, NH, HD).transpose(1, 2))
                k = rope(F.linear(a, wk, bk).view(B, T, NKV, HD).transpose(1, 2))
                v = F.linear(a, wv, bv).view(B, T, NKV, HD).transpose(1, 2)
                kc[l][:, :, p0:p0 + T] = k
                vc[l][:, :, p0:p0 + T] = v
                ks, vs = kc[l][:, :, :p0 + T], vc[l][:, :, :p0 + T]
                qg = q.reshape(B, NKV, G * T, HD)
                sc = (qg @ ks.transpose(-1, -2)) * (HD ** -0.5)
                if mask is not None:
                    sc = sc.view(B, NKV, G, T, p0 + T).masked_fill(mask, float("-inf")).view(B, NKV, G * T, p0 + T)
                o = (sc.softmax(-1) @ vs).view(B, NH, T, HD).transpose(1, 2).reshape(B, T, NH * HD)
                x = x + F.linear(o, wo, bo)
                b = rms(x, ln2)
                x = x + F.linear(F.silu(F.linear(b, wg)) * F.linear(b, wu), wd)
            return F.linear(rms(x[:, -1], W["model.norm.weight"]), head)

        toks, lps = [], []

        def pick(logits):
            t = logits.argmax(-1)
            lp = logits.log_softmax(-1).gather(1, t[:, None])[:, 0]
            if len(toks) < K:
                toks.append(t.tolist())
                lps.append(lp.tolist())
            return t

        with torch.inference_mode():
            tok = pick(forward(ids, 0))
            t0 = time.perf_counter()
            for s in range(1, n_new):
                tok = pick(forward(tok[:, None], P + s - 1))
            dt = time.perf_counter() - t0
        return {"tokens_per_s": B * (n_new - 1) / dt, "seconds": dt,
                "tokens": [list(r) for r in zip(*toks)], "logprobs": [list(r) for r in zip(*lps)]}

    generate(prompts[:, :8], 4)  # warm-up
    out = {"b1": generate(prompts[:1], N), "bB": generate(prompts, N)}
    out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    out["torch"] = torch.__version__
    out["threads"] = torch.get_num_threads()
    print(json.dumps(out))


if __name__ == "__main__":
    main()
