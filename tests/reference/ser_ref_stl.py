"""PyTorch reference of ser's STL add-on on MoCo-v3 (common/objectives/ser_stl.c).

STL as ser-reference.md §5 describes the reference's MoCo.stl / EquiTrans, on the student's final
[CLS] rows c0, c1 of the two global views (B rows by batch position; positions 2k and 2k+1 are
a pair that shares its augmentation in the reference's loader):
  y122 = trans_backbone(cat[c0, c1]), y221 = trans_backbone(cat[c1, c0])
  y_trans1 = cat[y122[even], y221[even]], y_trans2 = cat[y122[odd], y221[odd]]
  s = the pairwise swap 2k <-> 2k+1
  yh1 = W(y221[s]) c1, yh2 = W(y122[s]) c0, W(t) = hypernet(t).reshape(C, C)
  z = cat[proj(c0), proj(c1)], zh = cat[proj(yh1), proj(yh2)]
  equi = ctr(z, zh) + ctr(zh, z); trans = ctr(tp(y_trans1), tp(y_trans2)) + the reverse
with ctr at tau = temperature (x 2 tau) and a constant second argument, and
loss = loss_inv + lambda_ser * loss_ser + lambda_equi * equi + lambda_trans * trans.
Each module call is its own BatchNorm batch, in ser_stl.c's order (trans_backbone twice, the
projector on c0, c1, yh1, yh2, trans_projector on y_trans1, y_trans2).

The projector is the reference's `projector_equiv` under the name `projector_stl` (ser's SER
projector is `projector_equiv`).
"""
import os
import sys

import torch
import torch.nn as nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from ser_ref import MoCoSER, build_mlp, moco_ctr  # noqa: E402


class MoCoSTL(MoCoSER):
    """MoCoSER (MoCo-v3 + SER) with STL's modules and loss."""

    def __init__(self, vit, mlp_dim, dim, T, lam, tau, proj_dim, ser_grad, stl):
        """stl: (lambda_equi, lambda_trans, temperature, trans_dim, proj_hidden, proj_dim)."""
        super().__init__(vit, mlp_dim, dim, T, lam, tau, proj_dim, ser_grad)
        self.le, self.lt, self.st_tau, Tt, P, D = stl
        C = vit["dim"]
        self.C = C
        self.trans_backbone = build_mlp(2, 2 * C, Tt, Tt, last_bn=False)
        self.projector_stl = build_mlp(2, C, P, D, last_bn=False)
        self.trans_projector = build_mlp(2, Tt, Tt, Tt, last_bn=False)
        self.hypernet = nn.Linear(Tt, C * C, bias=False)

    def W(self, t, r):
        """W(t) r per row: W(t) = hypernet(t) reshaped (C, C), row-major."""
        w = self.hypernet(t).reshape(-1, self.C, self.C)
        return torch.bmm(w, r.unsqueeze(-1)).squeeze(-1)

    def forward(self, inv0, inv1, eq0, eq1, g0, g1, m):
        loss, loss_inv, loss_equiv = super().forward(inv0, inv1, eq0, eq1, g0, g1, m)
        inv, eq = [inv0, inv1], [eq0, eq1]
        c0, c1 = [torch.cat([self.base_encoder(inv[v])[0]] + [self.base_encoder(x)[0] for x in eq[v]])
                  for v in range(2)]
        B = c0.shape[0]
        y122 = self.trans_backbone(torch.cat([c0, c1], dim=1))
        y221 = self.trans_backbone(torch.cat([c1, c0], dim=1))
        s = torch.arange(B) ^ 1
        yh1 = self.W(y221[s], c1)
        yh2 = self.W(y122[s], c0)
        z = torch.cat([self.projector_stl(c0), self.projector_stl(c1)])
        zh = torch.cat([self.projector_stl(yh1), self.projector_stl(yh2)])
        yt1 = torch.cat([y122[0::2], y221[0::2]])
        yt2 = torch.cat([y122[1::2], y221[1::2]])
        p1, p2 = self.trans_projector(yt1), self.trans_projector(yt2)
        self.equi = moco_ctr(z, zh, self.st_tau) + moco_ctr(zh, z, self.st_tau)
        self.trans = moco_ctr(p1, p2, self.st_tau) + moco_ctr(p2, p1, self.st_tau)
        return loss + self.le * self.equi + self.lt * self.trans, loss_inv, loss_equiv
