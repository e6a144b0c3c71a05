"""Estimated GPU-hours per stage of the paper-scale configs, computed from model size and token counts.

    .venv/bin/python benchmarks/gpu_hours.py [config/paper-qwen2.5-7b.yaml ...]

For each config (default: config/paper-*.yaml, merged over config/config.yaml as snakemake merges them):
- job counts come from the workflow itself (`snakemake -n --forceall --quiet rules`), so the number of
  RL runs and evaluated models is the DAG's, not a recount;
- GPUs per job come from the SLURM profile (slurm/config.yaml), so the table prices what the profile asks for;
- the model's size and shape come from `model.local_path`/config.json when it exists, else from the
  published architecture of the model the config names (ARCHITECTURES below);
- token counts come from the paper prompt and JSON answer rendered by rlheals for real hands.

Cost model (every constant is an assumption, stated in ASSUMPTIONS and printed under the table):
- training (SFT, PPO epochs, the continued-SFT control): 6 * N * tokens FLOPs at TRAIN_MFU of peak;
- forward-only passes (SFT held-out losses, PPO's old log-probs, prompt prefill): 2 * N * tokens at TRAIN_MFU;
- generation: a prefill of each try's context (compute-bound, 2 * N * tokens), then one decode step per
  new token for the whole batch. Decoding is memory-bound: a step reads every weight (2 bytes, bf16) and
  the batch's KV cache, so it costs max(2 * N * batch FLOPs at TRAIN_MFU, bytes / (HBM bandwidth *
  BANDWIDTH_UTILISATION)). Batched generate() runs until the longest answer of the batch stops.
- two scenarios: "expected" (answers ANSWER_LENGTH_FACTOR x the reference JSON answer, each try solving
  SOLVE_RATE_PER_TRY of the episodes still playing) and "bound" (every try of every episode runs to
  max_new_tokens): the profile's runtimes are sized on the bound.
- data-parallel jobs (ZeRO-2 keeps a full copy of the weights on each GPU) split the generation batch
  across their GPUs, and each GPU reads all the weights at every step: memory-bound generation costs
  GPU-hours in proportion to the GPU count, training does not.
- every job pays JOB_STARTUP_S and a model load from the shared filesystem, with all its GPUs waiting.
"""

import json
import math
import random
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
SNAKEMAKE = Path(sys.executable).parent / "snakemake"

# Dense bf16 peak and HBM bandwidth (vendor datasheets, SXM parts).
GPUS = {
    "A100-80GB": {"flops": 312e12, "bandwidth": 2.039e12},
    "H100-80GB": {"flops": 989e12, "bandwidth": 3.35e12},
}
ASSUMPTIONS = {
    "TRAIN_MFU": 0.35,  # model FLOPs utilisation of full-parameter ZeRO-2 training on ~300-token sequences
    "BANDWIDTH_UTILISATION": 0.6,  # share of HBM bandwidth a Hugging Face generate() decode step reaches
    "CHARS_PER_TOKEN": 3.5,  # prompt/answer characters per BPE token (JSON and digits split finely)
    "CHAT_TEMPLATE_TOKENS": 30,  # system prompt and role markers the chat template adds per conversation
    "TURN_TEMPLATE_TOKENS": 10,  # role markers per extra turn
    "ANSWER_LENGTH_FACTOR": 2.0,  # expected: a generated answer is twice the reference JSON answer
    "SOLVE_RATE_PER_TRY": 0.3,  # expected: share of the still-playing episodes a try solves
    "FS_BYTES_PER_S": 1e9,  # shared-filesystem read/write speed of one process (model loads, checkpoints)
    "JOB_STARTUP_S": 60,  # per job: Python imports, CUDA and NCCL set-up, before the model loads
}

# Published architectures (config.json of the Hugging Face releases). `layers` counts the layers a
# text-only forward pass runs: Llama-3.2-11B-Vision's 8 cross-attention layers are skipped without an image.
ARCHITECTURES = {
    "Qwen2.5-7B-Instruct": dict(
        hidden=3584, intermediate=18944, layers=28, heads=28, kv_heads=4, vocab=152064
    ),
    "Llama-3.2-11B-Vision-Instruct": dict(
        hidden=4096, intermediate=14336, layers=32, heads=32, kv_heads=8, vocab=128256
    ),
}


def merged_config(path: Path) -> dict:
    """config/config.yaml with `path` merged over it, key by key (snakemake's --configfile merge)."""

    def merge(base, over):
        for key, value in over.items():
            base[key] = (
                merge(base.get(key, {}), value)
                if isinstance(value, dict) and isinstance(base.get(key), dict)
                else value
            )
        return base

    return merge(
        yaml.safe_load((ROOT / "config" / "config.yaml").read_text()), yaml.safe_load(path.read_text())
    )


def architecture(cfg: dict) -> dict:
    """Shape of the configured model: its config.json when the directory is here, else the published one."""
    local = Path(cfg["model"]["local_path"])
    if (local / "config.json").exists():
        hf = json.loads((local / "config.json").read_text())
        text = hf.get("text_config", hf)
        return dict(
            hidden=text["hidden_size"],
            intermediate=text["intermediate_size"],
            layers=text["num_hidden_layers"] - len(text.get("cross_attention_layers", [])),
            heads=text["num_attention_heads"],
            kv_heads=text.get("num_key_value_heads", text["num_attention_heads"]),
            vocab=text["vocab_size"],
        )
    if local.name not in ARCHITECTURES:
        raise SystemExit(f"{local}: no config.json there and not one of {sorted(ARCHITECTURES)}")
    return ARCHITECTURES[local.name]


def matrices(arch: dict) -> list[tuple[int, int]]:
    """Shapes of the matrices the SVD stage analyses: every projection of every layer, the embeddings and
    the LM head (rlheals.matrices), as in a Llama-style model with untied embeddings."""
    h, i, kv = arch["hidden"], arch["intermediate"], arch["hidden"] // arch["heads"] * arch["kv_heads"]
    layer = [(h, h), (kv, h), (kv, h), (h, h), (i, h), (i, h), (h, i)]
    return layer * arch["layers"] + [(arch["vocab"], h)] * 2


def disk_and_svd(arch: dict) -> dict:
    """Bytes of a model directory (bf16) and of its float32 SVD cache (U, S, Vh of every analysed matrix),
    and CPU core-hours of that SVD, scaled by rows * cols * rank from the float32 SVD of a 4096 x 4096
    matrix measured here: 16 s on 2 threads (docs/stack.md, "Reference timings")."""
    shapes = matrices(arch)
    rank = [min(m, n) for m, n in shapes]
    return {
        "model_bytes": 2 * sum(m * n for m, n in shapes),
        "svd_bytes": 4 * sum(k * (m + n + 1) for (m, n), k in zip(shapes, rank)),
        "svd_core_hours": sum(m * n * k for (m, n), k in zip(shapes, rank)) / 4096**3 * 32 / 3600,
    }


def model_numbers(arch: dict) -> dict:
    """Parameters a forward pass multiplies by (transformer blocks and the output head; the embedding
    lookup costs no FLOPs), weight bytes read per decode step, KV-cache bytes per token of context."""
    h, kv = arch["hidden"], arch["hidden"] // arch["heads"] * arch["kv_heads"]
    per_layer = 2 * h * h + 2 * h * kv + 3 * h * arch["intermediate"]
    n = arch["layers"] * per_layer + arch["vocab"] * h
    return {"params": n, "weight_bytes": 2 * n, "kv_bytes_per_token": 2 * arch["layers"] * kv * 2}


def token_counts(cfg: dict, hands: int = 64) -> dict:
    """Mean tokens of a prompt, an answer and a verifier feedback turn, rendered for real hands of both rules."""
    from rlheals import cards, data, verify

    game, fmt = cfg["game"], cfg["prompt"]["format"]
    rules, rng = data.rules_from_config(game), random.Random(0)
    verifier = verify.Verifier(game["target"], fmt)
    prompt = answer = feedback = 0
    done = 0
    while done < hands:
        rule = list(rules.values())[done % len(rules)]
        ranks, _ = rule.draw(rng)
        solutions = cards.solve(rule.values(ranks), game["target"])
        if not solutions:
            continue
        target = cards.render_target(fmt, ranks, rule, game["target"], solutions[0])
        prompt += len(cards.render_prompt(fmt, ranks, rule, game["target"]))
        answer += len(target)
        feedback += len(verifier(target.replace(solutions[0], "1+1"), rule.values(ranks)).feedback)
        done += 1
    per_token = ASSUMPTIONS["CHARS_PER_TOKEN"] * hands
    return {
        "prompt": prompt / per_token + ASSUMPTIONS["CHAT_TEMPLATE_TOKENS"],
        "answer": answer / per_token,
        "feedback": feedback / per_token + ASSUMPTIONS["TURN_TEMPLATE_TOKENS"],
    }


def profile_gpus() -> dict:
    """GPUs per job of each rule, as the SLURM profile requests them (rendered with its templating)."""
    import yte

    with open(ROOT / "slurm" / "config.yaml") as f:
        profile = yte.process_yaml(f, require_use_yte=True)
    default = int(profile.get("default-resources", {}).get("gpu", 0))
    return {rule: int(res.get("gpu", default)) for rule, res in profile.get("set-resources", {}).items()} | {
        "default": default
    }


def job_counts(configfile: Path) -> dict:
    """Jobs per rule of the whole study, as snakemake plans them."""
    out = subprocess.run(
        [
            str(SNAKEMAKE),
            "-n",
            "--forceall",
            "--ignore-incomplete",
            "--quiet",
            "rules",
            "--configfile",
            str(configfile),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    counts = {}
    for line in out.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].isdigit() and parts[0] not in ("total", "job"):
            counts[parts[0]] = int(parts[1])
    return counts


class Scenario:
    """How long answers are and how many tries an episode plays.

    expected: an answer is ANSWER_LENGTH_FACTOR times the reference JSON answer (capped at max_new_tokens;
    generate() stops when the whole batch has stopped), and each try solves SOLVE_RATE_PER_TRY of the
    episodes still playing. bound: every try of every episode runs to max_new_tokens."""

    def __init__(self, tokens: dict, bound: bool):
        self.tokens, self.bound = tokens, bound

    def answer(self, max_new_tokens: int) -> float:
        if self.bound:
            return max_new_tokens
        return min(max_new_tokens, ASSUMPTIONS["ANSWER_LENGTH_FACTOR"] * self.tokens["answer"])

    def turns(self, episodes: int, turns: int, max_new_tokens: int) -> list[tuple[float, float]]:
        """(episodes still playing, context tokens) at each try: the prompt, then every earlier answer
        and its feedback."""
        keep = 1.0 if self.bound else 1.0 - ASSUMPTIONS["SOLVE_RATE_PER_TRY"]
        step = self.answer(max_new_tokens) + self.tokens["feedback"]
        return [(episodes * keep**t, self.tokens["prompt"] + t * step) for t in range(turns)]


class Cost:
    """GPU-seconds on one GPU type: training FLOPs, forward FLOPs, generation."""

    def __init__(self, model: dict, gpu: dict):
        self.model, self.gpu = model, gpu
        self.flops_per_s = gpu["flops"] * ASSUMPTIONS["TRAIN_MFU"]

    def train(self, tokens: float) -> float:
        return 6 * self.model["params"] * tokens / self.flops_per_s

    def forward(self, tokens: float) -> float:
        return 2 * self.model["params"] * tokens / self.flops_per_s

    def generate(self, turns: list[tuple[float, float]], new_tokens: float, batch: int, gpus: int) -> float:
        """Play the episodes of each try (see Scenario.turns) in batches of `batch`, split over `gpus`
        data-parallel GPUs: a prefill of the context, then new_tokens decode steps per batch."""
        seconds = 0.0
        for episodes, ctx in turns:
            seconds += self.forward(episodes * ctx)  # prefill: compute-bound
            per_gpu = max(1, math.ceil(min(batch, episodes) / gpus))
            rounds = math.ceil(episodes / (per_gpu * gpus))
            kv = per_gpu * (ctx + new_tokens / 2) * self.model["kv_bytes_per_token"]
            step = max(
                2 * self.model["params"] * per_gpu / self.flops_per_s,
                (self.model["weight_bytes"] + kv)
                / (self.gpu["bandwidth"] * ASSUMPTIONS["BANDWIDTH_UTILISATION"]),
            )
            seconds += gpus * rounds * new_tokens * step
        return seconds


def stages(cfg: dict, counts: dict, gpus: dict, cost: Cost, scenario: Scenario) -> list[dict]:
    """One row per GPU stage: jobs, GPUs per job, tokens per job, GPU-seconds per job."""
    sft, rl, ev = cfg["sft"], cfg["rl"], cfg["eval"]
    tokens = scenario.tokens
    example = tokens["prompt"] + tokens["answer"]
    g_rl, g_eval = gpus.get("rl", gpus["default"]), gpus.get("evaluate", gpus["default"])
    rows = []

    # SFT: max_steps x global batch examples; held-out ID and OOD losses every logging step; the
    # checkpoints written to the shared filesystem.
    train = sft["max_steps"] * sft["batch_size"] * example
    held_out = sft["max_steps"] // sft["logging_steps"] * 2 * sft["eval_examples"] * example
    saves = (
        len([s for s in sft["save_steps"] if s]) * cost.model["weight_bytes"] / ASSUMPTIONS["FS_BYTES_PER_S"]
    )
    rows.append(
        dict(
            stage="sft",
            rule="sft",
            jobs=counts.get("sft", 0),
            trained=train,
            seconds=cost.train(train) + cost.forward(held_out) + saves * gpus.get("sft", 1),
        )
    )

    # The RL probe: both rules' first probe.episodes hands, greedy, every probe.every updates and at 0.
    probes = rl["updates"] // rl["probe"]["every"] + 1
    probe = probes * cost.generate(
        scenario.turns(2 * rl["probe"]["episodes"], ev["verify_turns"], ev["max_new_tokens"]),
        scenario.answer(ev["max_new_tokens"]),
        ev["batch_size"],
        g_rl,
    )

    runs = counts.get("rl", 0)
    per_algo = runs // (len(rl["algos"]) + bool(rl["control"])) if runs else 0
    for algo in rl["algos"]:
        # One update: prompts_per_update x num_generations episodes, all played at once; PPO then scores
        # every try once (old log-probs) and trains `epochs` passes over them (GRPO/RLOO: one pass).
        episodes = rl["prompts_per_update"] * rl["num_generations"]
        answer = scenario.answer(rl["max_new_tokens"])
        turns = scenario.turns(episodes, rl["verify_turns"], rl["max_new_tokens"])
        tries = sum(n * (ctx + answer) for n, ctx in turns)  # tokens of every try with its context
        epochs = rl["ppo"]["epochs"] if algo == "ppo" else 1
        per_update = cost.generate(turns, answer, episodes, g_rl) + cost.train(epochs * tries)
        per_update += cost.forward(tries) if algo == "ppo" else 0.0
        rows.append(
            dict(
                stage=f"rl ({algo})",
                rule="rl",
                jobs=per_algo,
                trained=rl["updates"] * epochs * tries,
                seconds=rl["updates"] * per_update + probe,
            )
        )
    if rl["control"]:
        # Continued SFT from the same checkpoint: `updates` steps of prompts_per_update hands, same probe.
        train = rl["updates"] * rl["prompts_per_update"] * example
        rows.append(
            dict(
                stage="rl (sft_continue control)",
                rule="rl",
                jobs=per_algo,
                trained=train,
                seconds=cost.train(train) + probe,
            )
        )

    # Evaluation: every model, eval.episodes hands of each test rule, up to verify_turns tries each.
    answer = scenario.answer(ev["max_new_tokens"])
    turns = scenario.turns(2 * ev["episodes"], ev["verify_turns"], ev["max_new_tokens"])
    rows.append(
        dict(
            stage="evaluate",
            rule="evaluate",
            jobs=counts.get("evaluate", 0),
            trained=0.0,
            seconds=cost.generate(turns, answer, ev["batch_size"], g_eval),
        )
    )
    # Every job starts up and loads its model while all its GPUs wait.
    startup = ASSUMPTIONS["JOB_STARTUP_S"] + cost.model["weight_bytes"] / ASSUMPTIONS["FS_BYTES_PER_S"]
    for row in rows:
        row["gpus"] = gpus.get(row["rule"], gpus["default"])
        row["seconds"] += startup * max(row["gpus"], 1)
        row["gpu_hours_per_job"] = row["seconds"] / 3600
        row["wall_hours_per_job"] = row["gpu_hours_per_job"] / max(row["gpus"], 1)
    return rows


def estimate(configfile: Path, counts: dict | None = None) -> dict:
    """Stage rows for one config, per GPU type and scenario ("expected", "bound")."""
    cfg = merged_config(configfile)
    model = model_numbers(architecture(cfg))
    tokens = token_counts(cfg)
    counts = job_counts(configfile) if counts is None else counts
    gpus = profile_gpus()
    return {
        "model": model,
        "tokens": tokens,
        "counts": counts,
        "disk": disk_and_svd(architecture(cfg)),
        "rows": {
            (gpu_name, scenario): stages(
                cfg, counts, gpus, Cost(model, gpu), Scenario(tokens, scenario == "bound")
            )
            for gpu_name, gpu in GPUS.items()
            for scenario in ("expected", "bound")
        },
    }


def table(configfile: Path) -> str:
    est = estimate(configfile)
    rows = est["rows"]
    columns = [("A100-80GB", "expected"), ("H100-80GB", "expected"), ("A100-80GB", "bound")]
    lines = [
        f"{configfile.name}: {est['model']['params'] / 1e9:.2f}B parameters in the forward pass; "
        f"prompt {est['tokens']['prompt']:.0f}, answer {est['tokens']['answer']:.0f}, "
        f"feedback {est['tokens']['feedback']:.0f} tokens",
        "",
        "| stage | jobs | GPUs/job | trained tokens/job | wall h/job A100 | GPU-h A100 | GPU-h H100 "
        "| GPU-h A100, bound | wall h/job A100, bound |",
        "|---|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    totals = dict.fromkeys(columns, 0.0)
    for i, row in enumerate(rows[columns[0]]):
        for column in columns:
            totals[column] += rows[column][i]["jobs"] * rows[column][i]["gpu_hours_per_job"]
        bound = rows[columns[2]][i]
        trained = f"{row['trained'] / 1e6:.1f}M" if row["trained"] else "–"
        lines.append(
            f"| {row['stage']} | {row['jobs']} | {row['gpus']} | {trained} "
            f"| {row['wall_hours_per_job']:.2f} "
            + "".join(f"| {rows[c][i]['jobs'] * rows[c][i]['gpu_hours_per_job']:,.1f} " for c in columns)
            + f"| {bound['wall_hours_per_job']:.2f} |"
        )
    lines.append("| **total** | | | | " + "".join(f"| **{totals[c]:,.0f}** " for c in columns) + "| |")
    counts, disk = est["counts"], est["disk"]
    kept = counts.get("evaluate", 0) - counts.get("restore", 0)  # edited models are temp()
    total_tb = (kept * disk["model_bytes"] + counts.get("svd", 0) * disk["svd_bytes"]) / 1e12
    lines += [
        "",
        f"CPU jobs: {counts.get('svd', 0)} svd (about {disk['svd_core_hours']:.1f} core-hours each), "
        f"{counts.get('spectrum', 0)} spectrum, {counts.get('restore', 0)} restore. "
        f"Disk: {kept} model directories of {disk['model_bytes'] / 1e9:.0f} GB and {counts.get('svd', 0)} "
        f"SVD caches of {disk['svd_bytes'] / 1e9:.0f} GB, about {total_tb:.1f} TB in results/.",
    ]
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    configs = [Path(a) for a in argv] or sorted((ROOT / "config").glob("paper-*.yaml"))
    for configfile in configs:
        print(table(configfile.resolve()))
        print()
    print(
        "Assumptions: "
        + ", ".join(f"{k}={v}" for k, v in ASSUMPTIONS.items())
        + "; "
        + ", ".join(
            f"{g} {s['flops'] / 1e12:.0f} TFLOP/s bf16, {s['bandwidth'] / 1e12:.2f} TB/s"
            for g, s in GPUS.items()
        )
        + "."
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
