#!/usr/bin/env python3
"""Writes the AugSelf fixtures (tests/reference/fixtures/moco_augself*.safetensors): one whole
MoCo-v3 + SER + AugSelf forward/backward on make_fixtures.moco_case's tiny model and batch, with
the global views' parameters (vparams, (8, 2, 21)) as an input. Checked by tests/test_moco.c.

make_fixtures.moco_case builds the model, the batch, the gradients and the state after the
step; here its model class is MoCoAugSelf (ser_ref_augself.py) and the file gets the vparams,
the two MSEs and the "augself" metadata ("crop,color,hidden,mirror_typo") besides.
Run with Debian's python3-torch:  /usr/bin/python3 tests/reference/make_augself_fixtures.py
"""
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import make_fixtures  # noqa: E402
from ser_ref_augself import MoCoAugSelf  # noqa: E402
from st_io import save_file  # noqa: E402

VIEW_PARAMS = 21


def vparams(B, seed):
    """Realistic view parameters (the loader's layout, common/nn/ser_engine.h): RandomResizedCrop
    boxes inside sources of various sizes (scale 0.2-1, ratio 3/4-4/3), flips, jitter on (p .8)
    with MoCo-v3's ranges and a random op order, off with drawn-looking factors that must be
    ignored, grayscale, blur and sigma, solarize and its threshold. Every value is exact in
    float32. Flips are forced to differ within some pairs (the mirror_typo case needs them)."""
    g = torch.Generator().manual_seed(seed)

    def u(lo, hi):
        return lo + (hi - lo) * torch.rand((), generator=g).item()

    vp = torch.zeros(B, 2, VIEW_PARAMS, dtype=torch.float64)
    for n in range(B):
        H, W = float(int(u(40, 300))), float(int(u(40, 300)))
        for v in range(2):
            area = H * W * u(0.2, 1.0)
            ratio = u(0.75, 4 / 3)
            h = min(H, max(1.0, float(round((area / ratio) ** 0.5))))
            w = min(W, max(1.0, float(round((area * ratio) ** 0.5))))
            i, j = float(int(u(0, H - h + 1))), float(int(u(0, W - w + 1)))
            jitter = float(u(0, 1) < 0.8) if n != 0 else float(v == 0)
            p = vp[n, v]
            p[0:4] = torch.tensor([i, j, h, w])
            p[4] = float((n + v) % 2 == 0) if n < 4 else float(u(0, 1) < 0.5)
            p[5] = jitter
            p[6:10] = torch.randperm(4, generator=g).double()
            p[10:13] = torch.tensor([u(0.6, 1.4), u(0.6, 1.4), u(0.6, 1.4)])
            p[13] = u(-0.1, 0.1)
            p[14], p[15], p[16] = float(u(0, 1) < 0.2), float(u(0, 1) < 0.5), u(0.1, 2.0)
            p[17], p[18], p[19], p[20] = float(u(0, 1) < 0.2), H, W, 128 / 255
    return vp.float().double()


def augself_case(name, seed, augself, ser_grad=True, pooled=False):
    """make_fixtures.moco_case (SER gradient ser_grad, seed) with AugSelf: augself = (crop,
    color, hidden, mirror_typo); pooled: on the pooled block-2 maps (layer decoupling)."""
    made = {}

    def model(vit, *args, **kw):  # moco_case's MoCoSER(...), as MoCoAugSelf
        m = MoCoAugSelf(vit, *args, augself=augself, **kw)
        m.vparams = vparams(8, seed)
        made["m"] = m
        return m

    def save(t, path, metadata):  # moco_case's save_file, with AugSelf's inputs and values
        m = made["m"]
        t = dict(t, vparams=m.vparams.float(), loss_crop=m.loss_crop.reshape(1).float(),
                 loss_color=m.loss_color.reshape(1).float())
        metadata = dict(metadata, augself=",".join(str(int(x)) if isinstance(x, bool) else str(x)
                                                   for x in augself))
        save_file(t, path, metadata=metadata)

    saved = make_fixtures.MoCoSER, make_fixtures.save_file, make_fixtures.step_files
    make_fixtures.MoCoSER, make_fixtures.save_file = model, save
    make_fixtures.step_files = lambda *a: None  # ser step's files stay moco_ser_on's
    try:
        make_fixtures.moco_case(name, ser_grad, seed, pooled=pooled)
    finally:
        make_fixtures.MoCoSER, make_fixtures.save_file, make_fixtures.step_files = saved


def main():
    os.makedirs(make_fixtures.OUT, exist_ok=True)
    augself_case("moco_augself", 304, (0.5, 0.5, 20, False))
    augself_case("moco_augself_typo", 305, (0.7, 0.3, 12, True))
    # Decoupled, with the SER term's gradient off: norm_equiv's gradient is the add-on's alone.
    augself_case("moco_augself_pooled", 307, (0.5, 0.5, 20, False), ser_grad=False, pooled=True)
    print("fixtures written to", make_fixtures.OUT)


if __name__ == "__main__":
    main()
