"""ser_torch.py — use what ser writes from PyTorch: safetensors files, checkpoints and exported
backbones (`ser export`, docs/export.md). Needs only torch (no timm, no safetensors package;
timm is used when it is installed).

    import ser_torch
    model = ser_torch.load_backbone("backbone.safetensors")   # strict load, eval mode
    cls = model(images)                    # (B, C) final [CLS] embeddings, ser's own forward
    cls, ser_map = model.forward_features(images)   # and the SER map (B, h*w, C), or None
    tensors, meta = ser_torch.load_file("run/ckpt-0000001000.safetensors"), \
        ser_torch.load_metadata("run/ckpt-0000001000.safetensors")

From a shell: `python3 python/ser_torch.py EXPORT [--check]` (--help for more).

The safetensors format (https://github.com/huggingface/safetensors):
    u64 little-endian N | N bytes of UTF-8 JSON header | byte buffer
    {"NAME": {"dtype": "F32", "shape": [2, 3], "data_offsets": [BEGIN, END]}, ...,
     "__metadata__": {"key": "string value"}}
Offsets are relative to the byte buffer, which the tensors cover exactly; data is
little-endian and row-major. save_file lays tensors out by dtype size (largest first, then by
name) and pads the header to a multiple of 8, as the reference writer does.

defines:
    load_file(path), load_metadata(path), save_file(tensors, path, metadata=None), DTYPES
    timm_names(kw)           timm's VisionTransformer parameter names and shapes for kwargs kw
    TimmViT                  a module with exactly those names (used when timm is absent)
    build_vit(meta)          the timm (or TimmViT) model an export's metadata describes
    timm_name_note(meta)     "" when timm_model is timm's name for this very model, else why not
    ser_forward(vit, img, k) ser's forward on such a model: final [CLS], block-k patch map
    SerBackbone, load_backbone(path, strict=True)
"""
import argparse
import json
import os
import struct
import sys

import torch
import torch.nn as nn

if sys.byteorder != "little":
    raise RuntimeError("ser_torch.py assumes a little-endian host")

DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}
_NAMES = {v: k for k, v in DTYPES.items()}
_MAX_HEADER = 100 * 1024 * 1024


def _itemsize(dtype):
    return torch.empty((), dtype=dtype).element_size()


def _tensor_bytes(t):
    """Raw little-endian bytes of t in row-major order (any dtype, any strides, 0-d too)."""
    t = t.detach().to("cpu").contiguous().reshape(-1)
    if t.numel() == 0:
        return b""
    return t.view(torch.uint8).numpy().tobytes()


def save_file(tensors, path, metadata=None):
    """Writes a dict of name -> tensor (and optional str -> str metadata) to path."""
    for name, t in tensors.items():
        if not isinstance(name, str) or name == "__metadata__":
            raise ValueError(f"bad tensor name {name!r}")
        if t.dtype not in _NAMES:
            raise ValueError(f"{name}: unsupported dtype {t.dtype}")
    order = sorted(tensors, key=lambda n: (-_itemsize(tensors[n].dtype), n))
    header, chunks, at = {}, [], 0
    if metadata is not None:
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
            raise ValueError("metadata keys and values must be strings")
        header["__metadata__"] = dict(metadata)
    for name in order:
        t = tensors[name]
        b = _tensor_bytes(t)
        header[name] = {"dtype": _NAMES[t.dtype], "shape": list(t.shape),
                        "data_offsets": [at, at + len(b)]}
        chunks.append(b)
        at += len(b)
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    text += b" " * (-len(text) % 8)
    tmp = f"{path}.tmp.{os.getpid()}"
    with open(tmp, "wb") as fp:
        fp.write(struct.pack("<Q", len(text)))
        fp.write(text)
        for b in chunks:
            fp.write(b)
        fp.flush()
        os.fsync(fp.fileno())
    os.replace(tmp, path)


def _read(path):
    with open(path, "rb") as fp:
        raw = fp.read()
    if len(raw) < 8:
        raise ValueError(f"{path}: shorter than 8 bytes")
    (n,) = struct.unpack("<Q", raw[:8])
    if n == 0 or n > _MAX_HEADER or n > len(raw) - 8:
        raise ValueError(f"{path}: bad header length {n}")
    header = json.loads(raw[8:8 + n].decode("utf-8"))
    if not isinstance(header, dict):
        raise ValueError(f"{path}: header is not a JSON object")
    return header, memoryview(raw)[8 + n:]


def load_metadata(path):
    """The __metadata__ dict of path ({} if absent)."""
    header, _ = _read(path)
    return dict(header.get("__metadata__") or {})


def load_file(path):
    """Reads path into a dict of name -> tensor, validating offsets, sizes and coverage."""
    header, data = _read(path)
    out, spans = {}, []
    for name, info in header.items():
        if name == "__metadata__":
            continue
        dtype = DTYPES.get(info.get("dtype"))
        if dtype is None:
            raise ValueError(f"{path}: {name}: unsupported dtype {info.get('dtype')!r}")
        shape = info["shape"]
        begin, end = info["data_offsets"]
        numel = 1
        for d in shape:
            if not isinstance(d, int) or d < 0:
                raise ValueError(f"{path}: {name}: bad shape {shape}")
            numel *= d
        if not (0 <= begin <= end <= len(data)) or end - begin != numel * _itemsize(dtype):
            raise ValueError(f"{path}: {name}: data_offsets {[begin, end]} do not match "
                             f"shape {shape} x {info['dtype']}")
        spans.append((begin, end, name))
        if numel == 0:
            out[name] = torch.empty(shape, dtype=dtype)
        else:
            buf = bytearray(data[begin:end])  # a writable copy: frombuffer shares memory
            out[name] = torch.frombuffer(buf, dtype=dtype).reshape(shape)
    cursor = 0
    for begin, end, name in sorted(spans):
        if begin != cursor:
            raise ValueError(f"{path}: {name}: hole or overlap at byte {cursor}")
        cursor = end
    if cursor != len(data):
        raise ValueError(f"{path}: {len(data) - cursor} trailing bytes not covered by tensors")
    return out


# --- the backbone ----------------------------------------------------------------------------

class Mlp(nn.Module):
    def __init__(self, dim, hidden):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class Attention(nn.Module):
    def __init__(self, dim, heads):
        super().__init__()
        self.num_heads = heads
        self.scale = (dim // heads) ** -0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=True)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        B, N, C = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, C // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        attn = ((q @ k.transpose(-2, -1)) * self.scale).softmax(dim=-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(B, N, C))


class Block(nn.Module):
    """timm's pre-norm block: x + attn(norm1(x)), then x + mlp(norm2(x)); LayerNorm eps 1e-6."""

    def __init__(self, dim, heads, hidden):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, hidden)

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class PatchEmbed(nn.Module):
    def __init__(self, patch, dim):
        super().__init__()
        self.proj = nn.Conv2d(3, dim, kernel_size=patch, stride=patch)

    def forward(self, x):
        return self.proj(x).flatten(2).transpose(1, 2)


def timm_names(kw):
    """name -> shape of timm's VisionTransformer(**kw) state_dict with num_classes=0,
    global_pool='token', class_token=True, no registers, no layer scale."""
    C, P, D = kw["embed_dim"], kw["patch_size"], kw["depth"]
    H = int(C * kw["mlp_ratio"])
    npatch = (kw["img_size"] // P) ** 2
    out = {
        "cls_token": (1, 1, C),
        "pos_embed": (1, npatch + (0 if kw["no_embed_class"] else 1), C),
        "patch_embed.proj.weight": (C, 3, P, P),
        "patch_embed.proj.bias": (C,),
    }
    for i in range(D):
        b = f"blocks.{i}."
        out.update({b + "norm1.weight": (C,), b + "norm1.bias": (C,),
                    b + "attn.qkv.weight": (3 * C, C), b + "attn.qkv.bias": (3 * C,),
                    b + "attn.proj.weight": (C, C), b + "attn.proj.bias": (C,),
                    b + "norm2.weight": (C,), b + "norm2.bias": (C,),
                    b + "mlp.fc1.weight": (H, C), b + "mlp.fc1.bias": (H,),
                    b + "mlp.fc2.weight": (C, H), b + "mlp.fc2.bias": (C,)})
    out.update({"norm.weight": (C,), "norm.bias": (C,)})
    return out


class TimmViT(nn.Module):
    """The parameters of timm.models.vision_transformer.VisionTransformer, same names."""

    def __init__(self, img_size, patch_size, embed_dim, depth, num_heads, mlp_ratio,
                 no_embed_class, **_):
        super().__init__()
        npatch = (img_size // patch_size) ** 2
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(
            torch.zeros(1, npatch + (0 if no_embed_class else 1), embed_dim))
        self.patch_embed = PatchEmbed(patch_size, embed_dim)
        self.blocks = nn.Sequential(*[Block(embed_dim, num_heads, int(embed_dim * mlp_ratio))
                                      for _ in range(depth)])
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)


def build_vit(meta):
    """The model an export's metadata describes: timm's (timm.create_model(timm_model,
    **timm_kwargs)) when timm is installed, else TimmViT with the same parameter names."""
    kw = json.loads(meta["timm_kwargs"])
    try:
        import timm
    except ImportError:
        return TimmViT(**kw)
    return timm.create_model(meta["timm_model"], pretrained=False, **kw)


def timm_name_note(meta):
    """"" when the export's timm_model is timm's registered name of this very model; otherwise
    what the export says about it (timm_model is then only the closest registered name, e.g.
    vit_tiny_patch16_224 for a 32 px / patch-4 ViT-Ti, and timm_kwargs give the real sizes).
    Exports of older ser versions have no timm_model_exact: the kwargs are compared with the
    name then."""
    if meta.get("timm_model_exact") == "true":
        return ""
    if meta.get("timm_model_note"):
        return meta["timm_model_note"]
    kw = json.loads(meta["timm_kwargs"])
    name = meta.get("timm_model", "")
    if name.endswith(f"_patch{kw['patch_size']}_{kw['img_size']}"):
        return ""
    return (f"no timm name fits this model (patch {kw['patch_size']} at {kw['img_size']} px): "
            f"{name} is the closest; timm.create_model(timm_model, **timm_kwargs) builds it "
            "with the export's sizes")


def ser_forward(vit, img, k):
    """ser's forward on a timm-named ViT (docs/export.md): blocks 1..k on the patch tokens
    with the position embedding, [CLS] (no position embedding) inserted after block k, the
    other blocks, the final norm. k = 0: the baseline layout (timm's standard forward).
    Returns the final [CLS] (B, C) and the block-k patch tokens (B, h*w, C) (None for k = 0)."""
    x = vit.patch_embed(img)
    cls = vit.cls_token.expand(x.shape[0], -1, -1)
    if k == 0:
        x = torch.cat([cls, x], dim=1) + vit.pos_embed
    else:
        x = x + vit.pos_embed
    fmap = None
    for i, blk in enumerate(vit.blocks):
        if k > 0 and i == k:
            fmap = x
            x = torch.cat([cls, x], dim=1)
        x = blk(x)
    return vit.norm(x)[:, 0], fmap


class SerBackbone(nn.Module):
    """An exported ser backbone: .vit (timm names), .k ([CLS] inserted after block k; 0 for the
    baseline layout), .norm_equiv (the SER map's LayerNorm, or None), .meta (the export's
    metadata). forward(img) = the final [CLS]; forward_features(img) = ([CLS], SER map)."""

    def __init__(self, vit, k, meta, norm_equiv=None):
        super().__init__()
        self.vit, self.k, self.meta, self.norm_equiv = vit, k, meta, norm_equiv

    def forward_features(self, img):
        cls, fmap = ser_forward(self.vit, img, self.k)
        smap = self.norm_equiv(fmap) if (fmap is not None and self.norm_equiv is not None) else None
        return cls, smap

    def forward(self, img):
        return self.forward_features(img)[0]


def load_backbone(path, strict=True):
    """Loads a `ser export` file (format ser-timm-vit) into a SerBackbone in eval mode. strict:
    every timm tensor present with its exact shape, nothing unexpected (the ser.* extras are
    taken apart: ser.norm_equiv.* becomes .norm_equiv)."""
    meta = load_metadata(path)
    if meta.get("format") != "ser-timm-vit":
        raise ValueError(f"{path}: not a ser backbone export (format {meta.get('format')!r}; "
                         "`ser export CKPT --out FILE` writes one)")
    tensors = load_file(path)
    kw = json.loads(meta["timm_kwargs"])
    core = {n: v for n, v in tensors.items() if not n.startswith("ser.")}
    if strict:
        want = timm_names(kw)
        got = {n: tuple(v.shape) for n, v in core.items()}
        if got != want:
            diff = sorted(set(got.items()) ^ set(want.items()))[:5]
            raise ValueError(f"{path}: tensors differ from timm's for {kw}: {diff}")
    vit = build_vit(meta)
    vit.load_state_dict(core, strict=strict)
    k = int(meta["ser_cls_after_block"])
    ne = None
    if "ser.norm_equiv.weight" in tensors:
        ne = nn.LayerNorm(kw["embed_dim"], eps=float(meta.get("ser_ln_eps", "1e-6")))
        ne.weight.data.copy_(tensors["ser.norm_equiv.weight"])
        ne.bias.data.copy_(tensors["ser.norm_equiv.bias"])
    return SerBackbone(vit, k, meta, ne).eval()


def main(argv=None):
    ap = argparse.ArgumentParser(
        prog="ser_torch.py",
        description="Loads a `ser export` backbone into PyTorch (strictly, with timm's names) and "
                    "prints what it is; with --check, runs it on random images.")
    ap.add_argument("export", help="a file written by `ser export CKPT --out FILE`")
    ap.add_argument("--check", action="store_true",
                    help="run the forward on 2 random images and print the output shapes")
    a = ap.parse_args(argv)
    try:
        m = load_backbone(a.export)
    except (OSError, ValueError, KeyError, RuntimeError) as e:
        print(f"ser_torch.py: {e}", file=sys.stderr)
        return 1
    kw = json.loads(m.meta["timm_kwargs"])
    n = sum(p.numel() for p in m.vit.parameters())
    print(f"{a.export}: {m.meta.get('ser_method', '?')} backbone, step {m.meta.get('ser_step', '?')}, "
          f"{kw['embed_dim']} wide, {kw['depth']} blocks, {kw['img_size']} px / patch "
          f"{kw['patch_size']}, {n} parameters, [CLS] after block {m.k}"
          f"{'' if m.norm_equiv is None else ', SER map'}")
    note = timm_name_note(m.meta)
    print(f"  timm: {m.meta.get('timm_model', '?')} with timm_kwargs"
          f"{' (' + note + ')' if note else ' (timm registers this very model)'}")
    if a.check:
        with torch.no_grad():
            cls, smap = m.forward_features(torch.randn(2, 3, kw["img_size"], kw["img_size"]))
        print(f"  forward: [CLS] {tuple(cls.shape)}"
              f"{'' if smap is None else f', SER map {tuple(smap.shape)}'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
