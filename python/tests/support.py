"""Shared by the Python package's tests and their evaluator: where the repository
and the installed wheel are, and a safetensors reader and writer written with the
standard library only (independent of soup's)."""

import json
import math
import os
import struct
from pathlib import Path

#: The repository root (run.sh passes it; the tests never import from it).
REPO = Path(os.environ.get("MODELSOUP_REPO", Path(__file__).resolve().parents[2]))
#: The three tiny fine-tuned checkpoints shipped with the repository.
TINY = [REPO / "examples" / "tiny" / f"run-{x}" for x in "abc"]

_SIZES = {"F64": 8, "F32": 4, "BF16": 2, "F16": 2, "I64": 8}


def _decode(dtype, data):
    if dtype == "F64":
        return [v for (v,) in struct.iter_unpack("<d", data)]
    if dtype == "F32":
        return [v for (v,) in struct.iter_unpack("<f", data)]
    if dtype == "F16":
        return [v for (v,) in struct.iter_unpack("<e", data)]
    if dtype == "BF16":
        return [struct.unpack("<f", struct.pack("<I", h << 16))[0] for (h,) in struct.iter_unpack("<H", data)]
    if dtype == "I64":
        return [v for (v,) in struct.iter_unpack("<q", data)]
    raise ValueError(f"dtype {dtype} not handled by the test reader")


def read_file(path):
    """{name: (dtype, shape, [values])} and the metadata of one .safetensors file."""
    raw = Path(path).read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])
    metadata = header.pop("__metadata__", {})
    body = raw[8 + n :]
    tensors = {}
    for name, info in header.items():
        start, end = info["data_offsets"]
        tensors[name] = (info["dtype"], info["shape"], _decode(info["dtype"], body[start:end]))
    return tensors, metadata


def read_checkpoint(path):
    """Every tensor of a checkpoint directory (one file or shards) or file."""
    path = Path(path)
    if path.is_file():
        return read_file(path)[0]
    tensors = {}
    for f in sorted(path.glob("*.safetensors")):
        part, _ = read_file(f)
        tensors.update(part)
    return tensors


def write_file(path, tensors):
    """Writes {name: (dtype, shape, raw bytes)} as a .safetensors file."""
    header, offset, blobs = {"__metadata__": {"format": "pt"}}, 0, []
    for name, (dtype, shape, data) in tensors.items():
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + len(data)]}
        offset += len(data)
        blobs.append(data)
    text = json.dumps(header, separators=(",", ":"))
    text += " " * (-len(text) % 8)
    Path(path).write_bytes(struct.pack("<Q", len(text)) + text.encode() + b"".join(blobs))


def float_vector(tensors):
    """The float tensors' values in name order, as one list."""
    out = []
    for name in sorted(tensors):
        dtype, _, values = tensors[name]
        if dtype in ("F64", "F32", "F16", "BF16"):
            out.extend(values)
    return out


def half_ulp(dtype, x):
    """Half the spacing of `dtype` values around x (bound of a correct rounding)."""
    mantissa = {"F32": 23, "BF16": 7, "F16": 10, "F64": 52}[dtype]
    if x == 0:
        return 0.0
    exponent = math.frexp(abs(x))[1] - 1
    return 2.0 ** (exponent - mantissa) / 2
