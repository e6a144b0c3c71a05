"""Spectral comparison of two models' weights (docs/papers.md, "Spectral analysis"): per weight matrix, how
its singular values moved and how its singular vectors rotated.

Every matrix's SVD is computed once per model (`svd_model`) and stored as safetensors (`<name>.U`,
`<name>.S`, `<name>.Vh`, float32): each pair of models and each restoration edit reads it back.
For a matrix of shape (rows, cols) the rank is n = min(rows, cols); U is rows x n and V is cols x n, so
grouped-query k/v projections (fewer rows than columns) are handled on the right sides."""

from __future__ import annotations

import math
import re
from collections.abc import Iterator, Mapping

# Which weights are analysed: every 2-D matrix of a layer, plus the embeddings and the LM head.
_LAYER_MODULE = re.compile(r"model\.layers\.(\d+)\.(?:self_attn|mlp)\.(\w+)_proj\.weight$")
_OTHER = {"model.embed_tokens.weight": "embed", "lm_head.weight": "lm_head"}


def describe(name: str) -> tuple[int | None, str] | None:
    """Tensor name -> (layer, module) for analysed matrices, None for the rest (norms, biases)."""
    m = _LAYER_MODULE.match(name)
    if m:
        return int(m.group(1)), m.group(2)
    return (None, _OTHER[name]) if name in _OTHER else None


def analysed(weights: Mapping[str, "torch.Tensor"], model: str) -> list[str]:
    """The names of the analysed matrices of a model's weights; an error naming the model and what was
    looked for when there is none (an analysis of nothing is never a result)."""
    names = [name for name, w in weights.items() if describe(name) is not None and w.ndim == 2]
    if not names:
        raise ValueError(f"{model}: no matrix to analyse among its {len(weights)} tensors (looked for names "
                         f"matching {_LAYER_MODULE.pattern} and {sorted(_OTHER)}); its tensors begin "
                         f"{sorted(weights)[:4]}")
    return names


def svd_model(weights: Mapping[str, "torch.Tensor"], model: str = "the model") -> dict[str, "torch.Tensor"]:
    """The float32 thin SVD of every analysed matrix: {name.U, name.S, name.Vh}."""
    import torch

    out = {}
    for name in analysed(weights, model):
        u, s, vh = torch.linalg.svd(weights[name].detach().float(), full_matrices=False)
        out[f"{name}.U"], out[f"{name}.S"], out[f"{name}.Vh"] = u.contiguous(), s.contiguous(), vh.contiguous()
    return out


def factors(svds: Mapping[str, "torch.Tensor"], name: str):
    return svds[f"{name}.U"], svds[f"{name}.S"], svds[f"{name}.Vh"]


def top_k(n: int, share: float) -> int:
    return max(1, min(n, math.ceil(share * n)))


def principal_angles(a, b):
    """Principal angles (radians, ascending) between the column spans of orthonormal a and b (same
    number of columns). Cosines and sines both (Bjorck-Golub), in float64: arccos alone loses small
    angles (identical float32 subspaces would show ~0.03 degrees)."""
    import torch

    a, b = a.double(), b.double()
    cosines = torch.linalg.svdvals(a.T @ b)  # descending: angles ascending
    sines = torch.linalg.svdvals(b - a @ (a.T @ b)).flip(0)  # ascending
    return torch.atan2(sines, cosines)


def paired_angles(a, b):
    """The angle between column i of a and column i of b, for every i (radians; sign-blind)."""
    import torch

    a, b = a.double(), b.double()
    dots = (a * b).sum(0)
    return torch.atan2((b - a * dots).norm(dim=0), dots.abs())


def compare(name: str, wa, wb, svd_a, svd_b, share: float) -> Iterator[dict]:
    """Rows (metric, rank, value) comparing matrix `name` of model a (reference) and model b.

    Scalars (rank None): mean |dS|/S; mean and max principal angle (degrees) of the top-k left and right
    singular subspaces; projection distance ||U_a U_a^T - U_b U_b^T||_F and alignment mean_i max_j
    |U_a^T U_b|_ij over the top k; the energy of dW = W_b - W_a on the diagonal of U_a^T dW V_a (value
    change) and off it (rotation), as shares; the share of W_b outside the top-k span of (U_a, V_a);
    ||dW||_F / ||W_a||_F. By rank index i: (S_b - S_a) / S_a, and the angle between the i-th singular
    vectors of a and b (left and right)."""
    import torch

    ua, sa, vha = svd_a
    ub, sb, vhb = svd_b
    va, vb = vha.T, vhb.T
    n = sa.shape[0]
    k = top_k(n, share)
    rel = (sb - sa) / sa.clamp(min=1e-12)
    dw = (wb - wa).float()
    dw_energy = float(dw.pow(2).sum())
    diag = torch.diagonal(ua.T @ dw @ va)
    value_energy = float(diag.pow(2).sum())
    cross = ua[:, :k].T @ ub[:, :k]
    u_angles = torch.rad2deg(principal_angles(ua[:, :k], ub[:, :k]))
    v_angles = torch.rad2deg(principal_angles(va[:, :k], vb[:, :k]))
    top_a = ua[:, :k] @ (ua[:, :k].T @ wb.float() @ va[:, :k]) @ va[:, :k].T
    wb_norm = float(wb.float().norm())
    scalars = {
        "k": k,
        "rank": n,
        "mean_abs_sv_rel_change": float(rel.abs().mean()),
        "u_angle_mean_deg": float(u_angles.mean()),
        "u_angle_max_deg": float(u_angles.max()),
        "v_angle_mean_deg": float(v_angles.mean()),
        "v_angle_max_deg": float(v_angles.max()),
        "u_projection_distance": math.sqrt(max(0.0, 2 * k - 2 * float(cross.pow(2).sum()))),
        "u_alignment": float(cross.abs().max(dim=1).values.mean()),
        "dw_value_share": value_energy / dw_energy if dw_energy > 0 else 0.0,
        "dw_rotation_share": (dw_energy - value_energy) / dw_energy if dw_energy > 0 else 0.0,
        "residual_share": float((wb.float() - top_a).norm()) / wb_norm if wb_norm > 0 else 0.0,
        "relative_update_norm": math.sqrt(dw_energy) / max(float(wa.float().norm()), 1e-12),
    }
    for metric, value in scalars.items():
        yield {"metric": metric, "rank_index": None, "value": float(value)}
    by_rank = {
        "sv_rel_change": rel,
        "u_angle_deg": torch.rad2deg(paired_angles(ua, ub)),
        "v_angle_deg": torch.rad2deg(paired_angles(va, vb)),
    }
    for metric, values in by_rank.items():
        for i, value in enumerate(values.tolist()):
            yield {"metric": metric, "rank_index": i, "value": value}


def compare_models(weights_a, weights_b, svds_a, svds_b, share: float, models: tuple[str, str] = ("a", "b")) -> list[dict]:
    """Every analysed matrix of two models of the same architecture: the rows of `compare`, with the
    tensor name, layer and module. An error names the models when their analysed matrices differ."""
    names_a, names_b = analysed(weights_a, models[0]), analysed(weights_b, models[1])
    if set(names_a) != set(names_b):
        only_a, only_b = sorted(set(names_a) - set(names_b)), sorted(set(names_b) - set(names_a))
        raise ValueError(f"{models[0]} and {models[1]} do not have the same matrices: {len(only_a)} only in the "
                         f"first (e.g. {only_a[:2]}), {len(only_b)} only in the second (e.g. {only_b[:2]})")
    rows = []
    for name in sorted(names_a):
        where = describe(name)
        if weights_b[name].shape != weights_a[name].shape:
            raise ValueError(f"{name}: shapes differ ({tuple(weights_a[name].shape)} vs {tuple(weights_b[name].shape)})")
        layer, module = where
        for row in compare(name, weights_a[name], weights_b[name], factors(svds_a, name), factors(svds_b, name), share):
            rows.append({"tensor": name, "layer": layer, "module": module, **row})
    return rows
