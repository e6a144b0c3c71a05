"""The evaluation engine: multi-turn verification episodes (the paper's protocol) for one model, all
episodes advancing together in batches.

An episode is one test hand: the model answers; if the verifier rejects the answer, its feedback ("You
failed this trial because ...") becomes the next user turn, up to `turns` tries. A batch of episodes is
played turn by turn through transformers' `generate` (left padding, each row stopping at its end-of-turn
token) with one KV cache kept across turns: a new turn feeds only the tokens the cache does not hold yet
(the feedback turn), and a solved episode leaves the batch and its cache rows."""

from __future__ import annotations

import math
import os
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


def _picker(decoding: Decoding):
    """Next tokens from last-position logits: argmax, or transformers' temperature and top-p warpers
    then a draw (what `generate` does)."""
    import torch

    if not decoding.do_sample:
        return lambda logits: logits.argmax(-1)
    from transformers import LogitsProcessorList, TemperatureLogitsWarper, TopPLogitsWarper

    warpers = LogitsProcessorList([TemperatureLogitsWarper(decoding.temperature)])
    if decoding.top_p < 1.0:
        warpers.append(TopPLogitsWarper(decoding.top_p))
    return lambda logits: torch.multinomial(torch.softmax(warpers(None, logits), -1), 1).squeeze(1)


def encode(tokenizer, conversation: list[dict]) -> list[int]:
    """The token ids of a conversation up to the next assistant turn, exactly as a one-at-a-time
    evaluation would build them (template text, then the tokenizer)."""
    text = tokenizer.apply_chat_template(conversation, tokenize=False, add_generation_prompt=True)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def growing_cache():
    """A transformers DynamicCache whose layers keep spare columns: a decode step writes its key and
    value in place instead of concatenating (copying) the whole cache, which at batch 256 costs more
    than the step's attention."""
    from transformers import DynamicCache
    from transformers.cache_utils import Cache, DynamicLayer

    class GrowingLayer(DynamicLayer):
        def update(self, key_states, value_states, *args, **kwargs):
            if not self.is_initialized:
                self.lazy_initialization(key_states, value_states)
                self.replace(key_states[..., :0, :], value_states[..., :0, :])
            used, new = self.keys.shape[-2], key_states.shape[-2]
            if used + new > self._keys.shape[-2]:  # grow by half again (and at least 64 columns)
                self.replace(self.keys, self.values, spare=max(64, used // 2 + new))
            self._keys[..., used : used + new, :] = key_states
            self._values[..., used : used + new, :] = value_states
            self.keys, self.values = self._keys[..., : used + new, :], self._values[..., : used + new, :]
            return self.keys, self.values

        def replace(self, keys, values, spare: int = 64) -> None:
            """Hold `keys`/`values` (batch, heads, columns, dim) with `spare` free columns after them."""
            columns = keys.shape[-2]
            self._keys = keys.new_empty((*keys.shape[:-2], columns + spare, keys.shape[-1]))
            self._values = values.new_empty((*values.shape[:-2], columns + spare, values.shape[-1]))
            self._keys[..., :columns, :], self._values[..., :columns, :] = keys, values
            self.keys, self.values = self._keys[..., :columns, :], self._values[..., :columns, :]

        def batch_select_indices(self, indices) -> None:
            if self.is_initialized:
                self._keys, self._values = self._keys[indices], self._values[indices]
                columns = self.keys.shape[-2]
                self.keys, self.values = self._keys[..., :columns, :], self._values[..., :columns, :]

    class GrowingCache(DynamicCache):
        def __init__(self):
            Cache.__init__(self, layer_class_to_replicate=GrowingLayer)

    return GrowingCache()


class Batch:
    """Conversations advancing together, turn by turn, keeping one KV cache between turns.

    A turn prefills, per row, only the part of the re-encoded conversation the cache does not hold yet
    (longest common prefix with the cached tokens, so an answer that does not survive decode/re-encode
    rolls the cache back), then decodes one token per step through the model's forward. Rows that have
    ended their answer leave the step batch once they are `park_share` of it: their cache rows are parked
    and put back, with holes for the columns they skipped, when the turn ends, so one long answer does
    not make every finished row pay for its steps. `tokens`/`mask` mirror the cache's columns: left
    padding and holes are mask 0, and positions come from the mask, so neither shifts them. A row's last
    token (its end of turn) is not fed: the next turn's prefill feeds it."""

    def __init__(self, model, tokenizer, decoding: Decoding, park_share: float = 0.25):
        import torch

        self.model, self.tokenizer, self.decoding, self.park_share = model, tokenizer, decoding, park_share
        self.pick = _picker(decoding)
        self.cache = growing_cache()
        if model.device.type == "cpu":
            # torch's CPU attention handles grouped-query heads under a mask itself (measured bit-identical);
            # without this switch transformers copies every key/value head per query head at each step.
            # (On CUDA a mask would push GQA onto the slow math kernel: left alone there.)
            os.environ.setdefault("TRANSFORMERS_SDPA_FORCE_GQA", "1")
        self.device = model.device
        self.tokens = self.mask = torch.empty((0, 0), dtype=torch.long, device=self.device)

    def turn(self, conversations_ids: Sequence[list[int]]) -> list[str]:
        import torch

        pad, eos, steps = self.tokenizer.pad_token_id, self.tokenizer.eos_token_id, self.decoding.max_new_tokens
        rows = len(conversations_ids)
        if self.tokens.shape[0] == 0:
            self.tokens = self.mask = torch.empty((rows, 0), dtype=torch.long, device=self.device)
        suffixes = [self._reuse(row, ids) for row, ids in enumerate(conversations_ids)]
        self._close_holes()
        cached = self.tokens.shape[1]
        width = max(map(len, suffixes))
        start = cached + width  # the first decode column
        # Columns: the cache, the prefill chunk (left-padded), then one per decode step.
        tokens = torch.full((rows, start + steps), pad, dtype=torch.long, device=self.device)
        mask = torch.zeros_like(tokens)
        tokens[:, :cached], mask[:, :cached] = self.tokens, self.mask
        tokens[:, cached:start] = torch.tensor([[pad] * (width - len(s)) + s for s in suffixes])
        mask[:, cached:start] = torch.tensor([[0] * (width - len(s)) + [1] * len(s) for s in suffixes])
        position = mask.sum(1)  # the position of each row's next token
        answers = torch.full((rows, steps), pad, dtype=torch.long, device=self.device)
        step_rows = torch.arange(rows, device=self.device)  # batch rows still in the step batch, cache order
        done = torch.zeros(rows, dtype=torch.bool, device=self.device)
        parked = []
        with torch.inference_mode():
            prefill_positions = (mask[:, :start].cumsum(1) - 1).clamp(min=0)[:, cached:]
            logits = self._forward(tokens[:, cached:start], mask[:, :start], prefill_positions)
            for step in range(steps):
                chosen = self.pick(logits)
                answers[step_rows[~done], step] = chosen[~done]
                done |= chosen == eos
                if step + 1 == steps or bool(done.all()):
                    break
                column = start + step
                if int(done.sum()) >= max(1, self.park_share * len(step_rows)):
                    parked.append((step_rows[done], self._take(done), column))
                    step_rows, chosen, done = step_rows[~done], chosen[~done], done[~done]
                live = step_rows[~done]
                tokens[live, column], mask[live, column] = chosen[~done], 1
                logits = self._forward(tokens[step_rows, column : column + 1], mask[step_rows, : column + 1],
                                       position[step_rows, None])
                position[live] += 1
        columns = self.cache.get_seq_length()
        if parked:
            self._put_back(step_rows, parked, rows, columns)
        self.tokens, self.mask = tokens[:, :columns], mask[:, :columns]
        ended = (answers == eos).long().cumsum(1)
        kept = (ended == 0) | ((ended == 1) & (answers == eos))
        self.answer_ids = [row[k].tolist() for row, k in zip(answers, kept)]  # for RL: what was sampled
        return [text.strip() for text in self.tokenizer.batch_decode(self.answer_ids, skip_special_tokens=True)]

    def _forward(self, input_ids, attention_mask, position_ids):
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                         past_key_values=self.cache, use_cache=True, logits_to_keep=1)
        return out.logits[:, -1].float()

    def _close_holes(self, min_share: float = 0.8) -> None:
        """Move each row's cached tokens together (right-aligned, order kept) once holes (skipped steps,
        rolled-back tokens, rows gone) are over a fifth of the columns: attention reads every column at
        every step, so one copy per turn buys back many reads. Positions come from the mask: unchanged."""
        import torch

        valid = self.mask.bool()
        width = int(valid.sum(1).max()) if valid.numel() else 0
        if width >= min_share * valid.shape[1]:
            return
        index = torch.argsort(valid.long(), dim=1, stable=True)[:, valid.shape[1] - width :]
        self.tokens, self.mask = self.tokens.gather(1, index), self.mask.gather(1, index)
        for layer in self.cache.layers:
            heads, dim = layer.keys.shape[1], layer.keys.shape[3]
            columns = index[:, None, :, None].expand(-1, heads, -1, dim)
            layer.replace(layer.keys.gather(2, columns), layer.values.gather(2, columns))

    def _take(self, leaving):
        """Remove the `leaving` rows (a mask over the step batch) from the cache; return their layers'
        key and value rows."""
        taken = [(layer.keys[leaving], layer.values[leaving]) for layer in self.cache.layers]
        self.cache.batch_select_indices((~leaving).nonzero().flatten())
        return taken

    def _put_back(self, step_rows, parked, rows: int, columns: int) -> None:
        """The parked rows back into the cache in batch order, zeros (masked holes) where they skipped."""
        for i, layer in enumerate(self.cache.layers):
            keys = layer.keys.new_zeros((rows, *layer.keys.shape[1:]))
            values = layer.values.new_zeros((rows, *layer.values.shape[1:]))
            keys[step_rows], values[step_rows] = layer.keys, layer.values
            for batch_rows, taken, width in parked:
                keys[batch_rows, :, :width], values[batch_rows, :, :width] = taken[i]
            layer.replace(keys, values)

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

        index = torch.tensor(list(rows), dtype=torch.long, device=self.device)
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
            ids = torch.tensor([encode(tokenizer, chat)], device=model.device)
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
