"""The evaluation engine vs the one-at-a-time reference, on the same model and episodes, in one run.

Ours: all episodes advance together in batches. The reference (the papers' public code): one episode at a
time, one `generate` call per try. Under greedy decoding both must give identical answers; prints the
speed ratio and the evaluation process's start-up time. It also prints a
bound no engine can beat on this machine: every token of every episode's final conversation must pass
through the model at least once, so one forward pass over all of them, packed into full rows of 256
with no padding, cache or turns, is a lower bound on the time of any evaluation of these episodes.

    .venv/bin/python benchmarks/eval_speed.py [--model results/models/sft-600] [--episodes 256] [--turns 5]
"""

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))


def startup_seconds(model_dir: str) -> tuple[float, bool]:
    """Seconds for a fresh process to import what the evaluation script imports and load the model, and
    whether trl was imported on the way."""
    code = (
        "import time, sys; t = time.time(); import polars, torch; "
        "from rlheals import data, evaluate, models, runlog; from rlheals.verify import Verifier; "
        f"models.load_model({model_dir!r}); models.load_tokenizer({model_dir!r}); "
        "print(time.time() - t, 'trl' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True).stdout.split()
    return float(out[0]), out[1] == "True"


def packed_forward_seconds(model, tokenizer, episodes, rows, verifier) -> tuple[float, int]:
    """Seconds for one forward pass over every token of every episode's final conversation (prompt,
    answers, feedback turns), packed into rows of 256 tokens: a lower bound for any engine."""
    import torch

    from rlheals import evaluate

    total = 0
    for e, r in zip(episodes, rows):
        chat = [{"role": "user", "content": e.prompt}]
        for answer in r["answers"]:
            chat += [{"role": "assistant", "content": answer}, {"role": "user", "content": verifier(answer, e.values).feedback}]
        total += len(evaluate.encode(tokenizer, chat[:-1]))
    ids = torch.randint(4, len(tokenizer), (-(-total // 256), 256))
    with torch.inference_mode():
        model(input_ids=ids[:2])  # warm up
        t = time.perf_counter()
        for chunk in ids.split(64):
            model(input_ids=chunk, use_cache=False, logits_to_keep=1)
    return time.perf_counter() - t, total


def main() -> int:
    import torch
    import yaml

    from rlheals import cards, data, episodes, evaluate, models
    from rlheals.verify import Verifier

    cfg = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    last = max(cfg["sft"]["save_steps"])
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=str(ROOT / f"results/models/sft-{last}"))
    parser.add_argument("--episodes", type=int, default=256)
    parser.add_argument("--turns", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2, help="the CPU cores both ways may use")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of ours (the median is reported)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    startup, imported_trl = startup_seconds(args.model)
    model, tokenizer = models.load_model(args.model, dtype=torch.float32), models.load_tokenizer(args.model)
    rules = data.rules_from_config(cfg["game"])
    half = args.episodes // 2
    rows = [*data.read_jsonl(ROOT / "results/data/id_test.jsonl")[:half],
            *data.read_jsonl(ROOT / "results/data/ood_test.jsonl")[: args.episodes - half]]
    hands = episodes.from_rows(rows, rules, cfg["prompt"]["format"])
    verifier = Verifier(cfg["game"]["target"], cfg["prompt"]["format"])
    decoding = evaluate.Decoding(max_new_tokens=cfg["eval"]["max_new_tokens"])

    # Both ways in one process with the same attention settings (the engine switches grouped-query
    # attention into torch's kernel on the CPU; set here so the order of the runs does not matter).
    os.environ["TRANSFORMERS_SDPA_FORCE_GQA"] = "1"
    # Ours is timed three times (the median is reported: this machine is shared and noisy), the reference
    # way once (it takes ~15x longer, so one run averages over the same noise); each run pays the
    # verifier's solving in full.
    times, runs = [], []
    for _ in range(args.repeats):
        cards.forget_solutions()
        t = time.perf_counter()
        runs.append(evaluate.run_episodes(model, tokenizer, hands, evaluate.Protocol(verifier, args.turns, decoding),
                                          workers=args.threads))
        times.append(time.perf_counter() - t)
    ours, t_ours = runs[0], statistics.median(times)
    cards.forget_solutions()
    t = time.perf_counter()
    theirs = evaluate.run_episodes_one_at_a_time(model, tokenizer, hands, evaluate.Protocol(verifier, args.turns, decoding))
    t_theirs = time.perf_counter() - t

    t_floor, n_tokens = packed_forward_seconds(model, tokenizer, hands, ours, verifier)

    same = all(run == theirs for run in runs)
    differing = sum(a != b for a, b in zip(ours, theirs))
    tries = sum(r["tries"] for r in ours)
    print(f"model {args.model}: {len(hands)} episodes x up to {args.turns} tries ({tries} generations), {args.threads} threads")
    print(f"ours (batched, {args.threads} worker processes): {t_ours:7.2f} s (median of {', '.join(f'{t:.2f}' for t in times)})")
    print(f"one-at-a-time reference:   {t_theirs:7.2f} s")
    print(f"speed-up: {t_theirs / t_ours:.1f}x; identical results: {same} ({differing} episodes differ)")
    print(f"bound: one packed forward over the {n_tokens} tokens of the final conversations: {t_floor:.2f} s, "
          f"so no engine beats {t_theirs / t_floor:.1f}x here")
    print(f"evaluation start-up (imports + model load, fresh process): {startup:.2f} s (limit 5 s); trl imported: {imported_trl}")
    print("summary:", episodes.summarize(ours))
    return 0 if same and not imported_trl else 1


if __name__ == "__main__":
    sys.exit(main())
