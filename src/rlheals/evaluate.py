"""Evaluation: batched greedy answers from a model, scored by the verifier."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from rlheals import cards
from rlheals.verify import Verifier


def chat_prompts(tokenizer, prompts: Sequence[str]) -> list[str]:
    return [
        tokenizer.apply_chat_template([{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True)
        for p in prompts
    ]


def generate(model, tokenizer, prompts: Sequence[str], max_new_tokens: int = 48, batch_size: int = 256) -> list[str]:
    """Greedy completions of chat prompts, batched with left padding; stops at the end-of-turn token."""
    import torch

    out = []
    texts = chat_prompts(tokenizer, prompts)
    for start in range(0, len(texts), batch_size):
        enc = tokenizer(texts[start : start + batch_size], return_tensors="pt", padding=True, add_special_tokens=False)
        with torch.inference_mode():
            gen = model.generate(
                **enc, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id,
                eos_token_id=tokenizer.eos_token_id,
            )
        out += tokenizer.batch_decode(gen[:, enc["input_ids"].shape[1] :], skip_special_tokens=True)
    return out


def quick_accuracy(model, tokenizer, rows: Sequence[Mapping], rules: Mapping[str, cards.Rule], fmt: str,
                   verifier: Verifier, max_new_tokens: int = 48) -> dict:
    """Single-try greedy accuracy on dataset rows, with the format-error and value-mapping rates."""
    prompts = [cards.render_prompt(fmt, r["cards"], rules[r["rule"]], r["target"]) for r in rows]
    answers = generate(model, tokenizer, prompts, max_new_tokens)
    verdicts = [verifier(a, r["values"]) for a, r in zip(answers, rows)]
    n = len(rows)
    return {
        "n": n,
        "accuracy": sum(v.correct for v in verdicts) / n,
        "format_errors": sum(v.category in ("illegal", "unparseable") for v in verdicts) / n,
        "value_mapping": sum(v.restated == tuple(r["values"]) for v, r in zip(verdicts, rows)) / n,
        "example": answers[0],
    }
