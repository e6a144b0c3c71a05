"""The evaluation engine: multi-turn verification episodes (the paper's protocol) for one model, all
episodes advancing together in batches.

An episode is one test hand: the model answers; if the verifier rejects the answer, its feedback ("You
failed this trial because ...") becomes the next user turn, up to `turns` tries. All episodes of a model
are generated together (left padding, KV cache inside `generate`, each stopping at its end-of-turn
token); an episode leaves the batch when it is solved. Each turn re-reads its conversation in one prefill
pass: with left padding the previous turns cannot be extended in place, and for answers of ~30 tokens
the prefill is a small share of the decoding time."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from rlheals import cards
from rlheals.verify import Verifier

FORMAT_ERRORS = ("illegal", "unparseable")


@dataclass(frozen=True)
class Episode:
    id: str
    rule: str
    cards: tuple[str, ...]
    values: tuple[int, ...]
    prompt: str


def episodes_from_rows(rows: Sequence[Mapping], rules: Mapping[str, cards.Rule], fmt: str) -> list[Episode]:
    return [
        Episode(r["id"], r["rule"], tuple(r["cards"]), tuple(r["values"]),
                cards.render_prompt(fmt, r["cards"], rules[r["rule"]], r["target"]))
        for r in rows
    ]


@dataclass(frozen=True)
class Decoding:
    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int = 0
    max_new_tokens: int = 48

    def generate_kwargs(self) -> dict:
        if not self.do_sample:
            return {"do_sample": False, "temperature": None, "top_p": None, "top_k": None}
        return {"do_sample": True, "temperature": self.temperature, "top_p": self.top_p, "top_k": None}


def generate(model, tokenizer, conversations: Sequence[list[dict]], decoding: Decoding, batch_size: int) -> list[str]:
    """One assistant turn for each conversation, in batches of `batch_size` (left-padded)."""
    import torch

    texts = [tokenizer.apply_chat_template(c, tokenize=False, add_generation_prompt=True) for c in conversations]
    # Similar lengths together: less padding. Results go back in the original order.
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    answers: list[str] = [""] * len(texts)
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        enc = tokenizer([texts[i] for i in idx], return_tensors="pt", padding=True, add_special_tokens=False)
        with torch.inference_mode():
            out = model.generate(
                **enc,
                max_new_tokens=decoding.max_new_tokens,
                pad_token_id=tokenizer.pad_token_id,
                eos_token_id=tokenizer.eos_token_id,
                **decoding.generate_kwargs(),
            )
        for i, text in zip(idx, tokenizer.batch_decode(out[:, enc["input_ids"].shape[1] :], skip_special_tokens=True)):
            answers[i] = text.strip()
    return answers


def run_episodes(model, tokenizer, episodes: Sequence[Episode], verifier: Verifier, turns: int,
                 decoding: Decoding = Decoding(), batch_size: int = 256, log=None) -> list[dict]:
    """Play every episode to the end; one result row per episode."""
    import torch

    if decoding.do_sample:
        torch.manual_seed(decoding.seed)
    chats = {e.id: [{"role": "user", "content": e.prompt}] for e in episodes}
    tries: dict[str, list] = {e.id: [] for e in episodes}
    active = list(episodes)
    for turn in range(1, turns + 1):
        if not active:
            break
        answers = generate(model, tokenizer, [chats[e.id] for e in active], decoding, batch_size)
        still = []
        for e, answer in zip(active, answers):
            verdict = verifier(answer, e.values)
            tries[e.id].append((answer, verdict))
            if not verdict.correct and turn < turns:
                chats[e.id] += [{"role": "assistant", "content": answer}, {"role": "user", "content": verdict.feedback}]
                still.append(e)
        if log:
            log(f"turn {turn}: {len(active)} episodes, {len(active) - len(still)} finished")
        active = still
    return [_row(e, tries[e.id]) for e in episodes]


def _row(e: Episode, tries: list) -> dict:
    first = tries[0][1]
    return {
        "episode": e.id,
        "rule": e.rule,
        "cards": list(e.cards),
        "values": list(e.values),
        "tries": len(tries),
        "answers": [a for a, _ in tries],
        "categories": [v.category for _, v in tries],
        "rewards": [v.reward for _, v in tries],
        "correct": tries[-1][1].correct,
        "first_correct": first.correct,
        "first_category": first.category,
        "format_error": first.category in FORMAT_ERRORS,
        "value_mapping": first.restated == e.values,
    }


def wilson(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval of a proportion."""
    if n == 0:
        return (math.nan, math.nan)
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (max(0.0, centre - half), min(1.0, centre + half))


def summarize(rows: Sequence[Mapping]) -> dict[str, dict]:
    """Per rule: accuracy within the tries (Wilson interval), pass@1, format errors, value mapping."""
    out = {}
    for rule in sorted({r["rule"] for r in rows}):
        sel = [r for r in rows if r["rule"] == rule]
        n, k = len(sel), sum(r["correct"] for r in sel)
        low, high = wilson(k, n)
        out[rule] = {
            "n_episodes": n,
            "accuracy": k / n,
            "accuracy_low": low,
            "accuracy_high": high,
            "pass_at_1": sum(r["first_correct"] for r in sel) / n,
            "format_error_rate": sum(r["format_error"] for r in sel) / n,
            "value_mapping_accuracy": sum(r["value_mapping"] for r in sel) / n,
            "mean_tries": sum(r["tries"] for r in sel) / n,
        }
    return out
