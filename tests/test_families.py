"""The papers' model families through every stage of a minimal study: a tiny checkpoint laid out like the
released model (tests/families.py) is imported as `model.source: local`, then SFT, one run of each RL
algorithm and the control, evaluation, SVD, spectrum and one edit of each kind, all in the papers' JSON
answer format. The default run calls the stages' library entry points in one process, as the scripts
do (a Snakemake job's imports cost more than a tiny family's whole stage); `-m slow` runs the workflow
itself for each family, tables and figures included."""

import json
from pathlib import Path

import polars as pl
import pytest
import torch
import yaml

import families
from conftest import ROOT, Workflow
from rlheals import config as config_files
from rlheals import data, episodes, evaluate, limits, matrices, models, restore, rl, sft, spectrum
from rlheals.jobs import Job, Task
from rlheals.settings import SFTSettings, rl_settings
from rlheals.verify import Verifier

# Over config/smoke.yaml: two SFT steps, one update of each algorithm, two episodes per rule.
STUDY = """\
prompt: {{format: paper}}
model: {{source: local, local_path: {path}}}
eval: {{episodes: 2, max_new_tokens: 24}}
sft: {{max_steps: 2, save_steps: [0, 2], logging_steps: 1, eval_examples: 2, batch_size: 4, max_length: 512}}
rl:
  algos: [grpo, rloo, ppo]
  from_steps: [2]
  seeds: 1
  updates: 1
  save_updates: []
  prompts_per_update: 2
  num_generations: 2
  max_new_tokens: 8
  verify_turns: 2
  probe: {{every: 1, episodes: 2}}
  ppo: {{epochs: 1, minibatch: 4}}
spectrum: {{best_ood_step: 0, base_vs_sft: false, sft_vs_rl: true}}
restore:
  edits:
    - {{name: dirs, kind: directions, base: sft-0, target: sft-2, top: 0.5}}
    - {{name: vecs, kind: vectors, base: sft-0, target: sft-2, top: 0.5}}
    - {{name: layers, kind: layers, base: sft-0, target: sft-2, layers: 0.5}}
"""


def study_config(source: Path) -> dict:
    config = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    for overlay in ((ROOT / "config" / "smoke.yaml").read_text(), STUDY.format(path=source)):
        config = config_files.merged(config, yaml.safe_load(overlay))
    return config


# What the released checkpoints have: tied embeddings, attention biases, q/k norms in self-attention,
# rope type and base (and scaling factor).
LLAMA3_ROPE, PLAIN_ROPE = {"rope_type": "llama3", "rope_theta": 500000.0}, {"rope_type": "default"}
RELEASED = {
    "llama3": dict(tied=True, bias=False, qk_norm=False, rope={**LLAMA3_ROPE, "factor": 32.0}),
    "mllama": dict(tied=False, bias=False, qk_norm=False, rope={**LLAMA3_ROPE, "factor": 8.0}),
    "qwen25": dict(tied=False, bias=True, qk_norm=False, rope={**PLAIN_ROPE, "rope_theta": 1000000.0}),
    "olmo2": dict(tied=False, bias=False, qk_norm=True, rope={**PLAIN_ROPE, "rope_theta": 500000.0}),
    "gpt2": dict(tied=True, bias=True, qk_norm=False, rope=None),
}


@pytest.mark.parametrize("family", families.FAMILIES)
def test_each_family_checkpoint_is_built_as_the_released_one(family, tmp_path):
    path = families.write(family, tmp_path / family)
    config = json.loads((path / "config.json").read_text())
    text, names = config.get("text_config", config), list(models.load_weights(path))
    released = RELEASED[family]
    assert (not any(n.endswith("lm_head.weight") for n in names)) == released["tied"], names
    assert any(n.endswith(("q_proj.bias", "c_attn.bias")) for n in names) == released["bias"]
    assert any("self_attn.q_norm." in n for n in names) == released["qk_norm"]
    rope = text.get("rope_parameters")
    assert (rope and {k: rope[k] for k in released["rope"]}) == released["rope"], rope
    if family == "mllama":  # saved whole, vision tower included; cross-attention between self-attention
        assert config["architectures"] == ["MllamaForConditionalGeneration"]
        assert any(n.startswith("vision_model.") for n in names)
        cross, layers = text["cross_attention_layers"], text["num_hidden_layers"]
        assert cross and all(0 < i < layers - 1 and i + 1 not in cross for i in cross), (cross, layers)


@pytest.mark.parametrize("family", families.FAMILIES)
def test_every_stage_takes_the_family(family, tmp_path):
    source = families.write(family, tmp_path / "source")
    cfg = study_config(source)
    out = tmp_path / "models"
    # Import: the checks the workflow runs before any job, then the link into the results.
    assert limits.check_study(source, cfg) is None
    models.import_local_model(source, out / "base")
    rules, fmt = data.rules_from_config(cfg["game"]), cfg["prompt"]["format"]
    split = {name: data.make_split(name, cfg["game"], cfg["data"]) for name in cfg["data"]["splits"]}
    tests = {"id_test": split["id_test"][:1], "ood_test": split["ood_test"][:1]}
    verifier = Verifier(cfg["game"]["target"], fmt, cfg["verify"]["strict_format"], cfg["verify"]["rewards"])

    sft.run(job=Job(start=out / "base", outputs={0: out / "sft-0", 2: out / "sft-2"}, work=tmp_path / "work-sft", seed=0),
            task=Task(train=split["sft_train"], rules=rules, fmt=fmt, **tests), settings=SFTSettings.from_config(cfg["sft"]))
    probe = rl.Probe(episodes.from_rows([*tests["id_test"], *tests["ood_test"]], rules, fmt), verifier, 2, 8)
    for algo in ("grpo", "rloo", "ppo", "sft_continue"):
        rl.run(algo, job=Job(start=out / "sft-2", outputs={1: out / f"rl-{algo}-2"}, work=tmp_path / f"work-{algo}", seed=1),
               task=Task(train=split["rl_train"], rules=rules, fmt=fmt, verifier=verifier, probe=probe, **tests),
               settings=rl_settings(algo, cfg["rl"], cfg["sft"]))

    loaded, layouts = {}, {}
    for m in ("base", "sft-0", "sft-2", "rl-ppo-2"):
        loaded[m], layouts[m] = matrices.load(out / m)
    svds = {m: spectrum.svd_model(w, layouts[m]) for m, w in loaded.items()}
    for a, b in (("base", "sft-0"), ("sft-0", "sft-2"), ("sft-2", "rl-ppo-2")):
        rows = spectrum.compare_models(loaded[a], loaded[b], svds[a], svds[b], 0.5, (layouts[a], layouts[b]), (a, b))
        moved = max(r["value"] for r in rows if r["metric"] == "relative_update_norm")
        assert (moved == 0) == (a == "base"), (a, b)  # the base is sft-0 under its own names; SFT and PPO move weights
    if family == "mllama":  # a text-only forward pass skips the cross-attention layers: training leaves them
        config = json.loads((out / "sft-0" / "config.json").read_text())
        cross = config.get("text_config", config)["cross_attention_layers"]
        names = [k for k in loaded["sft-0"] if layouts["sft-0"].layer_of(k) in cross]
        assert names and all(torch.equal(loaded[m][layouts["sft-0"].counterpart(k, layouts[m])], loaded["sft-0"][k])
                             for m in ("sft-2", "rl-ppo-2") for k in names)
    for spec in cfg["restore"]["edits"]:
        edited = restore.edit(spec, loaded["sft-0"], loaded["sft-2"], svds["sft-0"], svds["sft-2"],
                              (layouts["sft-0"], layouts["sft-2"]), (spec["base"], spec["target"]))
        models.save_weights(edited, out / "sft-2", out / f"edit-{spec['name']}")

    decoding = evaluate.Decoding(do_sample=False, max_new_tokens=cfg["eval"]["max_new_tokens"])
    protocol = evaluate.Protocol(verifier, cfg["eval"]["verify_turns"], decoding, 8)
    hands = episodes.from_rows([*tests["id_test"], *tests["ood_test"]], rules, fmt)
    for model_dir in sorted(out.iterdir()):
        model = models.load_model(model_dir, dtype=torch.float32)
        rows = evaluate.run_episodes(model, models.load_tokenizer(model_dir), hands, protocol)
        assert [r["rule"] for r in rows] == ["id", "ood"], model_dir.name


@pytest.mark.slow
@pytest.mark.parametrize("family", families.FAMILIES)
def test_a_family_runs_every_stage_of_the_workflow(family, tmp_path, session_environment):
    source = families.write(family, tmp_path / "source")
    (tmp_path / "study").mkdir()
    study = Workflow(tmp_path / "study")
    config = study.write_config("family.yaml", STUDY.format(path=source))
    study.run(configfile=["config/smoke.yaml", config], env=session_environment)
    results = study.path / "results"
    accuracy = pl.read_parquet(results / "tables" / "accuracy.parquet")
    assert {"sft-0", "sft-2", "rl-grpo-2", "rl-rloo-2", "rl-ppo-2", "rl-sft_continue-2",
            "edit-dirs", "edit-vecs", "edit-layers"} <= set(accuracy["model_id"])
    # The spectrum covers every matrix of the family, under the shared labels.
    spectrum = pl.read_parquet(results / "tables" / "spectrum.parquet")
    modules = set(spectrum["module"])
    assert {"q", "k", "v", "o", "up", "down", "embed"} <= modules and (family == "gpt2") != ("gate" in modules)
    assert spectrum.filter(pl.col("b") == "sft-2")["relative_update_norm"].max() > 0  # SFT moved the weights
    # The models the pipeline wrote load as the family's causal LM, with the base's tokenizer.
    sft = models.load_model(results / "models" / "sft-2")
    assert sft.config.get_text_config().num_hidden_layers == families.layers(family)
    base_tokens = json.loads((source / "tokenizer.json").read_text())["added_tokens"]
    assert json.loads((results / "models" / "sft-2" / "tokenizer.json").read_text())["added_tokens"] == base_tokens
