# Config helpers and target lists shared by every stage. Kept light: every cluster job re-parses this.
import json

SPLITS = ["sft_train", "rl_train", "id_test", "ood_test"]
TEST_SPLITS = ["id_test", "ood_test"]


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


# Every model of the study is evaluated; model ids name their directories (results/models/{model_id}).
EVAL_MODELS = ["base", *[f"sft-{step}" for step in SFT_STEPS]]


def get_final_output():
    return [
        "results/data/manifest.json",
        "results/tables/sft_log.parquet",
        "results/tables/accuracy.parquet",
    ]


wildcard_constraints:
    split="|".join(SPLITS),
    model_id=r"base|sft-\d+|rl-[a-z_]+-\d+(-s\d+)?(-u\d+)?|edit-[A-Za-z0-9_]+",
