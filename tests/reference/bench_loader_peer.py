#!/usr/bin/env python3
"""The PyTorch peer of `ser bench loader`: torchvision ImageFolder + DataLoader with the
MoCo-v3 two-view policy (the same per-view policy as ser's torchvision semantics), the same
number of worker processes, the same batch, and the same count of images per repeat.

Policy per view (MoCo-v3 main_moco.py augmentation1/augmentation2):
  RandomResizedCrop(img, scale=(crop_min, 1), BILINEAR) -> RandomApply(ColorJitter(0.4, 0.4,
  0.2, 0.1), p=0.8) -> RandomGrayscale(0.2) -> RandomApply(PIL GaussianBlur(sigma~U(0.1, 2)),
  p=1.0 | 0.1) -> RandomApply(Solarize(128), p=0 | 0.2) -> RandomHorizontalFlip ->
  PILToTensor (uint8, as ser ships uint8; MoCo-v3's ToTensor + Normalize would only add
  float work to the peer).

Prints one line per repeat and the median of the images/s (2 views per image).

  /usr/bin/python3 tests/reference/bench_loader_peer.py --data DIR/train --img 224 \
      --workers 2 --batch 64 --steps 10 --repeat 5
"""
import argparse
import random
import statistics
import time

import torch
import torchvision.datasets as datasets
import torchvision.transforms as T
from PIL import ImageFilter, ImageOps


class GaussianBlur:
    """MoCo-v3 moco/loader.py GaussianBlur: PIL's radius-sigma blur."""

    def __init__(self, sigma=(0.1, 2.0)):
        self.sigma = sigma

    def __call__(self, x):
        return x.filter(ImageFilter.GaussianBlur(radius=random.uniform(*self.sigma)))


class Solarize:
    def __call__(self, x):
        return ImageOps.solarize(x)


class TwoCrops:
    def __init__(self, a, b):
        self.a, self.b = a, b

    def __call__(self, x):
        return [self.a(x), self.b(x)]


def view(img, crop_min, p_blur, p_sol):
    ops = [
        T.RandomResizedCrop(img, scale=(crop_min, 1.0)),
        T.RandomApply([T.ColorJitter(0.4, 0.4, 0.2, 0.1)], p=0.8),
        T.RandomGrayscale(p=0.2),
        T.RandomApply([GaussianBlur()], p=p_blur),
    ]
    if p_sol > 0:
        ops.append(T.RandomApply([Solarize()], p=p_sol))
    ops += [T.RandomHorizontalFlip(), T.PILToTensor()]
    return T.Compose(ops)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", required=True, help="ImageFolder split folder (class subfolders)")
    ap.add_argument("--img", type=int, default=224)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--crop-min", type=float, default=0.08)
    args = ap.parse_args()
    torch.set_num_threads(1)
    tf = TwoCrops(view(args.img, args.crop_min, 1.0, 0.0), view(args.img, args.crop_min, 0.1, 0.2))
    ds = datasets.ImageFolder(args.data, tf)
    dl = torch.utils.data.DataLoader(ds, batch_size=args.batch, shuffle=True,
                                     num_workers=args.workers, drop_last=True,
                                     persistent_workers=args.workers > 0)
    need = (args.repeat * args.steps + 1) * args.batch
    assert need <= len(ds), f"dataset too small: {len(ds)} < {need}"
    it = iter(dl)
    next(it)  # warm-up: workers started, first batch ready
    ips = []
    for r in range(args.repeat):
        t0 = time.perf_counter()
        for _ in range(args.steps):
            v = next(it)
            assert v[0][0].dtype == torch.uint8 and v[0][0].shape[-1] == args.img
        dt = time.perf_counter() - t0
        ips.append(args.steps * args.batch / dt)
        print(f"repeat {r}: {ips[-1]:.1f} images/s ({args.steps * args.batch} images, 2 views each)")
    print(f"torchvision peer: img {args.img}, {args.workers} workers, batch {args.batch}: "
          f"median {statistics.median(ips):.1f} images/s")


if __name__ == "__main__":
    main()
