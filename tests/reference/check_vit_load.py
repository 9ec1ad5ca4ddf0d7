#!/usr/bin/env python3
"""Loads a ViT written by ser into the PyTorch reference with load_state_dict(strict=True)
and checks that PyTorch reproduces ser's outputs (stored in the same file under __test__.*).
Exit status 0 on success. Used by tests/test_vit.c."""
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from ser_ref import ViT  # noqa: E402
from st_io import load_file, load_metadata  # noqa: E402


def main(path):
    tensors = load_file(path)
    cfg = dict(kv.split("=") for kv in load_metadata(path)["config"].split())
    cfg = {k: int(v) for k, v in cfg.items()}
    m = ViT(cfg["img_size"], cfg["patch"], cfg["dim"], cfg["depth"], cfg["heads"], cfg["hidden"],
            cfg["cls_layer"]).double()
    state = {k: v for k, v in tensors.items() if not k.startswith("__test__.")}
    m.load_state_dict({k: v.double() for k, v in state.items()}, strict=True)
    with torch.no_grad():
        cls, fmap, _ = m(tensors["__test__.img"].double())
    ok = True
    for name, got, ref in [("cls", tensors["__test__.cls"].double(), cls),
                           ("map", tensors["__test__.map"].double(), fmap)]:
        err = (got - ref).abs()
        tol = 1e-5 * ref.abs().max() + 1e-4 * ref.abs()
        bad = (err > tol).sum().item()
        print(f"torch strict load: {name} max_abs_err={err.max().item():.3g} mismatches={bad}")
        ok &= bad == 0
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
