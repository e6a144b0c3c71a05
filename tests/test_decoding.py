"""The batched decoder's row cache on every family, saved the way a user's model is: answers equal
`generate`'s one episode at a time, layers the forward skips (Llama-3.2-Vision's cross-attention layers
without an image) stay unwritten through every row move, and what the row cache takes from transformers'
cache API still behaves as it is built on."""

import collections
import os

import pytest
import torch
import transformers

import families
from rlheals import data, episodes, evaluate, models
from rlheals import decoding as decoding_module
from rlheals.verify import Verifier

GAME = {"target": 24, "rules": {"id": {"face_values": {"J": 10, "Q": 10, "K": 10}, "hand": "uniform"},
                                "ood": {"face_values": {"J": 11, "Q": 12, "K": 13}, "hand": "face_card"}}}
DATA = {"holdout_seed": 0, "holdout_share": 0.25, "splits": {
    "id_test": {"rule": "id", "size": 6, "seed": 3}, "ood_test": {"rule": "ood", "size": 6, "seed": 4},
    "sft_train": {"rule": "id", "size": 1, "seed": 1}, "rl_train": {"rule": "id", "size": 1, "seed": 2}}}
VERSION = f"transformers {transformers.__version__}"


@pytest.fixture(scope="module")
def hands():
    rows = data.make_split("id_test", GAME, DATA) + data.make_split("ood_test", GAME, DATA)
    return episodes.from_rows(rows, data.rules_from_config(GAME), "paper")


class Spy:
    """Counts the row cache's moves, and which layers each move passed by unwritten."""

    def __init__(self, monkeypatch):
        self.moves, self.skipped = collections.Counter(), set()
        _, cache_class = decoding_module._row_classes()
        for name in ("gather", "swap"):
            original = getattr(cache_class, name)

            def spied(cache, *args, original=original, name=name):
                written = {id(layer) for layer in cache.written()}
                if written:  # (a new batch's first turn may order its rows before anything is cached)
                    self.moves[name] += 1
                    self.skipped |= {i for i, layer in enumerate(cache.layers) if id(layer) not in written}
                return original(cache, *args)

            monkeypatch.setattr(cache_class, name, spied)


@pytest.mark.parametrize("family", families.FAMILIES)
def test_the_engine_answers_as_generate_on_a_saved_family_checkpoint(family, hands, tmp_path, monkeypatch):
    """A checkpoint saved whole with `save_pretrained` (the vision model as MllamaForConditionalGeneration,
    its text stack with cross-attention layers between self-attention layers), loaded as the evaluation
    job loads it. Over three tries, with answers ending at different steps, feedback turns fed in bands
    and batches smaller than the episodes, the engine's greedy answers equal one `generate` per try."""
    path = families.write(family, tmp_path / family)
    model, tokenizer = models.load_model(path, dtype=torch.float32), models.load_tokenizer(path)
    decoding, verifier = evaluate.Decoding(max_new_tokens=10), Verifier(24, "paper")
    plan = decoding_module.prefill_plan
    monkeypatch.setattr(decoding_module, "prefill_plan", lambda lengths: plan(lengths, forward_cost=1))
    spy = Spy(monkeypatch)
    protocol = evaluate.Protocol(verifier, 3, decoding, batch_size=4)
    batched = evaluate.run_episodes(model, tokenizer, hands, protocol)
    reference = evaluate.run_episodes_one_at_a_time(model, tokenizer, hands, protocol)
    assert batched == reference
    assert all(r["tries"] == 3 for r in batched)  # nothing solved: every try went through the cache
    assert spy.moves["swap"] > 0 and spy.moves["gather"] > 0  # answers ended at different steps
    if family == "mllama":  # the cross-attention layers were passed by, unwritten, at every move
        cross = set(families.CROSS_ATTENTION_LAYERS)
        assert set(model.config.get_text_config().cross_attention_layers) == cross and spy.skipped == cross
    else:
        assert spy.skipped == set()
    assert decoding_module.GQA_SWITCH not in os.environ


def test_a_layer_never_written_is_passed_by_and_the_cache_answers_for_it():
    """A row cache over three layers where the model writes layers 1 and 2 only (as if layer 0 were a
    cross-attention layer without an image): layer 0 stays uninitialised through swaps and gathers, the
    cache's length and mask sizes for it are the text's, and the written layers move as plain indexing
    says."""
    config = transformers.LlamaConfig(num_hidden_layers=3, hidden_size=8, num_attention_heads=2,
                                      num_key_value_heads=1, intermediate_size=8, vocab_size=16)
    cache = decoding_module.row_cache(4, config)
    assert len(cache.layers) == 3 and not any(layer.is_initialized for layer in cache.layers)
    keys = {i: torch.randn(4, 1, 5, 4) for i in (1, 2)}
    with torch.inference_mode():
        for i, k in keys.items():
            cache.update(k, -k, i)
    assert cache.get_seq_length() == cache.get_seq_length(2) == 5
    assert cache.get_mask_sizes(3, 0) == cache.get_mask_sizes(3, 1) == (8, 0)
    rows, columns = torch.tensor([3, 1]), torch.tensor([[1, 2, 4], [0, 3, 4]])
    with torch.inference_mode():  # as the decoder moves rows
        cache.swap(torch.tensor([0]), torch.tensor([3]))
        cache.gather(rows, columns)
    layer0, layer1 = cache.layers[0], cache.layers[1]
    assert not layer0.is_initialized and layer0.keys is None and layer0.key_store is None
    swapped = keys[1][[3, 1, 2, 0]]
    expected = torch.stack([swapped[r][:, c] for r, c in zip(rows, columns)])
    assert torch.equal(layer1.keys[:2], expected) and torch.equal(layer1.values[:2], -expected)
    assert cache.get_seq_length() == 3
    # A layer written in some forwards only would be moved by indices that do not describe it: refused.
    with torch.inference_mode():
        cache.update(torch.randn(2, 1, 1, 4), torch.randn(2, 1, 1, 4), 2)
    with pytest.raises(RuntimeError, match=r"different numbers of columns \(layer 1: 3, layer 2: 4\)"):
        cache.gather(torch.tensor([0, 1]), torch.tensor([[0, 1, 2], [0, 1, 2]]))


def test_a_model_with_sliding_window_layers_is_refused_by_name():
    """A row layer keeps every column; a sliding-window layer must not see them. Qwen2.5 as released
    (sliding window configured, not used) is served; with the window in use it is refused."""
    served = transformers.Qwen2Config(num_hidden_layers=4, use_sliding_window=False, sliding_window=131072,
                                      max_window_layers=28)
    assert len(decoding_module.row_cache(2, served).layers) == 4
    windowed = transformers.Qwen2Config(num_hidden_layers=4, use_sliding_window=True, sliding_window=64,
                                        max_window_layers=2)
    with pytest.raises(ValueError, match="layer 2 of this qwen2 model caches with DynamicSlidingWindowLayer"):
        decoding_module.row_cache(2, windowed)


def test_the_cache_api_the_row_cache_builds_on(tmp_path):
    """What the row cache takes from transformers, checked on a forward of the vision model's text stack:
    a cache built from given layers hands each layer's update to that layer; the layers the forward skips
    are the cross-attention ones and stay uninitialised (`is_initialized`, as transformers reads it to
    skip them); `keys`/`values` are what attention reads; and the switch that keeps grouped-query heads
    inside torch's attention is still read. A failure names the transformers version that changed it."""
    path = families.write("mllama", tmp_path / "mllama")
    model, tokenizer = models.load_model(path, dtype=torch.float32), models.load_tokenizer(path)
    cache = decoding_module.row_cache(2, model.config)
    ids = torch.tensor([tokenizer("24 cards", add_special_tokens=False)["input_ids"]] * 2)
    with torch.inference_mode():
        model(input_ids=ids, attention_mask=torch.ones_like(ids), past_key_values=cache, use_cache=True)
    cross = set(families.CROSS_ATTENTION_LAYERS)
    unwritten = {i for i, layer in enumerate(cache.layers) if not layer.is_initialized}
    assert unwritten == cross, f"{VERSION}: the forward skipped layers {unwritten}, not the cross-attention"
    for i, layer in enumerate(cache.layers):
        if i not in cross:
            keys = layer.keys
            wrote = keys.shape[2] == ids.shape[1] and keys.data_ptr() == layer.key_store.data_ptr()
            assert wrote, f"{VERSION}: layer {i}'s keys are not the row storage the forward wrote"
    from transformers.integrations import sdpa_attention

    k, use_gqa = torch.zeros(1, 1, 2, 4), getattr(sdpa_attention, "use_gqa_in_sdpa", lambda *_: False)
    os.environ[decoding_module.GQA_SWITCH] = "1"
    try:
        assert use_gqa(torch.ones(1, 1, 1, 2, dtype=torch.bool), k, k), (
            f"{VERSION} no longer reads {decoding_module.GQA_SWITCH}: decoding copies key/value heads")
    finally:
        os.environ.pop(decoding_module.GQA_SWITCH)
