#!/usr/bin/env python3
"""Writes the Barlow Twins + SER fixtures (tests/reference/fixtures/barlow_*.safetensors).

As make_fixtures.py: every reference value is computed in float64 from float32-representable
inputs and stored as float32. Run with Debian's python3-torch:
    /usr/bin/python3 tests/reference/make_barlow_fixtures.py            # write the fixtures
    /usr/bin/python3 tests/reference/make_barlow_fixtures.py --measure  # PyTorch's own float32
        error on each whole-step tensor, as a share of the tolerance test_barlow.c uses
The fixtures are committed; the test suite does not need PyTorch.

Files:
  barlow_xcorr.safetensors   the cross-correlation loss behind an affine-free BatchNorm (running
                             stats included) at two sizes: z1, z2 -> bn -> on/off-diagonal sums,
                             gradients w.r.t. the bn outputs and w.r.t. z1, z2
  barlow_ser_on.safetensors  a whole step (5 invariant + 3 equivariant samples, tiny ViT,
                             proj_dim 32): SER gradient on, one direction (the reference)
  barlow_ser_off.safetensors the same with the SER term value-only (the public code)
  barlow_ser_sym.safetensors SER gradient on, both directions averaged (`symmetric`)
"""
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from ser_ref import image_action  # noqa: E402
from ser_ref_barlow import BarlowSER, xcorr_terms  # noqa: E402
from st_io import save_file  # noqa: E402

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures")
torch.set_default_dtype(torch.float64)

# The tiny ViT of the MoCo fixture.
VIT = dict(img_size=16, patch=4, dim=24, depth=4, heads=3, hidden=48, cls_layer=2)
PROJ_DIM, SER_PROJ_DIM, LAMBDA, TAU = 32, 20, 0.7, 0.4
# (view 0, view 1) per equivariant sample: (rot180, hflip, rot90, gh, gw). Samples 0 and 2 obey
# the reference's forced d1 = !d0, f1 = !f0; sample 1 is a paper-mode pair (same d and f: the
# relative action has no flip) with a transposing rot90 and an upscale.
BT_GROUP = [
    ((0, 1, 1, 3, 5), (1, 0, 2, 4, 4)),
    ((1, 1, 3, 5, 3), (1, 1, 0, 4, 6)),
    ((0, 0, 2, 4, 4), (1, 1, 1, 3, 4)),
]
# name: (seed, ser_grad, symmetric, lambda_offdiag)
CASES = {
    "barlow_ser_on": (400, True, False, 0.0051),
    "barlow_ser_off": (401, False, False, 0.0051),
    "barlow_ser_sym": (402, True, True, 0.02),
}


def r(*shape, scale=1.0, shift=0.0):
    """Random float64 tensor whose values are exactly representable in float32."""
    return (torch.randn(*shape) * scale + shift).float().double()


def f32(d):
    return {k: v.detach().float().contiguous() for k, v in d.items()}


def xcorr():
    """bn (affine=False, training mode) on z1 then z2, then the loss; lambda 0.3 so that the
    off-diagonal terms carry weight. The second size crosses the 128-row GEMM blocks."""
    torch.manual_seed(3)
    t = {}
    for name, (N, P, lam) in {"small": (6, 5, 0.3), "blocks": (40, 150, 0.3)}.items():
        bn = torch.nn.BatchNorm1d(P, affine=False)
        with torch.no_grad():
            bn.running_mean.copy_(r(P, scale=0.1))
            bn.running_var.copy_(r(P, scale=0.1, shift=1.0).abs())
        t[f"{name}.running_mean"] = bn.running_mean.clone()
        t[f"{name}.running_var"] = bn.running_var.clone()
        z1 = r(N, P, scale=1.5, shift=0.3).requires_grad_()
        z2 = (0.6 * z1.detach() + r(N, P, scale=0.8)).float().double().requires_grad_()
        bn.train()
        a, b = bn(z1), bn(z2)
        a.retain_grad(), b.retain_grad()
        on, off = xcorr_terms(a, b, N)
        loss = on + lam * off
        loss.backward()
        t.update({f"{name}.z1": z1, f"{name}.z2": z2, f"{name}.a": a, f"{name}.b": b,
                  f"{name}.on_diag": on.reshape(1), f"{name}.off_diag": off.reshape(1),
                  f"{name}.loss": loss.reshape(1), f"{name}.da": a.grad, f"{name}.db": b.grad,
                  f"{name}.dz1": z1.grad, f"{name}.dz2": z2.grad,
                  f"{name}.after.running_mean": bn.running_mean.clone(),
                  f"{name}.after.running_var": bn.running_var.clone(),
                  f"{name}.lambda": torch.tensor([lam])})
    save_file(f32(t), os.path.join(OUT, "barlow_xcorr.safetensors"),
              metadata={"generator": "make_barlow_fixtures.py"})


def build_case(seed, ser_grad, symmetric, lambd):
    """The model with fixture weights and the batch (float64), as tensors to store."""
    torch.manual_seed(seed)
    m = BarlowSER(VIT, PROJ_DIM, lambd, LAMBDA, TAU, SER_PROJ_DIM, ser_grad, symmetric)
    with torch.no_grad():
        for pname, p in list(m.named_parameters()):
            if p.dim() == 1 and pname.endswith("weight"):
                p.copy_(r(*p.shape, scale=0.1, shift=1.0))
            elif p.dim() == 1:
                p.copy_(r(*p.shape, scale=0.1))
            elif pname.endswith("cls_token") or pname.endswith("pos_embed"):
                p.copy_(r(*p.shape, scale=0.5))
            else:
                p.copy_(r(*p.shape, scale=p[0].numel() ** -0.5))
        for bname, b in m.named_buffers():
            if "running" in bname:
                b.copy_(r(*b.shape, scale=0.1, shift=1.0 if "var" in bname else 0.0).abs())
    inv0, inv1 = r(5, 3, 16, 16), r(5, 3, 16, 16)
    eq0, eq1 = [], []
    for ga, gb in BT_GROUP:
        base = r(1, 3, 16, 16)
        eq0.append(image_action(base, ga, 4).float().double())
        eq1.append(image_action(base, gb, 4).float().double())
    return m, (inv0, inv1, eq0, eq1, [g[0] for g in BT_GROUP], [g[1] for g in BT_GROUP])


def run_step(m, batch):
    """One forward/backward; returns (losses dict, grads dict, buffers-after dict)."""
    loss, loss_inv, loss_equiv, on, off = m(*batch)
    params = [(n, p) for n, p in m.named_parameters() if p.requires_grad]
    gs = torch.autograd.grad(loss, [p for _, p in params], allow_unused=True)
    grads = {n: (g if g is not None else torch.zeros_like(p)) for (n, p), g in zip(params, gs)}
    losses = {"loss": loss, "loss_inv": loss_inv, "loss_equiv": loss_equiv, "on_diag": on,
              "off_diag": off}
    after = {n: b.detach().clone() for n, b in m.named_buffers()}
    return losses, grads, after


def step_case(name, seed, ser_grad, symmetric, lambd):
    m, batch = build_case(seed, ser_grad, symmetric, lambd)
    t = {}
    for n, p in m.named_parameters():
        t["param." + n] = p.detach().clone()
    for n, b in m.named_buffers():
        t["buffer." + n] = b.detach().clone().double()
    inv0, inv1, eq0, eq1, g0, g1 = batch
    for e in range(len(eq0)):
        t[f"eq.view0.{e}"] = eq0[e][0]
        t[f"eq.view1.{e}"] = eq1[e][0]
    t.update({"inv.view0": inv0, "inv.view1": inv1,
              "eq.g": torch.tensor([[list(ga), list(gb)] for ga, gb in BT_GROUP]).double()})
    losses, grads, after = run_step(m, batch)
    for k, v in losses.items():
        t[k] = v.reshape(1)
    for n, g in grads.items():
        t["grad." + n] = g
    for n, b in after.items():
        t["after." + n] = b.double()
    meta = {"ser_grad": str(int(ser_grad)), "symmetric": str(int(symmetric)),
            "lambda_offdiag": repr(lambd), "lambda": repr(LAMBDA), "tau": repr(TAU),
            "proj_dim": str(PROJ_DIM), "ser_proj_dim": str(SER_PROJ_DIM),
            "generator": "make_barlow_fixtures.py"}
    save_file(f32(t), os.path.join(OUT, name + ".safetensors"), metadata=meta)


# Gradients that are zero in exact arithmetic take their scale from a sibling tensor (as in
# test_barlow.c): a constant shift of the final [CLS] is removed by the projector's first
# BatchNorm, so d/d norm.bias = sum over rows of d/d[CLS] is pure rounding of terms the size of
# those summed in d/d norm.weight.
SCALE_FROM = {"backbone.norm.bias": "backbone.norm.weight"}


def measure(name, seed, ser_grad, symmetric, lambd):
    """PyTorch's float32 run against the float64 one, in units of test_barlow.c's tolerance
    |d| <= 2e-5 * max|ref| + 1e-6 + 1e-4 |ref| per element; prints the worst tensors."""
    m, batch = build_case(seed, ser_grad, symmetric, lambd)
    losses64, grads64, after64 = run_step(m, batch)
    m32 = m.float()
    inv0, inv1, eq0, eq1, g0, g1 = batch
    b32 = (inv0.float(), inv1.float(), [x.float() for x in eq0], [x.float() for x in eq1], g0, g1)
    with torch.no_grad():  # restart the buffers from the stored values
        m2, _ = build_case(seed, ser_grad, symmetric, lambd)
        for (n, b), (_, b0) in zip(m32.named_buffers(), m2.named_buffers()):
            b.copy_(b0)
    losses32, grads32, after32 = run_step(m32, b32)
    rows = []
    for kind, ref, got in (("loss", losses64, losses32), ("grad", grads64, grads32),
                           ("after", after64, after32)):
        for k in ref:
            if k.endswith("num_batches_tracked"):
                continue
            a, b = ref[k].double().flatten(), got[k].double().flatten()
            scale = ref[SCALE_FROM.get(k, k)].abs().max().item()
            atol = 2e-5 * scale + 1e-6 if kind != "loss" else 1e-6
            used = ((a - b).abs() / (atol + 1e-4 * a.abs())).max().item()
            rows.append((used, f"{kind}.{k}"))
    rows.sort(reverse=True)
    print(f"{name}: PyTorch float32 vs float64, share of the tolerance used (worst 5):")
    for used, k in rows[:5]:
        print(f"  {100 * used:6.1f}%  {k}")


def main():
    os.makedirs(OUT, exist_ok=True)
    if "--measure" in sys.argv[1:]:
        for name, args in CASES.items():
            measure(name, *args)
        return
    xcorr()
    for name, args in CASES.items():
        step_case(name, *args)
    print("fixtures written to", OUT)


if __name__ == "__main__":
    main()
