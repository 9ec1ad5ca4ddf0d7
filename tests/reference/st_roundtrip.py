"""st_roundtrip.py IN OUT — PyTorch side of the safetensors interop test (test_safetensors.c).

Loads IN, written by the C writer with a known deterministic pattern, and checks every value,
dtype, shape and the metadata. Then writes OUT with st_io.save_file (several dtypes, a 0-d,
an empty and a transposed tensor, and metadata with non-ASCII text and quotes), which the C
test reads back and checks. Exits non-zero with a message on the first mismatch.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch  # noqa: E402

from st_io import load_file, load_metadata, save_file  # noqa: E402


def check(cond, what):
    if not cond:
        print(f"st_roundtrip.py: MISMATCH: {what}", file=sys.stderr)
        sys.exit(1)


def expect(t, name, dtype, shape, values):
    check(t.dtype == dtype, f"{name}: dtype {t.dtype}, expected {dtype}")
    check(list(t.shape) == list(shape), f"{name}: shape {list(t.shape)}, expected {list(shape)}")
    want = torch.as_tensor(values, dtype=dtype).reshape(shape)
    check(torch.equal(t, want), f"{name}: values differ:\n{t}\nexpected\n{want}")


def check_c_file(path):
    t = load_file(path)
    meta = load_metadata(path)
    check(meta == {"format": "pt", "producer": "ser test_safetensors"}, f"metadata {meta}")
    want_names = {"pattern.f32", "pattern.f64", "pattern.f16", "pattern.bf16", "pattern.i64",
                  "pattern.i32", "pattern.i16", "pattern.i8", "pattern.u8", "pattern.bool",
                  "scalar", "empty"}
    check(set(t) == want_names, f"tensor names {sorted(t)}")
    # x[i] = i*0.25 - 3 for the float patterns (exact in every float dtype used).
    def pattern(n, dtype):
        return (torch.arange(n, dtype=torch.float64) * 0.25 - 3).to(dtype)

    expect(t["pattern.f32"], "pattern.f32", torch.float32, (3, 5, 7), pattern(105, torch.float32))
    expect(t["pattern.f64"], "pattern.f64", torch.float64, (4, 6), pattern(24, torch.float64))
    expect(t["pattern.f16"], "pattern.f16", torch.float16, (2, 4), pattern(8, torch.float16))
    expect(t["pattern.bf16"], "pattern.bf16", torch.bfloat16, (8,), pattern(8, torch.bfloat16))
    expect(t["pattern.i64"], "pattern.i64", torch.int64, (10,),
           [i * 1000000007 - 5000000000 for i in range(10)])
    expect(t["pattern.i32"], "pattern.i32", torch.int32, (1, 7), [i - 3 for i in range(7)])
    expect(t["pattern.i16"], "pattern.i16", torch.int16, (5,), [i * 1000 - 2000 for i in range(5)])
    expect(t["pattern.i8"], "pattern.i8", torch.int8, (6,), [i * 20 - 50 for i in range(6)])
    expect(t["pattern.u8"], "pattern.u8", torch.uint8, (2, 3, 1), [i * 40 for i in range(6)])
    expect(t["pattern.bool"], "pattern.bool", torch.bool, (5,), [i % 2 == 1 for i in range(5)])
    expect(t["scalar"], "scalar", torch.float32, (), 2.5)
    expect(t["empty"], "empty", torch.float32, (0, 4), [])


def write_torch_file(path):
    tensors = {
        "py.f32": torch.arange(24, dtype=torch.float32).reshape(2, 3, 4) * 0.5 - 1,
        "py.f64": torch.arange(5, dtype=torch.float64) / 3,
        "py.f16": torch.tensor([1.0, -2.0, 65504.0, 2.0 ** -24, 0.333251953125, float("inf")],
                               dtype=torch.float16),
        "py.bf16": torch.tensor([1.0, 3.140625, -0.5, 256.0], dtype=torch.bfloat16),
        "py.i64": torch.tensor([-(2 ** 40), 0, 2 ** 62 + 1], dtype=torch.int64),
        "py.i8": torch.arange(-4, 4, dtype=torch.int8),
        "py.u8": torch.tensor([0, 255, 7], dtype=torch.uint8),
        "py.bool": torch.tensor([True, False, True]),
        "py.scalar": torch.tensor(42.5),
        "py.empty": torch.zeros(0, 3),
        "py.transposed": torch.arange(6, dtype=torch.float32).reshape(2, 3).t(),
    }
    meta = {"producer": "st_roundtrip.py", "torch": torch.__version__,
            "note": 'h\u00e9llo "quoted" \\ back'}
    save_file(tensors, path, metadata=meta)
    # Our own reader must agree with what we wrote.
    back = load_file(path)
    for name, t in tensors.items():
        check(torch.equal(back[name], t), f"self round trip of {name}")
    check(load_metadata(path) == meta, "self round trip of metadata")


def main():
    if len(sys.argv) != 3:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    check_c_file(sys.argv[1])
    write_torch_file(sys.argv[2])
    print(f"st_roundtrip.py: {sys.argv[1]} ok; wrote {sys.argv[2]}")


if __name__ == "__main__":
    main()
