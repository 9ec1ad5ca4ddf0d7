#!/usr/bin/env python3
"""PyTorch peer of `ser bench step`: the same model (MoCo-v3 + SER: ser_ref.MoCoSER; Barlow
Twins + SER: ser_ref_barlow.BarlowSER), the same batch split into invariant and equivariant
samples, float32, same thread count. One step = (momentum update,) forwards, losses, backward,
AdamW. Prints one JSON line like `ser bench step --json`."""
import argparse
import json
import os
import random
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from ser_ref import MoCoSER  # noqa: E402

PRESETS = {"vit_tiny": (192, 3), "vit_small": (384, 6), "vit_base": (768, 12)}


def sample_g(g0, rng):
    area = g0 * g0 * rng.uniform(0.7, 1.3)
    aspect = 2.718281828459045 ** rng.uniform(-0.2876820724517809, 0.2876820724517809)
    gh, gw = max(1, round((area * aspect) ** 0.5)), max(1, round((area / aspect) ** 0.5))
    return (rng.randint(0, 1), rng.randint(0, 1), rng.randint(0, 3), gh, gw)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--method", default="moco")
    ap.add_argument("--ser", default="on", choices=["on", "off"])
    ap.add_argument("--model", default="vit_small")
    ap.add_argument("--img", type=int, default=224)
    ap.add_argument("--patch", type=int, default=16)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--ratio", type=float, default=0.01)
    ap.add_argument("--eq", type=int, default=-1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--mlp-dim", type=int, default=0)
    ap.add_argument("--proj-dim", type=int, default=0)
    ap.add_argument("--out-dim", type=int, default=0)
    ap.add_argument("--local", type=int, default=0, help="local views per image (multi-crop)")
    ap.add_argument("--local-size", type=int, default=0, help="their side; 0 = img x 96/224")
    ap.add_argument("--lpairs", type=int, default=0,
                    help="local SER pairs per equivariant sample (ser.local_pairs, MoCo)")
    ap.add_argument("--autocast", default="none", choices=["none", "bf16"],
                    help="bf16: torch.autocast('cpu', bfloat16) around the forward (the peer's "
                         "best setting on a CPU with fast bf16)")
    a = ap.parse_args()
    assert a.method in ("moco", "barlow", "dino")
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    rng = random.Random(0)
    dim, heads = PRESETS[a.model]
    vit = dict(img_size=a.img, patch=a.patch, dim=dim, depth=12, heads=heads, hidden=4 * dim,
               cls_layer=3)
    head = a.mlp_dim or a.proj_dim or a.out_dim
    if a.method == "moco":
        m = MoCoSER(vit, mlp_dim=head or 4096, dim=256, T=0.2, lam=1.0, tau=0.5, proj_dim=512,
                    ser_grad=True)
        m.base_encoder.patch_embed.proj.weight.requires_grad = False  # frozen, as the reference
        m.base_encoder.patch_embed.proj.bias.requires_grad = False
    elif a.method == "dino":
        from ser_ref_dino import DINOSER
        m = DINOSER(vit, out_dim=head or 65536, hidden_dim=2048, bottleneck_dim=256,
                    norm_last_layer=False, student_temp=0.1, center_momentum=0.9, lam=0.3,
                    tau=0.4, proj_dim=512, ser_grad=True)
    else:
        from ser_ref_barlow import BarlowSER
        m = BarlowSER(vit, proj_dim=head or 8192, lambd=0.0051, lam=1.0, tau=0.4,
                      ser_proj_dim=512, ser_grad=True, symmetric=False)
    opt = torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=1e-4,
                            weight_decay=0.1)
    n_eq = 0
    if a.ser == "on":
        n_eq = a.eq if a.eq >= 0 else round(a.ratio * a.batch)
    n_inv = a.batch - n_eq
    g0 = a.img // a.patch
    inv = [torch.randn(n_inv, 3, a.img, a.img) for _ in range(2)]
    ls = a.local_size or max(1, round(a.img * 96 / 224 / a.patch)) * a.patch
    local = [torch.randn(a.batch, 3, ls, ls) for _ in range(a.local)]
    if a.local and a.method == "barlow":
        sys.exit("bench_step_peer: barlow has no local views")
    gs = [[], []]
    eq = [[], []]
    for _ in range(n_eq):
        for v in range(2):
            g = sample_g(g0, rng)
            gs[v].append(g)
            h, w = (g[3], g[4]) if g[2] % 2 == 0 else (g[4], g[3])
            eq[v].append(torch.randn(1, 3, a.patch * h, a.patch * w))
    lpairs = a.lpairs if a.method == "moco" and n_eq else 0
    if lpairs:  # the 2+4-view SER: pairs of local views on the local grid, student vs student
        m.local_pairs = [[] for _ in range(lpairs)]
        for _ in range(n_eq):
            for k in range(lpairs):
                ga, gb = sample_g(ls // a.patch, rng), sample_g(ls // a.patch, rng)
                xs = [torch.randn(1, 3, a.patch * (g[3] if g[2] % 2 == 0 else g[4]),
                                  a.patch * (g[4] if g[2] % 2 == 0 else g[3])) for g in (ga, gb)]
                m.local_pairs[k].append((xs[0], xs[1], ga, gb))
    times = []
    for r in range(a.runs + 1):
        t0 = time.perf_counter()
        m.zero_grad(set_to_none=False)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=a.autocast == "bf16"):
            if a.method == "barlow":
                loss = m(inv[0], inv[1], eq[0], eq[1], gs[0], gs[1])[0]
            elif a.method == "dino":
                out = m(inv[0], inv[1], eq[0], eq[1], gs[0], gs[1], 0.04, local)
                loss = out[0]
            elif n_eq or local:
                loss, _, _ = m(inv[0], inv[1], eq[0], eq[1], gs[0], gs[1], 0.99, local)
            else:  # MoCo-v3 alone: no equivariant samples, no SER term
                loss = moco_only(m, inv[0], inv[1])
        loss.backward()
        opt.step()
        if a.method == "dino":  # after the step: centre and teacher EMA, as main_dino.py
            with torch.no_grad():
                m.dino_loss.update_center(out[3])
                m.ema(0.996, False)
        if r > 0:
            times.append(time.perf_counter() - t0)
    med = statistics.median(times)
    print(json.dumps({"bench": "step_peer", "impl": f"pytorch {torch.__version__}",
                      "method": a.method, "ser": int(a.ser == "on" and n_eq > 0), "model": a.model,
                      "img": a.img, "patch": a.patch, "batch": a.batch, "n_eq": n_eq,
                      "local": a.local, "local_size": ls if a.local else 0, "lpairs": lpairs,
                      "autocast": a.autocast,
                      "threads": a.threads, "runs": a.runs,
                      "median_step_s": med, "images_per_s": a.batch / med}))


def moco_only(m, x0, x1):
    from ser_ref import moco_ctr
    with torch.no_grad():
        for pb, pm in zip(m.base_encoder.parameters(), m.momentum_encoder.parameters()):
            pm.data = pm.data * 0.99 + pb.data * 0.01
    p = [m.predictor(m.base_encoder.head(m.base_encoder(x)[0])) for x in (x0, x1)]
    with torch.no_grad():
        k = [m.momentum_encoder.head(m.momentum_encoder(x)[0]) for x in (x0, x1)]
    return moco_ctr(p[0], k[1], m.T) + moco_ctr(p[1], k[0], m.T)


if __name__ == "__main__":
    main()
