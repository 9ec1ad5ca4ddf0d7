#!/usr/bin/env python3
"""Writes tests/reference/fixtures/moco_stl.safetensors: one MoCo-v3 + SER + STL forward and
backward (ser_ref_stl.MoCoSTL) on the tiny model of make_fixtures.moco_case, in float64 from
float32-representable inputs: the batch of moco_ser_on's layout (5 invariant + 3 equivariant
samples, 16 px; STL pairs positions (0, 1), (2, 3), (4, 5), (6, 7) of the 8).
Run: /usr/bin/python3 tests/reference/make_stl_fixtures.py
"""
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from make_fixtures import MOCO_GROUP, OUT, f32, image_action, r  # noqa: E402
from ser_ref_stl import MoCoSTL  # noqa: E402
from st_io import save_file  # noqa: E402

torch.set_default_dtype(torch.float64)

# lambda_equi, lambda_trans, temperature, trans_dim, proj_hidden, proj_dim
STL = (0.8, 0.3, 0.25, 12, 20, 10)


def main():
    torch.manual_seed(315)
    vit = dict(img_size=16, patch=4, dim=24, depth=4, heads=3, hidden=48, cls_layer=2)
    m = MoCoSTL(vit, mlp_dim=32, dim=16, T=0.2, lam=0.7, tau=0.4, proj_dim=20, ser_grad=True,
                stl=STL)
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
    t.update({"inv.view0": inv0, "inv.view1": inv1,
              "eq.g": torch.tensor([[list(ga), list(gb)] for ga, gb in MOCO_GROUP]).double()})
    loss, loss_inv, loss_equiv = m(inv0, inv1, eq0, eq1, g0, g1, 0.9)
    params = [(n, p) for n, p in m.named_parameters() if p.requires_grad]
    gs = torch.autograd.grad(loss, [p for _, p in params], allow_unused=True)
    for (n, p), g in zip(params, gs):
        t["grad." + n] = g if g is not None else torch.zeros_like(p)
    for n, p in m.momentum_encoder.named_parameters():
        t["after.momentum_encoder." + n] = p.detach().clone()
    for n, b in m.named_buffers():
        t["after." + n] = b.detach().clone().double()
    t.update({"loss": loss.reshape(1), "loss_inv": loss_inv.reshape(1),
              "loss_equiv": loss_equiv.reshape(1), "stl_equi_loss": m.equi.reshape(1),
              "stl_trans_loss": m.trans.reshape(1)})
    os.makedirs(OUT, exist_ok=True)
    path = os.path.join(OUT, "moco_stl.safetensors")
    save_file(f32(t), path, metadata={"momentum": "0.9", "ser_grad": "1", "essl": "",
                                      "stl": ",".join(str(x) for x in STL)})
    print("wrote", path, "loss", float(loss), "equi", float(m.equi), "trans", float(m.trans))


if __name__ == "__main__":
    main()
