import math

import pytest
import torch

from rlheals import restore, spectrum

NAME = "model.layers.0.self_attn.q_proj.weight"


def svd(w):
    return spectrum.factors(spectrum.svd_model({NAME: w}), NAME)


def metrics(wa, wb, share=0.5) -> dict:
    rows = spectrum.compare(NAME, wa, wb, svd(wa), svd(wb), share)
    out = {}
    for r in rows:
        out.setdefault(r["metric"], []).append(r["value"])
    return out


def random_matrix(rows, cols, seed):
    return torch.randn(rows, cols, generator=torch.Generator().manual_seed(seed))


def test_identical_matrices_have_zero_angles_and_changes():
    w = random_matrix(12, 8, 0)
    m = metrics(w, w.clone())
    for key in ("u_angle_mean_deg", "v_angle_max_deg", "mean_abs_sv_rel_change", "relative_update_norm", "u_projection_distance"):
        assert m[key][0] == pytest.approx(0.0, abs=1e-3), key
    assert max(m["u_angle_deg"]) < 0.1 and m["u_alignment"][0] == pytest.approx(1.0, abs=1e-5)


def test_a_known_rotation_gives_its_angle():
    # W = diag(3, 2, 1); rotate the left singular vectors 1 and 2 by 30 degrees inside their plane's
    # span with e4: the top-2 left subspace turns by 30 degrees, singular values stay.
    w = torch.zeros(4, 3)
    w[0, 0], w[1, 1], w[2, 2] = 3.0, 2.0, 1.0
    c, s = math.cos(math.radians(30)), math.sin(math.radians(30))
    rotation = torch.eye(4)
    rotation[0, 0], rotation[0, 3], rotation[3, 0], rotation[3, 3] = c, -s, s, c
    m = metrics(w, rotation @ w, share=0.34)  # k = 2 of rank 3
    assert m["u_angle_max_deg"][0] == pytest.approx(30.0, abs=1e-3)
    assert m["u_angle_deg"][0] == pytest.approx(30.0, abs=1e-3) and m["u_angle_deg"][1] == pytest.approx(0.0, abs=1e-3)
    assert m["v_angle_max_deg"][0] == pytest.approx(0.0, abs=1e-3)  # right vectors untouched
    assert max(abs(x) for x in m["sv_rel_change"]) < 1e-5
    # The change is all rotation: nothing on the diagonal of U_a^T dW V_a beyond the cosine shrink.
    dw = rotation @ w - w
    direct = float(torch.linalg.matrix_norm(dw) ** 2)
    diag = (torch.tensor([c - 1, 0, 0]) * torch.tensor([3.0, 2, 1])).pow(2).sum()
    assert m["dw_value_share"][0] == pytest.approx(float(diag) / direct, abs=1e-4)


def test_non_square_grouped_query_matrices():
    wa, wb = random_matrix(4, 16, 1), random_matrix(4, 16, 2)  # k/v projection: fewer rows than columns
    m = metrics(wa, wb, share=1.0)
    assert len(m["sv_rel_change"]) == 4 and m["rank"] == [4.0]
    assert m["u_angle_max_deg"][0] == pytest.approx(0.0, abs=1e-2)  # U spans all of R^4 for both: no angle
    assert m["v_angle_max_deg"][0] > 1.0  # the 4-dim right subspaces in R^16 differ


def test_restoring_all_directions_with_base_values_gives_the_base():
    b, t = random_matrix(10, 6, 3), random_matrix(10, 6, 4)
    assert torch.allclose(restore.mix(svd(b), svd(t), 6, 0, values_from_b=True), b, atol=1e-5)
    # k_top + k_tail = n with directions only: U_B S_T V_B^T (the public code returned B here).
    ub, _, vhb = svd(b)
    both = restore.mix(svd(b), svd(t), 4, 2, values_from_b=False)
    assert torch.allclose(both, (ub * svd(t)[1]) @ vhb, atol=1e-5) and not torch.allclose(both, b, atol=1e-3)


def test_directions_only_keeps_the_target_singular_values():
    b, t = random_matrix(9, 7, 5), random_matrix(9, 7, 6)
    for k_top, k_tail in ((2, 0), (0, 3), (2, 2), (7, 0)):
        edited = restore.mix(svd(b), svd(t), k_top, k_tail, values_from_b=False)
        assert torch.allclose(torch.linalg.svdvals(edited), svd(t)[1], atol=1e-4)


def state(seed, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    out = {"model.embed_tokens.weight": torch.randn(20, 8, generator=g), "lm_head.weight": torch.randn(20, 8, generator=g),
           "model.norm.weight": torch.randn(8, generator=g)}
    for layer in range(4):
        for module in ("self_attn.q_proj", "self_attn.k_proj", "mlp.down_proj"):
            rows = 4 if module.endswith("k_proj") else 8
            out[f"model.layers.{layer}.{module}.weight"] = torch.randn(rows, 8, generator=g)
        out[f"model.layers.{layer}.input_layernorm.weight"] = torch.randn(8, generator=g)
    return {k: v.to(dtype) for k, v in out.items()}


def test_layer_reset_leaves_other_layers_bit_identical():
    b, t = state(0), state(1)
    edited = restore.edit({"kind": "layers", "layers": 0.5}, b, t, {}, {})
    for name, w in edited.items():
        from_b = name.startswith(("model.layers.0.", "model.layers.1.")) or name == "model.embed_tokens.weight"
        assert torch.equal(w, b[name] if from_b else t[name]), name


def test_a_layer_range_resets_only_those_layers():
    b, t = state(0), state(1)
    edited = restore.edit({"kind": "layers", "layer_range": [1, 2]}, b, t, {}, {})
    for name, w in edited.items():
        from_b = name.startswith(("model.layers.1.", "model.layers.2."))
        assert torch.equal(w, b[name] if from_b else t[name]), name


def test_svd_edits_keep_the_target_dtype_and_touch_only_matched_modules():
    b, t = state(0, torch.bfloat16), state(1, torch.bfloat16)
    svds_b, svds_t = spectrum.svd_model(b), spectrum.svd_model(t)
    edited = restore.edit({"kind": "directions", "top": 0.25, "modules": r"q_proj"}, b, t, svds_b, svds_t)
    assert all(w.dtype == torch.bfloat16 for w in edited.values())
    changed = {n for n in t if not torch.equal(edited[n], t[n])}
    assert changed and all("q_proj" in n for n in changed)
    with pytest.raises(ValueError, match="unknown edit kind"):
        restore.edit({"kind": "swap"}, b, t, svds_b, svds_t)


def test_an_analysis_or_edit_of_nothing_is_an_error_naming_the_models():
    # GPT-2-style names: none of them is a matrix the analysis knows.
    gpt2 = {"transformer.h.0.attn.c_attn.weight": torch.randn(8, 24), "transformer.wte.weight": torch.randn(16, 8)}
    with pytest.raises(ValueError, match=r"results/models/gpt2: no matrix to analyse among its 2 tensors \(looked for"):
        spectrum.svd_model(gpt2, "results/models/gpt2")
    b, t = state(0), state(1)
    svds_b, svds_t = spectrum.svd_model(b), spectrum.svd_model(t)
    with pytest.raises(ValueError, match=r"sft-2: no matrix to analyse"):
        spectrum.compare_models(b, gpt2, svds_b, {}, 0.5, models=("sft-0", "sft-2"))
    fewer = {k: v for k, v in t.items() if "layers.3." not in k}
    with pytest.raises(ValueError, match=r"sft-0 and sft-2 do not have the same matrices: 3 only in the first"):
        spectrum.compare_models(b, fewer, svds_b, spectrum.svd_model(fewer), 0.5, models=("sft-0", "sft-2"))
    # An edit whose modules match nothing, or whose B is T, would only publish T again.
    with pytest.raises(ValueError, match=r"edit none: changes no tensor of sft-800 \(tensors matching 'no_such'"):
        restore.edit({"name": "none", "kind": "directions", "top": 0.2, "modules": "no_such"}, b, t, svds_b, svds_t,
                     models=("sft-50", "sft-800"))
    with pytest.raises(ValueError, match=r"edit same: changes no tensor of T \(layers 0.5"):
        restore.edit({"name": "same", "kind": "layers", "layers": 0.5}, t, t, {}, {})
    with pytest.raises(ValueError, match=r"edit reset: gpt2 has no decoder layer"):
        restore.edit({"name": "reset", "kind": "layers", "layers": 0.5}, gpt2, gpt2, {}, {}, models=("gpt2", "gpt2"))


def test_recovery_fraction():
    assert restore.recovery(0.15, 0.20, 0.10) == pytest.approx(0.5)
    assert math.isnan(restore.recovery(0.1, 0.1, 0.1))
