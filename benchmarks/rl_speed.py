"""Seconds per RL update for each algo on the default model (config/config.yaml's rl settings).

Each algo runs twice from the same SFT checkpoint, for 1 and for 1 + N updates; the difference over N is
the cost of an update (rollouts + optimisation), without start-up, model loading or the probe.

    .venv/bin/python benchmarks/rl_speed.py [--model results/models/sft-200] [--updates 5] [--threads 1]
        [--study DIR] [--variant NAME KEY=VALUE ...]

`--variant` times ppo again with rl settings changed (`verify_turns=1`, `ppo.epochs=2`), side by side
with the default in the same run; `--study` reads the data splits from another study directory.
"""

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))


def main() -> int:
    import yaml

    from rl_settings import changed

    from rlheals import data, episodes, rl
    from rlheals.jobs import Job, Task
    from rlheals.settings import rl_settings
    from rlheals.verify import Verifier

    cfg = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="an SFT checkpoint (default: the study's last, sft-{sft.max_steps})")
    parser.add_argument("--updates", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--algos", nargs="+", default=["grpo", "rloo", "ppo"])
    parser.add_argument("--study", type=Path, default=ROOT, help="the study directory whose results/data to read")
    parser.add_argument("--variant", nargs="+", action="append", default=[], metavar="NAME KEY=VALUE",
                        help="time ppo with these rl settings changed (repeatable)")
    args = parser.parse_args()
    args.model = args.model or str(args.study / f"results/models/sft-{cfg['sft']['max_steps']}")
    runs = [(algo, algo, []) for algo in args.algos]  # (name, algo, rl settings changed)
    runs += [(name, "ppo", changes) for name, *changes in args.variant]

    rules, fmt = data.rules_from_config(cfg["game"]), cfg["prompt"]["format"]
    verifier = Verifier(cfg["game"]["target"], fmt, cfg["verify"]["strict_format"], cfg["verify"]["rewards"])
    splits = args.study / "results" / "data"
    train = data.read_jsonl(splits / "rl_train.jsonl")
    tests = [*data.read_jsonl(splits / "id_test.jsonl")[:8], *data.read_jsonl(splits / "ood_test.jsonl")[:8]]
    probe = rl.Probe(episodes.from_rows(tests, rules, fmt), verifier, 1, cfg["eval"]["max_new_tokens"])
    print(f"model {args.model}; {cfg['rl']['prompts_per_update']} prompts x {cfg['rl']['num_generations']} samples per update, "
          f"{cfg['rl']['max_new_tokens']} new tokens, {args.threads} thread(s)")
    import trl  # noqa: F401  imported once, outside the timings
    from trl import GRPOTrainer, RLOOTrainer  # noqa: F401

    for name, algo, changes in runs:  # changes: KEY=VALUE texts
        base = changed(cfg["rl"], changes)
        seconds = []
        for updates in (1, 1 + args.updates):
            settings = {**base, "updates": updates, "probe": {"every": 10_000, "episodes": 8}}
            with tempfile.TemporaryDirectory() as work:
                t = time.perf_counter()
                job = Job(start=Path(args.model), outputs={}, work=Path(work), seed=1, threads=args.threads,
                          log=lambda m: None)
                rl.run(algo, job=job, task=Task(train=train, rules=rules, fmt=fmt, verifier=verifier, probe=probe),
                       settings=rl_settings(algo, settings))
                seconds.append(time.perf_counter() - t)
        per_update = (seconds[1] - seconds[0]) / args.updates
        print(f"{name:12s} {per_update:6.2f} s per update  (start-up and first update {seconds[0]:.1f} s)"
              + (f"; {base['verify_turns']} tries per episode, {base['ppo']['epochs']} epochs" if algo == "ppo" else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
