"""A restoration sweep of 8 edits with the per-model SVD cache vs recomputing the SVDs for every edit,
in one run, on the default study's models (B = sft-200, T = sft-600 unless given).

With the cache, each edit reads the two models' SVDs (results/svd/*.safetensors, computed once per model
by the svd rule); without it, each edit decomposes every matrix of B and T again. Both produce the same
edited weights (checked); the timing covers computing the 8 edited state dicts, not writing them.

    .venv/bin/python benchmarks/restore_speed.py [--base sft-200] [--target sft-600] [--threads 2]
"""

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

EDITS = [{"kind": "directions", "top": t} for t in (0.2, 0.25, 0.5, 1.0)] + [
    {"kind": "vectors", "top": t} for t in (0.2, 0.5)] + [{"kind": "directions", "tail": 0.2},
                                                          {"kind": "directions", "top": 0.1, "tail": 0.1}]


def main() -> int:
    import torch
    from safetensors.torch import load_file, save_file

    from rlheals import matrices, restore, spectrum

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", default="sft-200")
    parser.add_argument("--target", default="sft-600")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    (weights_b, layout_b), (weights_t, layout_t) = (matrices.load(ROOT / "results/models" / m) for m in (args.base, args.target))
    layouts = (layout_b, layout_t)

    with tempfile.TemporaryDirectory() as cache:  # the svd rule's job, done once per model
        t = time.perf_counter()
        for name, weights, layout in (("b", weights_b, layouts[0]), ("t", weights_t, layouts[1])):
            save_file(spectrum.svd_model(weights, layout), f"{cache}/{name}.safetensors")
        t_cache_build = time.perf_counter() - t

        t = time.perf_counter()
        cached = []
        for spec in EDITS:
            svds_b, svds_t = load_file(f"{cache}/b.safetensors"), load_file(f"{cache}/t.safetensors")
            cached.append(restore.edit(spec, weights_b, weights_t, svds_b, svds_t, layouts))
        t_cached = time.perf_counter() - t

    t = time.perf_counter()
    fresh = [restore.edit(spec, weights_b, weights_t, spectrum.svd_model(weights_b, layouts[0]),
                          spectrum.svd_model(weights_t, layouts[1]), layouts) for spec in EDITS]
    t_fresh = time.perf_counter() - t

    same = all(torch.allclose(a[k], b[k], atol=1e-5) for a, b in zip(cached, fresh) for k in a)
    n = sum(1 for m in layouts[1].matrices if m.layer is not None)
    print(f"{len(EDITS)} edits of {args.target} from {args.base} ({n} matrices each), {args.threads} threads")
    print(f"with the SVD cache:      {t_cached:7.3f} s  (the cache itself, once per model: {t_cache_build:.3f} s)")
    print(f"recomputing SVDs per edit: {t_fresh:7.3f} s")
    print(f"speed-up: {t_fresh / t_cached:.1f}x; same edited weights: {same}")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
