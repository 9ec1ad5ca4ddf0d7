#!/usr/bin/env python3
"""Writes the fixtures of ser's geometric group and patch-wise NT-Xent:

    tests/reference/fixtures/group.safetensors   (common/nn/ser_group.c, tests/test_group.c)
    tests/reference/fixtures/ntxent.safetensors  (common/nn/ser_ntxent.c, tests/test_ntxent.c)
    tests/reference/fixtures/ntxent_pair.safetensors  (the same files)

Every reference value is computed in float64 from float32-representable inputs with the ops the
reference code uses (torch.rot90, torch.flip, F.interpolate(mode='bicubic', size=...,
align_corners=False), F.normalize, torch.mm), then stored as float32. Gradients come from
autograd. Run with Debian's python3-torch:  /usr/bin/python3 tests/reference/make_group_fixtures.py
The fixtures are committed; the test suite does not need PyTorch.

group.safetensors
    rel.<i>.params  [d_a, f_a, r_a, gh_a, gw_a, d_b, f_b, r_b, gh_b, gw_b]
    rel.<i>.z (rows_a, cols_a, C), rel.<i>.dout / .out (rows_b, cols_b, C), rel.<i>.dz
        out = T_ab(z) in the general form; dz = d sum(out * dout) / dz.
    img.<i>.params  [d, f, r, gh, gw, P];  img.<i>.x (C, H, W);  img.<i>.out (C, H', W')
ntxent.safetensors
    <case>.q, <case>.k (N, D), <case>.tokens (n,), <case>.tau (1,), <case>.loss (1,),
    <case>.dq, <case>.dk (N, D) = dL/dq, dL/dk.
ntxent_pair.safetensors
    <case>.a, <case>.b (N, D), <case>.tokens (n,), <case>.tau (1,), <case>.loss (1,),
    <case>.da, <case>.db (N, D) = dL/da, dL/db.
"""
import os
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from st_io import save_file  # noqa: E402

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures")
torch.set_default_dtype(torch.float64)


def r(*shape, scale=1.0):
    """Random float64 tensor whose values are exactly representable in float32."""
    return (torch.randn(*shape) * scale).float().double()


def f32(d):
    return {k: v.detach().float().contiguous() for k, v in d.items()}


# --- group -----------------------------------------------------------------------------------
def view_grid(g):
    d, f, rr, gh, gw = g
    return (gw, gh) if rr % 2 else (gh, gw)


def rel_action(z, ga, gb):
    """General T_ab on an NCHW map z on view a's grid (ser_group.h)."""
    x = torch.rot90(z, -ga[2], dims=[2, 3])
    if ga[0] ^ gb[0]:
        x = torch.rot90(x, 2, dims=[2, 3])
    if ga[1] ^ gb[1]:
        x = torch.flip(x, dims=[3])
    # Always called, as the reference does: with equal sizes PyTorch copies exactly.
    x = F.interpolate(x, size=(gb[3], gb[4]), mode="bicubic", align_corners=False)
    return torch.rot90(x, gb[2], dims=[2, 3])


def aug_equiv_feat(z, w_t, h_t, k_inv, k_t):
    """The reference's T (builder/utils.py:939-944), for pairs with d_b = !d_a, f_b = !f_a."""
    x = torch.rot90(z, k_inv + 2, dims=[2, 3])
    x = torch.flip(x, dims=[3])
    x = F.interpolate(x, size=(w_t, h_t), mode="bicubic", align_corners=False)
    return torch.rot90(x, k_t, dims=[2, 3])


def image_action(x, g, P):
    d, f, rr, gh, gw = g
    if d:
        x = torch.rot90(x, 2, dims=[2, 3])
    if f:
        x = torch.flip(x, dims=[3])
    x = F.interpolate(x, size=(P * gh, P * gw), mode="bicubic", align_corners=False)
    return torch.rot90(x, rr, dims=[2, 3])


# (d, f, r, gh, gw) pairs: every r on both sides, square and non-square grids, equal sizes
# (pure permutations), up- and down-sampling, and reference-mode pairs (both xors 1).
REL_CASES = [
    ((0, 0, 0, 4, 4), (1, 0, 1, 4, 4)),
    ((0, 1, 1, 3, 5), (1, 0, 3, 5, 4)),
    ((1, 1, 2, 6, 4), (0, 0, 2, 4, 7)),
    ((1, 0, 3, 5, 3), (0, 1, 0, 5, 3)),
    ((0, 0, 1, 7, 6), (1, 1, 1, 4, 5)),
    ((1, 1, 0, 2, 3), (0, 0, 3, 3, 2)),
    ((0, 1, 3, 4, 6), (1, 0, 2, 6, 5)),
    ((1, 0, 2, 3, 3), (0, 1, 1, 3, 3)),
]
IMG_CASES = [  # (g, P) on a 3 x 8 x 8 base image (g0 = 4 at P = 2)
    ((1, 0, 1, 3, 5), 2),
    ((0, 1, 2, 4, 4), 2),
    ((1, 1, 3, 5, 2), 2),
    ((0, 0, 0, 6, 3), 2),
]


def group():
    torch.manual_seed(7)
    t = {}
    C = 3
    for i, (ga, gb) in enumerate(REL_CASES):
        ra, ca = view_grid(ga)
        rb, cb = view_grid(gb)
        z = r(1, C, ra, ca).requires_grad_()
        out = rel_action(z, ga, gb)
        assert out.shape[-2:] == (rb, cb), (out.shape, rb, cb)
        if ga[0] != gb[0] and ga[1] != gb[1]:
            ref = aug_equiv_feat(z, gb[3], gb[4], -ga[2], gb[2])
            assert torch.equal(ref, out), "general form != reference formula"
        dout = r(*out.shape)
        (dz,) = torch.autograd.grad((out * dout).sum(), [z])
        hwc = lambda x: x[0].permute(1, 2, 0)  # noqa: E731  stored channels-last
        t[f"rel.{i}.params"] = torch.tensor(list(ga) + list(gb), dtype=torch.float64)
        t[f"rel.{i}.z"] = hwc(z)
        t[f"rel.{i}.out"] = hwc(out)
        t[f"rel.{i}.dout"] = hwc(dout)
        t[f"rel.{i}.dz"] = hwc(dz)
    for i, (g, P) in enumerate(IMG_CASES):
        x = r(1, C, 8, 8)
        out = image_action(x, g, P)
        t[f"img.{i}.params"] = torch.tensor(list(g) + [P], dtype=torch.float64)
        t[f"img.{i}.x"] = x[0]
        t[f"img.{i}.out"] = out[0]
    save_file(f32(t), os.path.join(OUT, "group.safetensors"),
              metadata={"generator": "make_group_fixtures.py", "n_rel": str(len(REL_CASES)),
                        "n_img": str(len(IMG_CASES))})


# --- NT-Xent ---------------------------------------------------------------------------------
def ntxent_ref(q, k, ranks, tau):
    """The reference's code path (builder/moco.py:953-1018) for one direction.

    ranks: list of (B_eq, tokens per sample) per rank, in gather order."""
    kh = F.normalize(k, dim=1)
    qh = F.normalize(q, dim=1)
    S = torch.mm(kh, qh.t()) / tau
    N = S.shape[0]
    mask = torch.ones(N, N)
    s = 0
    for b_eq, per in ranks:  # the B_eq diagonal P x P blocks of each rank block [s, e)
        for b in range(b_eq):
            mask[s + b * per:s + (b + 1) * per, s + b * per:s + (b + 1) * per] = 0
        s += b_eq * per
    mask.fill_diagonal_(1)
    return (torch.log((torch.exp(S) * mask).sum(0)) - torch.diag(S)).mean()


def ntxent_case(t, name, ranks, D, tau, corr=0.0, zero_q=(), zero_k=()):
    tau = float(torch.tensor(tau, dtype=torch.float32))  # the C side gets a float
    tokens = [per for b_eq, per in ranks for _ in range(b_eq)]
    N = sum(tokens)
    k = r(N, D)
    q = (k * corr + r(N, D)).float().double()
    for j in zero_q:
        q[j] = 0
    for i in zero_k:
        k[i] = 0
    ntxent_store(t, name, {"q": q, "k": k}, tokens, tau,
                 lambda x: ntxent_ref(x["q"], x["k"], ranks, tau))


def ntxent_store(t, name, inputs, tokens, tau, loss):
    """Case `name`: the inputs, tokens, tau, L = loss(inputs) and dL/d<input> for each."""
    for x in inputs.values():
        x.requires_grad_()
    L = loss(inputs)
    grads = torch.autograd.grad(L, list(inputs.values()))
    assert all(torch.isfinite(g).all() for g in grads), name
    t.update({f"{name}.{k}": x for k, x in inputs.items()})
    t.update({f"{name}.tokens": torch.tensor(tokens, dtype=torch.float64),
              f"{name}.tau": torch.tensor([tau]), f"{name}.loss": L.reshape(1)})
    t.update({f"{name}.d{k}": g for k, g in zip(inputs, grads)})


def ntxent():
    torch.manual_seed(11)
    t = {}
    # Ranks with different (w, h): 2 samples of 2x3, 1 of 3x3, 2 of 2x2 tokens.
    ntxent_case(t, "ragged", [(2, 6), (1, 9), (2, 4)], 16, 0.2)
    # A sharp temperature with positives that dominate: |S| up to 50.
    ntxent_case(t, "sharp", [(2, 4), (1, 6)], 8, 0.02, corr=1.0)
    # Zero rows on both sides (F.normalize's clamp: the gradient is dx^ / 1e-12).
    ntxent_case(t, "zero_rows", [(2, 3), (1, 4)], 6, 0.5, zero_q=(1,), zero_k=(7,))
    # A single sample: every off-diagonal entry is masked, L = 0.
    ntxent_case(t, "single", [(1, 7)], 5, 0.2)
    save_file(f32(t), os.path.join(OUT, "ntxent.safetensors"),
              metadata={"generator": "make_group_fixtures.py"})


# --- pair NT-Xent ----------------------------------------------------------------------------
def ntxent_pair_ref(a, b, tokens, tau):
    """The SimCLR-style pair loss of ser_ntxent.h, plainly from its definition (not from the
    SER code, whose erl_local4 version has a bug): X = [a; b], S = X^ X^T / tau, anchor r's
    positive is the same location in the other half, its denominator the positive and every
    row of every other image (either half)."""
    x = F.normalize(torch.cat([a, b]), dim=1)
    S = x @ x.t() / tau
    N = a.shape[0]
    img = torch.repeat_interleave(torch.arange(len(tokens)), torch.tensor(tokens)).repeat(2)
    rows = torch.arange(2 * N)
    pos = torch.cat([torch.arange(N, 2 * N), torch.arange(0, N)])
    allowed = img[:, None] != img[None, :]
    allowed[rows, pos] = True
    lse = torch.logsumexp(S.masked_fill(~allowed, float("-inf")), dim=1)
    return (lse - S[rows, pos]).mean()


def ntxent_pair_case(t, name, tokens, D, tau, corr=0.0):
    tau = float(torch.tensor(tau, dtype=torch.float32))  # the C side gets a float
    N = sum(tokens)
    a = r(N, D)
    b = (a * corr + r(N, D)).float().double()
    ntxent_store(t, name, {"a": a, "b": b}, tokens, tau,
                 lambda x: ntxent_pair_ref(x["a"], x["b"], tokens, tau))


def ntxent_pair():
    torch.manual_seed(13)
    t = {}
    # Ragged token counts (2x2, 2x3, 3x3 grids).
    ntxent_pair_case(t, "ragged", [4, 6, 9], 12, 0.4)
    # A sharp temperature with positives that dominate: |S| up to 20.
    ntxent_pair_case(t, "sharp", [3, 5, 4, 2], 8, 0.05, corr=1.0)
    # A single sample: only the positive is left in each denominator, L = 0.
    ntxent_pair_case(t, "single", [7], 5, 0.2)
    assert t["single.loss"].item() == 0.0 and not t["single.da"].any()
    save_file(f32(t), os.path.join(OUT, "ntxent_pair.safetensors"),
              metadata={"generator": "make_group_fixtures.py"})


def main():
    os.makedirs(OUT, exist_ok=True)
    group()
    ntxent()
    ntxent_pair()
    print("fixtures written to", OUT)


if __name__ == "__main__":
    main()
