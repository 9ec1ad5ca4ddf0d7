#!/usr/bin/env python3
"""Writes tests/reference/fixtures/moco_equimod.safetensors: one MoCo-v3 + SER + EquiMod forward
and backward (ser_ref_equimod.MoCoEquiMod) on the tiny model of make_fixtures.moco_case, in
float64 from float32-representable inputs: the batch of moco_ser_on's layout (5 invariant + 3
equivariant samples, 16 px) plus EquiMod's centre views x_0 as `local.view0` (8, 3, 16, 16)
and the global views' parameters `vparams` (8, 2, 21, drawn as ser's loader draws them).
Run: /usr/bin/python3 tests/reference/make_equimod_fixtures.py
"""
import math
import os
import random
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from make_fixtures import MOCO_GROUP, OUT, f32, image_action, r  # noqa: E402
from ser_ref_equimod import MoCoEquiMod, VIEW_PARAMS  # noqa: E402
from st_io import save_file  # noqa: E402

torch.set_default_dtype(torch.float64)

EQUIMOD = (0.6, 0.3, 12, 20)  # lambda, temperature, proj_dim, hidden


def view_params(rng):
    """One view's 21 floats (ser_engine.h SER_VIEW_PARAMS) as ser's loader draws them: an RRC box
    of a source image, flip, MoCo-v3's jitter draws (recorded as drawn, also when not applied),
    gray, blur and sigma, solarize, the source size and the threshold."""
    H, W = rng.randint(16, 48), rng.randint(16, 48)
    while True:  # torchvision RandomResizedCrop.get_params, scale (0.2, 1)
        area = H * W * rng.uniform(0.2, 1.0)
        ar = math.exp(rng.uniform(math.log(3 / 4), math.log(4 / 3)))
        w, h = int(round(math.sqrt(area * ar))), int(round(math.sqrt(area / ar)))
        if 0 < w <= W and 0 < h <= H:
            break
    i, j = rng.randint(0, H - h), rng.randint(0, W - w)
    order = list(range(4))
    rng.shuffle(order)
    v = [i, j, h, w, rng.random() < 0.5, rng.random() < 0.8, *order,
         rng.uniform(0.6, 1.4), rng.uniform(0.6, 1.4), rng.uniform(0.8, 1.2), rng.uniform(-0.1, 0.1),
         rng.random() < 0.2, rng.random() < 0.5, rng.uniform(0.1, 2.0), rng.random() < 0.2,
         H, W, 128 / 255]
    assert len(v) == VIEW_PARAMS
    return [float(x) for x in v]


def main():
    torch.manual_seed(304)
    rng = random.Random(304)
    vit = dict(img_size=16, patch=4, dim=24, depth=4, heads=3, hidden=48, cls_layer=2)
    m = MoCoEquiMod(vit, mlp_dim=32, dim=16, T=0.2, lam=0.7, tau=0.4, proj_dim=20, ser_grad=True,
                    equimod=EQUIMOD)
    with torch.no_grad():  # as make_fixtures.moco_case: BN gains ~1, other weights ~1/sqrt(fan_in)
        for pname, p in m.named_parameters():
            if p.dim() == 1:
                p.copy_(r(*p.shape, scale=0.1, shift=1.0 if pname.endswith("weight") else 0.0))
            else:
                pe = pname.endswith("cls_token") or pname.endswith("pos_embed")
                p.copy_(r(*p.shape, scale=0.5 if pe else p[0].numel() ** -0.5))
        for bname, b in m.named_buffers():
            if "running" in bname:
                b.copy_(r(*b.shape, scale=0.1, shift=1.0 if "var" in bname else 0.0).abs())
    t = {"param." + n: p.detach().clone() for n, p in m.named_parameters()}
    t.update({"buffer." + n: b.detach().clone().double() for n, b in m.named_buffers()})
    inv0, inv1 = r(5, 3, 16, 16), r(5, 3, 16, 16)
    g0, g1 = [g[0] for g in MOCO_GROUP], [g[1] for g in MOCO_GROUP]
    eq0, eq1 = [], []
    for e, (ga, gb) in enumerate(MOCO_GROUP):
        base = r(1, 3, 16, 16)
        eq0.append(image_action(base, ga, 4).float().double())
        eq1.append(image_action(base, gb, 4).float().double())
        t[f"eq.view0.{e}"], t[f"eq.view1.{e}"] = eq0[-1][0], eq1[-1][0]
    x0 = r(8, 3, 16, 16)
    vparams = torch.tensor([[view_params(rng) for _ in range(2)] for _ in range(8)]).float().double()
    t.update({"inv.view0": inv0, "inv.view1": inv1, "local.view0": x0, "vparams": vparams,
              "eq.g": torch.tensor([[list(ga), list(gb)] for ga, gb in MOCO_GROUP]).double()})
    loss, loss_inv, loss_equiv = m(inv0, inv1, eq0, eq1, g0, g1, 0.9, x0, vparams)
    params = [(n, p) for n, p in m.named_parameters() if p.requires_grad]
    gs = torch.autograd.grad(loss, [p for _, p in params], allow_unused=True)
    for (n, p), g in zip(params, gs):
        t["grad." + n] = g if g is not None else torch.zeros_like(p)
    for n, p in m.momentum_encoder.named_parameters():
        t["after.momentum_encoder." + n] = p.detach().clone()
    for n, b in m.named_buffers():
        t["after." + n] = b.detach().clone().double()
    t.update({"loss": loss.reshape(1), "loss_inv": loss_inv.reshape(1),
              "loss_equiv": loss_equiv.reshape(1), "loss_equimod": m.loss_equimod.reshape(1),
              "equimod_top1": m.top1.reshape(1)})
    os.makedirs(OUT, exist_ok=True)
    path = os.path.join(OUT, "moco_equimod.safetensors")
    save_file(f32(t), path, metadata={"momentum": "0.9", "ser_grad": "1", "essl": "",
                                      "equimod": ",".join(str(x) for x in EQUIMOD)})
    print("wrote", path, "loss", float(loss), "equimod", float(m.loss_equimod), "top1", float(m.top1))


if __name__ == "__main__":
    main()
