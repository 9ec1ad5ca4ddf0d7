#!/usr/bin/env python3
"""Writes the numerical fixtures of ser's compute core (tests/reference/fixtures/*.safetensors).

Every reference value is computed in float64 from float32-representable inputs, then stored as
float32: the C tests measure ser's fp32 error against (nearly) exact values. Run with Debian's
python3-torch:  /usr/bin/python3 tests/reference/make_fixtures.py
The fixtures are committed; the test suite does not need PyTorch.
"""
import os
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from ser_ref import MoCoSER, image_action, ViT, build_mlp, moco_ctr, projector_equiv  # noqa: E402
from st_io import load_file, save_file  # noqa: E402

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures")
torch.set_default_dtype(torch.float64)


def r(*shape, scale=1.0, shift=0.0):
    """Random float64 tensor whose values are exactly representable in float32."""
    return (torch.randn(*shape) * scale + shift).float().double()


def f32(d):
    return {k: v.detach().float().contiguous() for k, v in d.items()}


def grads(out, dout, inputs):
    g = torch.autograd.grad((out * dout).sum(), inputs)
    return g


def kernels():
    torch.manual_seed(1)
    t = {}
    # Linear: out = x w^T + b.
    x, w, b = r(5, 7).requires_grad_(), r(4, 7).requires_grad_(), r(4).requires_grad_()
    out = F.linear(x, w, b)
    dout = r(5, 4)
    gx, gw, gb = grads(out, dout, [x, w, b])
    t.update({"linear.x": x, "linear.w": w, "linear.b": b, "linear.out": out,
              "linear.dout": dout, "linear.dx": gx, "linear.dw": gw, "linear.db": gb})
    # LayerNorm, eps 1e-6.
    x = r(6, 10, scale=2.0, shift=0.5).requires_grad_()
    w, b = r(10, scale=0.1, shift=1.0).requires_grad_(), r(10, scale=0.1).requires_grad_()
    out = F.layer_norm(x, (10,), w, b, 1e-6)
    dout = r(6, 10)
    gx, gw, gb = grads(out, dout, [x, w, b])
    t.update({"layernorm.x": x, "layernorm.w": w, "layernorm.b": b, "layernorm.out": out,
              "layernorm.dout": dout, "layernorm.dx": gx, "layernorm.dw": gw,
              "layernorm.db": gb})
    # Exact GELU over a sweep.
    x = (torch.linspace(-6, 6, 200) + r(200, scale=0.01)).float().double().requires_grad_()
    out = F.gelu(x)
    dout = r(200)
    (gx,) = grads(out, dout, [x])
    t.update({"gelu.x": x, "gelu.out": out, "gelu.dout": dout, "gelu.dx": gx})
    # Attention core on a packed qkv (B=2, N=5, C=8, H=2).
    qkv = r(2, 5, 24).requires_grad_()
    B, N, C, H = 2, 5, 8, 2
    q, k, v = qkv.reshape(B, N, 3, H, C // H).permute(2, 0, 3, 1, 4)
    att = ((q @ k.transpose(-2, -1)) * (C // H) ** -0.5).softmax(-1)
    out = (att @ v).transpose(1, 2).reshape(B, N, C)
    dout = r(2, 5, 8)
    (gq,) = grads(out, dout, [qkv])
    t.update({"attention.qkv": qkv, "attention.out": out, "attention.att": att,
              "attention.dout": dout, "attention.dqkv": gq})
    # Row softmax.
    x = r(4, 9, scale=3.0)
    t.update({"softmax.x": x, "softmax.out": x.softmax(-1)})
    # Patch embedding: conv kernel = stride = 4 on a 8x12 image -> 2x3 grid.
    img = r(2, 3, 8, 12).requires_grad_()
    w, b = r(6, 3, 4, 4, scale=0.2).requires_grad_(), r(6).requires_grad_()
    out = F.conv2d(img, w, b, stride=4).flatten(2).transpose(1, 2)
    dout = r(2, 6, 6)
    gw, gb = grads(out, dout, [w, b])
    t.update({"patch.img": img, "patch.w": w, "patch.b": b, "patch.out": out,
              "patch.dout": dout, "patch.dw": gw, "patch.db": gb})
    # Bicubic with the position-embedding scale-factor rule, 4x4 grid of C=5 channels.
    pos = r(1, 5, 4, 4).requires_grad_()
    for gh, gw_ in [(3, 5), (4, 6), (2, 2), (5, 5), (7, 3)]:
        out = F.interpolate(pos, scale_factor=((gh + 0.1) / 4, (gw_ + 0.1) / 4), mode="bicubic",
                            align_corners=False)
        assert out.shape[-2:] == (gh, gw_)
        dout = r(*out.shape)
        (gp,) = grads(out, dout, [pos])
        key = f"bicubic_sf.{gh}x{gw_}"
        # Stored channels-last (H, W, C) as ser's token maps are.
        t[key + ".out"] = out[0].permute(1, 2, 0)
        t[key + ".dout"] = dout[0].permute(1, 2, 0)
        t[key + ".dpos"] = gp[0].permute(1, 2, 0)
    t["bicubic_sf.pos"] = pos[0].permute(1, 2, 0)
    # Bicubic with size semantics (the feature-space scaling action): 3x4 map -> 5x7 and 2x3.
    m = r(1, 5, 3, 4).requires_grad_()
    for oh, ow in [(5, 7), (2, 3), (3, 4), (6, 2)]:
        out = F.interpolate(m, size=(oh, ow), mode="bicubic", align_corners=False)
        dout = r(*out.shape)
        (gm,) = grads(out, dout, [m])
        key = f"bicubic_size.{oh}x{ow}"
        t[key + ".out"] = out[0].permute(1, 2, 0)
        t[key + ".dout"] = dout[0].permute(1, 2, 0)
        t[key + ".din"] = gm[0].permute(1, 2, 0)
    t["bicubic_size.in"] = m[0].permute(1, 2, 0)
    save_file(f32(t), os.path.join(OUT, "kernels.safetensors"), metadata={"generator": "make_fixtures.py"})


def heads():
    """MoCo projector/predictor (BatchNorm over the batch, running stats), the contrastive loss
    and projector_equiv, at small widths."""
    torch.manual_seed(2)
    t = {}
    for name, (L, din, hid, dout_, last_bn) in {"proj": (3, 12, 16, 8, True),
                                                 "pred": (2, 8, 16, 8, True),
                                                 "nolast": (2, 12, 10, 6, False)}.items():
        m = build_mlp(L, din, hid, dout_, last_bn)
        with torch.no_grad():
            for pn, p in m.named_parameters():
                p.copy_(r(*p.shape, scale=0.3, shift=1.0 if pn.endswith("weight") and p.dim() == 1 else 0.0))
        x = r(6, din, scale=1.5).requires_grad_()
        m.train()
        out = m(x)
        dout = r(*out.shape)
        gs = torch.autograd.grad((out * dout).sum(), [x] + list(m.parameters()))
        t[f"{name}.x"], t[f"{name}.out"], t[f"{name}.dout"], t[f"{name}.dx"] = x, out, dout, gs[0]
        for (pn, p), g in zip(m.named_parameters(), gs[1:]):
            t[f"{name}.param.{pn}"] = p
            t[f"{name}.grad.{pn}"] = g
        for bn, b in m.named_buffers():
            if not bn.endswith("num_batches_tracked"):
                t[f"{name}.buffer.{bn}"] = b
    # Contrastive loss, T = 0.2, on un-normalised q and k.
    q, k = r(6, 8, scale=2.0).requires_grad_(), r(6, 8, scale=2.0)
    loss = moco_ctr(q, k, 0.2)
    (gq,) = torch.autograd.grad(loss, [q])
    t.update({"ctr.q": q, "ctr.k": k, "ctr.loss": loss.reshape(1), "ctr.dq": gq})
    # projector_equiv on a (B=2, C=12, 3x5) map; stored channels-last as ser's token rows.
    pe = projector_equiv(12, 16)
    with torch.no_grad():
        for pn, p in pe.named_parameters():
            p.copy_(r(*p.shape, scale=0.3))
    x = r(2, 12, 3, 5).requires_grad_()
    out = pe(x)
    dout = r(*out.shape)
    gs = torch.autograd.grad((out * dout).sum(), [x] + list(pe.parameters()))
    t["pe.x"] = x.permute(0, 2, 3, 1).reshape(-1, 12)
    t["pe.out"] = out.permute(0, 2, 3, 1).reshape(-1, 16)
    t["pe.dout"] = dout.permute(0, 2, 3, 1).reshape(-1, 16)
    t["pe.dx"] = gs[0].permute(0, 2, 3, 1).reshape(-1, 12)
    for (pn, p), g in zip(pe.named_parameters(), gs[1:]):
        t[f"pe.param.{pn}"] = p
        t[f"pe.grad.{pn}"] = g
    save_file(f32(t), os.path.join(OUT, "heads.safetensors"), metadata={"generator": "make_fixtures.py"})


# The tiny ViT shared by every whole-model case.
VIT = dict(img_size=16, patch=4, dim=24, depth=4, heads=3, hidden=48)
CASES = {
    # name: (cls_layer, H, W, drop_path_rate, n_last)
    "vit_square": (2, 16, 16, 0.3, 2),
    "vit_nonsquare_3x5": (2, 12, 20, 0.0, 2),
    "vit_cls1": (1, 16, 16, 0.0, 3),
    "vit_baseline": (4, 16, 16, 0.0, 4),
    "vit_baseline_3x5": (4, 12, 20, 0.0, 2),
}


def vit_case(name, cls_layer, H, W, dpr, n_last, seed):
    torch.manual_seed(seed)
    m = ViT(VIT["img_size"], VIT["patch"], VIT["dim"], VIT["depth"], VIT["heads"], VIT["hidden"],
            cls_layer)
    with torch.no_grad():
        for pname, p in m.named_parameters():
            if pname.endswith("norm1.weight") or pname.endswith("norm2.weight") or \
                    pname.startswith("norm"):
                p.copy_(r(*p.shape, scale=0.1, shift=1.0) if pname.endswith("weight")
                        else r(*p.shape, scale=0.1))
            elif pname.endswith("bias"):
                p.copy_(r(*p.shape, scale=0.1))
            elif p.dim() >= 2 and pname not in ("pos_embed", "cls_token"):
                fan_in = p[0].numel()
                p.copy_(r(*p.shape, scale=fan_in ** -0.5))
            else:
                p.copy_(r(*p.shape, scale=0.5))
    B, L = 3, VIT["depth"]
    img = r(B, 3, H, W)
    keep = None
    flags = torch.ones(L, 2, B)
    if dpr > 0:
        flags = (torch.rand(L, 2, B) > 0.4).double()
        rates = [dpr * l / (L - 1) for l in range(L)]
        flags[0] = 1.0  # rate 0 at block 0 (linspace(0, dpr, L)[0]): nothing is dropped
        keep = torch.stack([flags[l] / (1 - rates[l]) for l in range(L)])
    cls, fmap, last = m(img, keep, n_last)
    dcls = r(*cls.shape)
    loss = (cls * dcls).sum()
    t = {"img": img, "out.cls": cls, "dcls": dcls, "drop_masks": flags}
    if fmap is not None:
        dmap = r(*fmap.shape)
        loss = loss + (fmap * dmap).sum()
        t.update({"out.map": fmap, "dmap": dmap})
    if last is not None:
        t["out.last_cls"] = last
    names = [n for n, _ in m.named_parameters()]
    gs = torch.autograd.grad(loss, [p for _, p in m.named_parameters()])
    for n, p in m.named_parameters():
        t["param." + n] = p
    for n, g in zip(names, gs):
        t["grad." + n] = g
    meta = {k: str(v) for k, v in VIT.items()}
    meta.update(cls_layer=str(cls_layer), H=str(H), W=str(W), drop_path_rate=str(dpr),
                n_last=str(n_last), batch=str(B))
    save_file(f32(t), os.path.join(OUT, name + ".safetensors"), metadata=meta)


MOCO_GROUP = [  # (view 0, view 1) per equivariant sample: (rot180, hflip, rot90, gh, gw)
    ((0, 1, 1, 3, 5), (1, 0, 2, 4, 4)),
    ((0, 0, 3, 5, 3), (1, 1, 0, 4, 6)),
    ((1, 0, 0, 4, 4), (0, 1, 1, 3, 4)),
]


# The local SER pairs' group elements, on small grids (the local crops are 8 px, patch 4):
# (view 0, view 1) per pair k, per equivariant sample e.
LPAIR_GROUP = [
    [((0, 1, 1, 2, 3), (1, 0, 0, 2, 2)), ((1, 1, 0, 3, 2), (0, 0, 3, 2, 2))],
    [((0, 0, 2, 2, 2), (1, 1, 1, 3, 2)), ((0, 1, 0, 2, 3), (1, 0, 2, 3, 3))],
    [((1, 0, 3, 3, 3), (0, 0, 0, 2, 2)), ((0, 0, 1, 2, 2), (1, 1, 0, 2, 3))],
]


def moco_case(name, ser_grad, seed, n_local=0, essl=None, pooled=False, lpairs=0):
    """A whole MoCo-v3 + SER forward/backward on 5 invariant + 3 equivariant samples (and
    n_local local views of 8 px per sample, extra queries). pooled: the add-on reads the pooled
    block-2 maps (moco.addon_layer = 2, layer decoupling). lpairs: local SER pairs per
    equivariant sample (ser.local_pairs, the 2+4-view SER: every pair student against student)."""
    torch.manual_seed(seed)
    vit = dict(img_size=16, patch=4, dim=24, depth=4, heads=3, hidden=48, cls_layer=2)
    m = MoCoSER(vit, mlp_dim=32, dim=16, T=0.2, lam=0.7, tau=0.4, proj_dim=20, ser_grad=ser_grad,
                essl=essl)
    m.addon_pooled = pooled
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
    t = {}
    for n_, p in m.named_parameters():
        t["param." + n_] = p.detach().clone()
    for n_, b in m.named_buffers():
        t["buffer." + n_] = b.detach().clone().double()
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
    if lpairs:  # pair k of sample e: one 8 px crop, each view its group element's image
        pairs, lg = [[] for _ in range(lpairs)], []
        for e in range(len(MOCO_GROUP)):
            for k in range(lpairs):
                ga, gb = LPAIR_GROUP[e][k]
                base = r(1, 3, 8, 8)
                x0 = image_action(base, ga, 4).float().double()
                x1 = image_action(base * 0.9 + 0.05, gb, 4).float().double()  # its own "draw"
                i = e * lpairs + k
                t[f"lpair.view0.{i}"], t[f"lpair.view1.{i}"] = x0[0], x1[0]
                pairs[k].append((x0, x1, ga, gb))
                lg.append([list(ga), list(gb)])
        t["lpair.g"] = torch.tensor(lg).double()
        m.local_pairs = pairs
    local = [r(8, 3, 8, 8) for _ in range(n_local)]
    if essl is not None:  # one crop in its 4 counter-clockwise quarter turns
        local = [torch.rot90(local[0], k, (2, 3)) for k in range(4)]
    for k, x in enumerate(local):
        t[f"local.view{k}"] = x
    loss, loss_inv, loss_equiv = m(inv0, inv1, eq0, eq1, g0, g1, 0.9, local)
    params = [(n_, p) for n_, p in m.named_parameters() if p.requires_grad]
    gs = torch.autograd.grad(loss, [p for _, p in params], allow_unused=True)
    for (n_, p), g in zip(params, gs):
        t["grad." + n_] = g if g is not None else torch.zeros_like(p)
    for n_, p in m.momentum_encoder.named_parameters():
        t["after.momentum_encoder." + n_] = p.detach().clone()
    for n_, b in m.named_buffers():
        t["after." + n_] = b.detach().clone().double()
    t.update({"loss": loss.reshape(1), "loss_inv": loss_inv.reshape(1),
              "loss_equiv": loss_equiv.reshape(1), "loss_rot": m.loss_rot.reshape(1)})
    if ser_grad and not n_local and not pooled and not lpairs:
        step_files(m, t, gs, params)
    more = {"addon_layer": str(vit["cls_layer"])} if pooled else {}
    if lpairs:
        more["local_pairs"] = str(lpairs)
    save_file(f32(t), os.path.join(OUT, name + ".safetensors"),
              metadata={**more, "momentum": "0.9", "ser_grad": str(int(ser_grad)), "lambda": "0.7",
                        "essl": ",".join(str(x) for x in essl) if essl else "",
                        "tau": "0.4", "T": "0.2", "mlp_dim": "32", "dim": "16", "proj_dim": "20"})


def step_files(m, t, gs, params):
    """`ser step` end to end: the weights and batch files in docs/step-format.md layouts and the
    state after one AdamW step (lr 0.5, wd 0.1 on every tensor, eps 1). AdamW itself is checked
    bitwise in test_optim; eps = 1 makes the first step ~ lr * g, linear in g, so this end-to-end
    check is not dominated by gradients of size ~eps (see test_step.c)."""
    weights = {k[len("param."):]: v for k, v in t.items() if k.startswith("param.")}
    for k, v in t.items():
        if k.startswith("buffer.") and not k.endswith("num_batches_tracked"):
            weights[k[len("buffer."):]] = v
    w32 = f32(weights)
    for bn, b in m.named_buffers():
        if bn.endswith("num_batches_tracked"):
            w32[bn] = torch.zeros((), dtype=torch.int64)
    save_file(w32, os.path.join(OUT, "step_weights.safetensors"))
    batch = {k: v for k, v in t.items() if k.startswith("inv.") or k.startswith("eq.view")}
    b32 = f32(batch)
    b32["eq.g"] = t["eq.g"].long()
    save_file(b32, os.path.join(OUT, "step_batch.safetensors"))
    with torch.no_grad():
        ps = [p for _, p in params]
        for p, g in zip(ps, gs):
            p.grad = g if g is not None else torch.zeros_like(p)
        opt = torch.optim.AdamW(ps, lr=0.5, betas=(0.9, 0.999), eps=1.0, weight_decay=0.1)
        opt.step()
    after = {n_: p.detach().clone() for n_, p in m.named_parameters()}
    save_file(f32(after), os.path.join(OUT, "step_expected.safetensors"),
              metadata={"lr": "0.5", "wd": "0.1", "eps": "1", "momentum": "0.9"})


def unused_case():
    """AdamW and tensors outside a step's graph: the weights of step_weights.safetensors, a batch
    of 4 invariant samples and no equivariant one, so projector_equiv and norm_equiv get no
    gradient (.grad is None) and torch's AdamW leaves them, their moments and step counts alone.
    The same state results with SER off (ser step with ser.enabled = false: the weights file
    without projector_equiv.*). One step, lr 0.5, wd 0.1, eps 1 (see step_files)."""
    vit = dict(img_size=16, patch=4, dim=24, depth=4, heads=3, hidden=48, cls_layer=2)
    m = MoCoSER(vit, mlp_dim=32, dim=16, T=0.2, lam=0.7, tau=0.4, proj_dim=20, ser_grad=True)
    w = load_file(os.path.join(OUT, "step_weights.safetensors"))
    with torch.no_grad():
        for n_, p in m.named_parameters():
            p.copy_(w[n_].to(p.dtype))
        for n_, b in m.named_buffers():
            b.copy_(w[n_].to(b.dtype))
    batch = load_file(os.path.join(OUT, "step_batch.safetensors"))
    inv0, inv1 = batch["inv.view0"][:4].double(), batch["inv.view1"][:4].double()
    loss, _, _ = m(inv0, inv1, [], [], [], [], 0.9)
    params = [(n_, p) for n_, p in m.named_parameters() if p.requires_grad]
    gs = torch.autograd.grad(loss, [p for _, p in params], allow_unused=True)
    unused = [n_ for (n_, _), g in zip(params, gs) if g is None]
    assert sorted(unused) == sorted(n_ for n_, _ in params
                                    if "projector_equiv" in n_ or "norm_equiv" in n_), unused
    with torch.no_grad():
        for (_, p), g in zip(params, gs):
            p.grad = g
        opt = torch.optim.AdamW([p for _, p in params], lr=0.5, betas=(0.9, 0.999), eps=1.0,
                                weight_decay=0.1)
        opt.step()
    t = {"after." + n_: p.detach().clone() for n_, p in m.named_parameters()}
    t["inv.view0"], t["inv.view1"] = inv0, inv1
    save_file(f32({k: v for k, v in t.items() if k.startswith("inv.")}),
              os.path.join(OUT, "unused_batch.safetensors"))
    noser = {k: v for k, v in w.items() if not k.startswith("projector_equiv.")}
    save_file(noser, os.path.join(OUT, "unused_weights_noser.safetensors"))
    save_file(f32({k: v for k, v in t.items() if k.startswith("after.")}),
              os.path.join(OUT, "unused_expected.safetensors"),
              metadata={"lr": "0.5", "wd": "0.1", "eps": "1", "momentum": "0.9",
                        "unused": ",".join(unused)})


def main():
    os.makedirs(OUT, exist_ok=True)
    if sys.argv[1:] == ["local"]:  # only the local-views cases (leaves the others as they are)
        moco_case("moco_local2", True, 302, n_local=2)
        moco_case("moco_essl", True, 303, n_local=1, essl=(0.4, 20, 12))
        moco_case("moco_essl_pooled", True, 306, n_local=1, essl=(0.4, 20, 12), pooled=True)
        moco_case("moco_lpairs", True, 308, n_local=2, lpairs=2)
        return
    if sys.argv[1:] == ["unused"]:  # only the AdamW-unused case (leaves the others as they are)
        unused_case()
        return
    kernels()
    heads()
    moco_case("moco_ser_on", True, 300)
    moco_case("moco_ser_off", False, 301)
    moco_case("moco_local2", True, 302, n_local=2)
    moco_case("moco_essl", True, 303, n_local=1, essl=(0.4, 20, 12))
    moco_case("moco_essl_pooled", True, 306, n_local=1, essl=(0.4, 20, 12), pooled=True)
    moco_case("moco_lpairs", True, 308, n_local=2, lpairs=2)
    unused_case()
    for i, (name, args) in enumerate(CASES.items()):
        vit_case(name, *args, seed=100 + i)
    print("fixtures written to", OUT)


if __name__ == "__main__":
    main()
