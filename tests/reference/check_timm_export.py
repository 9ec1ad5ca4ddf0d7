#!/usr/bin/env python3
"""check_timm_export.py EXPORT EXPECT [FULL]

Checks a `ser export` backbone (docs/export.md) from the PyTorch side:
  1. builds timm's VisionTransformer from the file's metadata (timm.create_model(timm_model,
     **timm_kwargs)) when `import timm` works; otherwise an equivalent module with timm's exact
     parameter names (python/ser_torch.py's TimmViT; Debian has no timm). Either way the
     parameter names and shapes must be exactly timm's for those kwargs (ser_torch.timm_names);
  2. load_state_dict(strict=True) of every exported tensor except the ser.* extras;
  3. runs the documented forward (ser_forward: blocks[:k] on the patches, [CLS] concatenated,
     blocks[k:], final norm) in float64 on EXPECT's __test__.img and compares the final [CLS]
     with ser's own (__test__.cls) and, with the extras, the SER map (__test__.map);
  4. with FULL (`ser export --full`): loads it into the reference model of the method
     (ser_ref.MoCoSER, ser_ref_dino.DINOSER, ser_ref_barlow.BarlowSER) with strict=True and
     checks that its student backbone is bitwise the exported one.
  5. python/ser_torch.py's load_backbone (what users call) gives the same [CLS] and SER map;
  6. timm_model is timm's name of this very model, or flagged (timm_model_exact = false) with a
     note (ser_torch.timm_name_note) naming the real patch and image size.
Exit status 0 on success. Used by tests/test_backbone.c."""
import configparser
import json
import os
import sys

import torch
import torch.nn as nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "python"))
from ser_torch import build_vit, load_file, load_metadata, ser_forward, timm_name_note, timm_names  # noqa: E402,E501


def close(name, got, ref):
    err = (got - ref).abs()
    tol = 1e-5 * ref.abs().max() + 1e-4 * ref.abs()
    bad = (err > tol).sum().item()
    print(f"  {name}: max_abs_err={err.max().item():.3g} mismatches={bad}")
    return bad == 0


def check_full(full_path, exported):
    from ser_ref import MoCoSER
    from ser_ref_barlow import BarlowSER
    from ser_ref_dino import DINOSER

    t = load_file(full_path)
    meta = load_metadata(full_path)
    assert meta["format"] == "ser-full-state", meta.get("format")
    assert not any(n.startswith(("optimizer.", "train.")) for n in t), "optimizer state exported"
    ini = configparser.ConfigParser(inline_comment_prefixes=(";",))
    ini.read_string(meta["config"])
    kw = json.loads(load_metadata(sys.argv[1])["timm_kwargs"])
    k = int(load_metadata(sys.argv[1])["ser_cls_after_block"])
    vit = dict(img_size=kw["img_size"], patch=kw["patch_size"], dim=kw["embed_dim"],
               depth=kw["depth"], heads=kw["num_heads"],
               hidden=int(kw["embed_dim"] * kw["mlp_ratio"]), cls_layer=k or kw["depth"])
    g = lambda s, key: ini.get(s, key)  # noqa: E731
    ser_on = ini.getboolean("ser", "enabled")
    ser_grad = g("ser", "grad") == "on"
    method = meta["ser_method"]
    if method == "moco":
        m = MoCoSER(vit, int(g("moco", "mlp_dim")), int(g("moco", "dim")),
                    float(g("moco", "temperature")), float(g("ser", "lambda")),
                    float(g("ser", "tau")), int(g("ser", "proj_dim")), ser_grad)
        prefix = "base_encoder."
        if not ser_on:
            del m.projector_equiv
    elif method == "dino":
        m = DINOSER(vit, int(g("dino", "out_dim")), int(g("dino", "hidden_dim")),
                    int(g("dino", "bottleneck_dim")), ini.getboolean("dino", "norm_last_layer"),
                    float(g("dino", "student_temp")), float(g("dino", "center_momentum")),
                    float(g("ser", "lambda")), float(g("ser", "tau")), int(g("ser", "proj_dim")),
                    ser_grad)
        prefix = "student.backbone."
        if not ser_on:
            del m.student.projector_equiv, m.teacher.projector_equiv
    else:
        m = BarlowSER(vit, int(g("barlow", "proj_dim")), float(g("barlow", "lambda_offdiag")),
                      float(g("ser", "lambda")), float(g("ser", "tau")),
                      int(g("ser", "proj_dim")), ser_grad,
                      g("ser", "symmetric") == "true")  # auto: one direction (the reference)
        prefix = "backbone."
        if not ser_on:
            del m.projector_equiv
    m.load_state_dict(t, strict=True)
    sd = m.state_dict()
    for n, v in t.items():
        assert sd[n].dtype == v.dtype and torch.equal(sd[n], v), n
    for n, v in exported.items():
        src = prefix + (n[len("ser."):] if n.startswith("ser.") else n)
        assert torch.equal(t[src], v), f"{n} != full state's {src}"
    print(f"  full state: {len(t)} tensors load into the reference {method} model "
          f"(strict=True); the student backbone is the export")
    return True


def main(path, expect_path, full_path=None):
    meta = load_metadata(path)
    assert meta["format"] == "ser-timm-vit", meta.get("format")
    tensors = load_file(path)
    model = build_vit(meta)
    kw = json.loads(meta["timm_kwargs"])
    how = "timm" if type(model).__name__ != "TimmViT" else "timm-equivalent module (no timm installed)"
    k = int(meta["ser_cls_after_block"])
    assert kw["no_embed_class"] == (k > 0), (kw, k)
    # timm_model is timm's name of this very model, or the export says it is only the closest
    # and what the real sizes are (a 16 px / patch-4 model is no vit_tiny_patch16_224).
    note = timm_name_note(meta)
    exact = meta["timm_model"].endswith(f"_patch{kw['patch_size']}_{kw['img_size']}")
    assert meta["timm_model_exact"] == ("true" if exact and not note else "false"), meta
    assert exact or (f"patch {kw['patch_size']} at {kw['img_size']} px" in note and
                     meta["timm_model"] in note), (meta["timm_model"], note)
    want = timm_names(kw)
    extras = {n: v for n, v in tensors.items() if n.startswith("ser.")}
    listed = set(filter(None, meta["ser_extras"].split(",")))
    assert set(extras) == listed, (sorted(extras), sorted(listed))
    core = {n: v for n, v in tensors.items() if not n.startswith("ser.")}
    got_shapes = {n: tuple(v.shape) for n, v in core.items()}
    assert got_shapes == want, sorted(set(got_shapes.items()) ^ set(want.items()))[:5]
    sd_shapes = {n: tuple(v.shape) for n, v in model.state_dict().items()}
    assert sd_shapes == want, sorted(set(sd_shapes.items()) ^ set(want.items()))[:5]
    model.load_state_dict(core, strict=True)
    model = model.double().eval()
    print(f"export {os.path.basename(path)}: {len(core)} timm tensors + {len(extras)} ser.* "
          f"extras, strict load into {how}, [CLS] after block {k}")
    exp = load_file(expect_path)
    with torch.no_grad():
        cls, fmap = ser_forward(model, exp["__test__.img"].double(), k)
    ok = close("final [CLS]", cls, exp["__test__.cls"].double())
    if k > 0:
        ln = nn.LayerNorm(kw["embed_dim"], eps=1e-6).double()
        ln.weight.data.copy_(extras["ser.norm_equiv.weight"])
        ln.bias.data.copy_(extras["ser.norm_equiv.bias"])
        with torch.no_grad():
            ok &= close("SER map (ser.norm_equiv)", ln(fmap), exp["__test__.map"].double())
    from ser_torch import load_backbone
    user = load_backbone(path).double()
    with torch.no_grad():
        ucls, umap = user.forward_features(exp["__test__.img"].double())
    ok &= close("ser_torch.load_backbone [CLS]", ucls, exp["__test__.cls"].double())
    if k > 0:
        ok &= close("ser_torch.load_backbone SER map", umap, exp["__test__.map"].double())
    if full_path:
        ok &= check_full(full_path, tensors)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:4]))
