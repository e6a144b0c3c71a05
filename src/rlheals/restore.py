"""Restoration edits (docs/papers.md, "Restoration"): put part of a reference model B back into a target
model T, then evaluate the edited model.

- `directions` / `vectors`: per matrix, keep B's first k_top and last k_tail singular triplets and T's
  middle ones: U' = [U_B[:, :k_top] | U_T[:, k_top:n-k_tail] | U_B[:, n-k_tail:]], V' likewise.
  `vectors` mixes the singular values the same way; `directions` keeps T's: W' = U' diag(S_T) V'^T.
  When k_top + k_tail = n this is U_B S_T V_B^T (the public code returned B unchanged). U' and V' are
  orthonormalised (B's restored directions kept exactly, T's projected off them), so a directions-only
  edit keeps T's singular values exactly; `orthonormal: false` is the public code's plain concatenation.
- `layers`: the first share of the layers (and the embeddings) copied from B, or any `layer_range`
  [first, last]; every other tensor is T's, bit for bit.
An edit with B = an SFT checkpoint and T = an RL model is the papers' "reverse" edit. The edited model
keeps T's dtype. SVDs come from the per-model cache (rlheals.spectrum.svd_model)."""

from __future__ import annotations

import math

import re
from collections.abc import Mapping

from rlheals import spectrum

KINDS = ("directions", "vectors", "layers")
_LAYER = re.compile(r"model\.layers\.(\d+)\.")
_MODULES = r"_proj\.weight$"  # the SVD edits' default: every projection matrix of the decoder layers


def _merge(b, t, k_top: int, k_tail: int, orthonormal: bool):
    """Columns [b[:, :k_top] | t[:, k_top:n-k_tail] | b[:, n-k_tail:]]. Orthonormalised, B's columns
    stay exactly as they are and T's are projected off them (Gram-Schmidt in that order); without it,
    the public code's plain concatenation, whose columns are not orthogonal to each other."""
    import torch

    n = t.shape[1]
    if not orthonormal:
        return torch.cat([b[:, :k_top], t[:, k_top : n - k_tail], b[:, n - k_tail :]], dim=1)
    kept = torch.cat([b[:, :k_top], b[:, n - k_tail :]], dim=1)
    q, r = torch.linalg.qr(torch.cat([kept, t[:, k_top : n - k_tail]], dim=1))
    q = q * torch.where(torch.diagonal(r) < 0, -1.0, 1.0)  # QR's sign choice: keep each column's orientation
    return torch.cat([q[:, :k_top], q[:, k_top + k_tail :], q[:, k_top : k_top + k_tail]], dim=1)


def mix(svd_b, svd_t, k_top: int, k_tail: int, values_from_b: bool, orthonormal: bool = True):
    """The recombined matrix U' diag(S') V'^T from two thin SVDs of the same shape."""
    import torch

    ub, sb, vhb = svd_b
    ut, st, vht = svd_t
    n = st.shape[0]
    if k_top < 0 or k_tail < 0 or k_top + k_tail > n:
        raise ValueError(f"k_top={k_top} and k_tail={k_tail} do not fit rank {n}")
    u = _merge(ub, ut, k_top, k_tail, orthonormal)
    v = _merge(vhb.T, vht.T, k_top, k_tail, orthonormal)
    s = torch.cat([sb[:k_top], st[k_top : n - k_tail], sb[n - k_tail :]]) if values_from_b else st
    return (u * s) @ v.T


def edit(spec: Mapping, weights_b: Mapping, weights_t: Mapping, svds_b: Mapping, svds_t: Mapping,
         models: tuple[str, str] = ("B", "T")) -> dict:
    """The edited state dict (T's tensors, T's dtypes) for one edit spec: kind, top, tail, layers,
    modules (a regex on tensor names for the SVD edits). An edit that would change no tensor of T is an
    error naming the models and what it looked for: its model would only be T again, reported as an edit."""
    import torch

    out = _edited(spec, weights_b, weights_t, svds_b, svds_t, models)
    if not any(out[name] is not w and not torch.equal(out[name], w) for name, w in weights_t.items()):
        what = (f"layers {spec.get('layer_range') or spec.get('layers')}" if spec["kind"] == "layers"
                else f"tensors matching {spec.get('modules', _MODULES)!r} among the analysed matrices")
        raise ValueError(f"edit {spec.get('name', spec['kind'])}: changes no tensor of {models[1]} ({what}, "
                         f"taken from {models[0]}); the two models may be the same, or nothing matched")
    return out


def _edited(spec, weights_b, weights_t, svds_b, svds_t, models) -> dict:
    kind = spec["kind"]
    if kind not in KINDS:
        raise ValueError(f"unknown edit kind {kind!r} (one of {KINDS})")
    out = dict(weights_t)
    if kind == "layers":
        layers = [int(m.group(1)) for name in weights_t if (m := _LAYER.match(name))]
        if not layers:
            raise ValueError(f"edit {spec.get('name', kind)}: {models[1]} has no decoder layer (no tensor name "
                             f"matches {_LAYER.pattern}); its tensors begin {sorted(weights_t)[:4]}")
        n_layers = 1 + max(layers)
        if spec.get("layer_range") is not None:  # [first, last], inclusive; the embeddings stay T's
            lo, hi = spec["layer_range"]
            embeddings = False
        else:  # the first share of the layers, and the embeddings (the papers' reset)
            lo, hi = 0, round(spec["layers"] * n_layers) - 1
            embeddings = True
        for name in weights_t:
            m = _LAYER.match(name)
            if (m and lo <= int(m.group(1)) <= hi) or (embeddings and name == "model.embed_tokens.weight"):
                out[name] = weights_b[name].clone()
        return out
    pattern = re.compile(spec.get("modules", _MODULES))
    for name, w in weights_t.items():
        if spectrum.describe(name) is None or not pattern.search(name):
            continue
        svd_t = spectrum.factors(svds_t, name)
        n = svd_t[1].shape[0]
        k_top = spectrum.top_k(n, spec["top"]) if spec.get("top", 0) > 0 else 0
        k_tail = min(n - k_top, spectrum.top_k(n, spec["tail"])) if spec.get("tail", 0) > 0 else 0
        mixed = mix(spectrum.factors(svds_b, name), svd_t, k_top, k_tail, values_from_b=kind == "vectors",
                    orthonormal=spec.get("orthonormal", True))
        out[name] = mixed.to(w.dtype).contiguous()
    return out


def recovery(acc_edit: float, acc_base: float, acc_target: float) -> float:
    """(acc_edit - acc_target) / (acc_base - acc_target): the share of the lost accuracy an edit brings
    back (1 = all of it); NaN when B and T score the same."""
    gap = acc_base - acc_target
    return (acc_edit - acc_target) / gap if gap else float("nan")


def recovery_se(acc_edit: float, acc_base: float, acc_target: float, n: int) -> float:
    """Delta-method standard error of the recovery fraction from three binomial accuracies on n hands."""
    gap = acc_base - acc_target
    if not gap or n <= 0:
        return float("nan")
    r = recovery(acc_edit, acc_base, acc_target)
    var = lambda p: p * (1 - p) / n  # noqa: E731
    return math.sqrt(var(acc_edit) + (1 - r) ** 2 * var(acc_target) + r ** 2 * var(acc_base)) / abs(gap)
