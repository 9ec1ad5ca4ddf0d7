"""PyTorch reference of ser's Barlow Twins + SER objective (builder/barlowtwins.py of
aitrics-chris/SER, BarlowTwins.forward_equiv and train_erl; ser-reference.md §4.2).

The public code crashes on its first step (ser-reference.md §0.2: it unpacks two results from
the one-argument concat_all_gather). This module is what it means, with the fixes:
- the whole global batch on one process: the two-argument all-gather returns every rank's
  tokens, SyncBN and the all_reduce of c make every statistic global, so one process holding
  the whole batch computes the same loss;
- ser_grad: on (the paper) lets the SER loss backpropagate into projector_equiv and both
  student maps; off (the code even once fixed: the gather is no_grad) gives its value only;
- symmetric: off is the code (one direction, L0: keys = student map of view 0 moved onto view
  1's grid, anchors = student map of view 1); on adds the other direction and averages.

Module names follow BarlowTwins: backbone.*, projector_equiv.*, projector.*, bn.* (buffers).
"""
import torch
import torch.nn as nn

from ser_ref import ViT, ntxent, projector_equiv, rel_action


def off_diagonal(x):
    """builder/barlowtwins.py off_diagonal: the flattened off-diagonal elements."""
    n, m = x.shape
    assert n == m
    return x.flatten()[:-1].view(n - 1, n + 1)[:, 1:].flatten()


def build_projector(dim_inv, proj_dim):
    """sizes = [dim_inv, P, P, P]: (Linear no bias, BN, ReLU) x 2, Linear no bias."""
    sizes = [dim_inv, proj_dim, proj_dim, proj_dim]
    layers = []
    for i in range(len(sizes) - 2):
        layers.append(nn.Linear(sizes[i], sizes[i + 1], bias=False))
        layers.append(nn.BatchNorm1d(sizes[i + 1]))
        layers.append(nn.ReLU(inplace=True))
    layers.append(nn.Linear(sizes[-2], sizes[-1], bias=False))
    return nn.Sequential(*layers)


def xcorr_terms(a, b, batch):
    """c = a^T b / batch (a, b already through bn); returns (on_diag, off_diag) unweighted."""
    c = a.T @ b / batch
    on_diag = (torch.diagonal(c) - 1).pow(2).sum()
    off_diag = off_diagonal(c).pow(2).sum()
    return on_diag, off_diag


class BarlowSER(nn.Module):
    def __init__(self, vit, proj_dim, lambd, lam, tau, ser_proj_dim, ser_grad, symmetric):
        super().__init__()
        self.lambd, self.lam, self.tau = lambd, lam, tau
        self.ser_grad, self.symmetric = ser_grad, symmetric
        C = vit["dim"]
        self.backbone = ViT(**vit)
        self.projector_equiv = projector_equiv(C, ser_proj_dim)
        self.projector = build_projector(C, proj_dim)
        self.bn = nn.BatchNorm1d(proj_dim, affine=False)

    def _proj(self, fmap, g):
        rows, cols = (g[3], g[4]) if g[2] % 2 == 0 else (g[4], g[3])
        x = fmap.reshape(1, rows, cols, -1).permute(0, 3, 1, 2)
        return self.projector_equiv(x)  # (1, E, rows, cols)

    def forward(self, inv0, inv1, eq0, eq1, g0, g1):
        """Returns loss, loss_inv, loss_equiv, on_diag, off_diag."""
        inv, eq, gs = [inv0, inv1], [eq0, eq1], [g0, g1]
        cls, maps = [], []
        for v in range(2):  # forward_inv_ on the invariant rows, forward_equiv on the others
            rows, ms = [self.backbone(inv[v])[0]], []
            for x in eq[v]:
                c, fm, _ = self.backbone(x)
                rows.append(c)
                ms.append(fm)
            cls.append(torch.cat(rows))
            maps.append(ms)
        B = cls[0].shape[0]
        z1 = self.projector(cls[0])
        z2 = self.projector(cls[1])
        on_diag, off_diag = xcorr_terms(self.bn(z1), self.bn(z2), B)
        loss_inv = on_diag + self.lambd * off_diag
        L = []
        for w in ([1, 0] if self.symmetric else [1]):
            # anchors: student view w; keys: student view 1-w, projected, moved onto w's grid
            Q, K, tokens = [], [], []
            for e in range(len(eq0)):
                ga, gb = gs[1 - w][e], gs[w][e]
                pq = self._proj(maps[w][e], gb)
                pk = rel_action(self._proj(maps[1 - w][e], ga), ga, gb)
                Q.append(pq.permute(0, 2, 3, 1).reshape(-1, pq.shape[1]))
                K.append(pk.permute(0, 2, 3, 1).reshape(-1, pk.shape[1]))
                tokens.append(Q[-1].shape[0])
            Q, K = torch.cat(Q), torch.cat(K)
            if not self.ser_grad:
                Q, K = Q.detach(), K.detach()
            L.append(ntxent(Q, K, tokens, self.tau))
        loss_equiv = sum(L) / len(L)
        eq_term = loss_equiv if self.ser_grad else loss_equiv.detach()
        loss = loss_inv + self.lam * eq_term
        return loss, loss_inv, loss_equiv, on_diag, off_diag
