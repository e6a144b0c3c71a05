"""Tiny random-initialised checkpoints of the papers' model families, written the way the real ones are:
the same architecture class and weight names (`save_pretrained`; the vision model whole), what the
released models have (tied or untied embeddings, biases, q/k norms, rope base and scaling, cross-attention
layers between self-attention layers), and a byte-level BPE tokenizer trained here on the study's own text
with the family's special tokens, chat template and pad token (or none, as shipped). Their answers depend
on the prompt and end after different numbers of tokens. Nothing is downloaded.

    write(family, path)  ->  path, a model directory `model.source: local` can import
"""

from __future__ import annotations

from pathlib import Path

from rlheals import cards

SIZE = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2)

# Llama-3 and Llama-3.2-Vision: header tokens, <|eot_id|> ends a turn; no pad token in the base tokenizer
# (the vision model's ships <|finetune_right_pad_id|>).
LLAMA3_TEMPLATE = ("{{ bos_token }}{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n"
                   "{{ m['content'] }}<|eot_id|>{% endfor %}"
                   "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}")
# Qwen2.5: ChatML, pad <|endoftext|>, no bos.
CHATML_TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
                   "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
# OLMo-2 Instruct: <|endoftext|> first, role tags on their own lines, pad <|pad|>.
OLMO2_TEMPLATE = ("{{ bos_token }}{% for m in messages %}{{ '<|' + m['role'] + '|>\\n' + m['content'] }}"
                  "{% if m['role'] == 'assistant' %}{{ eos_token }}{% endif %}{{ '\\n' }}{% endfor %}"
                  "{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}")
# GPT-2 ships no chat template; a GPT-2-style model for this study is given a plain one.
GPT2_TEMPLATE = ("{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}{{ eos_token }}\n{% endfor %}"
                 "{% if add_generation_prompt %}assistant:{% endif %}")

TOKENS = {  # special tokens, template, and which of them are bos / eos / pad (None: no pad token)
    "llama3": (["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"],
               LLAMA3_TEMPLATE, "<|begin_of_text|>", "<|eot_id|>", None),
    "mllama": (["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>",
                "<|finetune_right_pad_id|>", "<|image|>"],
               LLAMA3_TEMPLATE, "<|begin_of_text|>", "<|eot_id|>", "<|finetune_right_pad_id|>"),
    "qwen25": (["<|endoftext|>", "<|im_start|>", "<|im_end|>"], CHATML_TEMPLATE, None, "<|im_end|>", "<|endoftext|>"),
    "olmo2": (["<|endoftext|>", "<|pad|>", "<|user|>", "<|assistant|>", "<|system|>"],
              OLMO2_TEMPLATE, "<|endoftext|>", "<|endoftext|>", "<|pad|>"),
    "gpt2": (["<|endoftext|>"], GPT2_TEMPLATE, "<|endoftext|>", "<|endoftext|>", None),
}
FAMILIES = tuple(TOKENS)


def tokenizer(family: str):
    """A byte-level BPE tokenizer trained on the study's prompts, with the family's special tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    special, template, bos, eos, pad = TOKENS[family]
    ood = cards.Rule("ood", (11, 12, 13), "face_card")
    corpus = [cards.render_prompt(fmt, hand, ood, 24) for fmt in ("paper", "compact")
              for hand in (["10", "J", "Q", "K"], ["A", "2", "3", "4"], ["5", "6", "7", "8"])]
    corpus += ["You failed this trial because your formula evaluates to 23, not 24. Try again.",
               '{"cards": ["J", "Q", "K", "10"], "number": [11, 12, 13, 10], "formula": "(12-11)*13+10"}']
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=400, special_tokens=special,
                                                         initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    roles = {"bos_token": bos, "eos_token": eos, "pad_token": pad}
    made = PreTrainedTokenizerFast(tokenizer_object=bpe, **{k: v for k, v in roles.items() if v is not None})
    made.chat_template = template
    return made


def config(family: str, tok, positions: int = 4096):
    """The family's config class at a tiny size, with what the released checkpoints have: embedding
    tying, biases, q/k norms, rope base and scaling, and for the vision model a text stack whose
    cross-attention layers sit between self-attention layers. `positions`: learned positions (GPT-2);
    rotary families keep their released maximum."""
    import transformers

    ids = dict(bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    common = dict(vocab_size=len(tok), **SIZE, **ids)
    if family == "llama3":  # Llama-3.2-1B/3B: tied, no biases, llama3 rope scaling
        return transformers.LlamaConfig(**common, max_position_embeddings=131072, tie_word_embeddings=True,
                                        rope_parameters=llama3_rope(32.0))
    if family == "qwen25":  # Qwen2.5-7B, the papers' model: q/k/v biases, untied (the small ones tie theirs)
        return transformers.Qwen2Config(**common, max_position_embeddings=32768, tie_word_embeddings=False,
                                        rope_parameters={"rope_type": "default", "rope_theta": 1000000.0},
                                        use_sliding_window=False, sliding_window=131072, max_window_layers=28)
    if family == "olmo2":  # OLMo-2-1124-7B: q/k norms, post-norms, untied
        return transformers.Olmo2Config(**common, max_position_embeddings=4096, tie_word_embeddings=False,
                                        rope_parameters={"rope_type": "default", "rope_theta": 500000.0})
    if family == "gpt2":  # Conv1D maps with biases, fused q/k/v, learned positions, tied
        return transformers.GPT2Config(vocab_size=len(tok), n_positions=positions, n_embd=32, n_layer=2,
                                       n_head=4, **ids)
    if family == "mllama":  # Llama-3.2-11B-Vision: a vision tower, the text under language_model., untied
        vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_global_layers=1,
                      attention_heads=4, image_size=28, patch_size=14, max_num_tiles=4,
                      intermediate_layers_indices=[0], vision_output_dim=64)
        # The released stack has cross-attention at layers 3, 8, ..., 38 of 40: here at 1 and 3 of 5, so
        # self-attention layers come before, between and after them.
        text = dict(common, num_hidden_layers=layers(family), max_position_embeddings=131072,
                    cross_attention_layers=list(CROSS_ATTENTION_LAYERS), tie_word_embeddings=False,
                    rope_parameters=llama3_rope(8.0))
        return transformers.MllamaConfig(vision_config=vision, text_config=text,
                                         image_token_index=tok.convert_tokens_to_ids("<|image|>"))
    raise ValueError(f"unknown family {family!r} (one of {FAMILIES})")


CROSS_ATTENTION_LAYERS = (1, 3)


def llama3_rope(factor: float) -> dict:
    """Llama-3.1/3.2's rope: base 500000, scaled for long contexts ("llama3"); 1B/3B by 32, Vision by 8."""
    return {"rope_type": "llama3", "rope_theta": 500000.0, "factor": factor, "high_freq_factor": 4.0,
            "low_freq_factor": 1.0, "original_max_position_embeddings": 8192}


def layers(family: str) -> int:
    """How many decoder layers the family's tiny checkpoint has."""
    return 5 if family == "mllama" else SIZE["num_hidden_layers"]


def write(family: str, path: Path, seed: int = 0, positions: int = 4096) -> Path:
    """A tiny checkpoint of `family` in `path`, saved as the released model is (safetensors): the vision
    model whole (`MllamaForConditionalGeneration`, vision tower included), as a user saves it."""
    import torch
    import transformers

    tok = tokenizer(family)
    cfg = config(family, tok, positions)
    torch.manual_seed(seed)
    cls = transformers.MllamaForConditionalGeneration if family == "mllama" else transformers.AutoModelForCausalLM
    model = cls(cfg) if family == "mllama" else cls.from_config(cfg)
    answer_like_a_model(model, tok)
    model.save_pretrained(path, safe_serialization=True)
    tok.save_pretrained(path)
    return Path(path)


def answer_like_a_model(model, tok) -> None:
    """At its random initialisation a model this small hardly reads its input (hidden size 32, weights of
    std 0.02): a tied one repeats one token whatever the prompt, and no answer ends. The decoder layers'
    maps are scaled up so that answers depend on the conversation; then the end of turn is given the
    output row of a token the model says fairly often, 1.5 times over, so that answers end after
    different numbers of tokens, as a trained model's do. Every stage then sees rows of a batch finish
    at different steps (the decoder's row moves)."""
    import collections

    import torch

    from rlheals import matrices

    text_config = model.config.get_text_config()
    _, stack = matrices.decoder_layers(model, text_config.num_hidden_layers)
    room = text_config.max_position_embeddings - 10  # a GPT-2 with few positions reads the prompt's end
    rule = cards.Rule("ood", (11, 12, 13), "face_card")
    said = collections.Counter()
    with torch.no_grad():
        for weight in stack.parameters():
            if weight.dim() == 2:
                weight.mul_(8)
        for hand in (["10", "J", "Q", "K"], ["A", "2", "3", "4"], ["5", "6", "7", "8"], ["9", "9", "K", "2"]):
            chat = [{"role": "user", "content": cards.render_prompt("paper", hand, rule, 24)}]
            text = tok.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
            ids = tok(text, add_special_tokens=False, return_tensors="pt")["input_ids"][:, -room:]
            out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=10,
                                 do_sample=False, eos_token_id=tok.eos_token_id,
                                 pad_token_id=tok.eos_token_id)
            said.update(out[0, ids.shape[1] + 1 :].tolist())
        head = model.get_output_embeddings().weight
        head[tok.eos_token_id] = 1.5 * head[said.most_common(3)[-1][0]]
