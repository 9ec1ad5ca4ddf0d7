"""PyTorch reference of ser's EquiMod add-on on MoCo-v3 (common/objectives/ser_equimod.c).

EquiMod as the reference's MoCo.equimod computes it (ser-reference.md §5; builder/moco.py
`equimod`): y_t = cat[proj(CLS x_1), proj(CLS x_2)] (one projector call per view, so one
BatchNorm batch each), y_0 = proj(CLS x_0) duplicated, p = proj_head_t(standardised vectors of
x_1; of x_2), yt_hat = predictor_eq(cat[y_0, p]), loss_equiv = 1/2 [ctr_tau(y_t, yt_hat) +
ctr_tau(yt_hat, y_t)] where the second argument is a constant (the reference's gathered keys),
and loss = loss_inv + lambda_ser * loss_ser + lambda * loss_equiv.

The projector is the reference's `projector_equiv` under the name `projector_equimod` (ser's SER
projector is `projector_equiv`). The 18-dim vector is standardised by ser's fixed map
(`standardise`), not by the reference's dataset constants p_mean / p_std.
"""
import os
import sys

import torch
import torch.nn as nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from ser_ref import MoCoSER, build_mlp, moco_ctr  # noqa: E402

VIEW_PARAMS = 21


def standardise(vp):
    """ser_equimod_standardise: vp (..., 21) the views' parameters -> (..., 18)."""
    jit, blur = vp[..., 5] != 0, vp[..., 15] != 0
    H, W = vp[..., 18], vp[..., 19]
    z = torch.zeros_like(vp[..., 0])
    cols = [vp[..., 0] / H, vp[..., 1] / W, vp[..., 2] / H, vp[..., 3] / W, vp[..., 4], vp[..., 5]]
    for k in range(4):  # op order; the identity order when jitter was not applied
        cols.append(torch.where(jit, vp[..., 6 + k], z + k) / 3)
    for k, rng, c in ((10, 0.4, 1), (11, 0.4, 1), (12, 0.2, 1), (13, 0.1, 0)):
        cols.append(torch.where(jit, (vp[..., k] - c) / rng, z))
    cols += [vp[..., 14], vp[..., 15], torch.where(blur, vp[..., 16] / 2, z), vp[..., 17]]
    return torch.stack(cols, dim=-1)


class MoCoEquiMod(MoCoSER):
    """MoCoSER (MoCo-v3 + SER) with EquiMod's modules and loss."""

    def __init__(self, vit, mlp_dim, dim, T, lam, tau, proj_dim, ser_grad, equimod):
        """equimod: (lambda, temperature, proj_dim, hidden) of the [equimod] section."""
        super().__init__(vit, mlp_dim, dim, T, lam, tau, proj_dim, ser_grad)
        self.eq_lambda, self.eq_tau, D, H = equimod
        C = vit["dim"]
        H = H or C
        self.projector_equimod = build_mlp(3, C, H, D)
        self.proj_head_t = nn.Sequential(nn.Linear(18, D, bias=False), nn.BatchNorm1d(D))
        self.predictor_eq = nn.Sequential(nn.Linear(2 * D, D, bias=False),
                                          nn.BatchNorm1d(D, affine=False))

    def forward(self, inv0, inv1, eq0, eq1, g0, g1, m, x0, vparams):
        """x0 (B, 3, s, s): the centre views by batch position; vparams (B, 2, 21)."""
        loss, loss_inv, loss_equiv = super().forward(inv0, inv1, eq0, eq1, g0, g1, m)
        # The student's final [CLS] of the global views by position (invariant then
        # equivariant), as MoCoSER computes them: the same function of the same weights, so its
        # gradient adds to MoCoSER's.
        inv, eq = [inv0, inv1], [eq0, eq1]
        qcls = [torch.cat([self.base_encoder(inv[v])[0]] + [self.base_encoder(x)[0] for x in eq[v]])
                for v in range(2)]
        y1 = self.projector_equimod(qcls[0])
        y2 = self.projector_equimod(qcls[1])
        yt = torch.cat([y1, y2])
        y0 = self.projector_equimod(self.base_encoder(x0)[0])
        y0 = torch.cat([y0, y0])
        p = self.proj_head_t(standardise(torch.cat([vparams[:, 0], vparams[:, 1]])))
        yt_hat = self.predictor_eq(torch.cat([y0, p], dim=1))
        self.loss_equimod = 0.5 * (moco_ctr(yt, yt_hat, self.eq_tau) + moco_ctr(yt_hat, yt, self.eq_tau))
        with torch.no_grad():
            a = nn.functional.normalize(yt_hat, dim=1) @ nn.functional.normalize(yt, dim=1).t()
            self.top1 = (a.argmax(dim=1) == torch.arange(a.shape[0])).double().mean()
        return loss + self.eq_lambda * self.loss_equimod, loss_inv, loss_equiv
