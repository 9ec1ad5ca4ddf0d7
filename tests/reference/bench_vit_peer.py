#!/usr/bin/env python3
"""PyTorch peer of `ser bench vit`: the same ViT (ser_ref.ViT, SER layout, float32), the same
batch, image size and thread count; forward + backward of sum(cls*dcls) + sum(map*dmap).
Prints one JSON line like `ser bench vit --json`."""
import argparse
import json
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from ser_ref import ViT  # noqa: E402

PRESETS = {"vit_tiny": (192, 3), "vit_small": (384, 6), "vit_base": (768, 12)}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="vit_small")
    ap.add_argument("--img", type=int, default=224)
    ap.add_argument("--patch", type=int, default=16)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--cls-layer", type=int, default=3)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    dim, heads = PRESETS[a.model]
    m = ViT(a.img, a.patch, dim, 12, heads, 4 * dim, a.cls_layer)
    x = torch.randn(a.batch, 3, a.img, a.img)
    g = a.img // a.patch
    dcls = torch.randn(a.batch, dim)
    dmap = torch.randn(a.batch, g * g, dim) * 1e-3
    times, tf = [], []
    for r in range(a.runs + 1):
        t0 = time.perf_counter()
        cls, fmap, _ = m(x)
        t1 = time.perf_counter()
        m.zero_grad(set_to_none=False)
        loss = (cls * dcls).sum() + ((fmap * dmap).sum() if fmap is not None else 0)
        loss.backward()
        t2 = time.perf_counter()
        if r > 0:
            times.append(t2 - t0)
            tf.append(t1 - t0)
    med = statistics.median(times)
    print(json.dumps({"bench": "vit_peer", "impl": f"pytorch {torch.__version__}",
                      "model": a.model, "img": a.img, "patch": a.patch, "batch": a.batch,
                      "threads": a.threads, "runs": a.runs, "median_step_s": med,
                      "median_forward_s": statistics.median(tf),
                      "images_per_s": a.batch / med}))


if __name__ == "__main__":
    main()
