"""The memory and runtime a cluster job asks for, sized from the model and the job's token counts
(rlheals.costs), so a 7B study and the smoke study do not ask for the same; a retried job (`attempt` 2,
3) asks for more, and the partition's limits cap every ask (docs/cluster.md).

- runtime: twice the cost model's bound (every try to max_new_tokens) on the slower reference GPU, for
  sft, rl (per algo) and evaluate; for svd, spectrum and restore, twice one SVD of the model on the job's
  threads plus reading its files (a comparison or an edit costs at most about one SVD). Never under
  MIN_RUNTIME minutes. Times the attempt: a job that timed out resumes (SFT, RL) or restarts with more.
- memory: what the job holds on the host, plus HOST_OVERHEAD. A training job's ranks each load the bf16
  weights on the host before sharding them (twice while loading: the file and the model); an evaluation
  the same once; an SVD job one model and its float32 SVD; a comparison two of each; an edit two models,
  two SVDs and the edited copy. CPU jobs ask attempt times that (their failures are memory); GPU jobs keep
  theirs (theirs are time).
- caps: RLHEALS_MAX_RUNTIME (minutes) and RLHEALS_MAX_MEM_MB, the partition's limits; an ask above one is
  cut to it, with a warning naming the rule, once."""

from __future__ import annotations

import json
import math
import os
import sys
from collections.abc import Mapping
from functools import cache
from pathlib import Path

MIN_RUNTIME = 30  # minutes: start-up, environment, a slow shared filesystem
MIN_MEM_MB = 8000
HOST_OVERHEAD = 8e9  # bytes: the interpreter, torch, CUDA context, tokenizer, data
GPU_RULES = ("sft", "rl", "evaluate")
CPU_RULES = ("svd", "spectrum", "restore")
SIZED = GPU_RULES + CPU_RULES
CAPS = {"runtime": "RLHEALS_MAX_RUNTIME", "mem_mb": "RLHEALS_MAX_MEM_MB"}


def _positive_int(name: str, default: str = "") -> int | None:
    text = os.environ.get(name, "").strip() or default
    if not text:
        return None
    if not text.isdigit() or int(text) < 1:
        raise ValueError(f"environment variable {name}={text!r}: expected a positive whole number")
    return int(text)


def train_gpus() -> int:
    """GPUs of an SFT or RL job, one node's worth: RLHEALS_TRAIN_GPUS (the SLURM profile reads it too)."""
    return _positive_int("RLHEALS_TRAIN_GPUS", "8")


def gpus(rule: str) -> int:
    return train_gpus() if rule in ("sft", "rl") else 1 if rule == "evaluate" else 0


def runtime(rule: str, cfg: Mapping, attempt: int, algo: str | None = None, threads: int = 1) -> int:
    """Minutes for one job of `rule` (`algo`: the RL algo of an rl job)."""
    sizes = _sizes(json.dumps(cfg, sort_keys=True), train_gpus())
    if rule in GPU_RULES:
        (row,) = [r for r in sizes["rows"] if r["rule"] == rule and (rule != "rl" or r["algo"] == algo)]
        hours = row["wall_hours_per_job"]
    elif rule in CPU_RULES:
        disk = sizes["disk"]
        from rlheals.costs import ASSUMPTIONS

        read = (2 * disk["model_bytes"] + 2 * disk["svd_bytes"]) / ASSUMPTIONS["FS_BYTES_PER_S"] / 3600
        hours = disk["svd_core_hours"] / max(threads, 1) + read
    else:
        raise ValueError(f"rule {rule!r} is not sized from the model (one of {SIZED})")
    return _capped("runtime", rule, max(MIN_RUNTIME, math.ceil(2 * 60 * hours)) * attempt)


def mem_mb(rule: str, cfg: Mapping, attempt: int) -> int:
    """Megabytes of host memory for one job of `rule`."""
    disk = _sizes(json.dumps(cfg, sort_keys=True), train_gpus())["disk"]
    model, svd = max(disk["model_bytes"], _stored_bytes(cfg)), disk["svd_bytes"]
    held = {"sft": gpus("sft") * (2 * model + HOST_OVERHEAD), "rl": gpus("rl") * (2 * model + HOST_OVERHEAD),
            "evaluate": 2 * model + HOST_OVERHEAD, "svd": model + svd + HOST_OVERHEAD,
            "spectrum": 2 * (model + svd) + HOST_OVERHEAD, "restore": 3 * model + 2 * svd + HOST_OVERHEAD}
    if rule not in held:
        raise ValueError(f"rule {rule!r} is not sized from the model (one of {SIZED})")
    ask = max(MIN_MEM_MB, math.ceil(held[rule] / 1e6))
    return _capped("mem_mb", rule, ask * (attempt if rule in CPU_RULES else 1))


@cache
def _sizes(cfg_json: str, train: int) -> dict:
    """One job of each GPU stage on the reference GPU, bound scenario; the SVD stage's disk and CPU costs."""
    from rlheals import costs

    estimate = costs.estimate(json.loads(cfg_json), {"sft": train, "rl": train, "evaluate": 1})
    return {"rows": estimate["rows"][(costs.REFERENCE_GPU, "bound")], "disk": estimate["disk"]}


def _stored_bytes(cfg: Mapping) -> int:
    """The local model's weight files, when they are on this machine (a vision model's tower included)."""
    if cfg["model"]["source"] != "local":
        return 0
    return sum(f.stat().st_size for f in Path(cfg["model"]["local_path"]).glob("*.safetensors"))


_warned: set[tuple[str, str]] = set()


def _capped(kind: str, rule: str, ask: int) -> int:
    cap = _positive_int(CAPS[kind])
    if cap is None or ask <= cap:
        return ask
    if (kind, rule) not in _warned:
        _warned.add((kind, rule))
        unit = "minutes" if kind == "runtime" else "MB"
        print(f"rlheals: a {rule} job would ask for {ask} {unit} ({kind}); {CAPS[kind]}={cap} caps it",
              file=sys.stderr)
    return cap
