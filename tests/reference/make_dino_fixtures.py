#!/usr/bin/env python3
"""Writes tests/reference/fixtures/dino_ser_{on,off}.safetensors: one whole DINO + SER step.

Every reference value is computed in float64 from float32-representable inputs, then stored as
float32 (as make_fixtures.py does). Run with Debian's python3-torch:
    /usr/bin/python3 tests/reference/make_dino_fixtures.py
The fixtures are committed; the test suite does not need PyTorch.

The model is the MoCo fixture's tiny ViT (img 16, patch 4, dim 24, depth 4, heads 3, hidden 48,
cls_layer 2) with drop_path_rate 0 (drop path is checked separately in C), a DINO head of
hidden 32, bottleneck 16, out_dim 64, and projector_equiv of width 20. The batch is 5 invariant
+ 3 equivariant samples (the MoCo fixture's group elements). Teacher weights are drawn
independently of the student's (as after some EMA steps), the centre is non-zero and the teacher
temperature is not a schedule value, so every term is exercised.

Contents (names; "student.*"/"teacher.*" are the ptab names of ser_dino.h):
  param.<name>                    parameters before the step (student, teacher)
  buffer.dino_loss.center         (1, 64) the centre before the step
  inv.view{0,1}, eq.view{v}.{e}, eq.g   the batch (eq.g: (3, 2, 5) rot180, hflip, rot90, gh, gw)
  loss, loss_inv, loss_equiv      loss = loss_inv + lambda * loss_equiv
  grad.<student name>             d loss / d parameter (zeros where torch's grad is None)
  after.dino_loss.center          the centre after the update
  after.teacher.<name>            the teacher after the EMA with momentum 0.9 (the student
                                  unchanged, i.e. as after an optimizer step with lr 0),
                                  ser's default: projector_equiv untouched
  after_quirk.student.projector_equiv.*  the shared projector after the reference's EMA loop,
                                  which scales it by m(2 - m) (projector_ema_quirk)
Metadata: ser_grad, norm_last_layer, teacher_temp, student_temp, center_momentum, momentum,
lambda, tau and the widths.

Cases: dino_ser_on (ser_grad on, weight_g trainable) and dino_ser_off (ser_grad off, the public
code; norm_last_layer on, so weight_g is frozen too); dino_multicrop: dino_ser_on's setting with
2 local crops of 8 px (local.view0, local.view1: (8, 3, 8, 8), student only; `multicrop` as the
argument writes only this case).
"""
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from make_fixtures import MOCO_GROUP, f32, r  # noqa: E402
from ser_ref import image_action  # noqa: E402
from ser_ref_dino import DINOSER  # noqa: E402
from st_io import save_file  # noqa: E402

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures")
torch.set_default_dtype(torch.float64)

VIT = dict(img_size=16, patch=4, dim=24, depth=4, heads=3, hidden=48, cls_layer=2)
DIMS = dict(out_dim=64, hidden_dim=32, bottleneck_dim=16, proj_dim=20)
HYPER = dict(student_temp=0.1, teacher_temp=0.055, center_momentum=0.9, momentum=0.9,
             lam=0.3, tau=0.4)


def fill(m):
    """Draws every parameter: LayerNorm-style 1-D weights near 1, biases small, weight_g near 1,
    cls/pos 0.5, matrices with rows of norm ~1."""
    with torch.no_grad():
        for pname, p in m.named_parameters():
            if pname.endswith("weight_g"):
                p.copy_(r(*p.shape, scale=0.2, shift=1.0))
            elif p.dim() == 1 and pname.endswith("weight"):
                p.copy_(r(*p.shape, scale=0.1, shift=1.0))
            elif p.dim() == 1:
                p.copy_(r(*p.shape, scale=0.1))
            elif pname.endswith("cls_token") or pname.endswith("pos_embed"):
                p.copy_(r(*p.shape, scale=0.5))
            else:
                p.copy_(r(*p.shape, scale=p[0].numel() ** -0.5))


def dino_case(name, ser_grad, norm_last_layer, seed, n_local=0):
    torch.manual_seed(seed)
    h = HYPER
    m = DINOSER(VIT, DIMS["out_dim"], DIMS["hidden_dim"], DIMS["bottleneck_dim"], norm_last_layer,
                h["student_temp"], h["center_momentum"], h["lam"], h["tau"], DIMS["proj_dim"],
                ser_grad)
    fill(m)
    with torch.no_grad():
        m.dino_loss.center.copy_(r(1, DIMS["out_dim"], scale=0.3))
    t = {}
    for n_, p in m.named_parameters():
        t["param." + n_] = p.detach().clone()
    t["buffer.dino_loss.center"] = m.dino_loss.center.clone()
    inv0, inv1 = r(5, 3, 16, 16), r(5, 3, 16, 16)
    g0 = [g[0] for g in MOCO_GROUP]
    g1 = [g[1] for g in MOCO_GROUP]
    eq0, eq1 = [], []
    for e, (ga, gb) in enumerate(MOCO_GROUP):
        base = r(1, 3, 16, 16)
        eq0.append(image_action(base, ga, 4).float().double())
        eq1.append(image_action(base, gb, 4).float().double())
        t[f"eq.view0.{e}"] = eq0[-1][0]
        t[f"eq.view1.{e}"] = eq1[-1][0]
    t.update({"inv.view0": inv0, "inv.view1": inv1,
              "eq.g": torch.tensor([[list(ga), list(gb)] for ga, gb in MOCO_GROUP]).double()})
    local = [r(8, 3, 8, 8) for _ in range(n_local)]  # 8 px: a 2 x 2 token grid
    for k, x in enumerate(local):
        t[f"local.view{k}"] = x
    loss, loss_inv, loss_equiv, _ = m(inv0, inv1, eq0, eq1, g0, g1, h["teacher_temp"], local)
    named = list(m.named_parameters())
    params = [(n_, p) for n_, p in named if p.requires_grad]
    gs = torch.autograd.grad(loss, [p for _, p in params], allow_unused=True)
    for (n_, p), g in zip(params, gs):
        t["grad." + n_] = g if g is not None else torch.zeros_like(p)
    for n_, p in named:  # frozen student tensors (weight_g with norm_last_layer): no gradient
        if n_.startswith("student.") and "grad." + n_ not in t:
            t["grad." + n_] = torch.zeros_like(p)
    t["after.dino_loss.center"] = m.dino_loss.center.clone()
    t.update({"loss": loss.reshape(1), "loss_inv": loss_inv.reshape(1),
              "loss_equiv": loss_equiv.reshape(1)})
    m.ema(h["momentum"], projector_quirk=False)
    for n_, p in m.named_parameters():
        if n_.startswith("teacher."):
            t["after." + n_] = p.detach().clone()
        if n_.startswith("student.projector_equiv."):
            assert torch.equal(p, t["param." + n_])  # ser's default leaves it alone
    # The reference's loop verbatim, from the same state (weight_norm modules cannot be
    # deep-copied, so the teacher is restored in place).
    with torch.no_grad():
        for n_, p in m.named_parameters():
            if n_.startswith("teacher."):
                p.copy_(t["param." + n_])
    m.ema(h["momentum"], projector_quirk=True)
    for n_, p in m.named_parameters():
        if n_.startswith("student.projector_equiv."):
            t["after_quirk." + n_] = p.detach().clone()
        elif n_.startswith("teacher."):  # the quirk changes nothing else
            assert torch.equal(p, t["after." + n_])
    meta = {k: str(v) for k, v in DIMS.items()}
    meta.update({k: str(v) for k, v in h.items()})
    meta.update(ser_grad=str(int(ser_grad)), norm_last_layer=str(int(norm_last_layer)),
                generator="make_dino_fixtures.py")
    save_file(f32(t), os.path.join(OUT, name + ".safetensors"), metadata=meta)


def main():
    os.makedirs(OUT, exist_ok=True)
    if sys.argv[1:] != ["multicrop"]:  # only the multi-crop case (the others left as they are)
        dino_case("dino_ser_on", True, False, 400)
        dino_case("dino_ser_off", False, True, 401)
    dino_case("dino_multicrop", True, False, 402, n_local=2)
    print("fixtures written to", OUT)


if __name__ == "__main__":
    main()
