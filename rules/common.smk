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


def get_final_output():
    return ["results/data/manifest.json"]


wildcard_constraints:
    split="|".join(SPLITS),
