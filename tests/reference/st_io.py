"""st_io.py — a minimal safetensors reader/writer using only json, struct and torch.

The `safetensors` package is not available on the Debian machines, so this follows the
format description directly (https://github.com/huggingface/safetensors):

    u64 little-endian N | N bytes of UTF-8 JSON header | byte buffer

    {"NAME": {"dtype": "F32", "shape": [2, 3], "data_offsets": [BEGIN, END]}, ...,
     "__metadata__": {"key": "string value"}}

Offsets are relative to the start of the byte buffer, which the tensors cover exactly.
Data is little-endian and row-major. Like the reference writer, save_file lays tensors out
by dtype size (largest first, then by name) and pads the header with spaces to a multiple of
8 so every tensor is naturally aligned.

defines:
    save_file(tensors, path, metadata=None)
    load_file(path) -> dict[str, torch.Tensor]
    load_metadata(path) -> dict[str, str]
    DTYPES (safetensors name -> torch dtype)
"""
import json
import os
import struct
import sys

import torch

if sys.byteorder != "little":
    raise RuntimeError("st_io.py assumes a little-endian host")

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
