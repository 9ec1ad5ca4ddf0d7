#!/usr/bin/env python3
"""Writes tests/reference/fixtures/optim.safetensors: AdamW, clipping, EMA and schedules.

Run with Debian's python3-torch (1.13):  /usr/bin/python3 tests/reference/make_optim_fixtures.py
The fixture is committed; the test suite does not need PyTorch.

What is in it (all names are "<group>.<what>"):
  adamw.<mode>.*   torch.optim.AdamW (foreach=False) for 3 steps on a small table of tensors of
                   different shapes, mode "all" (one param group, every tensor decayed, MoCo/BT)
                   and "no_bias_1d" (DINO's get_params_groups), with a frozen tensor and, in
                   step 2 of no_bias_1d, a tensor whose grad is None (DINO's frozen last layer).
                   f32 = the fp32 run (ser must match it bitwise), f64 = the same run in float64
                   from the same fp32 inputs (the exact values, for an rtol check).
  clip.*           utils.clip_gradients (per parameter, the reference's copy below) and
                   torch.nn.utils.clip_grad_norm_ (global) in fp32.
  ema.*            MoCo's and DINO's EMA formulas in fp32, and DINO's in-place one on an
                   aliased tensor (teacher and student sharing a module).
  sched.*          every schedule of the reference mains (F64), computed with their formulas
                   (copied below from main_moco.py, builder/utils.py, main_dino.py and
                   builder/barlowtwins.py of github.com/aitrics-chris/SER): "<name>.it" are
                   global iterations (I64) and "<name>.val" the values there.
"""
import math
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from st_io import save_file  # noqa: E402

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures")

# The table of the AdamW and clipping cases: (name, shape, frozen, grad scale). The order is
# the ptab order the C test builds. (The OpenMP path for large tensors is checked in C against
# the serial one, without a fixture.)
TENSORS = [
    ("cls_token", (1, 1, 8), False, 1.0),
    ("pos_embed", (1, 5, 8), False, 0.1),
    ("patch_embed.proj.weight", (8, 3, 2, 2), True, 1.0),
    ("patch_embed.proj.bias", (8,), True, 1.0),
    ("blocks.0.norm1.weight", (8,), False, 3.0),
    ("blocks.0.attn.qkv.weight", (24, 8), False, 1.0),
    ("blocks.0.attn.qkv.bias", (24,), False, 1e-9),
    ("blocks.0.mlp.fc1.weight", (20, 30), False, 0.01),
    ("head.last_layer.weight_g", (37, 1), False, 10.0),
]
# Per step: (lr, wd) as a schedule would give them; the grad-None tensor of no_bias_1d.
STEPS = [(1e-3, 0.04), (2.4e-3, 0.1), (5e-4, 0.4)]
NONE_AT = (1, "head.last_layer.weight_g")


# --- reference code (copied) -------------------------------------------------------------------
def clip_gradients(model_named_parameters, clip):  # builder/utils.py
    norms = []
    for name, p in model_named_parameters:
        if p.grad is not None:
            param_norm = p.grad.data.norm(2)
            norms.append(param_norm.item())
            clip_coef = clip / (param_norm + 1e-6)
            if clip_coef < 1:
                p.grad.data.mul_(clip_coef)
    return norms


def get_params_groups(named_parameters):  # builder/utils.py
    regularized = []
    not_regularized = []
    for name, param in named_parameters:
        if not param.requires_grad:
            continue
        if name.endswith(".bias") or len(param.shape) == 1:
            not_regularized.append(param)
        else:
            regularized.append(param)
    return [{'params': regularized}, {'params': not_regularized, 'weight_decay': 0.}]


def moco_adjust_learning_rate(epoch, lr, warmup_epochs, epochs):  # main_moco.py
    if epoch < warmup_epochs:
        lr = lr * epoch / warmup_epochs
    else:
        lr = lr * 0.5 * (1. + math.cos(math.pi * (epoch - warmup_epochs)
                                       / (epochs - warmup_epochs)))
    return lr


def moco_adjust_moco_momentum(epoch, moco_m, epochs):  # main_moco.py
    m = 1. - 0.5 * (1. + math.cos(math.pi * epoch / epochs)) * (1. - moco_m)
    return m


def cosine_scheduler(base_value, final_value, epochs, niter_per_ep, warmup_epochs=0,
                     start_warmup_value=0):  # builder/utils.py
    warmup_schedule = np.array([])
    warmup_iters = warmup_epochs * niter_per_ep
    if warmup_epochs > 0:
        warmup_schedule = np.linspace(start_warmup_value, base_value, warmup_iters)
    iters = np.arange(epochs * niter_per_ep - warmup_iters)
    schedule = final_value + 0.5 * (base_value - final_value) * (
        1 + np.cos(np.pi * iters / len(iters)))
    schedule = np.concatenate((warmup_schedule, schedule))
    assert len(schedule) == epochs * niter_per_ep
    return schedule


def constant_scheduler(epochs, niter_per_ep, warmup_epochs=0, rest_epochs=45, ratio=0.5):
    assert epochs > (warmup_epochs + rest_epochs)  # builder/utils.py
    warmup_iters = warmup_epochs * niter_per_ep
    warmup_schedule = np.zeros(warmup_iters)
    rest_iters = rest_epochs * niter_per_ep
    rest_schedule = np.zeros(rest_iters)
    schedule = np.ones(epochs * niter_per_ep - warmup_iters - rest_iters) * ratio
    schedule = np.concatenate((warmup_schedule, schedule, rest_schedule))
    assert len(schedule) == epochs * niter_per_ep
    return schedule


def teacher_temp_schedule(warmup_teacher_temp, teacher_temp, warmup_teacher_temp_epochs,
                          nepochs):  # main_dino.py DINOLoss
    return np.concatenate((
        np.linspace(warmup_teacher_temp, teacher_temp, warmup_teacher_temp_epochs),
        np.ones(nepochs - warmup_teacher_temp_epochs) * teacher_temp
    ))


def barlow_adjust_learning_rate(batch_size, epochs, len_loader, learning_rate_weights, step,
                                warmup_epochs=10):  # builder/barlowtwins.py (warmup 10 there)
    max_steps = epochs * len_loader
    warmup_steps = warmup_epochs * len_loader
    base_lr = batch_size / 256
    if step < warmup_steps:
        lr = base_lr * step / warmup_steps
    else:
        step -= warmup_steps
        max_steps -= warmup_steps
        q = 0.5 * (1 + math.cos(math.pi * step / max_steps))
        end_lr = base_lr * 0.001
        lr = base_lr * q + end_lr * (1 - q)
    return lr * learning_rate_weights


# --- AdamW -------------------------------------------------------------------------------------
def adamw_case(t, mode, params0, grads, dtype, betas, eps):
    params = [torch.nn.Parameter(p.clone().to(dtype), requires_grad=not frozen)
              for p, (_, _, frozen, _) in zip(params0, TENSORS)]
    named = [(n, p) for (n, _, _, _), p in zip(TENSORS, params)]
    if mode == "all":
        groups = [{'params': [p for _, p in named]}]  # model.parameters(): frozen ones too
    else:
        groups = get_params_groups(named)
    opt = torch.optim.AdamW(groups, lr=0.0, betas=betas, eps=eps, weight_decay=0.0,
                            foreach=False)
    for s, (lr, wd) in enumerate(STEPS):
        for k, (n, _, frozen, _) in enumerate(TENSORS):
            none = mode == "no_bias_1d" and (s, n) == NONE_AT
            params[k].grad = None if (frozen or none) else grads[s][k].clone().to(dtype)
        for i, g in enumerate(opt.param_groups):
            g['lr'] = lr
            if i == 0:
                g['weight_decay'] = wd  # DINO: only group 0 follows the wd schedule
        opt.step()
    tag = "f32" if dtype == torch.float32 else "f64"
    for k, (n, _, _, _) in enumerate(TENSORS):
        t[f"adamw.{mode}.{tag}.param.{n}"] = params[k].detach().float()
        st = opt.state.get(params[k])
        if tag == "f32" and st:
            t[f"adamw.{mode}.{tag}.exp_avg.{n}"] = st['exp_avg'].float()
            t[f"adamw.{mode}.{tag}.exp_avg_sq.{n}"] = st['exp_avg_sq'].float()
            t[f"adamw.{mode}.{tag}.step.{n}"] = torch.tensor([int(st['step'].item())])


def adamw(t):
    torch.manual_seed(11)
    params0 = [torch.randn(*shape) for _, shape, _, _ in TENSORS]
    grads = [[torch.randn(*shape) * scale for _, shape, _, scale in TENSORS] for _ in STEPS]
    for k, (n, _, _, _) in enumerate(TENSORS):
        t[f"adamw.init.{n}"] = params0[k]
        for s in range(len(STEPS)):
            t[f"adamw.grad{s}.{n}"] = grads[s][k]
    t["adamw.lr"] = torch.tensor([lr for lr, _ in STEPS], dtype=torch.float64)
    t["adamw.wd"] = torch.tensor([wd for _, wd in STEPS], dtype=torch.float64)
    # "all" with non-default betas/eps (exercises the config); "no_bias_1d" with the defaults.
    for mode, betas, eps in (("all", (0.9, 0.95), 1e-6), ("no_bias_1d", (0.9, 0.999), 1e-8)):
        for dtype in (torch.float32, torch.float64):
            adamw_case(t, mode, params0, grads, dtype, betas, eps)
        t[f"adamw.{mode}.betas"] = torch.tensor(betas, dtype=torch.float64)
        t[f"adamw.{mode}.eps"] = torch.tensor([eps], dtype=torch.float64)


# --- clipping ----------------------------------------------------------------------------------
def clip(t):
    torch.manual_seed(12)
    grads = [torch.randn(*shape) * scale for _, shape, _, scale in TENSORS]
    for k, (n, _, _, _) in enumerate(TENSORS):
        t[f"clip.grad.{n}"] = grads[k]
    for c in (0.3, 1.0):
        named = []
        for (n, shape, frozen, _), g in zip(TENSORS, grads):
            p = torch.nn.Parameter(torch.zeros(*shape))
            p.grad = None if frozen else g.clone()
            named.append((n, p))
        norms = clip_gradients(named, c)
        t[f"clip.per_param.{c}.norms"] = torch.tensor(norms, dtype=torch.float32)
        for n, p in named:
            if p.grad is not None:
                t[f"clip.per_param.{c}.{n}"] = p.grad
    for c in (1.0, 1000.0):
        params = []
        for (n, shape, frozen, _), g in zip(TENSORS, grads):
            p = torch.nn.Parameter(torch.zeros(*shape))
            p.grad = None if frozen else g.clone()
            params.append((n, p))
        total = torch.nn.utils.clip_grad_norm_([p for _, p in params], c)
        t[f"clip.global.{c}.total"] = torch.tensor([total.item()], dtype=torch.float32)
        for n, p in params:
            if p.grad is not None:
                t[f"clip.global.{c}.{n}"] = p.grad


# --- EMA ---------------------------------------------------------------------------------------
def ema(t):
    torch.manual_seed(13)
    n = 1000 + 7
    target, source = torch.randn(n), torch.randn(n)
    t["ema.target"], t["ema.source"] = target, source
    ms = (0.99, 0.9995, moco_adjust_moco_momentum(3.5, 0.99, 100))
    for key, m in enumerate(ms):
        # MoCo (builder/moco.py _update_momentum_encoder)
        pm = target.clone()
        pm.data = pm.data * m + source.data * (1. - m)
        t[f"ema.moco.{key}"] = pm
        # DINO (main_dino.py), m a numpy float64 from the schedule
        mm = np.float64(m)
        pk = target.clone()
        pk.data.mul_(mm).add_((1 - mm) * source.detach().data)
        t[f"ema.dino.{key}"] = pk
        # DINO with teacher and student sharing the tensor (projector_equiv)
        pa = source.clone()
        pa.data.mul_(mm).add_((1 - mm) * pa.detach().data)
        t[f"ema.dino_alias.{key}"] = pa
        pa = source.clone()
        pa.data = pa.data * m + pa.data * (1. - m)
        t[f"ema.moco_alias.{key}"] = pa
    t["ema.m"] = torch.tensor(ms, dtype=torch.float64)


# --- schedules ---------------------------------------------------------------------------------
def pick(total, warmup_iters, extra=40, seed=0):
    """Step 0, around the end of warmup, the middle, the last step, and random ones."""
    pts = {0, 1, total // 2, total - 2, total - 1}
    for w in (warmup_iters - 1, warmup_iters, warmup_iters + 1):
        if 0 <= w < total:
            pts.add(w)
    rng = np.random.default_rng(seed)
    pts.update(int(x) for x in rng.integers(0, total, extra))
    return sorted(pts)


def put(t, name, its, vals):
    t[f"sched.{name}.it"] = torch.tensor(its, dtype=torch.int64)
    t[f"sched.{name}.val"] = torch.tensor([float(v) for v in vals], dtype=torch.float64)


def sched(t):
    # (I, E, W, B): the ImageNet run of ser-reference §8 and a tiny one (every iteration).
    for tag, I, E, W, B in (("run", 625, 100, 10, 2048), ("tiny", 7, 5, 2, 256)):
        total = E * I
        its = list(range(total)) if tag == "tiny" else pick(total, W * I)
        # MoCo: base 3e-4, args.lr * args.batch_size / 256, fractional epoch.
        peak = 3e-4 * B / 256
        ep = [it // I + (it % I) / I for it in its]
        put(t, f"moco_lr.{tag}", its, [moco_adjust_learning_rate(e, peak, W, E) for e in ep])
        put(t, f"moco_m.{tag}", its, [moco_adjust_moco_momentum(e, 0.99, E) for e in ep])
        # DINO: lr (peak 1e-4*B/256., min 1e-5, warmup W), wd 0.04 -> 0.4, momentum 0.982 -> 1.
        lr = cosine_scheduler(1e-4 * B / 256., 1e-5, E, I, warmup_epochs=W)
        wd = cosine_scheduler(0.04, 0.4, E, I)
        mom = cosine_scheduler(0.982, 1, E, I)
        put(t, f"dino_lr.{tag}", its, lr[its])
        put(t, f"dino_wd.{tag}", its, wd[its])
        put(t, f"dino_m.{tag}", its, mom[its])
        tt = teacher_temp_schedule(0.04, 0.07, min(10, E - 1), E)
        put(t, f"dino_tt.{tag}", list(range(E)), tt)
        # Barlow Twins: lr-weights 1e-4.
        put(t, f"barlow_lr.{tag}", its,
            [barlow_adjust_learning_rate(B, E, I, 1e-4, it, warmup_epochs=W) for it in its])
    # constant_scheduler with warmup 1 and rest 1 epoch on the tiny run, and the run's 0/0/0.01.
    cs = constant_scheduler(5, 7, warmup_epochs=1, rest_epochs=1, ratio=0.01)
    put(t, "constant.tiny", list(range(35)), cs)
    cs = constant_scheduler(100, 625, warmup_epochs=0, rest_epochs=0, ratio=0.01)
    its = pick(62500, 0)
    put(t, "constant.run", its, cs[its])
    # The equivariant count: round(schedule[step] * batch) with numpy float64 like the mains.
    cases = [(0.01, 256), (0.01, 2048), (0.01, 250), (0.01, 50), (0.5, 5), (0.5, 7),
             (0.02, 256), (0.125, 20), (0.375, 4), (0.0, 256), (1.0, 256), (0.03, 50)]
    t["sched.equiv.ratio"] = torch.tensor([c[0] for c in cases], dtype=torch.float64)
    t["sched.equiv.batch"] = torch.tensor([c[1] for c in cases], dtype=torch.int64)
    t["sched.equiv.count"] = torch.tensor(
        [int(round(np.float64(r) * b)) for r, b in cases], dtype=torch.int64)


def main():
    os.makedirs(OUT, exist_ok=True)
    t = {}
    adamw(t)
    clip(t)
    ema(t)
    sched(t)
    t = {k: v.detach().contiguous() for k, v in t.items()}
    meta = {"torch": torch.__version__, "numpy": np.__version__,
            "cpu_capability":
                torch.__config__.show().split("CPU capability usage: ")[-1].split("\n")[0]}
    save_file(t, os.path.join(OUT, "optim.safetensors"), metadata=meta)
    print("wrote", os.path.join(OUT, "optim.safetensors"), len(t), "tensors")


if __name__ == "__main__":
    main()
