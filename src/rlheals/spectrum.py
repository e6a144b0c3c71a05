"""Spectral comparison of two models' weights (docs/papers.md, "Spectral analysis"): per weight matrix, how
its singular values moved and how its singular vectors rotated.

The matrices are those rlheals.matrices finds in the model's module tree, each read as (out, in) and
named by its key (`layers.3.q`). Every matrix's SVD is computed once per model (`svd_model`) and stored
as safetensors (`<key>.U`, `<key>.S`, `<key>.Vh`): each pair of models and each restoration edit reads
it back. The SVD is computed in float64 because the models compared are often close (an RL model moves
its start's weights by about 0.5%): a float32 SVD errs by about eps * ||W|| / gap in each singular
vector, rounding of the size of the real differences, and that rounding differs between CPUs and thread
counts. U and Vh are stored in float32 (half the disk; rounding them costs about 1e-5 of an angle's
value), S in float64.
For a matrix of shape (rows, cols) the rank is n = min(rows, cols); U is rows x n and V is cols x n, so
grouped-query k/v projections (fewer rows than columns) are handled on the right sides."""

from __future__ import annotations

import math
import zlib
from collections.abc import Iterator, Mapping

from rlheals.matrices import Layout


def svd_model(weights: Mapping[str, "torch.Tensor"], layout: Layout) -> dict[str, "torch.Tensor"]:
    """The thin SVD of every analysed matrix (rlheals.matrices), as (out, in): {key.U, key.S, key.Vh}."""
    out = {}
    for m in layout.matrices:
        u, s, vh = svd(m.read(weights))
        out[f"{m.key}.U"], out[f"{m.key}.S"], out[f"{m.key}.Vh"] = u.contiguous(), s.contiguous(), vh.contiguous()
    return out


def svd(matrix):
    """The thin SVD (U, S, Vh) of one matrix, computed in float64 whatever its dtype: U and Vh as float32,
    S as float64 (module docstring)."""
    import torch

    u, s, vh = torch.linalg.svd(matrix.detach().double(), full_matrices=False)
    return u.float(), s, vh.float()


def write_svds(path, svds: Mapping[str, "torch.Tensor"], layout: Layout) -> None:
    """The SVD cache of one model, with the layout it was computed on: the pairs and edits that read the
    cache take the layout from it instead of building the model's module tree again."""
    from safetensors.torch import save_file

    save_file(dict(svds), str(path), metadata={"format": "pt", "layout": layout.to_json()})


def read_svds(path) -> tuple[dict[str, "torch.Tensor"], Layout]:
    """An SVD cache and its layout (`write_svds`)."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    with safe_open(str(path), "pt") as f:
        text = (f.metadata() or {}).get("layout")
    if text is None:
        raise ValueError(f"{path}: an SVD cache without its layout (written by an older version): delete it to "
                         "have it computed again")
    return load_file(str(path)), Layout.from_json(text)


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


# The metrics also computed for a random update of the same size (`compare`'s null_seed): what any update
# of that norm would show, against which the papers' "rotation, not singular values" is decided.
NULL_METRICS = ("mean_abs_sv_rel_change", "dw_rotation_share", "u_angle_mean_deg", "u_angle_ends_over_middle")
ENDS = 0.1  # the top and bottom 10% of singular vectors by rank, against the middle 80%


def ends_over_middle(angles) -> float:
    """The smaller of the mean angles of the top and bottom ENDS of the singular vectors, over the mean
    angle of the middle: above 1 when both ends rotate more than the middle (NaN for fewer than 3)."""
    n = angles.shape[0]
    k = max(1, round(ENDS * n))
    middle = angles[k:n - k]
    if n < 3 or not middle.numel() or float(middle.mean()) == 0:
        return float("nan")
    return min(float(angles[:k].mean()), float(angles[n - k:].mean())) / float(middle.mean())


def random_update(shape, norm: float, seed: int):
    """A Gaussian matrix of Frobenius norm `norm` (float64), the same for the same seed on every machine."""
    import torch

    g = torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return g * (norm / float(g.norm())) if norm > 0 else g * 0


def compare(wa, wb, svd_a, svd_b, share: float, null_seed: int | None = None) -> Iterator[dict]:
    """Rows (metric, rank, value) comparing one matrix of model a (reference) and model b.

    Scalars (rank None): mean |dS|/S; mean and max principal angle (degrees) of the top-k left and right
    singular subspaces; projection distance ||U_a U_a^T - U_b U_b^T||_F and alignment mean_i max_j
    |U_a^T U_b|_ij over the top k; the energy of dW = W_b - W_a on the diagonal of U_a^T dW V_a (value
    change) and off it (rotation), as shares; the share of W_b outside the top-k span of (U_a, V_a);
    ||dW||_F / ||W_a||_F; ends_over_middle of the paired left angles. With `null_seed`: NULL_METRICS as `null_<metric>` for W_a plus a random update
    of the same norm (random_update), its SVD computed by the same code. By rank index i:
    (S_b - S_a) / S_a, and the angle between the i-th singular vectors of a and b (left and right).

    Everything is computed in float64, and no metric is a difference of two nearly equal quantities: the
    projection distance is sqrt(2 * sum sin^2) of the principal angles, not sqrt(2k - 2 ||U_a^T U_b||^2),
    whose float32 rounding (about 1e-3 after the root) depends on the CPU's kernels and thread count and
    would drown the small differences between close models."""
    import torch

    ua, sa, vha = (t.double() for t in svd_a)
    ub, sb, vhb = (t.double() for t in svd_b)
    wa, wb = wa.double(), wb.double()
    va, vb = vha.T, vhb.T
    n = sa.shape[0]
    k = top_k(n, share)
    rel = (sb - sa) / sa.clamp(min=1e-12)
    dw = wb - wa
    dw_energy = float(dw.pow(2).sum())
    value_energy = float(torch.diagonal(ua.T @ dw @ va).pow(2).sum())
    u_radians = principal_angles(ua[:, :k], ub[:, :k])
    u_angles, v_angles = torch.rad2deg(u_radians), torch.rad2deg(principal_angles(va[:, :k], vb[:, :k]))
    top_a = ua[:, :k] @ (ua[:, :k].T @ wb @ va[:, :k]) @ va[:, :k].T
    u_paired = torch.rad2deg(paired_angles(ua, ub))
    wb_norm = float(wb.norm())
    scalars = {
        "k": k,
        "rank": n,
        "mean_abs_sv_rel_change": float(rel.abs().mean()),
        "u_angle_mean_deg": float(u_angles.mean()),
        "u_angle_max_deg": float(u_angles.max()),
        "v_angle_mean_deg": float(v_angles.mean()),
        "v_angle_max_deg": float(v_angles.max()),
        "u_projection_distance": math.sqrt(2 * float(torch.sin(u_radians).pow(2).sum())),
        "u_alignment": float((ua[:, :k].T @ ub[:, :k]).abs().max(dim=1).values.mean()),
        "dw_value_share": value_energy / dw_energy if dw_energy > 0 else 0.0,
        "dw_rotation_share": max(0.0, dw_energy - value_energy) / dw_energy if dw_energy > 0 else 0.0,
        "residual_share": float((wb - top_a).norm()) / wb_norm if wb_norm > 0 else 0.0,
        "relative_update_norm": math.sqrt(dw_energy) / max(float(wa.norm()), 1e-12),
        "u_angle_ends_over_middle": ends_over_middle(u_paired),
    }
    if null_seed is not None:
        w_null = wa + random_update(wa.shape, math.sqrt(dw_energy), null_seed)
        null = {row["metric"]: row["value"] for row in compare(wa, w_null, svd_a, svd(w_null), share)
                if row["rank_index"] is None}
        scalars |= {f"null_{metric}": null[metric] for metric in NULL_METRICS}
    for metric, value in scalars.items():
        yield {"metric": metric, "rank_index": None, "value": float(value)}
    by_rank = {
        "sv_rel_change": rel,
        "u_angle_deg": u_paired,
        "v_angle_deg": torch.rad2deg(paired_angles(va, vb)),
    }
    for metric, values in by_rank.items():
        for i, value in enumerate(values.tolist()):
            yield {"metric": metric, "rank_index": i, "value": value}


def compare_models(weights_a, weights_b, svds_a, svds_b, share: float, layouts: tuple[Layout, Layout],
                   models: tuple[str, str] = ("a", "b"), null_seed: int | None = None) -> list[dict]:
    """Every analysed matrix of two models of the same architecture, key by key (their files may name
    them differently): the rows of `compare`, with the matrix key, layer and module; with `null_seed`,
    each matrix's random update drawn from it and the matrix key. An error names the models when their
    matrices differ."""
    mine, theirs = ({m.key: m for m in layout.matrices} for layout in layouts)
    if set(mine) != set(theirs):
        only_a, only_b = sorted(set(mine) - set(theirs)), sorted(set(theirs) - set(mine))
        raise ValueError(f"{models[0]} and {models[1]} do not have the same matrices: {len(only_a)} only in the "
                         f"first (e.g. {only_a[:2]}), {len(only_b)} only in the second (e.g. {only_b[:2]})")
    rows = []
    for key in sorted(mine):
        a, b = mine[key], theirs[key]
        wa, wb = a.read(weights_a), b.read(weights_b)
        if wa.shape != wb.shape:
            raise ValueError(f"{key} ({a.tensor} of {models[0]}, {b.tensor} of {models[1]}): shapes differ "
                             f"({tuple(wa.shape)} vs {tuple(wb.shape)})")
        seed = None if null_seed is None else zlib.crc32(f"{null_seed}:{key}".encode())
        for row in compare(wa, wb, factors(svds_a, key), factors(svds_b, key), share, seed):
            rows.append({"matrix": key, "layer": a.layer, "module": a.module, **row})
    return rows
