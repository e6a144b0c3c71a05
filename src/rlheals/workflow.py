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

from rlheals import curve, data, model_ids, settings

PACKAGE = "rlheals"
PACKAGE_DIR = Path(__file__).resolve().parent
SPLITS = list(data.SPLITS)
TEST_SPLITS = list(data.TEST_SPLITS)
SELECT_SPLITS = list(data.SELECT_SPLITS)
HELD_SPLITS = TEST_SPLITS + SELECT_SPLITS  # the hands training never sees
MIRRORS = dict(data.MIRRORS)
DEEPSPEED_DIR = "config/deepspeed"


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
    """The study a config describes: its SFT seeds, steps, RL runs, models, spectrum pairs and edits, and
    the config slice of each rule. A model id the config names must be one the study makes.

    SFT seeds: `sft.seed` is one seed, or a list of them; with several, every model that follows from an
    SFT run carries its seed (model_ids: seed1-sft-200), and each seed's runs, pairs and edits are its own.

    A config may name steps by the points the workflow chooses from the SFT curve (`rl.from_steps:
    [peak, last]`, `spectrum.best_ood_step: B`, `sft-B` in an edit): then `needs_points`, and the lists
    that depend on them are complete only once the chosen `points` (rlheals.curve.choose_points, one set
    per SFT seed) are given."""

    def __init__(self, config: Mapping, points: Mapping[int | None, Mapping[str, int | None]] | None = None):
        self.config = config
        self.sft_steps = sorted(config["sft"]["save_steps"])
        seed = config["sft"]["seed"]
        self.sft_seeds: list[int | None] = sorted(seed) if isinstance(seed, list) else [None]
        rl = config["rl"]
        self.symbols = [v for v in ([] if rl["from_steps"] == "all" else rl["from_steps"]) if isinstance(v, str)]
        if unknown := sorted(set(self.symbols) - set(curve.START_POINTS)):
            raise ValueError(f"config key rl.from_steps: {unknown} are not steps nor points ({', '.join(curve.START_POINTS)})")
        self.edit_specs = self._edit_specs()
        self.needs_points = bool(self.symbols) or self.config["spectrum"]["best_ood_step"] == "B" or any(
            model_ids.is_symbolic(spec[k]) for spec in self.edit_specs.values() for k in ("base", "target"))
        self.points = dict(points) if points is not None else None
        self.rl_algos = [*rl["algos"], *([model_ids.CONTROL] if rl["control"] else [])]
        self.rl_seeds = list(range(1, rl["seeds"] + 1))
        self.rl_save_updates = sorted(rl["save_updates"])
        self.rl_from = {s: self._rl_from(s) for s in self.sft_seeds}
        seeded = len(self.rl_seeds) > 1
        self.rl_runs = [model_ids.rl_run(a, step, seed, seeded, s) for s in self.sft_seeds
                        for a in self.rl_algos for step in self.rl_from[s] for seed in self.rl_seeds]
        self.rl_models = [model_ids.rl(run) for run in self.rl_runs] + [
            model_ids.rl(run, u) for run in self.rl_runs for u in self.rl_save_updates]
        self.sft_models = {s: [model_ids.sft(step, s) for step in self.sft_steps] for s in self.sft_seeds}
        self.study_models = ["base", *[m for s in self.sft_seeds for m in self.sft_models[s]], *self.rl_models]
        self.spectrum_pairs = [pair for s in self.sft_seeds for pair in self._spectrum_pairs(s)]
        self.edits = {model_ids.edit(name, s): spec for s in self.sft_seeds for name, spec in self._edits(s).items()}
        self.edit_models = [model_ids.edit(name, s) for s in self.sft_seeds for name in self.edit_specs]
        self.eval_models = [*self.study_models, *self.edit_models]
        self.last_sft = model_ids.sft(self.sft_steps[-1], self.sft_seeds[0])  # the first seed's, for the report

    # --- Per SFT seed: its files, its chosen points and what follows from them ---

    @staticmethod
    def points_file(sft_seed: int | None) -> str:
        return f"results/tables/{model_ids.prefix(sft_seed)}sft_points.json"

    @staticmethod
    def sft_log(sft_seed: int | None) -> str:
        return f"results/tables/{model_ids.prefix(sft_seed)}sft_log.parquet"

    def _point(self, sft_seed: int | None, name: str) -> int | None:
        return self.points[sft_seed].get(name) if self.points else None

    def _rl_from(self, sft_seed: int | None) -> list[int]:
        from_steps = self.config["rl"]["from_steps"]
        if from_steps == "all":
            return self.sft_steps
        chosen = {self._point(sft_seed, v) for v in self.symbols} - {None}
        return sorted({v for v in from_steps if isinstance(v, int)} | chosen)

    def resolve(self, model_id: str, sft_seed: int | None) -> str | None:
        """A model id of the config (sft-B, rl-grpo-T-s1, sft-200) as the id of one SFT seed's model, the
        chosen point written as its step; None while the point is not chosen yet."""
        if model_ids.is_symbolic(model_id) and not self.points:
            return None
        return resolve_model(model_id, sft_seed, self.points[sft_seed] if self.points else {})

    def known_model(self, model_id: str, key: str) -> str:
        if model_id not in self.study_models:
            raise ValueError(f"config key {key}: {model_id!r} is not a model of this study (one of {self.study_models})")
        return model_id

    def _spectrum_pairs(self, sft_seed: int | None) -> list[tuple[str, str]]:
        spectrum, pairs = self.config["spectrum"], []
        sft = lambda step: model_ids.sft(step, sft_seed)  # noqa: E731
        if spectrum["base_vs_sft"]:
            pairs += [("base", sft(s)) for s in self.sft_steps if s > 0]
        best = spectrum["best_ood_step"]
        if best == "B":
            best = self._point(sft_seed, "B")
        if best is not None:
            self.known_model(sft(best), "spectrum.best_ood_step")
            pairs += [(sft(best), sft(s)) for s in self.sft_steps if s > best]
        compared = spectrum["sft_vs_rl"]  # true: every RL seed; N: RL seeds 1..N
        if compared:
            pairs += [(model_ids.rl_start(run), model_ids.rl(run)) for run in self.rl_runs
                      if model_ids.parse_rl_run(run).sft_seed == sft_seed
                      and (compared is True or model_ids.parse_rl_run(run).seed <= compared)]
        for i, (a, b) in enumerate(spectrum["pairs"]):
            a, b = self.resolve(a, sft_seed), self.resolve(b, sft_seed)
            if a is not None and b is not None:
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

    def _edits(self, sft_seed: int | None) -> dict[str, dict]:
        """One SFT seed's edits, by name, with their models' ids written in; until the points are chosen,
        only those that name no point."""
        edits = {}
        for name, spec in self.edit_specs.items():
            base, target = self.resolve(spec["base"], sft_seed), self.resolve(spec["target"], sft_seed)
            if base is None or target is None:
                continue
            self.known_model(base, f"restore.edits.{name}.base")
            self.known_model(target, f"restore.edits.{name}.target")
            edits[name] = {**spec, "base": base, "target": target}
        return edits

    def edit_inputs(self, edit_id: str) -> dict[str, str]:
        """The two models of an edit, and their SVDs when the edit needs them."""
        spec = self.edits[edit_id]
        inputs = {"base": f"results/models/{spec['base']}", "target": f"results/models/{spec['target']}"}
        if spec["kind"] != "layers":
            inputs["svd_base"] = f"results/svd/{spec['base']}.safetensors"
            inputs["svd_target"] = f"results/svd/{spec['target']}.safetensors"
        return inputs

    # --- Config slices: what each rule depends on ---

    def data_slice(self, split: str) -> dict:
        """What one split's hands depend on: the game, the hold-out settings, its own spec and the rules of
        the test and selection splits (their held-out multisets are banned from training); a selection
        split also the test split it keeps apart from."""
        data = self.config["data"]
        splits = {t: {"rule": data["splits"][t]["rule"]} for t in HELD_SPLITS}
        if split in SELECT_SPLITS:
            mirror = MIRRORS[split]
            splits[mirror] = data["splits"][mirror]
        splits[split] = data["splits"][split]
        return {"game": self.config["game"],
                "data": {"holdout_seed": data["holdout_seed"], "holdout_share": data["holdout_share"], "splits": splits}}

    def pretrain_corpus_slice(self) -> dict:
        p, data = self.config["pretrain"], self.config["data"]
        return {"target": self.config["game"]["target"], "format": self.config["prompt"]["format"],
                "game": self.config["game"],
                "data": {"holdout_seed": data["holdout_seed"], "holdout_share": data["holdout_share"],
                         "splits": {s: {"rule": data["splits"][s]["rule"]} for s in HELD_SPLITS}},
                "pretrain": {k: p[k] for k in ("corpus_size", "mix", "target_puzzle_sizes", "test_multisets_as_numbers", "seed")}}

    def base_slice(self) -> dict:
        """What the tiny base model depends on (besides its corpus): size, training, and how it is probed."""
        c = self.config
        return {"game": c["game"], "prompt": c["prompt"], "verify": c["verify"], "tiny": c["model"]["tiny"],
                "pretrain": c["pretrain"]}

    def conversation_slice(self) -> dict:
        """What decides the longest conversation a model must hold (rlheals.limits.check_study)."""
        c = self.config
        return {"game": c["game"], "prompt": c["prompt"], "eval": {k: c["eval"][k] for k in ("verify_turns", "max_new_tokens")},
                "rl": {k: c["rl"][k] for k in ("algos", "verify_turns", "max_new_tokens")},
                "sft": {"max_length": c["sft"]["max_length"]}}

    def sft_seed_value(self, sft_seed: int | None) -> int:
        return self.config["sft"]["seed"] if sft_seed is None else sft_seed

    def sft_slice(self, sft_seed: int | None = None) -> dict:
        """What one SFT run depends on: its own seed, never the list of the others."""
        sft = {**self.config["sft"], "seed": self.sft_seed_value(sft_seed)}
        return {"game": self.config["game"], "prompt": self.config["prompt"], "sft": sft}

    def eval_slice(self) -> dict:
        c = self.config
        return {"game": c["game"], "prompt": c["prompt"], "verify": c["verify"], "eval": c["eval"]}

    def rl_slice(self, run: str) -> dict:
        """What one RL run depends on: its algo's settings only (the run list keys are not among them)."""
        c = self.config
        algo, _, seed, sft_seed = model_ids.parse_rl_run(run)
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
            out["sft"]["seed"] = self.sft_seed_value(sft_seed)
        return out

    # --- DeepSpeed files: rule inputs, so editing one reruns the jobs that train with it ---

    def sft_deepspeed(self) -> list[str]:
        return _deepspeed_file(self.config["sft"]["deepspeed"])

    def rl_deepspeed(self, run: str) -> list[str]:
        algo = model_ids.parse_rl_run(run).algo
        return _deepspeed_file(self.config["sft" if algo == model_ids.CONTROL else "rl"]["deepspeed"])


def resolve_model(model_id: str, sft_seed: int | None, points: Mapping[str, int | None]) -> str:
    """A model id as the config writes it (sft-B, rl-grpo-T-s1, sft-200, base) as the id of one SFT seed's
    model, with the points chosen for that seed."""
    model_id = model_ids.resolve(model_id, points)
    if model_id == "base":
        return model_id
    if model_id.startswith("rl-"):  # rl-seed1-grpo-200: the seed of the SFT run it started from
        return "rl-" + model_ids.prefix(sft_seed) + model_id.removeprefix("rl-")
    return model_ids.prefix(sft_seed) + model_id


def resolve_edit(spec: Mapping, sft_seed: int | None, points: Mapping[str, int | None]) -> dict:
    """An edit of the config with the ids of one SFT seed's models."""
    return {**spec, **{k: resolve_model(spec[k], sft_seed, points) for k in ("base", "target")}}


def _deepspeed_file(name: str | None) -> list[str]:
    return [f"{DEEPSPEED_DIR}/{name}.json"] if name else []
