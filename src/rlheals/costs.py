"""What one job of each stage costs at paper scale, from the model's size and the job's token counts: the
cost model behind the cluster resources each job asks for (rlheals.resources) and the GPU-hour estimate
of a whole study (benchmarks/gpu_hours.py, docs/gpu-hours.md).

Every constant is an assumption, stated in ASSUMPTIONS:
- training (SFT, PPO epochs, the continued-SFT control): 6 * N * tokens FLOPs at TRAIN_MFU of peak;
- forward-only passes (SFT held-out losses, PPO's old log-probs, prompt prefill): 2 * N * tokens at TRAIN_MFU;
- generation: a prefill of each try's context (compute-bound, 2 * N * tokens), then one decode step per
  new token for the whole batch. Decoding is memory-bound: a step reads every weight (2 bytes, bf16) and
  the batch's KV cache, so it costs max(2 * N * batch FLOPs at TRAIN_MFU, bytes / (HBM bandwidth *
  BANDWIDTH_UTILISATION)). Batched generation runs until the longest answer of the batch stops.
- two scenarios: "expected" (answers ANSWER_LENGTH_FACTOR x the reference JSON answer, each try solving
  SOLVE_RATE_PER_TRY of the episodes still playing) and "bound" (every try of every episode runs to
  max_new_tokens): job runtimes are sized on the bound.
- data-parallel jobs (ZeRO-2 keeps a full copy of the weights on each GPU) split the generation batch
  across their GPUs, and each GPU reads all the weights at every step: memory-bound generation costs
  GPU-hours in proportion to the GPU count, training does not.
- every job pays JOB_STARTUP_S and a model load from the shared filesystem, with all its GPUs waiting."""

from __future__ import annotations

import json
import math
import random
from collections.abc import Mapping
from pathlib import Path

# Dense bf16 peak and HBM bandwidth (vendor datasheets, SXM parts).
GPUS = {
    "A100-80GB": {"flops": 312e12, "bandwidth": 2.039e12},
    "H100-80GB": {"flops": 989e12, "bandwidth": 3.35e12},
}
REFERENCE_GPU = "A100-80GB"  # the slower of the two: what job runtimes are sized for
ASSUMPTIONS = {
    "TRAIN_MFU": 0.35,  # model FLOPs utilisation of full-parameter ZeRO-2 training on ~300-token sequences
    "BANDWIDTH_UTILISATION": 0.6,  # share of HBM bandwidth a decode step reaches
    "CHARS_PER_TOKEN": 3.5,  # prompt/answer characters per BPE token (JSON and digits split finely)
    "CHAT_TEMPLATE_TOKENS": 30,  # system prompt and role markers the chat template adds per conversation
    "TURN_TEMPLATE_TOKENS": 10,  # role markers per extra turn
    "ANSWER_LENGTH_FACTOR": 2.0,  # expected: a generated answer is twice the reference JSON answer
    "SOLVE_RATE_PER_TRY": 0.3,  # expected: share of the still-playing episodes a try solves
    "FS_BYTES_PER_S": 1e9,  # shared-filesystem read/write speed of one process (model loads, checkpoints)
    "JOB_STARTUP_S": 60,  # per job: Python imports, CUDA and NCCL set-up, before the model loads
}

# Published architectures (config.json of the Hugging Face releases), for a config whose model directory
# is not on this machine. `layers` counts the layers a text-only forward pass runs: Llama-3.2-11B-Vision's
# 8 cross-attention layers are skipped without an image; `stored_layers` counts every decoder layer the
# weights (and the SVD stage) hold.
ARCHITECTURES = {
    "Qwen2.5-7B-Instruct": dict(hidden=3584, intermediate=18944, layers=28, stored_layers=28, heads=28, kv_heads=4,
                                vocab=152064),
    "Llama-3.2-11B-Vision-Instruct": dict(hidden=4096, intermediate=14336, layers=32, stored_layers=40, heads=32,
                                          kv_heads=8, vocab=128256),
}


def architecture(cfg: Mapping) -> dict:
    """Shape of the configured model: the tiny model's from the config; a local model's from its
    config.json (Llama-style or GPT-2 key names, the text config of a vision model), else the published
    architecture its directory is named after."""
    if cfg["model"]["source"] == "tiny":
        tiny = cfg["model"]["tiny"]
        from rlheals import pretrain  # the tiny model's vocabulary is the game's words

        return dict(hidden=tiny["hidden_size"], intermediate=tiny["intermediate_size"], layers=tiny["num_layers"],
                    stored_layers=tiny["num_layers"], heads=tiny["num_heads"], kv_heads=tiny["num_kv_heads"],
                    vocab=len(pretrain.vocabulary(cfg["game"]["target"])))
    local = Path(cfg["model"]["local_path"])
    if (local / "config.json").exists():
        hf = json.loads((local / "config.json").read_text())
        text = hf.get("text_config", hf)

        def key(*names, default=None):
            found = [text[n] for n in names if text.get(n) is not None]
            if found:
                return found[0]
            if default is None:
                raise ValueError(f"{local}/config.json: none of {names}")
            return default

        hidden, heads = key("hidden_size", "n_embd"), key("num_attention_heads", "n_head")
        layers = key("num_hidden_layers", "n_layer")
        return dict(hidden=hidden, intermediate=key("intermediate_size", "n_inner", default=4 * hidden),
                    layers=layers - len(text.get("cross_attention_layers") or []), stored_layers=layers,
                    heads=heads, kv_heads=key("num_key_value_heads", default=heads), vocab=key("vocab_size"))
    if local.name not in ARCHITECTURES:
        raise ValueError(f"model.local_path {local}: no config.json there, and not one of {sorted(ARCHITECTURES)}")
    return ARCHITECTURES[local.name]


def matrices(arch: Mapping) -> list[tuple[int, int]]:
    """Shapes of the matrices the SVD stage analyses: every projection of every layer, the embeddings and
    the LM head (rlheals.matrices), as in a Llama-style model with untied embeddings: every stored layer
    (a cross-attention layer counted as a self-attention one)."""
    h, i, kv = arch["hidden"], arch["intermediate"], arch["hidden"] // arch["heads"] * arch["kv_heads"]
    layer = [(h, h), (kv, h), (kv, h), (h, h), (i, h), (i, h), (h, i)]
    return layer * arch["stored_layers"] + [(arch["vocab"], h)] * 2


def disk_and_svd(arch: Mapping) -> dict:
    """Bytes of a model directory (bf16) and of its SVD cache (U and Vh in float32, S in float64, of every
    analysed matrix), and CPU core-hours of that SVD, scaled by rows * cols * rank from the float32 SVD of
    a 4096 x 4096 matrix measured here (16 s on 2 threads, docs/stack.md) times 2 for float64 (1.3-2.7
    times float32, measured side by side on 2048 x 2048)."""
    shapes = matrices(arch)
    rank = [min(m, n) for m, n in shapes]
    return {
        "model_bytes": 2 * sum(m * n for m, n in shapes),
        "svd_bytes": sum(k * (4 * (m + n) + 8) for (m, n), k in zip(shapes, rank)),
        "svd_core_hours": 2 * sum(m * n * k for (m, n), k in zip(shapes, rank)) / 4096**3 * 32 / 3600,
    }


def model_numbers(arch: Mapping) -> dict:
    """Parameters a forward pass multiplies by (transformer blocks and the output head; the embedding
    lookup costs no FLOPs), weight bytes read per decode step, KV-cache bytes per token of context."""
    h, kv = arch["hidden"], arch["hidden"] // arch["heads"] * arch["kv_heads"]
    per_layer = 2 * h * h + 2 * h * kv + 3 * h * arch["intermediate"]
    n = arch["layers"] * per_layer + arch["vocab"] * h
    return {"params": n, "weight_bytes": 2 * n, "kv_bytes_per_token": 2 * arch["layers"] * kv * 2}


def token_counts(cfg: Mapping, hands: int = 64) -> dict:
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


class Scenario:
    """How long answers are and how many tries an episode plays.

    expected: an answer is ANSWER_LENGTH_FACTOR times the reference answer (capped at max_new_tokens;
    generation stops when the whole batch has stopped), and each try solves SOLVE_RATE_PER_TRY of the
    episodes still playing. bound: every try of every episode runs to max_new_tokens."""

    def __init__(self, tokens: Mapping, bound: bool):
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

    def __init__(self, model: Mapping, gpu: Mapping):
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
                (self.model["weight_bytes"] + kv) / (self.gpu["bandwidth"] * ASSUMPTIONS["BANDWIDTH_UTILISATION"]),
            )
            seconds += gpus * rounds * new_tokens * step
        return seconds


def stages(cfg: Mapping, gpus: Mapping[str, int], cost: Cost, scenario: Scenario) -> list[dict]:
    """One row per GPU stage, for one job: its rule (and algo for RL), GPUs, trained tokens, GPU-seconds,
    GPU-hours and wall hours. `gpus`: GPUs per job of each rule (sft, rl, evaluate)."""
    sft, rl, ev = cfg["sft"], cfg["rl"], cfg["eval"]
    tokens = scenario.tokens
    example = tokens["prompt"] + tokens["answer"]
    g_rl, g_eval = gpus["rl"], gpus["evaluate"]
    rows = []

    # SFT: max_steps x global batch examples; held-out ID and OOD losses every logging step; the
    # checkpoints written to the shared filesystem.
    train = sft["max_steps"] * sft["batch_size"] * example
    held_out = sft["max_steps"] // sft["logging_steps"] * 2 * sft["eval_examples"] * example
    saves = len([s for s in sft["save_steps"] if s]) * cost.model["weight_bytes"] / ASSUMPTIONS["FS_BYTES_PER_S"]
    rows.append(dict(stage="sft", rule="sft", algo=None, trained=train,
                     seconds=cost.train(train) + cost.forward(held_out) + saves * gpus["sft"]))

    # The RL probe: both rules' first probe.episodes hands, greedy, every probe.every updates and at 0.
    every = rl["probe"]["every"]
    probes = rl["updates"] // every + 1 if every else 0
    probe = probes * cost.generate(
        scenario.turns(2 * rl["probe"]["episodes"], ev["verify_turns"], ev["max_new_tokens"]),
        scenario.answer(ev["max_new_tokens"]), ev["batch_size"], g_rl)

    for algo in rl["algos"]:
        # One update: prompts_per_update x num_generations episodes, all played at once; PPO then scores
        # every try once (old log-probs) and trains `epochs` passes over them (GRPO/RLOO: one pass).
        episodes = rl["prompts_per_update"] * rl["num_generations"]
        answer = scenario.answer(rl["max_new_tokens"])
        turns = scenario.turns(episodes, rl["verify_turns"] if algo == "ppo" else 1, rl["max_new_tokens"])
        tries = sum(n * (ctx + answer) for n, ctx in turns)  # tokens of every try with its context
        epochs = rl["ppo"]["epochs"] if algo == "ppo" else 1
        per_update = cost.generate(turns, answer, episodes, g_rl) + cost.train(epochs * tries)
        per_update += cost.forward(tries) if algo == "ppo" else 0.0
        rows.append(dict(stage=f"rl ({algo})", rule="rl", algo=algo, trained=rl["updates"] * epochs * tries,
                         seconds=rl["updates"] * per_update + probe))
    if rl["control"]:
        # Continued SFT from the same checkpoint: `updates` steps of prompts_per_update hands, same probe.
        train = rl["updates"] * rl["prompts_per_update"] * example
        rows.append(dict(stage="rl (sft_continue control)", rule="rl", algo="sft_continue", trained=train,
                         seconds=cost.train(train) + probe))

    # Evaluation: every model, eval.episodes hands of each test rule, up to verify_turns tries each.
    answer = scenario.answer(ev["max_new_tokens"])
    turns = scenario.turns(2 * ev["episodes"], ev["verify_turns"], ev["max_new_tokens"])
    rows.append(dict(stage="evaluate", rule="evaluate", algo=None, trained=0.0,
                     seconds=cost.generate(turns, answer, ev["batch_size"], g_eval)))
    # Every job starts up and loads its model while all its GPUs wait.
    startup = ASSUMPTIONS["JOB_STARTUP_S"] + cost.model["weight_bytes"] / ASSUMPTIONS["FS_BYTES_PER_S"]
    for row in rows:
        row["gpus"] = gpus[row["rule"]]
        row["seconds"] += startup * max(row["gpus"], 1)
        row["gpu_hours_per_job"] = row["seconds"] / 3600
        row["wall_hours_per_job"] = row["gpu_hours_per_job"] / max(row["gpus"], 1)
    return rows


def estimate(cfg: Mapping, gpus: Mapping[str, int]) -> dict:
    """Per GPU type and scenario ("expected", "bound"): the stage rows of one job each; with the model's
    numbers, the token counts and the SVD stage's disk and CPU costs."""
    arch = architecture(cfg)
    model, tokens = model_numbers(arch), token_counts(cfg)
    return {
        "model": model,
        "tokens": tokens,
        "disk": disk_and_svd(arch),
        "rows": {(name, scenario): stages(cfg, gpus, Cost(model, gpu), Scenario(tokens, scenario == "bound"))
                 for name, gpu in GPUS.items() for scenario in ("expected", "bound")},
    }
