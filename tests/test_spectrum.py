import math

import pytest
import torch

import families
from rlheals import matrices, models, restore, spectrum

NAME = "layers.0.q"


svd = spectrum.svd


def metrics(wa, wb, share=0.5) -> dict:
    rows = spectrum.compare(wa, wb, svd(wa), svd(wb), share)
    out = {}
    for r in rows:
        out.setdefault(r["metric"], []).append(r["value"])
    return out


def random_matrix(rows, cols, seed):
    return torch.randn(rows, cols, generator=torch.Generator().manual_seed(seed))


def test_identical_matrices_have_zero_angles_and_changes():
    for shape in ((12, 8), (128, 128), (384, 128), (8, 32)):
        w = random_matrix(*shape, seed=0)
        m = metrics(w, w.clone())
        for key in ("mean_abs_sv_rel_change", "relative_update_norm", "u_projection_distance"):
            assert m[key][0] == pytest.approx(0.0, abs=1e-6), (shape, key)
        # Singular vectors are stored in float32: orthonormal to about 1e-7, angles of zero to about 1e-6 deg.
        for key in ("u_angle_mean_deg", "u_angle_max_deg", "v_angle_max_deg"):
            assert m[key][0] == pytest.approx(0.0, abs=1e-5), (shape, key)
        assert max(m["u_angle_deg"]) < 1e-5 and max(m["v_angle_deg"]) < 1e-5, shape
        assert m["u_alignment"][0] == pytest.approx(1.0, abs=1e-6), shape


def reference_angles(wa, wb, k):
    """Principal angles of the top-k singular subspaces and the angles between paired singular vectors,
    computed the textbook way (arccos of cosines) from float64 SVDs: exact enough at angles of 1e-5 rad
    and more, where float64 arccos errs by about 1e-11 rad."""
    (ua, _, vha), (ub, _, vhb) = (torch.linalg.svd(w.double(), full_matrices=False) for w in (wa, wb))
    out = {}
    for side, a, b in (("u", ua, ub), ("v", vha.T, vhb.T)):
        cosines = torch.linalg.svdvals(a[:, :k].T @ b[:, :k]).clamp(max=1.0)
        out[f"{side}_angle_mean_deg"] = float(torch.rad2deg(torch.arccos(cosines)).mean())
        out[f"{side}_angle_deg"] = torch.rad2deg(torch.arccos((a * b).sum(0).abs().clamp(max=1.0)))
    pa, pb = ua[:, :k] @ ua[:, :k].T, ub[:, :k] @ ub[:, :k].T
    out["u_projection_distance"] = float(torch.linalg.matrix_norm(pa - pb))
    return out


@pytest.mark.parametrize("shape", [(128, 128), (384, 128), (48, 96)])
def test_a_tiny_perturbation_gives_the_exact_angles(shape):
    # A float32 matrix (as weights are stored) and itself plus a perturbation of relative norm 1e-4, the
    # size of the smallest changes the study compares: every angle within 1% of the exact answer (a
    # float32 SVD misses the angles between paired singular vectors by up to 40% here).
    w = random_matrix(*shape, seed=7)
    e = random_matrix(*shape, seed=8)
    w2 = w + e * (1e-4 * w.norm() / e.norm())
    share = 0.25
    m, ref = metrics(w, w2, share), reference_angles(w, w2, spectrum.top_k(min(shape), share))
    for key in ("u_angle_mean_deg", "v_angle_mean_deg", "u_projection_distance"):
        assert ref[key] > 1e-4 and m[key][0] == pytest.approx(ref[key], rel=0.01), key
    for key in ("u_angle_deg", "v_angle_deg"):
        assert torch.allclose(torch.tensor(m[key], dtype=torch.float64), ref[key], rtol=0.01, atol=0), key


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
    assert torch.allclose(restore.mix(svd(b), svd(t), 6, 0, values_from_b=True), b.double(), atol=1e-6)
    # k_top + k_tail = n with directions only: U_B S_T V_B^T (the public code returned B here).
    ub, _, vhb = svd(b)
    both = restore.mix(svd(b), svd(t), 4, 2, values_from_b=False)
    assert torch.allclose(both, (ub * svd(t)[1]) @ vhb.double(), atol=1e-6) and not torch.allclose(both, b.double(), atol=1e-3)


def test_directions_only_keeps_the_target_singular_values():
    b, t = random_matrix(9, 7, 5), random_matrix(9, 7, 6)
    for k_top, k_tail in ((2, 0), (0, 3), (2, 2), (7, 0)):
        edited = restore.mix(svd(b), svd(t), k_top, k_tail, values_from_b=False)
        assert torch.allclose(torch.linalg.svdvals(edited), svd(t)[1], atol=1e-9)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """Tiny checkpoints of every family, two seeds each: {family: (dir seed 0, dir seed 1)}."""
    root = tmp_path_factory.mktemp("families")
    return {f: (families.write(f, root / f"{f}-0", seed=0), families.write(f, root / f"{f}-1", seed=1))
            for f in families.FAMILIES}


def loaded(path, dtype=None):
    weights, layout = matrices.load(path)
    return ({k: v.to(dtype) for k, v in weights.items()} if dtype else weights), layout


def two(checkpoints, family="llama3", dtype=None):
    """B and T of one family: weights, layouts, SVDs."""
    (wb, lb), (wt, lt) = (loaded(d, dtype) for d in checkpoints[family])
    return wb, wt, (lb, lt), spectrum.svd_model(wb, lb), spectrum.svd_model(wt, lt)


def test_every_family_maps_to_the_same_labels_as_out_by_in_matrices(checkpoints):
    for family, (path, _) in checkpoints.items():
        weights, layout = loaded(path)
        gate = [] if family == "gpt2" else ["gate"]
        heads = ["embed"] + (["lm_head"] if family in ("olmo2", "mllama", "qwen25") else [])  # the others tie
        labels = ["q", "k", "v", "o", *gate, "up", "down"]
        assert sorted(m.key for m in layout.matrices) == sorted(
            [f"layers.{i}.{m}" for i in range(families.layers(family)) for m in labels] + heads), family
        shapes = {m.key: tuple(m.read(weights).shape) for m in layout.matrices}
        kv = 32 if family == "gpt2" else 16  # GPT-2 has no grouped-query attention
        assert shapes["layers.1.q"] == (32, 32) and shapes["layers.1.k"] == (kv, 32), family
        assert shapes["layers.0.up"][1] == 32 and shapes["layers.0.down"][0] == 32, family  # (out, in)
        assert layout.layers == families.layers(family) and layout.layer_of(next(m.tensor for m in layout.matrices if m.layer == 1)) == 1


def test_an_svd_cache_carries_its_layout_and_an_old_cache_is_refused(checkpoints, tmp_path):
    for family in ("gpt2", "mllama"):  # fused, transposed parts; a prefixed vision checkpoint
        weights, layout = loaded(checkpoints[family][0])
        svds = spectrum.svd_model(weights, layout)
        spectrum.write_svds(tmp_path / f"{family}.safetensors", svds, layout)
        back, read_layout = spectrum.read_svds(tmp_path / f"{family}.safetensors")
        assert read_layout == layout and back.keys() == svds.keys(), family
        assert all(torch.equal(m.read(weights), r.read(weights)) for m, r in zip(layout.matrices, read_layout.matrices))
        read_layout.check(weights, family)
        with pytest.raises(ValueError, match=r"other: its weights lack .*tensor"):
            read_layout.check([k for k in weights if k != layout.matrices[0].tensor], "other")
    from safetensors.torch import save_file

    save_file(svds, tmp_path / "old.safetensors", metadata={"format": "pt"})
    with pytest.raises(ValueError, match="old.safetensors: an SVD cache without its layout"):
        spectrum.read_svds(tmp_path / "old.safetensors")


def test_gpt2_conv1d_thirds_are_the_q_k_v_maps_the_model_computes(checkpoints):
    from transformers import GPT2LMHeadModel

    path = checkpoints["gpt2"][0]
    weights, layout = loaded(path)
    model = GPT2LMHeadModel.from_pretrained(path)
    x = torch.randn(3, 32)
    attn = model.transformer.h[1].attn
    fused = attn.c_attn(x) - attn.c_attn.bias  # (3, 96): q | k | v
    for i, label in enumerate("qkv"):
        w = next(m for m in layout.matrices if m.key == f"layers.1.{label}").read(weights)
        torch.testing.assert_close(x @ w.T, fused[:, 32 * i : 32 * (i + 1)])
    down = next(m for m in layout.matrices if m.key == "layers.1.down").read(weights)  # Conv1D (in, out) -> (out, in)
    h = torch.randn(3, 128)
    torch.testing.assert_close(h @ down.T, model.transformer.h[1].mlp.c_proj(h) - model.transformer.h[1].mlp.c_proj.bias)


def test_an_edit_of_a_fused_part_writes_that_part_only(checkpoints):
    wb, wt, layouts, svds_b, svds_t = two(checkpoints, "gpt2")
    edited = restore.edit({"kind": "directions", "top": 1.0, "modules": r"^layers\.0\.k$"}, wb, wt, svds_b, svds_t, layouts)
    name = "transformer.h.0.attn.c_attn.weight"  # (in, out): columns 32:64 are k
    assert [n for n in wt if not torch.equal(edited[n], wt[n])] == [name]
    assert torch.equal(edited[name][:, :32], wt[name][:, :32]) and torch.equal(edited[name][:, 64:], wt[name][:, 64:])
    ub, _, vhb = svds_b["layers.0.k.U"], None, svds_b["layers.0.k.Vh"]
    torch.testing.assert_close(edited[name][:, 32:64].T, ((ub.double() * svds_t["layers.0.k.S"]) @ vhb.double()).float())


def test_the_vision_checkpoint_and_the_text_model_saved_after_it_compare_key_by_key(checkpoints, tmp_path):
    base = checkpoints["mllama"][0]
    text = models.load_model(base, dtype=torch.float32)  # what SFT loads, and then saves
    text.save_pretrained(tmp_path / "text")
    (wb, lb), (wt, lt) = loaded(base), loaded(tmp_path / "text")
    assert lb.layer_prefix == "language_model.model.layers." and lt.layer_prefix == "model.layers."
    rows = spectrum.compare_models(wb, wt, spectrum.svd_model(wb, lb), spectrum.svd_model(wt, lt), 0.5, (lb, lt))
    changes = [r["value"] for r in rows if r["metric"] == "relative_update_norm"]
    layers = families.layers("mllama")
    assert len(changes) == len(lt.matrices) == 7 * layers + 2 and max(changes) == 0.0  # the same weights, renamed
    # A layer reset from the vision checkpoint into the text model finds each tensor under its other name.
    moved = {k: v + 1 for k, v in wt.items()}
    edited = restore.edit({"kind": "layers", "layers": 0.5}, wb, moved, {}, {}, (lb, lt))
    assert torch.equal(edited["model.layers.0.mlp.up_proj.weight"], wb["language_model.model.layers.0.mlp.up_proj.weight"])
    assert torch.equal(edited["model.embed_tokens.weight"], wb["language_model.model.embed_tokens.weight"])
    last = f"model.layers.{layers - 1}.mlp.up_proj.weight"
    assert torch.equal(edited[last], moved[last])


def test_layer_reset_copies_whole_layers_and_leaves_the_rest_bit_identical(checkpoints):
    wb, wt, layouts, _, _ = two(checkpoints, "qwen25")
    edited = restore.edit({"kind": "layers", "layers": 0.5}, wb, wt, {}, {}, layouts)
    for name, w in edited.items():
        from_b = name.startswith("model.layers.0.") or name == "model.embed_tokens.weight"  # biases and norms too
        assert torch.equal(w, wb[name] if from_b else wt[name]), name
    edited = restore.edit({"kind": "layers", "layer_range": [1, 1]}, wb, wt, {}, {}, layouts)
    for name, w in edited.items():
        assert torch.equal(w, wb[name] if name.startswith("model.layers.1.") else wt[name]), name


def test_svd_edits_keep_the_target_dtype_and_touch_only_matched_modules(checkpoints):
    wb, wt, layouts, svds_b, svds_t = two(checkpoints, "olmo2", torch.bfloat16)
    edited = restore.edit({"kind": "directions", "top": 0.25, "modules": r"\.q$"}, wb, wt, svds_b, svds_t, layouts)
    assert all(w.dtype == torch.bfloat16 for w in edited.values())
    changed = {n for n in wt if not torch.equal(edited[n], wt[n])}
    assert changed == {f"model.layers.{i}.self_attn.q_proj.weight" for i in range(2)}
    with pytest.raises(ValueError, match="unknown edit kind"):
        restore.edit({"kind": "swap"}, wb, wt, svds_b, svds_t, layouts)


def test_an_analysis_or_edit_of_nothing_is_an_error_naming_the_models(checkpoints, tmp_path):
    wb, wt, layouts, svds_b, svds_t = two(checkpoints)
    # A weights file that lacks a module of its config's model: named, never skipped.
    partial = {k: v for k, v in wt.items() if "layers.1.mlp.down_proj" not in k}
    with pytest.raises(ValueError, match=r"its module model\.layers\.1\.mlp\.down_proj\.weight has no tensor"):
        matrices.layout(checkpoints["llama3"][1], partial)
    other = loaded(checkpoints["olmo2"][1])[1]  # untied: one more matrix
    with pytest.raises(ValueError, match=r"sft-0 and sft-2 do not have the same matrices: 0 only in the first .*1 only in the second \(e\.g\. \['lm_head'\]"):
        spectrum.compare_models(wb, wt, svds_b, svds_t, 0.5, (layouts[0], other), models=("sft-0", "sft-2"))
    # An edit whose modules match nothing, or whose B is T, would only publish T again.
    with pytest.raises(ValueError, match=r"edit none: changes no tensor of sft-800 \(matrices whose keys match 'no_such'"):
        restore.edit({"name": "none", "kind": "directions", "top": 0.2, "modules": "no_such"}, wb, wt, svds_b, svds_t,
                     layouts, models=("sft-50", "sft-800"))
    with pytest.raises(ValueError, match=r"edit same: changes no tensor of T \(layers 0.5"):
        restore.edit({"name": "same", "kind": "layers", "layers": 0.5}, wt, wt, {}, {}, (layouts[1], layouts[1]))


def summary_of(updates: dict[str, tuple[torch.Tensor, torch.Tensor]], seed: int = 0):
    """The spectrum table of a pair base -> sft-9 whose matrices are the given (W_a, W_b), with the
    random-update null, as the workflow's spectrum and spectrum_table stages write it."""
    import polars as pl

    from rlheals import tables

    rows = [{"matrix": key, "layer": i, "module": "q", **r}
            for i, (key, (wa, wb)) in enumerate(updates.items())
            for r in spectrum.compare(wa, wb, svd(wa), svd(wb), 0.2, null_seed=seed + i)]
    frame = pl.DataFrame(rows, schema_overrides={"layer": pl.Int64, "rank_index": pl.Int64})
    return tables.spectrum_table([frame.select(pl.lit("base").alias("a"), pl.lit("sft-9").alias("b"), pl.all())])


def decided(summary) -> dict[str, str]:
    from rlheals import findings

    return {r["claim"].split(":")[0].split(",")[0]: r["reproduced"]
            for r in findings.spectrum_stability(summary, "base", "sft-9")}


def test_the_random_update_null_is_what_a_random_update_shows():
    w = random_matrix(128, 128, seed=1)
    m = metrics(w, w)  # no null asked: none computed
    assert "null_dw_rotation_share" not in m
    rows = {r["metric"]: r["value"] for r in spectrum.compare(w, w + 0.01 * random_matrix(128, 128, 2), svd(w),
                                                               svd(w + 0.01 * random_matrix(128, 128, 2)), 0.2,
                                                               null_seed=5) if r["rank_index"] is None}
    # A Gaussian update puts 1/n of its energy on the diagonal of U^T dW V: a share of about 1 - 1/128.
    assert rows["null_dw_rotation_share"] == pytest.approx(1 - 1 / 128, abs=0.01)
    assert rows["dw_rotation_share"] == pytest.approx(rows["null_dw_rotation_share"], abs=0.01)
    again = {r["metric"]: r["value"] for r in spectrum.compare(w, w, svd(w), svd(w), 0.2, null_seed=5)}
    assert again["null_dw_rotation_share"] == 0  # an update of norm 0
    g = spectrum.random_update((64, 32), 3.0, seed=7)
    assert float(g.norm()) == pytest.approx(3.0) and torch.equal(g, spectrum.random_update((64, 32), 3.0, seed=7))


def test_finding_3_is_decided_against_a_random_update_and_can_fail():
    base = {f"layers.{i}.q": random_matrix(96, 64, seed=10 + i).double() for i in range(8)}
    # An update of random direction: as rotational as chance, so the run cannot tell it from the null.
    random_pair = {k: (w, w + 0.05 * w.norm() / 80 * random_matrix(96, 64, seed=40 + i).double())
                   for i, (k, w) in enumerate(base.items())}
    assert decided(summary_of(random_pair))["What changes is rotation"] == "undefined"
    # A small pure rotation of the left singular vectors (W_b = R W_a, a relative change of about 3%):
    # more rotational than chance. (At 27% the second-order diagonal of R - I makes even a pure rotation's
    # share 0.98, below a random update's 0.99: the singular values' test is the sharper one there.)
    rotated = {}
    for i, (k, w) in enumerate(base.items()):
        a = random_matrix(96, 96, seed=60 + i).double()
        r = torch.linalg.matrix_exp(0.002 * (a - a.T))
        rotated[k] = (w, r @ w)
    found = decided(summary_of(rotated))
    assert found["What changes is rotation"] == "yes"
    assert found["Singular values barely move during SFT"] == "yes"  # a rotation keeps them exactly
    # Singular values scaled by up to 5%, vectors kept: neither claim holds.
    scaled = {}
    for i, (k, w) in enumerate(base.items()):
        u, s, vh = torch.linalg.svd(w, full_matrices=False)
        scaled[k] = (w, u @ torch.diag(s * (1 + 0.05 * torch.rand(s.shape[0], generator=torch.Generator().manual_seed(i),
                                                                    dtype=torch.float64))) @ vh)
    found = decided(summary_of(scaled))
    assert found["What changes is rotation"] == "no" and found["Singular values barely move during SFT"] == "no"
