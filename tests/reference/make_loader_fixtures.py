#!/usr/bin/env python3
"""Writes tests/reference/fixtures/loader/loader_ops.bin: per-op fixtures for the data loader.

Every op of the torchvision-semantics policy is run by torchvision 0.14 / PIL 9.4 on small
synthetic images with *given* parameters (crop box, factors, sigma, ...), so the C test compares
the op itself, not the random draws.

File layout (little endian):
  int32 header[256]: magic 20251121, version 1, number of records, rest 0
  each record: int32 rec[16] = {op, in_len_or_w, in_h, out_w, out_h, i0..i4, f0..f3 (float32
  bits), 0, 0}, then the input bytes (JPEG bytes for OP_DECODE, else in_w*in_h*3 RGB), then
  the output bytes (out_w*out_h*3 RGB, HWC).

Run with Debian's python3 (python3-torch, python3-torchvision, python3-pil):
  /usr/bin/python3 tests/reference/make_loader_fixtures.py
"""
import io
import os
import struct

import numpy as np
import torch
import torchvision.transforms.functional as F
from PIL import Image, ImageFilter, ImageOps
from torchvision.transforms import InterpolationMode

MAGIC, VERSION = 20251121, 1
OP_DECODE, OP_RESIZE, OP_BRIGHTNESS, OP_CONTRAST, OP_SATURATION, OP_HUE = 1, 2, 3, 4, 5, 6
OP_GRAY, OP_BLUR, OP_SOLARIZE, OP_JITTER, OP_HFLIP, OP_CENTER = 7, 8, 9, 10, 11, 12
INTERP = {0: InterpolationMode.BILINEAR, 1: InterpolationMode.BICUBIC}

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "loader")


def f32(x):
    """A float that a float32 tensor .item() can produce (torchvision draws float32)."""
    return float(np.float32(x))


def synthetic(w, h, seed):
    """A natural-ish RGB image: smooth gradients, a few blobs, edges and noise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    img = np.zeros((h, w, 3))
    for c in range(3):
        fx, fy, ph = rng.uniform(0.02, 0.2), rng.uniform(0.02, 0.2), rng.uniform(0, 6.28)
        img[..., c] = 128 + 90 * np.sin(fx * x + ph) * np.cos(fy * y)
    for _ in range(4):
        cx, cy, r = rng.uniform(0, w), rng.uniform(0, h), rng.uniform(3, 10)
        col = rng.uniform(0, 255, 3)
        m = (x - cx) ** 2 + (y - cy) ** 2 < r * r
        img[m] = col
    img += rng.normal(0, 12, img.shape)
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8), "RGB")


class Writer:
    def __init__(self):
        self.recs = []

    def add(self, op, inp, out, ints=(), floats=(), in_shape=None):
        ints = list(ints) + [0] * (5 - len(ints))
        floats = list(floats) + [0.0] * (4 - len(floats))
        if op == OP_DECODE:
            in_bytes, in_w, in_h = inp, len(inp), 0
        else:
            a = np.asarray(inp.convert("RGB"), dtype=np.uint8)
            in_bytes, in_w, in_h = a.tobytes(), a.shape[1], a.shape[0]
        o = np.asarray(out.convert("RGB"), dtype=np.uint8)
        hdr = struct.pack("<5i5i4f2i", op, in_w, in_h, o.shape[1], o.shape[0], *ints, *floats,
                          0, 0)
        self.recs.append(hdr + in_bytes + o.tobytes())

    def write(self, path):
        hdr = struct.pack("<256i", MAGIC, VERSION, len(self.recs), *([0] * 253))
        with open(path, "wb") as f:
            f.write(hdr)
            for r in self.recs:
                f.write(r)


def main():
    torch.manual_seed(0)
    os.makedirs(OUT, exist_ok=True)
    w = Writer()
    a = synthetic(48, 40, 1)
    b = synthetic(33, 51, 2)

    # Decoding: PIL's decoder (libjpeg-turbo, islow DCT, fancy upsampling) + convert("RGB").
    for img, mode, kw in [(a, "RGB", dict(quality=90)), (b, "RGB", dict(quality=75, subsampling=0)),
                          (a, "L", dict(quality=85)), (b, "CMYK", dict(quality=92))]:
        buf = io.BytesIO()
        img.convert(mode).save(buf, "JPEG", **kw)
        data = buf.getvalue()
        w.add(OP_DECODE, data, Image.open(io.BytesIO(data)).convert("RGB"))

    # Resized crops through torchvision's own F.resized_crop: crop box (i, j, h, w) -> size.
    for img, (i, j, h, ww), (oh, ow), interp in [
        (a, (3, 5, 30, 37), (24, 24), 0), (a, (3, 5, 30, 37), (24, 24), 1),
        (a, (0, 0, 40, 48), (64, 64), 0), (a, (0, 0, 40, 48), (64, 64), 1),
        (b, (10, 2, 12, 9), (32, 32), 0), (b, (10, 2, 12, 9), (32, 32), 1),
        (b, (1, 1, 50, 31), (7, 9), 0), (b, (1, 1, 50, 31), (7, 9), 1),
        (a, (5, 8, 24, 30), (24, 20), 1), (a, (5, 8, 24, 30), (17, 30), 0),
    ]:
        out = F.resized_crop(img, i, j, h, ww, [oh, ow], INTERP[interp])
        w.add(OP_RESIZE, img, out, ints=(j, i, ww, h, interp))

    for f in [0.6, 0.8734, 1.0, 1.2345, 1.4]:
        w.add(OP_BRIGHTNESS, a, F.adjust_brightness(a, f32(f)), floats=(f32(f),))
        w.add(OP_CONTRAST, b, F.adjust_contrast(b, f32(f)), floats=(f32(f),))
    for f in [0.8, 0.9321, 1.0, 1.1111, 1.2]:
        w.add(OP_SATURATION, a, F.adjust_saturation(a, f32(f)), floats=(f32(f),))
    for f in [-0.1, -0.0537, -0.001, 0.0, 0.003, 0.0479, 0.1]:
        w.add(OP_HUE, b, F.adjust_hue(b, f32(f)), floats=(f32(f),))
        w.add(OP_HUE, a, F.adjust_hue(a, f32(f)), floats=(f32(f),))
    w.add(OP_GRAY, a, F.rgb_to_grayscale(a, num_output_channels=3))
    w.add(OP_GRAY, b, F.rgb_to_grayscale(b, num_output_channels=3))
    # MoCo-v3's GaussianBlur: PIL ImageFilter.GaussianBlur(radius=sigma), sigma ~ U(0.1, 2).
    for s in [0.1, 0.3712, 0.77, 1.0, 1.5031, 2.0]:
        w.add(OP_BLUR, a, a.filter(ImageFilter.GaussianBlur(radius=f32(s))), floats=(f32(s),))
        w.add(OP_BLUR, b, b.filter(ImageFilter.GaussianBlur(radius=f32(s))), floats=(f32(s),))
    w.add(OP_SOLARIZE, a, ImageOps.solarize(a, 128), ints=(128,))
    w.add(OP_HFLIP, b, F.hflip(b))
    # Full ColorJitter with a given op order and factors, as ColorJitter.forward applies them.
    for order, fac in [((0, 1, 2, 3), (1.3, 0.7, 1.15, 0.05)), ((3, 2, 1, 0), (0.65, 1.38, 0.85, -0.08)),
                       ((1, 3, 0, 2), (1.05, 1.2, 1.19, -0.02))]:
        fac = [f32(x) for x in fac]
        img = b
        for k in order:
            img = [F.adjust_brightness, F.adjust_contrast, F.adjust_saturation, F.adjust_hue][k](img, fac[k])
        w.add(OP_JITTER, b, img, ints=order, floats=fac)

    # EquiMod's x_0: Resize(round(side * 256 / 224)) on the shorter side, then CenterCrop(side).
    for img, side, interp in [(a, 24, 0), (a, 24, 1), (b, 28, 0), (b, 16, 1), (a, 35, 0)]:
        out = F.center_crop(F.resize(img, round(side * 256 / 224), INTERP[interp]), [side, side])
        w.add(OP_CENTER, img, out, ints=(side, interp))

    path = os.path.join(OUT, "loader_ops.bin")
    w.write(path)
    print(f"wrote {path}: {len(w.recs)} records, {os.path.getsize(path)} bytes")


if __name__ == "__main__":
    main()
