"""What the workflow runs, read from the config: the run lists, the models of the study, the config slice
each rule gets as a param, and the hash of the package code each rule's script uses. rules/common.smk
exposes these to the rules; nothing here imports snakemake, so all of it is unit-tested.

Partial reruns are exact because every rule gets exactly what it depends on as params: its config slice
in canonical form (sorted keys) and a hash of the package modules its script imports. Snakemake reruns a
job when its script changes, not when the package code the script calls does: the code hash covers that."""

from __future__ import annotations

import ast
import hashlib
import json
from collections.abc import Mapping
from pathlib import Path

from rlheals import curve, model_ids, settings

PACKAGE = "rlheals"
PACKAGE_DIR = Path(__file__).resolve().parent
SPLITS = ["sft_train", "rl_train", "id_test", "ood_test"]
TEST_SPLITS = ["id_test", "ood_test"]
DEEPSPEED_DIR = "config/deepspeed"
POINTS_FILE = "results/tables/sft_points.json"  # B, T and the RL starting points, chosen after SFT


def canonical(obj) -> str:
    """A config slice as a param: sorted-key JSON, so reordering keys never triggers a rerun."""
    return json.dumps(obj, sort_keys=True)


# --- Code hashing -------------------------------------------------------------------------------------


def package_imports(tree: ast.AST, package_dir: Path = PACKAGE_DIR) -> set[str]:
    """The package's modules a syntax tree imports, wherever the import is (a function body too) and
    however it is written: `from rlheals import a, b` (wrapped in parentheses or not), `from rlheals.a
    import x`, `import rlheals.a`."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module == PACKAGE:
                found |= {alias.name for alias in node.names}
            elif node.module.startswith(PACKAGE + "."):
                found.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            found |= {a.name.split(".")[1] for a in node.names if a.name.startswith(PACKAGE + ".")}
    return {name for name in found if (package_dir / f"{name}.py").exists()}


def _without_docstrings(tree: ast.AST) -> ast.AST:
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(getattr(body[0], "value", None), ast.Constant) \
                    and isinstance(body[0].value.value, str):
                node.body = body[1:] or [ast.Pass()]
    return tree


def code_fingerprint(source: str) -> str:
    """What of a module's source is code: its syntax tree without docstrings, positions or comments.
    Editing a comment, a docstring or the layout leaves it unchanged; any change of code does not."""
    return ast.dump(_without_docstrings(ast.parse(source)), include_attributes=False)


def modules_used(script: str | Path, package_dir: Path = PACKAGE_DIR) -> set[str]:
    """The package modules `script` imports, directly or through other modules."""
    todo, seen = package_imports(ast.parse(Path(script).read_text()), package_dir), set()
    while todo:
        name = todo.pop()
        if name not in seen:
            seen.add(name)
            todo |= package_imports(ast.parse((package_dir / f"{name}.py").read_text()), package_dir)
    return seen


def code_hash(script: str | Path, package_dir: Path = PACKAGE_DIR) -> str:
    """A hash of the code of the package modules `script` imports, directly or through other modules."""
    digest = hashlib.sha256()
    for name in sorted(modules_used(script, package_dir)):
        digest.update(name.encode() + code_fingerprint((package_dir / f"{name}.py").read_text()).encode())
    return digest.hexdigest()[:16]


# --- What one RL run depends on -------------------------------------------------------------------------

class Study:
    """The study a config describes: its SFT steps, RL runs, models, spectrum pairs and edits, and the
    config slice of each rule. A model id the config names must be one the study makes.

    A config may name steps by the points the workflow chooses from the SFT curve (`rl.from_steps:
    [peak, last]`, `spectrum.best_ood_step: B`, `sft-B` in an edit): then `needs_points`, and the lists
    that depend on them are complete only once the chosen `points` (rlheals.curve.choose_points) are given."""

    def __init__(self, config: Mapping, points: Mapping[str, int | None] | None = None):
        self.config = config
        self.sft_steps = sorted(config["sft"]["save_steps"])
        rl = config["rl"]
        symbols = [v for v in ([] if rl["from_steps"] == "all" else rl["from_steps"]) if isinstance(v, str)]
        if unknown := sorted(set(symbols) - set(curve.START_POINTS)):
            raise ValueError(f"config key rl.from_steps: {unknown} are not steps nor points ({', '.join(curve.START_POINTS)})")
        self.edit_specs = self._edit_specs()
        self.needs_points = bool(symbols) or self.config["spectrum"]["best_ood_step"] == "B" or any(
            model_ids.is_symbolic(spec[k]) for spec in self.edit_specs.values() for k in ("base", "target"))
        self.points = dict(points) if points is not None else None
        self.resolved = self.points is not None or not self.needs_points
        if rl["from_steps"] == "all":
            self.rl_from = self.sft_steps
        else:
            chosen = [self.points.get(v) if self.points else None for v in symbols]
            self.rl_from = sorted({v for v in rl["from_steps"] if isinstance(v, int)} | {v for v in chosen if v is not None})
        self.rl_algos = [*rl["algos"], *([model_ids.CONTROL] if rl["control"] else [])]
        self.rl_seeds = list(range(1, rl["seeds"] + 1))
        self.rl_save_updates = sorted(rl["save_updates"])
        seeded = len(self.rl_seeds) > 1
        self.rl_runs = [model_ids.rl_run(a, step, seed, seeded)
                        for a in self.rl_algos for step in self.rl_from for seed in self.rl_seeds]
        self.rl_models = [model_ids.rl(run) for run in self.rl_runs] + [
            model_ids.rl(run, u) for run in self.rl_runs for u in self.rl_save_updates]
        self.study_models = ["base", *map(model_ids.sft, self.sft_steps), *self.rl_models]
        self.spectrum_pairs = self._spectrum_pairs()
        self.edits = self._edits()
        self.edit_models = [f"edit-{name}" for name in self.edit_specs]
        self.eval_models = [*self.study_models, *self.edit_models]
        self.last_sft = model_ids.sft(self.sft_steps[-1])

    def resolve(self, model_id: str) -> str:
        """A model id with a chosen point (sft-B) written as its step."""
        return model_ids.resolve(model_id, self.points) if self.points else model_id

    def known_model(self, model_id: str, key: str) -> str:
        if model_id not in self.study_models:
            raise ValueError(f"config key {key}: {model_id!r} is not a model of this study (one of {self.study_models})")
        return model_id

    def _spectrum_pairs(self) -> list[tuple[str, str]]:
        spectrum, pairs = self.config["spectrum"], []
        if spectrum["base_vs_sft"]:
            pairs += [("base", model_ids.sft(s)) for s in self.sft_steps if s > 0]
        best = spectrum["best_ood_step"]
        if best == "B":
            best = self.points["B"] if self.points else None
        if best is not None:
            self.known_model(model_ids.sft(best), "spectrum.best_ood_step")
            pairs += [(model_ids.sft(best), model_ids.sft(s)) for s in self.sft_steps if s > best]
        if spectrum["sft_vs_rl"]:
            pairs += [(model_ids.sft(model_ids.parse_rl_run(run).step), model_ids.rl(run)) for run in self.rl_runs]
        for i, (a, b) in enumerate(spectrum["pairs"]):
            pairs.append((self.known_model(a, f"spectrum.pairs.{i}"), self.known_model(b, f"spectrum.pairs.{i}")))
        return list(dict.fromkeys(pairs))

    def _edit_specs(self) -> dict[str, dict]:
        specs = self.config["restore"]["edits"]
        edits = {edit["name"]: edit for edit in specs}
        if len(edits) != len(specs):
            raise ValueError("config key restore.edits: edit names must be unique")
        for name, spec in edits.items():
            if spec["kind"] == "layers" and "layers" not in spec and "layer_range" not in spec:
                raise ValueError(
                    f"config key restore.edits.{name}.layers: kind 'layers' needs layers (a share) or layer_range")
        return edits

    def _edits(self) -> dict[str, dict]:
        """The edits with their models' steps written in; until the points are chosen, only those that
        name no point."""
        edits = {}
        for name, spec in self.edit_specs.items():
            if not self.points and any(model_ids.is_symbolic(spec[k]) for k in ("base", "target")):
                continue
            edits[name] = {**spec, "base": self.resolve(spec["base"]), "target": self.resolve(spec["target"])}
            self.known_model(edits[name]["base"], f"restore.edits.{name}.base")
            self.known_model(edits[name]["target"], f"restore.edits.{name}.target")
        return edits

    def edit_inputs(self, edit: str) -> dict[str, str]:
        """The two models of an edit, and their SVDs when the edit needs them."""
        spec = self.edits[edit]
        inputs = {"base": f"results/models/{spec['base']}", "target": f"results/models/{spec['target']}"}
        if spec["kind"] != "layers":
            inputs["svd_base"] = f"results/svd/{spec['base']}.safetensors"
            inputs["svd_target"] = f"results/svd/{spec['target']}.safetensors"
        return inputs

    # --- Config slices: what each rule depends on ---

    def data_slice(self, split: str) -> dict:
        """What one split's hands depend on: the game, the hold-out settings, its own spec and the rules of
        the test splits (their held-out multisets are banned from training)."""
        data = self.config["data"]
        splits = {t: {"rule": data["splits"][t]["rule"]} for t in TEST_SPLITS}
        splits[split] = data["splits"][split]
        return {"game": self.config["game"],
                "data": {"holdout_seed": data["holdout_seed"], "holdout_share": data["holdout_share"], "splits": splits}}

    def pretrain_corpus_slice(self) -> dict:
        p, data = self.config["pretrain"], self.config["data"]
        return {"target": self.config["game"]["target"], "format": self.config["prompt"]["format"],
                "game": self.config["game"],
                "data": {"holdout_seed": data["holdout_seed"], "holdout_share": data["holdout_share"],
                         "splits": {s: {"rule": data["splits"][s]["rule"]} for s in TEST_SPLITS}},
                "pretrain": {k: p[k] for k in ("corpus_size", "mix", "target_puzzle_sizes", "seed")}}

    def base_slice(self) -> dict:
        """What the tiny base model depends on (besides its corpus): size, training, and how it is probed."""
        c = self.config
        return {"game": c["game"], "prompt": c["prompt"], "verify": c["verify"], "tiny": c["model"]["tiny"],
                "pretrain": c["pretrain"]}

    def sft_slice(self) -> dict:
        return {"game": self.config["game"], "prompt": self.config["prompt"], "sft": self.config["sft"]}

    def eval_slice(self) -> dict:
        c = self.config
        return {"game": c["game"], "prompt": c["prompt"], "verify": c["verify"], "eval": c["eval"]}

    def rl_slice(self, run: str) -> dict:
        """What one RL run depends on: its algo's settings only (the run list keys are not among them)."""
        c = self.config
        algo, _, seed = model_ids.parse_rl_run(run)
        skip = settings.RUN_LIST_KEYS | settings.UNUSED_RL_KEYS[algo]
        out = {
            "game": c["game"],
            "prompt": c["prompt"],
            "verify": c["verify"],
            "probe_eval": {k: c["eval"][k] for k in ("verify_turns", "max_new_tokens")},
            "rl": {k: v for k, v in c["rl"].items() if k not in skip},
            "algo": algo,
            "seed": seed,
        }
        if algo == model_ids.CONTROL:
            out["sft"] = {k: v for k, v in c["sft"].items() if k not in settings.UNUSED_SFT_KEYS_OF_CONTROL}
        return out

    # --- DeepSpeed files: rule inputs, so editing one reruns the jobs that train with it ---

    def sft_deepspeed(self) -> list[str]:
        return _deepspeed_file(self.config["sft"]["deepspeed"])

    def rl_deepspeed(self, run: str) -> list[str]:
        algo = model_ids.parse_rl_run(run).algo
        return _deepspeed_file(self.config["sft" if algo == model_ids.CONTROL else "rl"]["deepspeed"])


def _deepspeed_file(name: str | None) -> list[str]:
    return [f"{DEEPSPEED_DIR}/{name}.json"] if name else []
