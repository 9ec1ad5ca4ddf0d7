#!/usr/bin/env python3
"""Print the scalars of TensorBoard event files without TensorFlow or TensorBoard.

    python3 tests/reference/read_tfevents.py RUN_DIR_OR_FILE... [--tag TAG]

A directory stands for its files with "tfevents" in the name, in name order (the order
TensorBoard reads them). Prints one tab-separated line per scalar:

    step  wall_time  tag  value

after a "# file ..." line and the file_version. Every record's framing is checked (TFRecord:
u64le length, u32le masked CRC-32C of the length bytes, data, u32le masked CRC-32C of the
data); the protobuf is decoded by hand (Event/Summary/Value of TensorFlow's event.proto and
summary.proto, the subset in proto/tfevent.proto). Scalars written as simple_value (ser,
PyTorch's SummaryWriter, tf.compat.v1) and as rank-0 float tensors (TF2 tf.summary.scalar)
are shown; other summaries (images, histograms...) are counted and skipped. Exit status 0 if
every record was intact, 1 if a CRC failed or a file ends inside a record (the tail of a
file whose writer was killed), 2 on bad usage.
"""
import math
import os
import struct
import sys

# --- CRC-32C (Castagnoli, reflected polynomial 0x82F63B78) and the TFRecord mask ----------------
_TABLE = []
for _i in range(256):
    _c = _i
    for _ in range(8):
        _c = (_c >> 1) ^ 0x82F63B78 if _c & 1 else _c >> 1
    _TABLE.append(_c)


def crc32c(data):
    c = 0xFFFFFFFF
    for b in data:
        c = _TABLE[(c ^ b) & 0xFF] ^ (c >> 8)
    return c ^ 0xFFFFFFFF


def masked_crc(data):
    c = crc32c(data)
    return (((c >> 15) | (c << 17)) + 0xA282EAD8) & 0xFFFFFFFF


assert crc32c(b"123456789") == 0xE3069283  # the standard check value


# --- protobuf wire format ------------------------------------------------------------------------
class DecodeError(Exception):
    pass


def _varint(buf, pos):
    v = shift = 0
    while True:
        if pos >= len(buf):
            raise DecodeError("truncated varint")
        b = buf[pos]
        pos += 1
        v |= (b & 0x7F) << shift
        if not b & 0x80:
            return v, pos
        shift += 7
        if shift > 63:
            raise DecodeError("varint too long")


def fields(buf):
    """Yields (field number, wire type, value) of a message; value is an int (varint), bytes
    (length-delimited, fixed32, fixed64)."""
    pos = 0
    while pos < len(buf):
        key, pos = _varint(buf, pos)
        num, wt = key >> 3, key & 7
        if wt == 0:
            v, pos = _varint(buf, pos)
        elif wt == 1 or wt == 5:
            n = 8 if wt == 1 else 4
            if pos + n > len(buf):
                raise DecodeError("truncated fixed%d" % (8 * n))
            v, pos = buf[pos:pos + n], pos + n
        elif wt == 2:
            n, pos = _varint(buf, pos)
            if pos + n > len(buf):
                raise DecodeError("truncated length-delimited field %d" % num)
            v, pos = buf[pos:pos + n], pos + n
        else:
            raise DecodeError("unsupported wire type %d (field %d)" % (wt, num))
        yield num, wt, v


def _int64(v):
    return v - (1 << 64) if v >= 1 << 63 else v


# TensorProto (tensor.proto): dtype = 1 (DT_FLOAT = 1, DT_DOUBLE = 2), tensor_content = 4,
# float_val = 5, double_val = 6. Returns the value of a rank-0 float tensor, or None.
def _tensor_scalar(buf):
    dtype, content, vals = 0, b"", []
    for num, wt, v in fields(buf):
        if num == 1 and wt == 0:
            dtype = v
        elif num == 4 and wt == 2:
            content = v
        elif num == 5:  # packed (wire type 2) or one fixed32 (5): the same bytes either way
            vals += [x for (x,) in struct.iter_unpack("<f", v)]
        elif num == 6:
            vals += [x for (x,) in struct.iter_unpack("<d", v)]
    if vals:
        return vals[0]
    if dtype == 1 and len(content) == 4:
        return struct.unpack("<f", content)[0]
    if dtype == 2 and len(content) == 8:
        return struct.unpack("<d", content)[0]
    return None


def decode_event(buf):
    """Returns (wall_time, step, file_version or None, [(tag, value or None)])."""
    wall, step, version, values = 0.0, 0, None, []
    for num, wt, v in fields(buf):
        if num == 1 and wt == 1:
            wall = struct.unpack("<d", v)[0]
        elif num == 2 and wt == 0:
            step = _int64(v)
        elif num == 3 and wt == 2:
            version = v.decode("utf-8", "replace")
        elif num == 5 and wt == 2:  # Summary
            for snum, swt, sv in fields(v):
                if snum != 1 or swt != 2:
                    continue
                tag, value = "", None  # Summary.Value
                for vnum, vwt, vv in fields(sv):
                    if vnum == 1 and vwt == 2:
                        tag = vv.decode("utf-8", "replace")
                    elif vnum == 2 and vwt == 5:
                        value = struct.unpack("<f", vv)[0]
                    elif vnum == 8 and vwt == 2:
                        value = _tensor_scalar(vv)
                values.append((tag, value))
    return wall, step, version, values


# --- TFRecord files ------------------------------------------------------------------------------
def records(path):
    """Yields (offset, data) per record; raises DecodeError on a bad CRC or a torn tail."""
    with open(path, "rb") as f:
        buf = f.read()
    pos = 0
    while pos < len(buf):
        if len(buf) - pos < 12:
            raise DecodeError("offset %d: file ends inside a record header" % pos)
        header = buf[pos:pos + 8]
        (length,) = struct.unpack("<Q", header)
        (crc,) = struct.unpack("<I", buf[pos + 8:pos + 12])
        if crc != masked_crc(header):
            raise DecodeError("offset %d: length CRC mismatch" % pos)
        if len(buf) - pos - 12 < length + 4:
            raise DecodeError("offset %d: file ends inside a record of %d bytes" % (pos, length))
        data = buf[pos + 12:pos + 12 + length]
        (crc,) = struct.unpack("<I", buf[pos + 12 + length:pos + 16 + length])
        if crc != masked_crc(data):
            raise DecodeError("offset %d: data CRC mismatch" % pos)
        yield pos, data
        pos += 16 + length


def _fmt(x):
    if x is None:
        return "?"
    if math.isnan(x) or math.isinf(x):
        return str(x)
    return repr(x)


def _tag(t):
    # Keep one scalar per line: backslash, tab, CR and LF in a tag are escaped.
    return t.replace("\\", "\\\\").replace("\t", "\\t").replace("\r", "\\r").replace("\n", "\\n")


def dump(path, tag_filter, out):
    out.write("# file %s\n" % path)
    skipped = 0
    ok = True
    try:
        for off, data in records(path):
            try:
                wall, step, version, values = decode_event(data)
            except DecodeError as e:
                raise DecodeError("offset %d: %s" % (off, e))
            if version is not None:
                out.write("# file_version %s\n" % version)
            for tag, value in values:
                if tag_filter and tag not in tag_filter:
                    continue
                if value is None:
                    skipped += 1
                    continue
                out.write("%d\t%.6f\t%s\t%s\n" % (step, wall, _tag(tag), _fmt(value)))
    except DecodeError as e:
        sys.stderr.write("%s: %s\n" % (path, e))
        ok = False
    if skipped:
        out.write("# %d non-scalar values skipped\n" % skipped)
    return ok


def main(argv):
    args, tags, i = [], set(), 0
    while i < len(argv):
        if argv[i] == "--tag" and i + 1 < len(argv):
            tags.add(argv[i + 1])
            i += 2
        elif argv[i] in ("-h", "--help") or argv[i].startswith("-"):
            sys.stderr.write(__doc__)
            return 2
        else:
            args.append(argv[i])
            i += 1
    if not args:
        sys.stderr.write(__doc__)
        return 2
    files = []
    for a in args:
        if os.path.isdir(a):
            files += [os.path.join(a, n) for n in sorted(os.listdir(a)) if "tfevents" in n]
        else:
            files.append(a)
    ok = True
    for p in files:
        ok = dump(p, tags, sys.stdout) and ok
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
