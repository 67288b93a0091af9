#!/usr/bin/env python3
"""Compare soup's and mergekit's outputs of one mergekit config, tensor by tensor,
against each other and against an exact float64 reference.

Usage: compare_methods.py CONFIG.yml SOUP_OUT MERGEKIT_OUT [--json FILE]

CONFIG.yml is one of the configs benches/methods/run.sh writes (base_model,
models with per-model weight/density, global lambda/t/normalize, dtype). Every
input and output is read with the official `safetensors` library, one tensor at
a time (peak memory: a few float64 copies of the largest tensor).

The reference is the method's definition computed in float64 and rounded once
to the output dtype (round to nearest even, done on the float64 bits, so never
double-rounded through float32):

- linear: sum(w_i x_i) / sum(w_i);
- task_arithmetic: b + lambda * sum(w_i (x_i - b)) (/ sum(w_i) if normalize);
- ties: each task vector trimmed to its max(1, floor(density*n)) largest
  magnitudes (ties in magnitude broken by index), weighted, sign elected by the
  sign of the sum (+ at 0), agreeing entries summed and divided by their
  weights' sum (normalize), times lambda, plus b;
- model_stock: t * mean(x_i) + (1 - t) * b with t = k cos / (1 + (k-1) cos),
  cos the mean pairwise cosine of the task vectors of the whole tensor;
- slerp: two references, `ref` (one angle per tensor, soup's definition) and
  `ref_rows` (one angle per output row, for comparison);
- dare_linear / dare_ties: no element-wise reference can exist (random masks);
  `ref` is one draw of the paper's DARE (Bernoulli(density) masks from
  torch.Generator seed 1234, survivors / density), whose statistics are
  compared instead.

For each pair of outputs (soup/mergekit, soup/ref, mergekit/ref, ...) it
reports the fraction of elements bit-identical, the distribution of the
distance in output ulps (adjacent representable values), and the largest
|difference| relative to the RMS of the tensor's base (the first model for
linear). For every output it reports the statistics of its change from the
base: fraction of elements changed, mean |out - base| and the regression slope
of (out - base) on the un-sparsified task-vector sum sum(w_i (x_i - b)), overall
and per tensor (for model_stock the per-tensor slope is t / k, so it shows each
tool's interpolation ratio t). The result is printed as
JSON (and written to --json).
"""
import argparse
import glob
import json
import os
import sys

import numpy as np
import torch
import yaml
from safetensors import safe_open

ULP_CLIP = 1 << 16  # ulp distances above this are counted in the last bin


class Checkpoint:
    """Lazy tensor access over every *.safetensors file of a directory."""

    def __init__(self, path):
        self.path = path
        self.files, self.where = {}, {}
        for f in sorted(glob.glob(os.path.join(path, "*.safetensors"))):
            h = safe_open(f, framework="pt")
            self.files[f] = h
            for k in h.keys():
                self.where[k] = h

    def get(self, name):
        return self.where[name].get_tensor(name)


def bf16_round(x64, dtype):
    """float64 -> dtype with one rounding to nearest even (no float32 detour)."""
    if dtype != torch.bfloat16:
        return x64.to(dtype)  # float32/float64: a single IEEE rounding
    drop = 52 - 7  # bf16 keeps 7 of float64's 52 fraction bits (normal range)
    bits = x64.contiguous().view(torch.int64)
    half = (1 << (drop - 1)) - 1
    bits = bits + half + ((bits >> drop) & 1)
    bits = bits & ~((1 << drop) - 1)
    return bits.view(torch.float64).to(torch.float32).to(dtype)  # both exact now


def ordered(t):
    """Bit patterns of a 16-bit float tensor as integers in value order."""
    i = t.contiguous().view(torch.int16).to(torch.int32) & 0xFFFF
    return torch.where(i < 0x8000, i, 0x8000 - i)


def pair_result(a, b, scale):
    """Agreement of one tensor in two outputs: (n, same, ulp histogram of the
    differing elements as (bins, counts), max |a - b| / scale, sum |a - b|)."""
    n = a.numel()
    if torch.equal(a, b):
        return n, n, None, 0.0, 0.0
    if a.element_size() == 2:
        d = (ordered(a) - ordered(b)).abs_().clamp_(max=ULP_CLIP).reshape(-1)
        nz = d[d != 0]
        same = n - nz.numel()
        bins, counts = torch.unique(nz, return_counts=True)
        hist = (bins.numpy(), counts.numpy())
    else:
        same, hist = int((a == b).sum()), None
    diff = (a.float() - b.float()).abs_()
    m = diff.max().item() / scale if scale > 0 else 0.0
    return n, same, hist, m, diff.sum(dtype=torch.float64).item()


class PairStats:
    """Agreement of two outputs over all tensors."""

    def __init__(self):
        self.n = self.same = 0
        self.hist = np.zeros(ULP_CLIP + 1, dtype=np.int64)
        self.max_rel = 0.0
        self.max_rel_tensor = ""
        self.sum_abs = 0.0

    def add(self, name, result):
        n, same, hist, max_rel, sum_abs = result
        self.n += n
        self.same += same
        self.hist[0] += same
        if hist is not None:
            np.add.at(self.hist, hist[0], hist[1])
        if max_rel > self.max_rel:
            self.max_rel, self.max_rel_tensor = max_rel, name
        self.sum_abs += sum_abs

    def percentile(self, q):
        c = np.cumsum(self.hist)
        return int(np.searchsorted(c, q * c[-1], side="left"))

    def summary(self, sum_change):
        out = {"elements": self.n, "identical": self.same / self.n if self.n else None}
        if self.hist.sum() == self.n:  # 16-bit outputs: ulp distances
            tot = self.hist.sum()
            out.update({
                "within_1_ulp": float(self.hist[:2].sum() / tot),
                "ulp_hist": {"0": int(self.hist[0]), "1": int(self.hist[1]),
                             "2-3": int(self.hist[2:4].sum()), "4-15": int(self.hist[4:16].sum()),
                             "16+": int(self.hist[16:].sum())},
                "ulp_median": self.percentile(0.5),
                "ulp_p99": self.percentile(0.99),
                "ulp_p9999": self.percentile(0.9999),
                "ulp_p999999": self.percentile(0.999999),
                "ulp_max": int(np.nonzero(self.hist)[0].max()),
                "ulp_max_clipped": bool(self.hist[-1] > 0),
            })
        out["max_abs_diff_over_base_rms"] = self.max_rel
        out["max_abs_diff_tensor"] = self.max_rel_tensor
        out["mean_abs_diff_over_mean_abs_change"] = (
            self.sum_abs / sum_change if sum_change else None)
        return out


def change_result(out, base, base_orig, direction, dir_sq):
    """(n, changed, sum |out - base|, <out - base, direction>, per-tensor slope)."""
    d = out.double() - base
    dot = (d * direction).sum().item() if direction is not None else None
    return (out.numel(), int((out != base_orig).sum()), d.abs().sum().item(), dot,
            dot / dir_sq if dot is not None and dir_sq > 0 else None)


class ChangeStats:
    """How an output moves away from the base."""

    def __init__(self):
        self.n = self.changed = 0
        self.sum_abs = self.dot = 0.0
        self.slopes = {}  # per tensor

    def add(self, name, result):
        n, changed, sum_abs, dot, slope = result
        self.n += n
        self.changed += changed
        self.sum_abs += sum_abs
        if dot is not None:
            self.dot += dot
        if slope is not None:
            self.slopes[name] = slope

    def summary(self, dir_sq, ref=None):
        out = {"fraction_changed": self.changed / self.n, "mean_abs_change": self.sum_abs / self.n,
               "slope_on_task_vector_sum": self.dot / dir_sq if dir_sq else None}
        if ref is not None and ref is not self and self.slopes:
            dev = {k: abs(v - ref.slopes[k]) for k, v in self.slopes.items() if k in ref.slopes}
            worst = max(dev, key=dev.get)
            out["max_per_tensor_slope_dev_from_ref"] = dev[worst]
            out["max_per_tensor_slope_dev_tensor"] = worst
            out["mean_per_tensor_slope_dev_from_ref"] = sum(dev.values()) / len(dev)
        return out


def read_config(path):
    cfg = yaml.safe_load(open(path))
    method = cfg["merge_method"]
    base = cfg.get("base_model")
    models, weights, densities, gammas, epsilons = [], [], [], [], []
    slices = None
    entries = cfg.get("models")
    if entries is None:
        # Slices: a frankenmerge keeps them; a merge over one slice of every
        # layer is the same as its models.
        slices = [[(src["model"], *src["layer_range"]) for src in s["sources"]]
                  for s in cfg["slices"]]
        entries = [] if method == "passthrough" else [{"model": m} for m, _, _ in slices[0]]
    for m in entries:
        p = m["model"] if isinstance(m, dict) else m
        if p == base and method not in ("linear", "karcher"):
            continue
        params = (m.get("parameters") or {}) if isinstance(m, dict) else {}
        g = cfg.get("parameters") or {}
        models.append(p)
        weights.append(float(params.get("weight", g.get("weight", 1.0))))
        densities.append(float(params.get("density", g.get("density", 1.0))))
        gammas.append(float(params.get("gamma", g.get("gamma", 0.01))))
        epsilons.append(float(params.get("epsilon", g.get("epsilon", 0.15))))
    g = cfg.get("parameters") or {}
    default_norm = {"linear": True, "ties": True, "della": True}.get(method, False)
    dtype = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}[
        cfg.get("out_dtype") or cfg.get("dtype")]
    if method == "slerp" and base in models:
        models.remove(base)
    return {"method": method, "base": base, "models": models, "weights": weights,
            "densities": densities, "gammas": gammas, "epsilons": epsilons,
            "lambda": float(g.get("lambda", 1.0)),
            "t": float(g["t"]) if "t" in g else None,
            "select_topk": float(g.get("select_topk", 1.0)), "slices": slices,
            "normalize": bool(g.get("normalize", default_norm)), "dtype": dtype}


def topk_mask(delta, density):
    """Exactly max(1, floor(density*n)) largest |delta|, ties broken by index."""
    n = delta.numel()
    if density >= 1:
        return torch.ones_like(delta, dtype=torch.bool)
    k = max(1, int(density * n))
    mag = delta.abs().reshape(-1)
    thr = torch.kthvalue(mag, n - k + 1).values
    above = mag > thr
    need = k - int(above.sum())
    eq = mag == thr
    keep_eq = eq & (torch.cumsum(eq, 0) <= need)
    return (above | keep_eq).reshape(delta.shape)


def by_magnitude(x):
    """Indices from the largest |x| down, equal magnitudes by index."""
    return torch.argsort(-x.abs().reshape(-1), stable=True)


def breadcrumbs_mask(delta, density, gamma):
    """mergekit's counts: in ascending magnitude keep ranks n_bot..n_bot+target."""
    n = delta.numel()
    if density >= 1:
        return torch.ones_like(delta, dtype=torch.bool)
    target, top = int(density * n), int(gamma * n)
    dropped = n - max(0, n - target - top) - target
    keep = torch.zeros(n, dtype=torch.bool)
    keep[by_magnitude(delta)[dropped:dropped + target]] = True
    return keep.reshape(delta.shape)


def della_sparse(delta, density, epsilon, gen):
    """One draw of DELLA's MAGPRUNE: per row, keep probabilities from
    density - epsilon (smallest magnitude) to density + epsilon (largest) by
    rank, survivors divided by their probability."""
    if density >= 1:
        return delta
    rows = delta.reshape(1, -1) if delta.dim() < 2 else delta
    m = rows.shape[1]
    ranks = torch.argsort(torch.argsort(rows.abs(), dim=1, stable=True), dim=1).double()
    norm = ranks / (m - 1) if m > 1 else torch.zeros_like(ranks)
    p = (density - epsilon) + norm * 2 * epsilon
    keep = torch.rand(rows.shape, generator=gen, dtype=torch.float64) < p
    return torch.where(keep, rows / p, torch.zeros_like(rows)).reshape(delta.shape)


def nuslerp64(v0, v1, t):
    a, b = v0.reshape(-1), v1.reshape(-1)
    na, nb = a.norm().clamp(min=1e-7), b.norm().clamp(min=1e-7)
    cos = ((a / na) @ (b / nb)).clamp(-1, 1)
    if 1 - cos * cos <= 1e-16:
        return (1 - t) * v0 + t * v1
    th = torch.acos(cos)
    return (torch.sin((1 - t) * th) * v0 + torch.sin(t * th) * v1) / torch.sin(th)


def multislerp64(vs, weights, eps=1e-8):
    w = torch.tensor(weights, dtype=torch.float64)
    w = w / w.sum()
    flat = torch.stack([v.reshape(-1) for v in vs])
    norms = flat.norm(dim=1, keepdim=True)
    units = flat / (norms + eps)
    mean = (units * w[:, None]).sum(0)
    mean = mean / mean.norm()
    tangents = units - (units @ mean)[:, None] * mean
    tangent = (tangents * w[:, None]).sum(0)
    tn = tangent.norm() + eps
    out = (mean * torch.cos(tn) + tangent * torch.sin(tn) / tn) * (norms[:, 0] * w).sum()
    return out.reshape(vs[0].shape)


def karcher64(vs, max_iter=10, tol=1e-5):
    flat = [v.reshape(-1) for v in vs]
    norms = [f.norm() for f in flat]
    units = [f / n if n > 0 else torch.zeros_like(f) for f, n in zip(flat, norms)]
    valid = [i for i, n in enumerate(norms) if n > tol]
    if not valid:
        return torch.zeros_like(vs[0])
    a = 1.0 / len(valid)
    mean = sum(a * units[i] for i in valid)
    mean = units[valid[0]].clone() if mean.norm() < tol else mean / mean.norm()
    for _ in range(max_iter):
        tangent = torch.zeros_like(mean)
        for i in valid:
            d = (mean @ units[i]).clamp(-1, 1)
            th = torch.acos(d)
            if th < tol:
                continue
            tangent += a * (th / torch.sin(th)) * (units[i] - d * mean)
        tn = tangent.norm()
        if tn < tol:
            break
        mean = torch.cos(tn) * mean + torch.sin(tn) * (tangent / tn)
        if mean.norm() > tol:
            mean = mean / mean.norm()
    return (sum(n for n in norms) / len(vs) * mean).reshape(vs[0].shape)


def sce64(b, deltas, select):
    """SCE: the entries of largest variance, mean-square weights, elected sign."""
    tv = torch.stack(deltas)
    if select < 1:
        # The population variance in soup's order (sum from +0, input by
        # input), so that ties at the selection's edge fall the same way.
        mean = sum(tv[i] for i in range(len(deltas))) / len(deltas)
        var = (sum((tv[i] - mean) ** 2 for i in range(len(deltas))) / len(deltas)).reshape(-1)
        k = int(int((var != 0).sum()) * select)
        keep = torch.zeros(var.numel(), dtype=torch.bool)
        keep[by_magnitude(var)[:k]] = True
        tv = tv * keep.reshape(b.shape).to(tv.dtype)
    ms = tv.reshape(len(deltas), -1).square().mean(dim=1)
    w = torch.ones_like(ms) / len(deltas) if abs(ms.sum().item()) < 1e-6 else ms / ms.sum()
    w = w.reshape(-1, *([1] * b.dim()))
    elected = torch.where(tv.sum(0) >= 0, 1.0, -1.0).to(torch.float64)
    agree = (torch.sign(tv) == elected).to(torch.float64)
    return b + (tv * w * agree).sum(0) / (w * agree).sum(0).clamp(min=1e-6)


def passthrough_source(cfg, name):
    """(model, tensor name) a frankenmerge takes output tensor `name` from."""
    slices = cfg["slices"]
    parts = name.split(".")
    if len(parts) > 3 and parts[1] == "layers" and parts[2].isdigit():
        out = int(parts[2])
        for srcs in slices:
            model, start, end = srcs[0]
            if out < end - start:
                return model, ".".join(parts[:2] + [str(start + out)] + parts[3:])
            out -= end - start
    model = slices[0][0][0] if "embed" in name else slices[-1][0][0]
    return model, name


def slerp64(a, b, t, rows):
    """SLERP in float64, one angle for the tensor or per leading row."""
    x = a.reshape(a.shape[0], -1) if rows and a.dim() > 0 else a.reshape(1, -1)
    y = b.reshape(x.shape)
    na, nb = x.norm(dim=1, keepdim=True), y.norm(dim=1, keepdim=True)
    ok = (na > 1e-8) & (nb > 1e-8) if rows else (na > 0) & (nb > 0)
    cos = torch.where(ok, (x * y).sum(dim=1, keepdim=True) / (na * nb), torch.ones_like(na))
    cos = cos.clamp(-1, 1)
    lin = cos.abs() > 0.9995
    theta = torch.acos(torch.where(lin, torch.zeros_like(cos), cos))
    s = torch.sin(theta)
    s = torch.where(lin, torch.ones_like(s), s)
    ca = torch.where(lin, 1 - t, torch.sin((1 - t) * theta) / s)
    cb = torch.where(lin, torch.full_like(s, t), torch.sin(t * theta) / s)
    return (ca * x + cb * y).reshape(a.shape)


def reference(cfg, name, xs, b, gen):
    """The method's float64 result(s) for one tensor: {label: tensor}."""
    m, w = cfg["method"], cfg["weights"]
    if m == "linear":
        acc = sum(wi * x for wi, x in zip(w, xs))
        return {"ref": acc / sum(w) if cfg["normalize"] else acc}
    if m == "slerp":
        return {"ref": slerp64(b, xs[0], cfg["t"], rows=False),
                "ref_rows": slerp64(b, xs[0], cfg["t"], rows=True)}
    if m == "multislerp":
        return {"ref": multislerp64(xs, w)}
    if m == "karcher":
        return {"ref": karcher64(xs)}
    if m == "nuslerp":
        total = w[0] + w[1]
        t = 0.5 if abs(total) < 1e-6 else w[1] / total
        return {"ref": b + nuslerp64(xs[0] - b, xs[1] - b, t)}
    if m == "nearswap":
        wgt = (cfg["t"] / (b - xs[0]).abs().clamp(min=1e-6)).clamp(0, 1)
        return {"ref": wgt * xs[0] + (1 - wgt) * b}
    deltas = [x - b for x in xs]
    if m == "sce":
        return {"ref": sce64(b, deltas, cfg["select_topk"])}
    if m == "model_stock":
        k = len(deltas)
        flat = [d.reshape(-1) for d in deltas]
        cos = []
        for i in range(k):
            for j in range(i + 1, k):
                nrm = max((flat[i].norm() * flat[j].norm()).item(), 1e-6)
                cos.append(min(1.0, max(-1.0, (flat[i] @ flat[j]).item() / nrm)))
        c = sum(cos) / len(cos)
        den = 1 + (k - 1) * c
        t = 0.0 if abs(den) < 1e-6 else k * c / den
        return {"ref": t * (sum(xs) / k) + (1 - t) * b}
    if m in ("ties", "dare_ties", "dare_linear", "breadcrumbs", "breadcrumbs_ties", "della",
             "della_linear"):
        sparse = []
        for d, dens, wi, gam, eps in zip(deltas, cfg["densities"], w, cfg["gammas"],
                                         cfg["epsilons"]):
            if m == "ties":
                d = torch.where(topk_mask(d, dens), d, torch.zeros_like(d))
            elif m.startswith("breadcrumbs"):
                d = torch.where(breadcrumbs_mask(d, dens, gam), d, torch.zeros_like(d))
            elif m.startswith("della"):
                d = della_sparse(d, dens, eps, gen)
            elif dens < 1:
                keep = torch.rand(d.shape, generator=gen, dtype=torch.float64) < dens
                d = torch.where(keep, d / dens, torch.zeros_like(d))
            sparse.append(wi * d)
        deltas = sparse
    else:
        deltas = [wi * d for wi, d in zip(w, deltas)]
    if m in ("ties", "dare_ties", "breadcrumbs_ties", "della"):
        total = sum(deltas)
        elected = torch.where(total >= 0, 1.0, -1.0).to(torch.float64)
        mixed = torch.zeros_like(b)
        div = torch.zeros_like(b)
        for d, wi in zip(deltas, w):
            agree = torch.sign(d) == elected
            mixed += torch.where(agree, d, torch.zeros_like(d))
            div += agree.to(torch.float64) * wi
        div = torch.where(div == 0, torch.ones_like(div), div)
    else:
        mixed = sum(deltas)
        s = sum(w)
        div = s if abs(s) >= 1e-8 else 1.0
    if cfg["normalize"]:
        mixed = mixed / div
    return {"ref": b + cfg["lambda"] * mixed}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("config")
    ap.add_argument("soup")
    ap.add_argument("mergekit")
    ap.add_argument("--json")
    ap.add_argument("--limit", type=int, help="only the first N tensors (testing)")
    args = ap.parse_args()
    torch.set_grad_enabled(False)
    cfg = read_config(args.config)
    outs = {"soup": Checkpoint(args.soup), "mergekit": Checkpoint(args.mergekit)}
    models = [Checkpoint(p) for p in cfg["models"]]
    sources = {}
    if cfg["method"] == "passthrough":
        sources = {m: Checkpoint(m) for srcs in cfg["slices"] for m, _, _ in srcs}
    base = Checkpoint(cfg["base"]) if cfg["base"] else None
    names = sorted(outs["soup"].where)
    if set(names) != set(outs["mergekit"].where):
        a, b = set(names), set(outs["mergekit"].where)
        print(f"tensor names differ: only soup {sorted(a - b)[:5]}, only mergekit {sorted(b - a)[:5]}",
              file=sys.stderr)
        sys.exit(1)
    if args.limit:
        names = names[: args.limit]
    gen = torch.Generator().manual_seed(1234)
    pairs, changes, dir_sq = {}, {}, 0.0
    mismatched = []
    for name in names:
        got = {k: o.get(name) for k, o in outs.items()}
        if got["soup"].shape != got["mergekit"].shape or got["soup"].dtype != got["mergekit"].dtype:
            mismatched.append(f"{name}: {got['soup'].dtype}{list(got['soup'].shape)} vs "
                              f"{got['mergekit'].dtype}{list(got['mergekit'].shape)}")
            continue
        xs = [m.get(name).double() for m in models]
        b_orig = base.get(name) if base else None
        b = b_orig.double() if base else None
        if cfg["method"] == "passthrough":
            model, source = passthrough_source(cfg, name)
            xs = [sources[model].get(source).double()]
            refs = {"ref": xs[0]}
        else:
            refs = reference(cfg, name, xs, b, gen)
        for label, r in refs.items():
            got[label] = bf16_round(r, got["soup"].dtype)
        del r
        scale_src = b if b is not None else xs[0]
        if scale_src.numel() == 0:
            continue
        scale = scale_src.pow(2).mean().sqrt().item()
        # Outputs equal to an earlier one are compared through it (cheap).
        labels, rep = list(got), {}
        for label in labels:
            rep[label] = next((r for r in dict.fromkeys(rep.values())
                               if torch.equal(got[r], got[label])), label)
        cache = {}
        for i, p in enumerate(labels):
            for q in labels[i + 1:]:
                key = (rep[p], rep[q])
                if key not in cache:
                    cache[key] = pair_result(got[key[0]], got[key[1]], scale)
                pairs.setdefault(f"{p}/{q}", PairStats()).add(name, cache[key])
        if b is not None:
            direction = sum(wi * (x - b) for wi, x in zip(cfg["weights"], xs))
            sq = direction.pow(2).sum().item()
            dir_sq += sq
            done = {}
            for label in labels:
                if rep[label] not in done:
                    done[rep[label]] = change_result(got[label], b, b_orig, direction, sq)
                changes.setdefault(label, ChangeStats()).add(name, done[rep[label]])
        del xs, b, got
    result = {
        "config": os.path.abspath(args.config),
        "method": cfg["method"],
        "tensors": len(names),
        "shape_or_dtype_mismatches": mismatched,
        "pairs": {k: v.summary(changes[k.split("/")[1]].sum_abs if changes else None)
                  for k, v in pairs.items()},
        "change_from_base": {k: v.summary(dir_sq, changes.get("ref"))
                             for k, v in changes.items()},
    }
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        with open(args.json, "w") as f:
            f.write(text + "\n")
    sys.exit(1 if mismatched else 0)


if __name__ == "__main__":
    main()
