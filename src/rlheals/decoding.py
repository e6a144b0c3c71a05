"""The batched decoder behind evaluation and PPO's rollouts: many conversations advance together, turn
by turn, through the model's forward (left padding, each row stopping at its end-of-turn token) with one
KV cache kept across turns, so a new turn feeds only the tokens the cache does not hold yet."""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence
from dataclasses import dataclass


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
    return encode_all(tokenizer, [conversation])[0]


def encode_all(tokenizer, conversations: Sequence[list[dict]]) -> list[list[int]]:
    """`encode` for many conversations: one template call and one (parallel) tokenizer call."""
    if not conversations:
        return []
    texts = tokenizer.apply_chat_template(list(conversations), tokenize=False, add_generation_prompt=True)
    return tokenizer(texts, add_special_tokens=False)["input_ids"]


def row_cache(rows: int, config=None):
    """A transformers Cache for `rows` conversations, one layer per layer of the model that `config`
    describes (transformers' own reading of it: `DynamicCache(config=...)`).

    Each full-attention layer becomes a row layer, which keeps every row's keys and values in one storage
    with spare columns, and a forward over b rows reads and writes the first b rows only: a row leaves a
    forward by being swapped past b (two rows copied, not the cache), a decode step writes its column in
    place instead of concatenating (copying) the whole cache, and rows that leave for good are dropped by
    moving the others to the front in place. Columns a row did not write hold zeros or old keys and
    values: finite, under the mask that hides them.

    A row layer gets its storage when the model first writes it. A layer the forward skips (the
    cross-attention layers of Llama-3.2-Vision without an image) never does: it stays uninitialised, as
    transformers expects of a skipped layer, and every row operation passes it by. A layer that stores
    nothing by design (a `DummyLayer`) is kept as it is. Sliding-window, chunked and linear-attention
    layers are refused: a row layer keeps every column, which such a layer must not attend to."""
    from transformers import DynamicCache
    from transformers.cache_utils import DynamicLayer

    row_layer, cache_class = _row_classes()
    if config is None:  # a model without a config: a row layer for each layer index it writes
        return cache_class(layer_class_to_replicate=lambda: row_layer(rows))
    kinds = DynamicCache(config=config)
    layers = []
    for i, (layer, dummy) in enumerate(zip(kinds.layers, kinds.is_dummy)):
        if type(layer) is not DynamicLayer and not dummy:
            raise ValueError(f"layer {i} of this {config.model_type} model caches with "
                             f"{type(layer).__name__} (sliding-window, chunked or linear attention): the "
                             "batched decoder serves full-attention layers only")
        layers.append(layer if dummy else row_layer(rows))
    return cache_class(layers=layers)


@functools.cache
def _row_classes():
    """The row layer and row cache classes, made once (transformers is imported on first use only)."""
    import torch
    from transformers.cache_utils import Cache, DynamicLayer

    class RowLayer(DynamicLayer):
        """One layer's keys and values for every row: `key_store`/`value_store` (rows, heads, capacity,
        dim), of which the first `columns` are held; `keys`/`values` are the views a forward reads."""

        def __init__(self, rows: int):
            super().__init__()
            self.rows, self.columns, self.rows_kept = rows, 0, rows
            self.key_store = self.value_store = None  # until the model writes this layer

        def update(self, key_states, value_states, *args, **kwargs):
            if self.key_store is None:
                self.lazy_initialization(key_states, value_states)
                shape = (self.rows, key_states.shape[1], 0, key_states.shape[3])
                self.replace(key_states.new_zeros(shape), value_states.new_zeros(shape))
            b, used, new = key_states.shape[0], self.columns, key_states.shape[2]
            if used + new > self.key_store.shape[2]:  # grow by half again (and at least 64 columns)
                kept = self.rows_kept
                self.replace(self.key_store[:kept, :, :used], self.value_store[:kept, :, :used],
                             spare=max(64, used // 2 + new))
            self.key_store[:b, :, used : used + new] = key_states
            self.value_store[:b, :, used : used + new] = value_states
            self.columns = end = used + new
            self.keys, self.values = self.key_store[:b, :, :end], self.value_store[:b, :, :end]
            return self.keys, self.values

        def get_seq_length(self) -> int:
            return self.columns

        def replace(self, keys, values, spare: int = 64) -> None:
            """Hold `keys`/`values` (rows, heads, columns, dim), zeros in `spare` columns after them."""
            n, heads, columns, dim = keys.shape
            self.key_store, self.value_store = (held.new_empty((n, heads, columns + spare, dim))
                                                for held in (keys, values))
            for store, held in ((self.key_store, keys), (self.value_store, values)):
                store[:, :, :columns] = held
                store[:, :, columns:] = 0
            self.hold(columns)

        def hold(self, columns: int, rows_kept: int | None = None) -> None:
            """Use the first `columns` of the storage (and its first `rows_kept` rows from now on)."""
            self.columns = columns
            self.rows_kept = self.key_store.shape[0] if rows_kept is None else rows_kept
            self.keys, self.values = self.key_store[:, :, :columns], self.value_store[:, :, :columns]

        def swap(self, a, b) -> None:
            for store in (self.key_store, self.value_store):
                used = store[:, :, : self.columns]
                held = used.index_select(0, a)
                used.index_copy_(0, a, used.index_select(0, b))
                used.index_copy_(0, b, held)

        def gather(self, rows, columns) -> None:
            heads, capacity, dim = self.key_store.shape[1:]
            flat = (rows[:, None, None] * heads + torch.arange(heads, device=rows.device)[:, None]) * capacity
            flat = (flat + columns[:, None, :]).flatten()
            for store in (self.key_store, self.value_store):
                moved = store.view(-1, dim).index_select(0, flat)
                store[: len(rows), :, : columns.shape[1]] = moved.view(len(rows), heads, -1, dim)
            self.hold(columns.shape[1], len(rows))

    class RowCache(Cache):
        def written(self) -> list[RowLayer]:
            """The row layers the model has written; the others hold nothing to move."""
            return [layer for layer in self.layers
                    if isinstance(layer, RowLayer) and layer.key_store is not None]

        def get_seq_length(self, layer_idx: int = 0) -> int:
            """The columns layer `layer_idx` holds; for a layer the model skips, those of the written
            layers. A forward's mask covers the text's columns whichever layer it is sized from, so a
            model whose first layer is skipped is masked right too."""
            layer = self.layers[layer_idx] if layer_idx < len(self.layers) else None
            if isinstance(layer, RowLayer) and layer.key_store is not None:
                return layer.columns
            written = self.written()
            return written[0].columns if written else 0

        def get_mask_sizes(self, query_length: int, layer_idx: int) -> tuple[int, int]:
            return self.get_seq_length(layer_idx) + query_length, 0

        def swap(self, a, b) -> None:
            """Exchange the storage rows `a` and `b` (index tensors of one length) in every written layer."""
            for layer in self.written():
                layer.swap(a, b)

        def gather(self, rows, columns) -> None:
            """Keep the storage rows `rows`, in that order, each with its `columns` (rows, width), moved
            to the front of the storage in place: no new storage, and what stays behind it is old but
            finite (never read before it is written). Every written layer must hold the same columns:
            a layer written in some forwards only (a cross-attention layer given an image once) would
            otherwise be moved by indices that do not describe it."""
            written = self.written()
            held = {layer.columns for layer in written}
            if len(held) > 1:
                counts = ", ".join(f"layer {self.layers.index(w)}: {w.columns}" for w in written)
                raise RuntimeError(f"the cache's layers hold different numbers of columns ({counts}): a "
                                   "layer was written in some forwards and skipped in others, which the row "
                                   "cache cannot follow")
            with torch.inference_mode():  # the storage is an inference tensor
                for layer in written:
                    layer.gather(rows, columns)

    return RowLayer, RowCache


# A prefill forward costs about as much as this many extra token rows (measured on the CPU: 2-3 ms of
# per-forward work against ~27 us per token); it decides when splitting a prefill pays.
FORWARD_COST_TOKENS = 96


def prefill_plan(lengths: Sequence[int], forward_cost: int = FORWARD_COST_TOKENS) -> list[int]:
    """How to feed suffixes of these lengths, right-aligned, in as few padded token-forwards as pays:
    widths W = w0 > w1 > ... > 0. Forward i feeds the columns at distance (w_{i+1}, w_i] from the right
    end, for the rows longer than w_{i+1} only (with rows sorted longest first, a prefix of them), so one
    long feedback turn no longer pads every row to its length."""
    widths = sorted(set(lengths))
    longer = lambda w: sum(n > w for n in lengths)  # noqa: E731
    best = {0: (0, [0])}  # width -> (cost of feeding every column up to it, the plan)
    for w in widths:
        best[w] = min((best[v][0] + longer(v) * (w - v) + forward_cost, [w, *best[v][1]]) for v in best)
    return best[widths[-1]][1]


GQA_SWITCH = "TRANSFORMERS_SDPA_FORCE_GQA"  # read by transformers at every attention call


class Batch:
    """Conversations advancing together, turn by turn, keeping one KV cache between turns.

    Each conversation (row) lives in a slot of the cache (`order[slot]` is its row). A turn prefills, per
    row, only the part of the re-encoded conversation the cache does not hold yet (longest common prefix
    with the cached tokens, so an answer that does not survive decode/re-encode rolls the cache back),
    longest suffixes first in the slots so a `prefill_plan` can feed them in bands; then it decodes one
    token per step through the model's forward over the first n slots. A row whose answer has ended
    leaves the step batch by a swap of slots once such rows are `park_share` of it, so one long answer
    does not make every finished row pay for its steps. `tokens`/`mask` mirror the cache's columns per
    slot: left padding and holes are mask 0, and positions come from the mask, so neither shifts them.
    A row's last token (its end of turn) is not fed: the next turn's prefill feeds it."""

    def __init__(self, model, tokenizer, decoding: Decoding, park_share: float = 0.1):
        self.model, self.tokenizer, self.decoding, self.park_share = model, tokenizer, decoding, park_share
        self.pick = _picker(decoding)
        self.cache = None
        # torch's CPU attention handles grouped-query heads under a mask itself (measured bit-identical for
        # decoding); without this switch transformers copies every key/value head per query head at each
        # step. It is set around this decoder's forwards only: a training step in the same process (PPO
        # after its rollouts, the control after a probe) takes another attention path under it, and must
        # not depend on whether decoding ran before it. (On CUDA a mask would push GQA onto the slow math
        # kernel: left alone there.)
        self.force_gqa = model.device.type == "cpu" and GQA_SWITCH not in os.environ
        self.device = model.device

    def turn(self, conversations_ids: Sequence[list[int]]) -> list[str]:
        import torch

        pad, eos, steps = self.tokenizer.pad_token_id, self.tokenizer.eos_token_id, self.decoding.max_new_tokens
        rows = len(conversations_ids)
        if self.cache is None:
            self.cache = row_cache(rows, getattr(self.model, "config", None))
            self.tokens = self.mask = torch.empty((rows, 0), dtype=torch.long, device=self.device)
            self.order = self.slots = torch.arange(rows, device=self.device)
        suffixes = [self._reuse(int(slot), ids) for slot, ids in zip(self.slots, conversations_ids)]
        plan = prefill_plan([len(s) for s in suffixes])
        by_length = sorted(range(rows), key=lambda r: -len(suffixes[r])) if len(plan) > 2 else list(range(rows))
        self._arrange(torch.tensor(by_length, device=self.device))
        suffixes = [suffixes[r] for r in by_length]
        cached, width = self.tokens.shape[1], plan[0]
        start = cached + width  # the first decode column
        # Columns: the cache, the prefill chunk (left-padded), then one per decode step.
        tokens = torch.full((rows, start + steps), pad, dtype=torch.long, device=self.device)
        mask = torch.zeros_like(tokens)
        tokens[:, :cached], mask[:, :cached] = self.tokens, self.mask
        tokens[:, cached:start] = torch.tensor([[pad] * (width - len(s)) + s for s in suffixes])
        mask[:, cached:start] = torch.tensor([[0] * (width - len(s)) + [1] * len(s) for s in suffixes])
        self.tokens, self.mask = tokens, mask
        self.position = mask.sum(1)  # the position of each slot's next token
        answers = torch.full((rows, steps), pad, dtype=torch.long, device=self.device)  # by row
        with torch.inference_mode():
            positions = (mask[:, :start].cumsum(1) - 1).clamp(min=0)
            for high, low in zip(plan, plan[1:]):  # bands of columns, rows longer than `low` only
                n = sum(len(s) > low for s in suffixes)
                logits = self._forward(tokens[:n, start - high : start - low], mask[:n, : start - low],
                                       positions[:n, start - high : start - low])
            n = rows
            done = torch.zeros(n, dtype=torch.bool, device=self.device)
            for step in range(steps):
                chosen = self.pick(logits)
                live = ~done
                answers[self.order[:n][live], step] = chosen[live]
                done |= chosen == eos
                if step + 1 == steps or bool(done.all()):
                    break
                if int(done.sum()) >= max(1, self.park_share * n):
                    moved = self._park(done)
                    n = len(moved)
                    chosen, done = chosen[moved], done[moved]
                live, column = ~done, start + step
                tokens[:n, column] = torch.where(live, chosen, pad)
                mask[:n, column] = live.long()
                logits = self._forward(tokens[:n, column : column + 1], mask[:n, : column + 1], self.position[:n, None])
                self.position[:n] += live.long()
        columns = self.cache.get_seq_length()
        self.tokens, self.mask = tokens[:, :columns], mask[:, :columns]
        self.slots = torch.empty_like(self.order)
        self.slots[self.order] = torch.arange(rows, device=self.device)  # row -> slot
        ended = (answers == eos).long().cumsum(1)
        kept = (ended == 0) | ((ended == 1) & (answers == eos))
        self.answer_ids = [row[k].tolist() for row, k in zip(answers, kept)]  # for RL: what was sampled
        return [text.strip() for text in self.tokenizer.batch_decode(self.answer_ids, skip_special_tokens=True)]

    def _forward(self, input_ids, attention_mask, position_ids):
        if input_ids.shape[1] == 1:
            # A decode step's mask is the padding mask itself, (rows, 1, 1, columns): handed over as such,
            # transformers uses it as it is instead of building it again at every step.
            attention_mask = attention_mask[:, None, None, :].bool()
        if self.force_gqa:
            os.environ[GQA_SWITCH] = "1"
        try:
            out = self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                             past_key_values=self.cache, use_cache=True, logits_to_keep=1)
        finally:
            if self.force_gqa:
                os.environ.pop(GQA_SWITCH, None)
        return out.logits[:, -1].float()

    def _arrange(self, by_length, min_share: float = 0.8) -> None:
        """Slot i takes row by_length[i]. Rows are moved (one gather of the cache) only when the order
        changes, rows have left, or holes (skipped steps, rolled-back tokens) are over a fifth of the
        columns; a gather also closes the holes: each row's cached tokens move together, right-aligned,
        since attention reads every column at every step. Positions come from the mask: unchanged."""
        import torch

        slots = self.slots[by_length]
        valid = self.mask[slots].bool()
        width = int(valid.sum(1).max()) if valid.numel() else 0
        unmoved = len(slots) == len(self.order) and bool((slots == torch.arange(len(slots), device=self.device)).all())
        if not unmoved or width < min_share * valid.shape[1]:
            columns = torch.argsort(valid.long(), dim=1, stable=True)[:, valid.shape[1] - width :]
            self.tokens, self.mask = self.tokens[slots].gather(1, columns), self.mask[slots].gather(1, columns)
            self.cache.gather(slots, columns)
        self.order = by_length
        self.slots = torch.arange(len(slots), device=self.device)

    def _park(self, done):
        """Swap the step batch's finished slots past its live ones; return, for each live slot, the step
        batch position its row came from."""
        import torch

        n = len(done)
        live = n - int(done.sum())
        leaving = done[:live].nonzero().flatten()  # finished, inside the new step batch
        staying = (~done[live:]).nonzero().flatten() + live  # live, outside it
        moved = torch.arange(live, device=self.device)
        if len(leaving):
            self.cache.swap(leaving, staying)
            for mirror in (self.tokens, self.mask, self.position, self.order):
                mirror[torch.cat([leaving, staying])] = mirror[torch.cat([staying, leaving])]
            moved[leaving] = staying
        return moved

    def _reuse(self, slot: int, ids: list[int]) -> list[int]:
        """Mask out the slot's cached tokens that diverge from `ids`; return the ids still to feed."""
        columns = self.mask[slot].nonzero().flatten()
        cached = self.tokens[slot, columns].tolist()
        keep = 0
        for a, b in zip(cached, ids):
            if a != b:
                break
            keep += 1
        keep = min(keep, len(ids) - 1)  # feed at least one token: its logits start the answer
        self.mask[slot, columns[keep:]] = 0
        return ids[keep:]

    def keep(self, rows: Sequence[int]) -> None:
        """Keep only the conversations `rows` (finished episodes leave the batch), renumbered in that
        order; their slots are compacted at the next turn."""
        import torch

        self.slots = self.slots[torch.tensor(list(rows), dtype=torch.long, device=self.device)]
