"""Two evaluations on 2 cores: one after the other with two threads each, or side by side with one each.

Each evaluation is a fresh process, as a Snakemake job is (imports, model loading, then the default
config's episodes per rule), so the start-up that one process spends on one core is counted. Prints both
wall times, their ratio, and each run's results (a hash of every result row, and the OOD accuracy): the
same in both modes, since greedy answers do not depend on the threads.

    .venv/bin/python benchmarks/eval_threads.py [--study DIR] [--models sft-400 sft-600]
"""

import argparse
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

ONE = """
import sys, yaml, torch
sys.path.insert(0, {src!r})
from rlheals import data, episodes, evaluate, models
from rlheals.verify import Verifier
model_dir, study, threads = {model!r}, {study!r}, {threads}
torch.set_num_threads(threads)
cfg = yaml.safe_load(open({config!r}))
model, tokenizer = models.load_model(model_dir, dtype=torch.float32).eval(), models.load_tokenizer(model_dir)
rules, fmt, e = data.rules_from_config(cfg["game"]), cfg["prompt"]["format"], cfg["eval"]
rows = [r for s in ("id_test", "ood_test") for r in data.read_jsonl(f"{{study}}/results/data/{{s}}.jsonl")[: e["episodes"]]]
verifier = Verifier(cfg["game"]["target"], fmt, cfg["verify"]["strict_format"], cfg["verify"]["rewards"])
decoding = evaluate.Decoding(do_sample=False, max_new_tokens=e["max_new_tokens"])
protocol = evaluate.Protocol(verifier, e["verify_turns"], decoding, e["batch_size"])
results = evaluate.run_episodes(model, tokenizer, episodes.from_rows(rows, rules, fmt), protocol, workers=threads)
import hashlib, json
print(hashlib.sha256(json.dumps(results, sort_keys=True, default=str).encode()).hexdigest()[:16], episodes.summarize(results)["ood"]["accuracy"])
"""


def evaluation(model: Path, study: Path, threads: int) -> subprocess.Popen:
    code = ONE.format(src=str(ROOT / "src"), model=str(model), study=str(study), threads=threads,
                      config=str(ROOT / "config" / "config.yaml"))
    return subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(process: subprocess.Popen) -> tuple[str, float]:
    """The evaluation's results: a hash of every result row, and its OOD accuracy."""
    out, err = process.communicate()
    if process.returncode:
        raise SystemExit(f"an evaluation failed (exit code {process.returncode}):\n{err[-3000:]}")
    digest, accuracy = out.split()[-2:]
    return digest, float(accuracy)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--study", type=Path, default=ROOT, help="a study directory with results/data and results/models")
    parser.add_argument("--models", nargs=2, default=["sft-400", "sft-600"])
    args = parser.parse_args()
    models = [args.study / "results" / "models" / m for m in args.models]

    start = time.time()
    serial = [finish(evaluation(m, args.study, 2)) for m in models]
    serial_s = time.time() - start
    start = time.time()
    parallel = [finish(p) for p in [evaluation(m, args.study, 1) for m in models]]
    parallel_s = time.time() - start
    print(f"one after the other, 2 threads each: {serial_s:.1f} s (results, OOD accuracy: {serial})")
    print(f"side by side, 1 thread each:         {parallel_s:.1f} s (results, OOD accuracy: {parallel})")
    print(f"ratio side by side / one after the other: {parallel_s / serial_s:.2f}")
    return 0 if serial == parallel else 1


if __name__ == "__main__":
    sys.exit(main())
