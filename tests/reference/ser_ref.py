"""PyTorch reference of ser's Vision Transformer (the SER layout of aitrics-chris/SER).

Mirrors vision_transformer.py of the public code (ser-reference.md §1): pre-norm blocks,
qkv with bias, exact-erf GELU, LayerNorm eps 1e-6, learnable position embedding resampled
by F.interpolate(mode='bicubic', scale_factor=(g+0.1)/g0) unless the grid is the base
square grid, [CLS] inserted after block k without position embedding (k == depth: the
baseline layout with [CLS] and pos_embed row 0 at the input), norm_equiv on the block-k
patch map. Drop path takes explicit keep masks so that C and PyTorch see the same ones.

Used by make_fixtures.py (fixtures, in float64) and bench_vit_peer.py (the peer benchmark).
"""
import math

import os
import sys

import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "python"))
from ser_torch import Attention, Mlp, PatchEmbed  # noqa: E402,F401
from ser_torch import Block as TimmBlock  # noqa: E402


# The attention, MLP and patch embedding are timm's (the users' module, python/ser_torch.py);
# the block here adds explicit drop-path keep masks.
class Block(TimmBlock):
    """timm's block with explicit drop-path keep masks."""

    def forward(self, x, keep=None):
        # keep: (2, B) scale factors (0 or 1/keep_prob) per residual branch, or None.
        a = self.attn(self.norm1(x))
        if keep is not None:
            a = a * keep[0].view(-1, 1, 1)
        x = x + a
        m = self.mlp(self.norm2(x))
        if keep is not None:
            m = m * keep[1].view(-1, 1, 1)
        return x + m


class ViT(nn.Module):
    def __init__(self, img_size, patch, dim, depth, heads, hidden, cls_layer):
        super().__init__()
        self.patch, self.depth, self.cls_layer = patch, depth, cls_layer
        self.baseline = cls_layer == depth
        self.g0 = img_size // patch
        n = self.g0 * self.g0 + (1 if self.baseline else 0)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, n, dim))
        self.patch_embed = PatchEmbed(patch, dim)
        self.blocks = nn.ModuleList([Block(dim, heads, hidden) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        if not self.baseline:
            self.norm_equiv = nn.LayerNorm(dim, eps=1e-6)

    def interpolate_pos(self, gh, gw):
        """interpolate_pos_encoding{,_baseline} of the reference (§1.4), patch rows only."""
        pos = self.pos_embed[:, 1:] if self.baseline else self.pos_embed
        N, dim = pos.shape[1], pos.shape[2]
        if gh * gw == N and gh == gw:
            return pos
        g0 = int(math.sqrt(N))
        p = pos.reshape(1, g0, g0, dim).permute(0, 3, 1, 2)
        p = F.interpolate(p, scale_factor=((gh + 0.1) / g0, (gw + 0.1) / g0), mode="bicubic",
                          align_corners=False)
        assert p.shape[-2] == gh and p.shape[-1] == gw
        return p.permute(0, 2, 3, 1).reshape(1, gh * gw, dim)

    def forward(self, img, keep=None, n_last=0):
        """Returns (cls after final norm (B,C), map (B,h*w,C) or None, last-n CLS (B,n*C))."""
        B, _, H, W = img.shape
        gh, gw = H // self.patch, W // self.patch
        x = self.patch_embed(img) + self.interpolate_pos(gh, gw)
        if self.baseline:
            cls = self.cls_token.expand(B, -1, -1) + self.pos_embed[:, :1]
            x = torch.cat([cls, x], dim=1)
        fmap, last = None, []
        for l, blk in enumerate(self.blocks):
            x = blk(x, None if keep is None else keep[l])
            if not self.baseline and l == self.cls_layer - 1:
                fmap = self.norm_equiv(x)
                x = torch.cat([self.cls_token.expand(B, -1, -1), x], dim=1)
            if n_last and l >= self.depth - n_last:
                last.append(self.norm(x)[:, 0])
        cls = self.norm(x)[:, 0]
        return cls, fmap, (torch.cat(last, dim=-1) if last else None)


# --- MoCo-v3 heads and loss (builder/moco.py of the reference; ser-reference.md §2.1, §2.3) ---
def build_mlp(num_layers, input_dim, mlp_dim, output_dim, last_bn=True):
    """MoCo-v3 _build_mlp: Linear(no bias) [BN, ReLU] ... Linear(no bias) [BN(affine=False)]."""
    mlp = []
    for l in range(num_layers):
        dim1 = input_dim if l == 0 else mlp_dim
        dim2 = output_dim if l == num_layers - 1 else mlp_dim
        mlp.append(nn.Linear(dim1, dim2, bias=False))
        if l < num_layers - 1:
            mlp.append(nn.BatchNorm1d(dim2))
            mlp.append(nn.ReLU(inplace=True))
        elif last_bn:
            mlp.append(nn.BatchNorm1d(dim2, affine=False))
    return nn.Sequential(*mlp)


def moco_ctr(q, k, T):
    """contrastive_loss of builder/moco.py on the whole global batch (keys are constants)."""
    q = F.normalize(q, dim=1)
    k = F.normalize(k, dim=1).detach()
    logits = torch.einsum("nc,mc->nm", [q, k]) / T
    labels = torch.arange(logits.shape[0], dtype=torch.long)
    return F.cross_entropy(logits, labels) * (2 * T)


def projector_equiv(dim, proj_dim=512):
    """projector_equiv of the erl modes: Conv 1x1 dim->512, GELU, Conv 1x1 512->512, no bias."""
    return nn.Sequential(nn.Conv2d(dim, proj_dim, 1, bias=False), nn.GELU(),
                         nn.Conv2d(proj_dim, proj_dim, 1, bias=False))


# --- SER: feature-space group action and patch-wise NT-Xent (ser-reference.md §2.7-2.8) -------
def rel_action(z, ga, gb):
    """Moves a map z (1, E, rows_a, cols_a) from view a's grid onto view b's grid.
    g = (rot180, hflip, rot90, gh, gw); view_v = R^r_v S_v F^f_v D^d_v x, hence
    T_ab = R^{r_b} S_b F^{f_a^f_b} D^{d_a^d_b} R^{-r_a}. With f_b = !f_a and d_b = !d_a this is
    the reference's rot90_{k_t}(resize(hflip(rot90_{k_inv+2}(Z))))."""
    da, fa, ra, _, _ = ga
    db, fb, rb, ghb, gwb = gb
    z = torch.rot90(z, (-ra) % 4, dims=[2, 3])
    if da ^ db:
        z = torch.rot90(z, 2, dims=[2, 3])
    if fa ^ fb:
        z = torch.flip(z, dims=[3])
    if tuple(z.shape[-2:]) != (ghb, gwb):
        z = F.interpolate(z, size=(ghb, gwb), mode="bicubic", align_corners=False)
    return torch.rot90(z, rb % 4, dims=[2, 3])


def image_action(x, g, patch):
    """The image action of g on x (B, C, H, W): rot180, hflip, bicubic resize, rot90."""
    d, f, r, gh, gw = g
    if d:
        x = torch.rot90(x, 2, dims=[2, 3])
    if f:
        x = torch.flip(x, dims=[3])
    x = F.interpolate(x, size=(patch * gh, patch * gw), mode="bicubic", align_corners=False)
    return torch.rot90(x, r % 4, dims=[2, 3])


def ntxent(q, k, tokens, tau):
    """Patch-wise NT-Xent as coded (builder/moco.py:953-1018), per direction: anchors are the
    student rows q_j, S_ij = k_i.q_j / tau, same-image other locations masked, sum over i."""
    qn, kn = F.normalize(q, dim=1), F.normalize(k, dim=1)
    S = kn @ qn.t() / tau
    N = S.shape[0]
    mask = torch.ones(N, N, dtype=torch.bool)
    s = 0
    for t in tokens:
        mask[s:s + t, s:s + t] = False
        s += t
    mask |= torch.eye(N, dtype=torch.bool)
    lse = torch.logsumexp(S.masked_fill(~mask, float("-inf")), dim=0)
    return (lse - torch.diagonal(S)).mean()


def ntxent_pair(A, B, tokens, tau):
    """The 2+4-view SER's patch NT-Xent as intended (ser-reference.md §2.10, without the public
    code's bs bug): X = [A; B] (2N rows, A and B student rows of one pair on view 0's grid),
    every row an anchor, its positive the partner row (r +- N), every token of the same image
    but the partner masked (self too), the mean over the 2N anchors."""
    N = A.shape[0]
    X = F.normalize(torch.cat([A, B]), dim=1)
    S = X @ X.t() / tau
    img = torch.repeat_interleave(torch.arange(len(tokens)), torch.tensor(tokens))
    img2 = torch.cat([img, img])
    allowed = img2[:, None] != img2[None, :]
    idx = torch.arange(2 * N)
    pos = torch.cat([idx[N:], idx[:N]])
    allowed[idx, pos] = True
    lse = torch.logsumexp(S.masked_fill(~allowed, float("-inf")), dim=1)
    return (lse - S[idx, pos]).mean()


class MoCoSER(nn.Module):
    """MoCo_ViT + SER of the reference (erl_inv), the SER term with or without gradient."""

    def __init__(self, vit, mlp_dim, dim, T, lam, tau, proj_dim, ser_grad, essl=None):
        """essl: (lambda, hidden, bottleneck) for E-SSL's rotation head (train_essl: Linear,
        LN, ReLU, Linear, LN, ReLU, Linear, LN, Linear to 4 logits, default init), or None."""
        super().__init__()
        self.T, self.lam, self.tau, self.ser_grad = T, lam, tau, ser_grad
        self.essl = essl
        # Layer decoupling (moco.addon_layer): the add-on reads the mean over tokens of the
        # block-cls_layer map after norm_equiv instead of the final [CLS].
        self.addon_pooled = False
        # The 2+4-view SER (ser.local_pairs): per pair k a list over equivariant samples of
        # (view-0 image, view-1 image, g0, g1); every pair, the global one first, student
        # against student with ntxent_pair, the losses summed.
        self.local_pairs = None
        if essl is not None:
            _, H, Bn = essl
            C = vit["dim"]
            self.rotation_head = nn.Sequential(
                nn.Linear(C, H), nn.LayerNorm(H), nn.ReLU(), nn.Linear(H, H), nn.LayerNorm(H),
                nn.ReLU(), nn.Linear(H, Bn), nn.LayerNorm(Bn), nn.Linear(Bn, 4))
        C = vit["dim"]
        self.base_encoder = ViT(**vit)
        self.momentum_encoder = ViT(**vit)
        self.base_encoder.head = build_mlp(3, C, mlp_dim, dim)
        self.momentum_encoder.head = build_mlp(3, C, mlp_dim, dim)
        self.predictor = build_mlp(2, dim, mlp_dim, dim)
        self.projector_equiv = projector_equiv(C, proj_dim)
        self.patch = vit["patch"]
        for p in self.momentum_encoder.parameters():
            p.requires_grad = False

    def addon_features(self, x):
        """What an add-on reads of the student on images x: the final [CLS], or with
        addon_pooled the mean of the block-k map (an extra use of the same function of the same
        weights: autograd sums its gradient with the others)."""
        c, fmap, _ = self.base_encoder(x)
        return fmap.mean(1) if self.addon_pooled else c

    def _proj(self, fmap, g):
        rows, cols = (g[3], g[4]) if g[2] % 2 == 0 else (g[4], g[3])
        x = fmap.reshape(1, rows, cols, -1).permute(0, 3, 1, 2)
        return self.projector_equiv(x)  # (1, E, rows, cols)

    def forward(self, inv0, inv1, eq0, eq1, g0, g1, m, local=()):
        """local: the local views (each (B, 3, s, s), by batch position), extra queries against
        both global keys, the terms summed (the reference's inv_local4 / inv_essl)."""
        with torch.no_grad():  # momentum update before any key (params only, not buffers)
            for pb, pm in zip(self.base_encoder.parameters(), self.momentum_encoder.parameters()):
                pm.data = pm.data * m + pb.data * (1.0 - m)
        inv, eq, gs = [inv0, inv1], [eq0, eq1], [g0, g1]
        qcls, kcls, qmaps, kmaps = [], [], [], []
        for v in range(2):
            rows = [self.base_encoder(inv[v])[0]]
            krows = []
            with torch.no_grad():
                krows.append(self.momentum_encoder(inv[v])[0])
            qm, km = [], []
            for x in eq[v]:
                c, fm, _ = self.base_encoder(x)
                rows.append(c)
                qm.append(fm)
                with torch.no_grad():
                    c, fm, _ = self.momentum_encoder(x)
                krows.append(c)
                km.append(fm)
            qcls.append(torch.cat(rows))
            kcls.append(torch.cat(krows))
            qmaps.append(qm)
            kmaps.append(km)
        lcls = [self.base_encoder(x)[0] for x in local]
        queries = qcls if self.essl is not None else qcls + lcls  # E-SSL: not queries
        p = [self.predictor(self.base_encoder.head(c)) for c in queries]
        with torch.no_grad():
            k = [self.momentum_encoder.head(kcls[v]) for v in range(2)]
        loss_inv = moco_ctr(p[0], k[1], self.T) + moco_ctr(p[1], k[0], self.T)
        for q in p[2:]:
            loss_inv = loss_inv + moco_ctr(q, k[0], self.T) + moco_ctr(q, k[1], self.T)
        self.loss_rot = torch.zeros(())
        if self.essl is not None:  # the 4 rotated views as one batch, view k labelled k
            feats = [self.addon_features(x) for x in local] if self.addon_pooled else lcls
            logits = self.rotation_head(torch.cat(feats))
            labels = torch.arange(4).repeat_interleave(lcls[0].shape[0])
            self.loss_rot = F.cross_entropy(logits, labels)
        rot = self.essl[0] * self.loss_rot if self.essl is not None else 0.0
        if len(eq0) == 0:  # no equivariant sample: the SER term is not in the graph at all
            return loss_inv + rot, loss_inv, torch.zeros(())
        if self.local_pairs is not None:
            pairs = [[(None, None, gs[0][e], gs[1][e]) for e in range(len(eq0))]]
            pairs += self.local_pairs
            loss_equiv = torch.zeros(())
            for p, pair in enumerate(pairs):
                A, Bm, tokens = [], [], []
                for e, (x0, x1, ga, gb) in enumerate(pair):
                    m0 = qmaps[0][e] if p == 0 else self.base_encoder(x0)[1]
                    m1 = qmaps[1][e] if p == 0 else self.base_encoder(x1)[1]
                    pa = self._proj(m0, ga)
                    pb = rel_action(self._proj(m1, gb), gb, ga)  # view 1 onto view 0's grid
                    A.append(pa.permute(0, 2, 3, 1).reshape(-1, pa.shape[1]))
                    Bm.append(pb.permute(0, 2, 3, 1).reshape(-1, pb.shape[1]))
                    tokens.append(A[-1].shape[0])
                A, Bm = torch.cat(A), torch.cat(Bm)
                if not self.ser_grad:
                    A, Bm = A.detach(), Bm.detach()
                loss_equiv = loss_equiv + ntxent_pair(A, Bm, tokens, self.tau)
            if self.ser_grad:
                return loss_inv + self.lam * loss_equiv + rot, loss_inv, loss_equiv
            return loss_inv + self.lam * loss_equiv.detach() + rot, loss_inv, loss_equiv
        L = []
        for w in range(2):  # anchors: student view w; teacher view 1-w moved onto w's grid
            Q, K, tokens = [], [], []
            for e in range(len(eq0)):
                ga, gb = gs[1 - w][e], gs[w][e]
                pq = self._proj(qmaps[w][e], gb)
                pk = rel_action(self._proj(kmaps[1 - w][e], ga), ga, gb)
                Q.append(pq.permute(0, 2, 3, 1).reshape(-1, pq.shape[1]))
                K.append(pk.permute(0, 2, 3, 1).reshape(-1, pk.shape[1]))
                tokens.append(Q[-1].shape[0])
            Q, K = torch.cat(Q), torch.cat(K)
            if not self.ser_grad:
                Q, K = Q.detach(), K.detach()
            L.append(ntxent(Q, K, tokens, self.tau))
        loss_equiv = 0.5 * (L[0] + L[1])
        loss = loss_inv + self.lam * loss_equiv if self.ser_grad else loss_inv + self.lam * loss_equiv.detach()
        return loss + rot, loss_inv, loss_equiv
