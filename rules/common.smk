# Config helpers and target lists shared by every stage. Kept light: every cluster job re-parses this.
import hashlib
import importlib.util
import json
import re
from pathlib import Path

SPLITS = ["sft_train", "rl_train", "id_test", "ood_test"]
TEST_SPLITS = ["id_test", "ood_test"]


# Snakemake reruns a job when its script changes, not when the package code it calls does: each rule
# also gets, as a param, a hash of the rlheals modules its script imports (transitively).
PACKAGE_DIR = Path(importlib.util.find_spec("rlheals").submodule_search_locations[0])
_IMPORTS = re.compile(r"^\s*from rlheals(?:\.(\w+))? import ([\w, ]+)|^\s*import rlheals\.(\w+)", re.M)


def _package_imports(text):
    found = set()
    for submodule, names, plain in _IMPORTS.findall(text):
        found |= (
            {submodule or plain}
            if submodule or plain
            else {n.split(" as ")[0].strip() for n in names.split(",")}
        )
    return {m for m in found if (PACKAGE_DIR / f"{m}.py").exists()}


def code_of(script):
    """A hash of the package modules `scripts/<script>` uses: editing one reruns the rules that use it."""
    todo, seen = _package_imports((Path(workflow.basedir) / "scripts" / script).read_text()), set()
    while todo:
        name = todo.pop()
        if name not in seen:
            seen.add(name)
            todo |= _package_imports((PACKAGE_DIR / f"{name}.py").read_text())
    digest = hashlib.sha256()
    for name in sorted(seen):
        digest.update(name.encode() + (PACKAGE_DIR / f"{name}.py").read_bytes())
    return digest.hexdigest()[:16]


def canonical(obj):
    """A config slice as a param: sorted-key JSON, so reordering keys never triggers a rerun."""
    return json.dumps(obj, sort_keys=True)


def data_slice(split):
    """What one split's hands depend on: the game, the hold-out settings, its own spec and the rules of
    the test splits (their held-out multisets are banned from training)."""
    data = config["data"]
    splits = {t: {"rule": data["splits"][t]["rule"]} for t in TEST_SPLITS}
    splits[split] = data["splits"][split]
    return {
        "game": config["game"],
        "data": {
            "holdout_seed": data["holdout_seed"],
            "holdout_share": data["holdout_share"],
            "splits": splits,
        },
    }


def pretrain_corpus_slice():
    p = config["pretrain"]
    corpus = {k: p[k] for k in ("corpus_size", "mix", "target_puzzle_sizes", "seed")}
    return {"target": config["game"]["target"], "pretrain": corpus}


def base_slice():
    """What the tiny base model depends on (besides its corpus): size, training, and how it is probed."""
    return {
        "game": config["game"],
        "prompt": config["prompt"],
        "verify": config["verify"],
        "tiny": config["model"]["tiny"],
        "pretrain": config["pretrain"],
    }


SFT_STEPS = sorted(config["sft"]["save_steps"])


def sft_slice():
    return {"game": config["game"], "prompt": config["prompt"], "sft": config["sft"]}


def eval_slice():
    return {
        "game": config["game"],
        "prompt": config["prompt"],
        "verify": config["verify"],
        "eval": config["eval"],
    }


# RL runs: one per (algo, SFT step, seed); the continued-SFT control is one more algo.
RL = config["rl"]
RL_FROM = SFT_STEPS if RL["from_steps"] == "all" else sorted(RL["from_steps"])
RL_ALGOS = [*RL["algos"], *(["sft_continue"] if RL["control"] else [])]
RL_SEEDS = list(range(1, RL["seeds"] + 1))
RL_SAVE_UPDATES = sorted(RL["save_updates"])


def rl_run_id(algo, step, seed):
    return f"{algo}-{step}" + (f"-s{seed}" if len(RL_SEEDS) > 1 else "")


RL_RUNS = [rl_run_id(a, step, seed) for a in RL_ALGOS for step in RL_FROM for seed in RL_SEEDS]


def parse_rl_run(run):
    """'grpo-100-s2' -> ('grpo', 100, 2); the seed is 1 when the id carries none."""
    algo, step, seed = re.fullmatch(r"([a-z_]+)-(\d+)(?:-s(\d+))?", run).groups()
    return algo, int(step), int(seed or 1)


def rl_slice(run):
    """What one RL run depends on: its algo's settings only (the run list keys are not among them)."""
    algo, step, seed = parse_rl_run(run)
    skip = {"algos", "from_steps", "seeds", "control"}
    if algo != "ppo":
        skip |= {"ppo", "verify_turns"}
    if algo == "sft_continue":  # the control trains as SFT does: sft.deepspeed
        skip |= {"deepspeed"}
    if algo == "sft_continue":
        skip |= {
            "num_generations",
            "temperature",
            "kl_coef",
            "lr",
            "lr_scheduler",
            "max_new_tokens",
            "max_grad_norm",
            "bf16",
            "rewards",
        }
    out = {
        "game": config["game"],
        "prompt": config["prompt"],
        "verify": config["verify"],
        "probe_eval": {k: config["eval"][k] for k in ("verify_turns", "max_new_tokens")},
        "rl": {k: v for k, v in RL.items() if k not in skip},
        "algo": algo,
        "seed": seed,
    }
    if algo == "sft_continue":
        out["sft"] = {
            k: v
            for k, v in config["sft"].items()
            if k not in ("save_steps", "max_steps", "logging_steps", "eval_examples")
        }
    return out


# Every model of the study is evaluated; model ids name their directories (results/models/{model_id}).
RL_MODELS = [f"rl-{run}" for run in RL_RUNS] + [f"rl-{run}-u{u}" for run in RL_RUNS for u in RL_SAVE_UPDATES]
STUDY_MODELS = ["base", *[f"sft-{step}" for step in SFT_STEPS], *RL_MODELS]


def known_model(model_id, key):
    """A model id the config names must be one the study makes."""
    if model_id not in STUDY_MODELS:
        raise ValueError(
            f"config key {key}: {model_id!r} is not a model of this study (one of {STUDY_MODELS})"
        )
    return model_id


# Spectrum pairs (a = reference, b = compared) and restoration edits, from config.
SPECTRUM = config["spectrum"]


def spectrum_pairs():
    pairs = []
    if SPECTRUM["base_vs_sft"]:
        pairs += [("base", f"sft-{s}") for s in SFT_STEPS if s > 0]
    best = SPECTRUM["best_ood_step"]
    if best is not None:
        known_model(f"sft-{best}", "spectrum.best_ood_step")
        pairs += [(f"sft-{best}", f"sft-{s}") for s in SFT_STEPS if s > best]
    if SPECTRUM["sft_vs_rl"]:
        pairs += [(f"sft-{parse_rl_run(run)[1]}", f"rl-{run}") for run in RL_RUNS]
    for i, (a, b) in enumerate(SPECTRUM["pairs"]):
        pairs.append((known_model(a, f"spectrum.pairs.{i}"), known_model(b, f"spectrum.pairs.{i}")))
    return list(dict.fromkeys(pairs))


SPECTRUM_PAIRS = spectrum_pairs()
EDITS = {edit["name"]: edit for edit in config["restore"]["edits"]}
if len(EDITS) != len(config["restore"]["edits"]):
    raise ValueError("config key restore.edits: edit names must be unique")
for _name, _spec in EDITS.items():
    known_model(_spec["base"], f"restore.edits.{_name}.base")
    known_model(_spec["target"], f"restore.edits.{_name}.target")
    if _spec["kind"] == "layers" and "layers" not in _spec and "layer_range" not in _spec:
        raise ValueError(
            f"config key restore.edits.{_name}.layers: kind 'layers' needs layers (a share) or layer_range"
        )
EDIT_MODELS = [f"edit-{name}" for name in EDITS]


def edit_inputs(wildcards):
    """The two models of an edit, and their SVDs when the edit needs them."""
    spec = EDITS[wildcards.edit]
    inputs = {"base": f"results/models/{spec['base']}", "target": f"results/models/{spec['target']}"}
    if spec["kind"] != "layers":
        inputs["svd_base"] = f"results/svd/{spec['base']}.safetensors"
        inputs["svd_target"] = f"results/svd/{spec['target']}.safetensors"
    return inputs


EVAL_MODELS = [*STUDY_MODELS, *EDIT_MODELS]


def get_final_output():
    return [
        "results/data/manifest.json",
        "results/tables/sft_log.parquet",
        "results/tables/accuracy.parquet",
        "results/tables/rl_log.parquet",
        *[f"results/spectrum/{a}__{b}.parquet" for a, b in SPECTRUM_PAIRS],
        "results/tables/spectrum.parquet",
        "results/tables/restoration.parquet",
        "results/tables/findings.parquet",
        "results/tables/checkpoints.parquet",
        *[fig.svg for fig in FIGURES],
    ]


from rlheals.report import FIGURES


MODEL_ID = r"base|sft-\d+|rl-[a-z_]+-\d+(-s\d+)?(-u\d+)?|edit-[A-Za-z0-9_]+"


wildcard_constraints:
    split="|".join(SPLITS),
    rl_run=r"[a-z_]+-\d+(-s\d+)?",
    a=MODEL_ID,
    b=MODEL_ID,
    edit=r"[A-Za-z0-9_]+",
    model_id=MODEL_ID,
