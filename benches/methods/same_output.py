#!/usr/bin/env python3
"""Are two soup outputs the same? Usage: same_output.py DIR_A DIR_B

Prints one line and exits 0 when every file but the model cards (README.md,
mergekit_config.yml) is byte-identical. Otherwise it
says where they differ: the file lists, a non-weight file, or, per
.safetensors file, the header's tensor table, the tensor data (everything after
the header), or only the header's metadata -- for which it names the keys of
the recorded `modelsoup.recipe` that differ. Exit 1 if any tensor byte, tensor
entry or non-weight file differs; 2 if only metadata differs. Stdlib only.
"""
import json
import os
import struct
import sys


def split(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        return header.pop("__metadata__", {}), header, f.read()


def recipe_diff(ma, mb):
    ra, rb = (json.loads(m.get("modelsoup.recipe", "{}")) for m in (ma, mb))
    out = []

    def walk(a, b, at):
        if isinstance(a, dict) and isinstance(b, dict):
            for k in sorted(set(a) | set(b)):
                walk(a.get(k), b.get(k), f"{at}.{k}" if at else k)
        elif isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
            for i, (x, y) in enumerate(zip(a, b)):
                walk(x, y, f"{at}[{i}]")
        elif a != b:
            out.append(f"{at}: {json.dumps(a)} vs {json.dumps(b)}")

    walk(ra, rb, "")
    others = sorted(k for k in set(ma) | set(mb) if k != "modelsoup.recipe" and ma.get(k) != mb.get(k))
    return out + [f"metadata {k} differs" for k in others]


def main():
    a, b = sys.argv[1:3]
    # The model cards (and mergekit's configuration beside a card) describe how
    # each soup was asked for, which differs by design.
    skip = {"README.md", "mergekit_config.yml"}
    fa = sorted(f for f in os.listdir(a) if f not in skip)
    fb = sorted(f for f in os.listdir(b) if f not in skip)
    if fa != fb:
        print(f"differ: file lists {fa} vs {fb}")
        sys.exit(1)
    meta_only = []
    for name in fa:
        pa, pb = os.path.join(a, name), os.path.join(b, name)
        with open(pa, "rb") as x, open(pb, "rb") as y:
            if x.read() == y.read():
                continue
        if not name.endswith(".safetensors"):
            print(f"differ: {name}")
            sys.exit(1)
        (ma, ha, da), (mb, hb, db) = split(pa), split(pb)
        if ha != hb:
            print(f"differ: {name}: tensor table")
            sys.exit(1)
        if da != db:
            print(f"differ: {name}: tensor data")
            sys.exit(1)
        meta_only.append((name, recipe_diff(ma, mb)))
    if not meta_only:
        print(f"identical: {len(fa)} files byte for byte")
        return
    diffs = sorted({d for _, ds in meta_only for d in ds})
    print(f"tensors identical (tensor table and data of {len(fa)} files); header metadata "
          f"differs in {len(meta_only)} file(s), recorded recipe: " + "; ".join(diffs))
    sys.exit(2)


if __name__ == "__main__":
    main()
