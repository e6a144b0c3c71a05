"""Fuzz the verifier: run adversarial inputs through it and print the count, the failures (an exception,
a result outside the categories, or a call over the time budget) and the time per call.

    .venv/bin/python benchmarks/fuzz_verify.py [--n 100000] [--seed 0] [--budget-ms 5]
"""

import argparse
import json
import random
import statistics
import sys
import time

from rlheals import cards
from rlheals.verify import CATEGORIES, Verifier

ALPHABET = "0123456789+-*/()= ;"
NASTY = ["\x00", "\x1b", "\u202e", "\ufeff", "٣", "３", "²", "½", "∞", "e", "j", "_", "'", '"', "{", "}", "[", "]", "\\", "\n"]


def adversarial(rng: random.Random, solutions: list[str]) -> str:
    kind = rng.randrange(10)
    if kind == 0:  # arbitrary unicode
        return "".join(chr(rng.randrange(0x110000)) for _ in range(rng.randrange(64))).encode("utf-8", "replace").decode("utf-8", "replace")
    if kind == 1:  # formula alphabet soup
        return "".join(rng.choice(ALPHABET) for _ in range(rng.randrange(200)))
    if kind == 2:  # deep nesting
        depth = rng.choice([10, 30, 100, 1000, 20000])
        return "(" * depth + str(rng.randrange(14)) + ")" * rng.choice([0, depth])
    if kind == 3:  # huge strings
        return rng.choice(["9", "(", "1+", "{", "[", ";", " "]) * rng.choice([1000, 10_000, 100_000])
    if kind == 4:  # mutated solutions
        text = list(rng.choice(solutions))
        for _ in range(rng.randrange(1, 4)):
            pos = rng.randrange(len(text) + 1)
            text.insert(pos, rng.choice(ALPHABET + "".join(NASTY)))
        return "".join(text)
    if kind == 5:  # JSON-shaped, paper format
        formula = rng.choice(solutions + ["1/0", "(" * 50, "__import__('os')", "9" * 50])
        return json.dumps({"cards": ["A"], "number": [rng.randrange(-5, 99)], "formula": formula}) [: rng.randrange(1, 200)]
    if kind == 6:  # steps with wrong arithmetic, fractions, negatives, zero divisions
        steps = [f"{rng.randrange(-20, 40)} {rng.choice('+-*/')} {rng.choice(['0', '(8/3)', '(1/0)', '-4', '11'])} = {rng.choice(['24', '(1/3)', '-7', '0'])}" for _ in range(rng.randrange(1, 30))]
        return " ; ".join(steps)
    if kind == 7:  # control characters and code
        return rng.choice(NASTY) * rng.randrange(1, 50) + rng.choice(["ex" "ec('x')", "import os", "lambda: 0", "24"])
    if kind == 8:  # huge numbers
        return "*".join(str(rng.randrange(10**12)) for _ in range(rng.randrange(1, 60)))
    return rng.choice(solutions)[: rng.randrange(1, 20)]  # truncated answers


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--budget-ms", type=float, default=5.0)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    verifiers = [Verifier(fmt="compact"), Verifier(fmt="paper"), Verifier(fmt="paper", strict_format=True)]
    values = [3, 11, 2, 11]
    solutions = list(cards.solve(values))
    times, failures, categories = [], 0, {}
    for i in range(args.n):
        text = adversarial(rng, solutions)
        verifier = verifiers[i % 3]
        start = time.perf_counter()
        try:
            verdict = verifier(text, values)
            ok = verdict.category in CATEGORIES
        except Exception as err:  # a failure of the verifier, counted and shown
            ok, verdict = False, None
            print(f"exception on {text[:80]!r}: {err!r}", file=sys.stderr)
        elapsed = time.perf_counter() - start
        times.append(elapsed)
        if not ok or elapsed * 1e3 > args.budget_ms:
            failures += 1
            if ok:
                print(f"slow ({elapsed * 1e3:.1f} ms) on {text[:80]!r}", file=sys.stderr)
        if verdict is not None:
            categories[verdict.category] = categories.get(verdict.category, 0) + 1
    times.sort()
    p99 = times[int(0.99 * len(times))] * 1e3
    print(f"inputs: {args.n}  failures: {failures}  p50: {statistics.median(times) * 1e3:.3f} ms  "
          f"p99: {p99:.3f} ms  max: {times[-1] * 1e3:.3f} ms  budget: {args.budget_ms} ms")
    print("categories:", dict(sorted(categories.items())))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
