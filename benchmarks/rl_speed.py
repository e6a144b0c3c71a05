"""Seconds per RL update for each algo on the default model (config/config.yaml's rl settings).

Each algo runs twice from the same SFT checkpoint, for 1 and for 1 + N updates; the difference over N is
the cost of an update (rollouts + optimisation), without start-up, model loading or the probe.

    .venv/bin/python benchmarks/rl_speed.py [--model results/models/sft-200] [--updates 5] [--threads 1]
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

    from rlheals import data, episodes, rl
    from rlheals.jobs import Job, Task
    from rlheals.settings import rl_settings
    from rlheals.verify import Verifier

    cfg = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=str(ROOT / f"results/models/sft-{cfg['rl']['from_steps'][0]}"))
    parser.add_argument("--updates", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--algos", nargs="+", default=["grpo", "rloo", "ppo"])
    args = parser.parse_args()

    rules, fmt = data.rules_from_config(cfg["game"]), cfg["prompt"]["format"]
    verifier = Verifier(cfg["game"]["target"], fmt, cfg["verify"]["strict_format"], cfg["verify"]["rewards"])
    train = data.read_jsonl(ROOT / "results/data/rl_train.jsonl")
    tests = [*data.read_jsonl(ROOT / "results/data/id_test.jsonl")[:8], *data.read_jsonl(ROOT / "results/data/ood_test.jsonl")[:8]]
    probe = rl.Probe(episodes.from_rows(tests, rules, fmt), verifier, 1, cfg["eval"]["max_new_tokens"])
    print(f"model {args.model}; {cfg['rl']['prompts_per_update']} prompts x {cfg['rl']['num_generations']} samples per update, "
          f"{cfg['rl']['max_new_tokens']} new tokens, {args.threads} thread(s)")
    import trl  # noqa: F401  imported once, outside the timings
    from trl import GRPOTrainer, RLOOTrainer  # noqa: F401

    for algo in args.algos:
        seconds = []
        for updates in (1, 1 + args.updates):
            settings = {**cfg["rl"], "updates": updates, "probe": {"every": 10_000, "episodes": 8}}
            with tempfile.TemporaryDirectory() as work:
                t = time.perf_counter()
                job = Job(start=Path(args.model), outputs={}, work=Path(work), seed=1, threads=args.threads,
                          log=lambda m: None)
                rl.run(algo, job=job, task=Task(train=train, rules=rules, fmt=fmt, verifier=verifier, probe=probe),
                       settings=rl_settings(algo, settings))
                seconds.append(time.perf_counter() - t)
        per_update = (seconds[1] - seconds[0]) / args.updates
        print(f"{algo:5s} {per_update:6.2f} s per update  (start-up and first update {seconds[0]:.1f} s)"
              + (f"; {cfg['rl']['verify_turns']} tries per episode, {cfg['rl']['ppo']['epochs']} epochs" if algo == "ppo" else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
