"""Does PPO improve what it is trained on, and what does it do to the evaluated (greedy) policy?

For each variant (rl settings changed from config/config.yaml's), one PPO run from a checkpoint of a
finished study; prints the training reward and share of correct tries (first and last 10 updates), and
greedy ID and OOD accuracy (the evaluation protocol, on the first N selection hands per rule: a setting
chosen here is measured on the test hands, never chosen on them) before and after.
Variants run two at a time, one thread each.

    .venv/bin/python benchmarks/rl_settings.py --study DIR --model DIR [--updates 30] [--episodes 200] \\
        --variant lr1e-4 --variant lr1e-5 lr=1e-5 --variant T0.5 temperature=0.5
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))


def value(text: str):
    """A command-line value: a number when it reads as one (YAML reads `1e-5` as a string), else YAML."""
    import yaml

    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return yaml.safe_load(text)


def changed(rl: dict, changes: list[str]) -> dict:
    out = json.loads(json.dumps(rl))
    for change in changes:
        key, text = change.split("=", 1)
        *parents, leaf = key.split(".")  # dotted keys reach into rl.ppo
        node = out
        for part in parents:
            node = node[part]
        node[leaf] = value(text)
    return out


def one_run(study: Path, model: Path, updates: int, episodes: int, changes: list[str]) -> dict:
    import yaml

    from rlheals import data, rl
    from rlheals import episodes as eps
    from rlheals.jobs import Job, Task
    from rlheals.settings import rl_settings
    from rlheals.verify import Verifier

    cfg = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    rules, fmt = data.rules_from_config(cfg["game"]), cfg["prompt"]["format"]
    verifier = Verifier(cfg["game"]["target"], fmt, cfg["verify"]["strict_format"], cfg["verify"]["rewards"])
    splits = study / "results" / "data"
    hands = [*data.read_jsonl(splits / "id_select.jsonl")[:episodes],
             *data.read_jsonl(splits / "ood_select.jsonl")[:episodes]]
    probe = rl.Probe(eps.from_rows(hands, rules, fmt), verifier, cfg["eval"]["verify_turns"], cfg["eval"]["max_new_tokens"])
    settings = {**changed(cfg["rl"], changes), "updates": updates, "probe": {"every": updates, "episodes": 2 * episodes}}
    with tempfile.TemporaryDirectory() as work:
        job = Job(start=model, outputs={}, work=Path(work), seed=1, threads=1, log=lambda m: None)
        task = Task(train=data.read_jsonl(splits / "rl_train.jsonl"), rules=rules, fmt=fmt, verifier=verifier, probe=probe)
        rows = rl.run("ppo", job=job, task=task, settings=rl_settings("ppo", settings))
    trained = [r for r in rows if r.get("mean_reward") is not None]
    probed = [r for r in rows if r.get("probe_ood_accuracy") is not None]
    mean = lambda part, key: sum(r[key] for r in part) / len(part)  # noqa: E731
    return {"reward_first10": mean(trained[:10], "mean_reward"), "reward_last10": mean(trained[-10:], "mean_reward"),
            "correct_first10": mean(trained[:10], "share_correct"), "correct_last10": mean(trained[-10:], "share_correct"),
            **{f"{rule}_{when}": probed[i][f"probe_{rule}_accuracy"]
               for rule in ("id", "ood") for when, i in (("before", 0), ("after", -1))}}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--study", type=Path, required=True, help="a finished study (its results/data)")
    parser.add_argument("--model", type=Path, required=True, help="the checkpoint PPO starts from")
    parser.add_argument("--updates", type=int, default=30)
    parser.add_argument("--episodes", type=int, default=200, help="selection hands per rule for the greedy probe")
    parser.add_argument("--variant", nargs="+", action="append", default=[], metavar="NAME [KEY=VALUE ...]")
    parser.add_argument("--one", nargs="+", help=argparse.SUPPRESS)  # a child process: one variant, prints JSON
    args = parser.parse_args()
    if args.one:
        print(json.dumps(one_run(args.study, args.model, args.updates, args.episodes, args.one[1:])))
        return 0
    if not args.variant:
        parser.error("name at least one --variant")
    common = [sys.executable, __file__, "--study", str(args.study), "--model", str(args.model),
              "--updates", str(args.updates), "--episodes", str(args.episodes)]
    results = {}
    for i in range(0, len(args.variant), 2):  # two at a time, one thread each
        pair = args.variant[i:i + 2]
        procs = [(v[0], subprocess.Popen([*common, "--one", *v], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                         text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}))
                 for v in pair]
        for name, proc in procs:
            out, _ = proc.communicate()
            if proc.returncode:
                raise SystemExit(f"variant {name} failed (exit {proc.returncode})")
            results[name] = json.loads(out.strip().splitlines()[-1])
    print(f"PPO from {args.model}, {args.updates} updates; greedy accuracy on {args.episodes} hands per rule")
    print("| variant | changes | reward (first 10 -> last 10) | correct tries | ID greedy | OOD greedy |")
    print("| --- | --- | --- | --- | --- | --- |")
    for v in args.variant:
        r = results[v[0]]
        print(f"| {v[0]} | {' '.join(v[1:]) or 'config'} | {r['reward_first10']:+.2f} -> {r['reward_last10']:+.2f} "
              f"| {r['correct_first10']:.0%} -> {r['correct_last10']:.0%} | {r['id_before']:.1%} -> {r['id_after']:.1%} "
              f"| {r['ood_before']:.1%} -> {r['ood_after']:.1%} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
