"""The evaluation engine: multi-turn verification episodes (the paper's protocol) for one model, all
episodes advancing together in batches.

An episode is one test hand: the model answers; if the verifier rejects the answer, its feedback ("You
failed this trial because ...") becomes the next user turn, up to `turns` tries. A batch of episodes is
played turn by turn through transformers' `generate` (left padding, each row stopping at its end-of-turn
token) with one KV cache kept across turns: a new turn feeds only the tokens the cache does not hold yet
(the feedback turn), and a solved episode leaves the batch and its cache rows."""

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
        """Every sampling setting explicit: a local model's generation_config.json (Qwen2.5 ships a
        repetition penalty) must not change what is decoded, nor PPO's log-probabilities."""
        neutral = {"repetition_penalty": 1.0, "typical_p": 1.0, "min_p": None, "no_repeat_ngram_size": 0}
        if not self.do_sample:
            return {"do_sample": False, "temperature": None, "top_p": None, "top_k": None, **neutral}
        return {"do_sample": True, "temperature": self.temperature, "top_p": self.top_p, "top_k": None, **neutral}


def encode(tokenizer, conversation: list[dict]) -> list[int]:
    """The token ids of a conversation up to the next assistant turn, exactly as a one-at-a-time
    evaluation would build them (template text, then the tokenizer)."""
    text = tokenizer.apply_chat_template(conversation, tokenize=False, add_generation_prompt=True)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


class Batch:
    """Conversations advancing together through `generate`, keeping their KV cache between turns.

    `tokens`/`mask` mirror the cache's columns: left padding, and holes (mask 0) where a row's cached
    tokens were abandoned. Each turn appends, per row, only the part of the re-encoded conversation that
    the cache does not already hold (longest common prefix), so earlier turns are never recomputed;
    positions come from the mask, so holes and padding do not shift them."""

    def __init__(self, model, tokenizer, decoding: Decoding):
        import torch
        from transformers import DynamicCache

        self.model, self.tokenizer, self.decoding = model, tokenizer, decoding
        self.cache = DynamicCache()
        self.tokens = torch.empty((0, 0), dtype=torch.long)
        self.mask = torch.empty((0, 0), dtype=torch.long)

    def turn(self, conversations_ids: Sequence[list[int]]) -> list[str]:
        import torch

        pad = self.tokenizer.pad_token_id
        if self.tokens.shape[0] == 0:
            self.tokens = torch.empty((len(conversations_ids), 0), dtype=torch.long)
            self.mask = torch.empty_like(self.tokens)
        suffixes = [self._reuse(row, ids) for row, ids in enumerate(conversations_ids)]
        width = max(map(len, suffixes))
        chunk = torch.tensor([[pad] * (width - len(s)) + s for s in suffixes], dtype=torch.long)
        chunk_mask = torch.tensor([[0] * (width - len(s)) + [1] * len(s) for s in suffixes], dtype=torch.long)
        tokens, mask = torch.cat([self.tokens, chunk], 1), torch.cat([self.mask, chunk_mask], 1)
        with torch.inference_mode():
            out = self.model.generate(
                input_ids=tokens, attention_mask=mask, past_key_values=self.cache,
                max_new_tokens=self.decoding.max_new_tokens, pad_token_id=pad,
                eos_token_id=self.tokenizer.eos_token_id, **self.decoding.generate_kwargs(),
            )
        new = out[:, tokens.shape[1] :]
        # A row's answer ends at its first end-of-turn token; what generate appended after it is padding.
        ended = (new == self.tokenizer.eos_token_id).long().cumsum(1)
        new_mask = ((ended == 0) | ((ended == 1) & (new == self.tokenizer.eos_token_id))).long()
        self.tokens, self.mask = out, torch.cat([mask, new_mask], 1)
        self.answer_ids = [row[m.bool()].tolist() for row, m in zip(new, new_mask)]  # for RL: what was sampled
        return [text.strip() for text in self.tokenizer.batch_decode(new, skip_special_tokens=True)]

    def _reuse(self, row: int, ids: list[int]) -> list[int]:
        """Mask out the row's cached tokens that diverge from `ids`; return the ids still to feed."""
        columns = self.mask[row].nonzero().flatten()
        cached = self.tokens[row, columns].tolist()
        keep = 0
        for a, b in zip(cached, ids):
            if a != b:
                break
            keep += 1
        keep = min(keep, len(ids) - 1)  # feed at least one token: its logits start the answer
        self.mask[row, columns[keep:]] = 0
        return ids[keep:]

    def keep(self, rows: Sequence[int]) -> None:
        """Drop every row not in `rows` (finished episodes leave the batch)."""
        import torch

        index = torch.tensor(list(rows), dtype=torch.long)
        self.tokens, self.mask = self.tokens[index], self.mask[index]
        self.cache.batch_select_indices(index)


def run_episodes(model, tokenizer, episodes: Sequence[Episode], verifier: Verifier, turns: int,
                 decoding: Decoding = Decoding(), batch_size: int = 256, log=None) -> list[dict]:
    """Play every episode to the end; one result row per episode, in the order given."""
    import torch

    if decoding.do_sample:
        torch.manual_seed(decoding.seed)
    # Similar prompt lengths share a batch: less padding.
    lengths = {e.id: len(encode(tokenizer, [{"role": "user", "content": e.prompt}])) for e in episodes}
    order = sorted(episodes, key=lambda e: lengths[e.id])
    tries: dict[str, list] = {e.id: [] for e in episodes}
    for start in range(0, len(order), batch_size):
        _play(model, tokenizer, order[start : start + batch_size], verifier, turns, decoding, tries, log)
    return [_row(e, tries[e.id]) for e in episodes]


def _play(model, tokenizer, group: Sequence[Episode], verifier: Verifier, turns: int, decoding: Decoding,
          tries: dict[str, list], log) -> None:
    """One batch of episodes through all its turns; a solved episode leaves the batch."""
    batch = Batch(model, tokenizer, decoding)
    chats = [[{"role": "user", "content": e.prompt}] for e in group]
    active = list(range(len(group)))
    for turn in range(1, turns + 1):
        answers = batch.turn([encode(tokenizer, chats[i]) for i in active])
        still = []
        for row, (i, answer) in enumerate(zip(active, answers)):
            verdict = verifier(answer, group[i].values)
            tries[group[i].id].append((answer, verdict))
            if not verdict.correct:
                chats[i] += [{"role": "assistant", "content": answer}, {"role": "user", "content": verdict.feedback}]
                still.append(row)
        if log:
            log(f"turn {turn}: {len(active)} episodes, {len(active) - len(still)} solved")
        if not still or turn == turns:
            break
        batch.keep(still)
        active = [active[row] for row in still]


def run_episodes_one_at_a_time(model, tokenizer, episodes: Sequence[Episode], verifier: Verifier, turns: int,
                                decoding: Decoding = Decoding()) -> list[dict]:
    """The anchors' way, the reference the engine must match: one episode at a time, one `generate` per
    try over the whole conversation, no batching and no cache kept between tries."""
    import torch

    rows = []
    for e in episodes:
        chat, tries = [{"role": "user", "content": e.prompt}], []
        for _ in range(turns):
            ids = torch.tensor([encode(tokenizer, chat)])
            with torch.inference_mode():
                out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids),
                                     max_new_tokens=decoding.max_new_tokens, pad_token_id=tokenizer.pad_token_id,
                                     eos_token_id=tokenizer.eos_token_id, **decoding.generate_kwargs())
            answer = tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True).strip()
            verdict = verifier(answer, e.values)
            tries.append((answer, verdict))
            if verdict.correct:
                break
            chat = chat + [{"role": "assistant", "content": answer}, {"role": "user", "content": verdict.feedback}]
        rows.append(_row(e, tries))
    return rows


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
