"""The PyTorch peer of `tidal bench train` (embedded into the tidal binary at build time).

Loads the model directory and batch tidal wrote, builds the same Qwen2/Llama decoder in
float32 with the same number of threads, and times forward + backward of the same loss
(-sum loss_weights * logprob(target)) over the packed batch. Prints one JSON line.

argv: MODEL_DIR BATCH.safetensors THREADS ITERS
"""
import json
import resource
import struct
import sys
import time

import numpy as np
import torch

DT = {"F32": np.float32, "I32": np.int32, "F64": np.float64, "I64": np.int64, "U8": np.uint8}


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
    mdir, batch, threads, iters = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    torch.set_num_threads(threads)
    with open(mdir + "/config.json") as f:
        cfg = json.load(f)
    W = {k: torch.tensor(v.copy(), requires_grad=True) for k, v in st_read(mdir + "/model.safetensors").items()}
    B = st_read(batch)
    ids = torch.tensor(B["input_ids"].astype(np.int64))
    tg = torch.tensor(B["target_ids"].astype(np.int64))
    cu = B["cu_seqlens"].tolist()
    lw = torch.tensor(B["loss_weights"].copy())
    T = ids.shape[0]
    C, NH = cfg["hidden_size"], cfg["num_attention_heads"]
    NKV = cfg.get("num_key_value_heads", NH)
    HD = cfg.get("head_dim", C // NH)
    eps, theta = cfg["rms_norm_eps"], cfg["rope_theta"]
    pos = torch.cat([torch.arange(cu[s + 1] - cu[s]) for s in range(len(cu) - 1)])
    inv = 1.0 / (theta ** (torch.arange(0, HD, 2, dtype=torch.float32) / HD))
    emb = torch.cat([pos[:, None].float() * inv[None, :]] * 2, dim=-1)
    cos, sin = emb.cos()[:, None, :], emb.sin()[:, None, :]
    masks = [torch.triu(torch.ones(cu[s + 1] - cu[s], cu[s + 1] - cu[s], dtype=torch.bool), 1) for s in range(len(cu) - 1)]

    def rms(x, w):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w

    def rope(x):
        x1, x2 = x[..., : HD // 2], x[..., HD // 2:]
        return x * cos + torch.cat([-x2, x1], -1) * sin

    def lin(x, n):
        return torch.nn.functional.linear(x, W[n + ".weight"], W.get(n + ".bias"))

    def loss_fn():
        x = torch.nn.functional.embedding(ids, W["model.embed_tokens.weight"])
        for l in range(cfg["num_hidden_layers"]):
            p = f"model.layers.{l}."
            a = rms(x, W[p + "input_layernorm.weight"])
            q = rope(lin(a, p + "self_attn.q_proj").view(T, NH, HD))
            k = rope(lin(a, p + "self_attn.k_proj").view(T, NKV, HD)).repeat_interleave(NH // NKV, 1)
            v = lin(a, p + "self_attn.v_proj").view(T, NKV, HD).repeat_interleave(NH // NKV, 1)
            outs = []
            for s in range(len(cu) - 1):
                b, e = cu[s], cu[s + 1]
                qs, ks, vs = q[b:e].transpose(0, 1), k[b:e].transpose(0, 1), v[b:e].transpose(0, 1)
                sc = (qs @ ks.transpose(-1, -2)) / (HD ** 0.5)
                outs.append((sc.masked_fill(masks[s], float("-inf")).softmax(-1) @ vs).transpose(0, 1))
            x = x + lin(torch.cat(outs, 0).reshape(T, NH * HD), p + "self_attn.o_proj")
            bb = rms(x, W[p + "post_attention_layernorm.weight"])
            x = x + lin(torch.nn.functional.silu(lin(bb, p + "mlp.gate_proj")) * lin(bb, p + "mlp.up_proj"), p + "mlp.down_proj")
        f = rms(x, W["model.norm.weight"])
        head = W["model.embed_tokens.weight"] if cfg.get("tie_word_embeddings") else W["lm_head.weight"]
        lp = torch.nn.functional.linear(f, head).log_softmax(-1).gather(1, tg[:, None])[:, 0]
        return -(lw * lp).sum()

    def step():
        for t in W.values():
            t.grad = None
        loss = loss_fn()
        loss.backward()
        return loss.item()

    loss = step()  # warm-up
    t0 = time.perf_counter()
    for _ in range(iters):
        step()
    dt = time.perf_counter() - t0
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    print(json.dumps({"tokens_per_s": T * iters / dt, "seconds": dt, "loss": loss, "peak_rss_mb": rss_mb,
                      "torch": torch.__version__, "threads": torch.get_num_threads()}))


if __name__ == "__main__":
    main()
