"""PyTorch reference of AugSelf on MoCo-v3 + SER (ser-reference.md §5 "AugSelf": the augself
branch's predictors of the two global views' augmentation differences).

defines:
    augself_targets(vparams, mirror_typo) -> (crop, color), each (2B, 4): [d(1,2); d(2,1)]
    augself_predictor(C, hidden)           Linear 2C-H nb, BN, ReLU, Linear H-H nb, BN, ReLU,
                                           Linear H-4 (load_mlp_augself)
    MoCoAugSelf                            MoCoSER + augself_predictor.{crop,color}

vparams is ser's (B, 2, SER_VIEW_PARAMS) layout (common/nn/ser_engine.h): 0-3 crop box i, j, h, w
in source pixels, 4 flip, 5 jitter applied, 10-13 brightness, contrast, saturation factors and
hue shift, 18-19 source H, W.
"""
import os
import sys

import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from ser_ref import MoCoSER  # noqa: E402


def augself_targets(vp, mirror_typo=False):
    """The crop target d(1,2) = [centre1 - centre2 (row, column), h1 - h2, w1 - w2] of the boxes
    normalised by the source size, centre = (i + h/2, j + w/2), the column mirrored when the view
    was flipped (mirror_typo: view 2's centre mirrored with view 1's flip, the augself branch's
    utils:1246-1247); the colour target w1 - w2 with w = ((b-1)/0.8, (c-1)/0.8, (s-1)/0.8,
    hue/0.2), 0 without jitter. Centres are computed once per pair: d(2,1) = -d(1,2)."""
    vp = vp.double()
    H, W = vp[..., 18], vp[..., 19]
    h, w = vp[..., 2] / H, vp[..., 3] / W
    row, col = vp[..., 0] / H + h / 2, vp[..., 1] / W + w / 2
    flip = vp[..., 4] != 0
    mask1 = flip[:, 1] if not mirror_typo else flip[:, 0]
    col0 = torch.where(flip[:, 0], 1 - col[:, 0], col[:, 0])
    col1 = torch.where(mask1, 1 - col[:, 1], col[:, 1])
    box = torch.stack([torch.stack([row[:, 0], col0, h[:, 0], w[:, 0]], 1),
                       torch.stack([row[:, 1], col1, h[:, 1], w[:, 1]], 1)], 1)  # (B, 2, 4)
    wv = torch.stack([(vp[..., 10] - 1) / 0.8, (vp[..., 11] - 1) / 0.8, (vp[..., 12] - 1) / 0.8,
                      vp[..., 13] / 0.2], -1) * (vp[..., 5] != 0).unsqueeze(-1)
    d_crop, d_color = box[:, 0] - box[:, 1], wv[:, 0] - wv[:, 1]
    return torch.cat([d_crop, -d_crop]), torch.cat([d_color, -d_color])


def augself_predictor(C, hidden):
    return nn.Sequential(nn.Linear(2 * C, hidden, bias=False), nn.BatchNorm1d(hidden), nn.ReLU(),
                         nn.Linear(hidden, hidden, bias=False), nn.BatchNorm1d(hidden), nn.ReLU(),
                         nn.Linear(hidden, 4))


class MoCoAugSelf(MoCoSER):
    """MoCoSER + AugSelf: loss = loss_inv + lam * loss_equiv + crop * MSE(tanh(p_crop), t_crop)
    + color * MSE(tanh(p_color), t_color), the predictors on [z1||z2; z2||z1] (one BatchNorm
    batch of 2B rows), z the student's final [CLS] of the global views by batch position.
    augself: (crop, color, hidden, mirror_typo). Set .vparams (B, 2, 21) before the forward."""

    def __init__(self, vit, *args, augself, **kw):
        super().__init__(vit, *args, **kw)
        self.w_crop, self.w_color, hidden, self.mirror_typo = augself
        self.augself_predictor = nn.ModuleDict(
            {"crop": augself_predictor(vit["dim"], hidden),
             "color": augself_predictor(vit["dim"], hidden)})
        self.vparams = None

    def forward(self, inv0, inv1, eq0, eq1, g0, g1, m, local=()):
        loss, loss_inv, loss_equiv = super().forward(inv0, inv1, eq0, eq1, g0, g1, m, local)
        # The student's final [CLS] rows again, or its pooled block-k maps (addon_pooled; the
        # same function of the same weights: autograd sums both uses' gradients as one use would).
        z = [torch.cat([self.addon_features(x) for x in [inv] + list(eq)])
             for inv, eq in ((inv0, eq0), (inv1, eq1))]
        x = torch.cat([torch.cat([z[0], z[1]], 1), torch.cat([z[1], z[0]], 1)])
        t_crop, t_color = augself_targets(self.vparams, self.mirror_typo)
        self.loss_crop = F.mse_loss(torch.tanh(self.augself_predictor["crop"](x)), t_crop)
        self.loss_color = F.mse_loss(torch.tanh(self.augself_predictor["color"](x)), t_color)
        total = self.w_crop * self.loss_crop + self.w_color * self.loss_color
        return loss + total, loss_inv, loss_equiv
