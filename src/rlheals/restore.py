"""Restoration edits (docs/papers.md, "Restoration"): put part of a reference model B back into a target
model T, then evaluate the edited model.

- `directions` / `vectors`: per matrix (rlheals.matrices: found from the module tree, a fused q/k/v map
  edited part by part), keep B's first k_top and last k_tail singular triplets and T's
  middle ones: U' = [U_B[:, :k_top] | U_T[:, k_top:n-k_tail] | U_B[:, n-k_tail:]], V' likewise.
  `vectors` mixes the singular values the same way; `directions` keeps T's: W' = U' diag(S_T) V'^T.
  When k_top + k_tail = n this is U_B S_T V_B^T (the public code returned B unchanged). U' and V' are
  orthonormalised (B's restored directions kept exactly, T's projected off them), so a directions-only
  edit keeps T's singular values exactly; `orthonormal: false` is the public code's plain concatenation.
- `layers`: every tensor (norms and biases too) of the first share of the decoder layers, and the input
  embedding, copied from B, or of any `layer_range` [first, last]; every other tensor is T's, bit for bit.
An edit with B = an SFT checkpoint and T = an RL model is the papers' "reverse" edit. The edited model
keeps T's dtype. SVDs come from the per-model cache (rlheals.spectrum.svd_model)."""

from __future__ import annotations

import re
from collections.abc import Mapping

from rlheals import spectrum
from rlheals.matrices import Layout

KINDS = ("directions", "vectors", "layers")
_MODULES = r"^layers\."  # the SVD edits' default: every matrix of the decoder layers (rlheals.matrices keys)


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
    """The recombined matrix U' diag(S') V'^T from two thin SVDs of the same shape, in float64."""
    import torch

    ub, sb, vhb = (x.double() for x in svd_b)
    ut, st, vht = (x.double() for x in svd_t)
    n = st.shape[0]
    if k_top < 0 or k_tail < 0 or k_top + k_tail > n:
        raise ValueError(f"k_top={k_top} and k_tail={k_tail} do not fit rank {n}")
    u = _merge(ub, ut, k_top, k_tail, orthonormal)
    v = _merge(vhb.T, vht.T, k_top, k_tail, orthonormal)
    s = torch.cat([sb[:k_top], st[k_top : n - k_tail], sb[n - k_tail :]]) if values_from_b else st
    return (u * s) @ v.T


def edit(spec: Mapping, weights_b: Mapping, weights_t: Mapping, svds_b: Mapping, svds_t: Mapping,
         layouts: tuple[Layout, Layout], models: tuple[str, str] = ("B", "T")) -> dict:
    """The edited state dict (T's tensors, T's dtypes, T's names) for one edit spec: kind, top, tail,
    layers or layer_range, modules (a regex on matrix keys such as `layers.3.q`, for the SVD edits).
    B's tensors are found by their place in B's layout, whatever B's file calls them. An edit that would
    change no tensor of T is an error naming the models and what it looked for: its model would only be
    T again, reported as an edit."""
    import torch

    out = _edited(spec, weights_b, weights_t, svds_b, svds_t, layouts, models)
    if not any(out[name] is not w and not torch.equal(out[name], w) for name, w in weights_t.items()):
        what = (f"layers {spec.get('layer_range') or spec.get('layers')}" if spec["kind"] == "layers"
                else f"matrices whose keys match {spec.get('modules', _MODULES)!r}")
        raise ValueError(f"edit {spec.get('name', spec['kind'])}: changes no tensor of {models[1]} ({what}, "
                         f"taken from {models[0]}); the two models may be the same, or nothing matched")
    return out


def _edited(spec, weights_b, weights_t, svds_b, svds_t, layouts: tuple[Layout, Layout], models) -> dict:
    kind = spec["kind"]
    if kind not in KINDS:
        raise ValueError(f"unknown edit kind {kind!r} (one of {KINDS})")
    layout_b, layout_t = layouts
    out = dict(weights_t)
    if kind == "layers":
        if spec.get("layer_range") is not None:  # [first, last], inclusive; the embeddings stay T's
            lo, hi = spec["layer_range"]
            embeddings = False
        else:  # the first share of the layers, and the embeddings (the papers' reset)
            lo, hi = 0, round(spec["layers"] * layout_t.layers) - 1
            embeddings = True
        for name in weights_t:
            layer = layout_t.layer_of(name)
            if (layer is not None and lo <= layer <= hi) or (embeddings and name == layout_t.embed):
                there = layout_t.counterpart(name, layout_b)
                if there not in weights_b:
                    raise ValueError(f"{models[1]}'s {name} has no counterpart in {models[0]} (looked for {there})")
                out[name] = weights_b[there].clone()
        return out
    pattern = re.compile(spec.get("modules", _MODULES))
    missing = sorted({m.key for m in layout_t.matrices} - {m.key for m in layout_b.matrices})
    if missing:
        raise ValueError(f"{models[0]} lacks matrices of {models[1]}: {missing[:4]}")
    for m in layout_t.matrices:
        if not pattern.search(m.key):
            continue
        svd_t = spectrum.factors(svds_t, m.key)
        n = svd_t[1].shape[0]
        k_top = spectrum.top_k(n, spec["top"]) if spec.get("top", 0) > 0 else 0
        k_tail = min(n - k_top, spectrum.top_k(n, spec["tail"])) if spec.get("tail", 0) > 0 else 0
        mixed = mix(spectrum.factors(svds_b, m.key), svd_t, k_top, k_tail, values_from_b=kind == "vectors",
                    orthonormal=spec.get("orthonormal", True))
        m.write(out, mixed)
    return out
