"""Tiny random-initialised checkpoints of the papers' model families, written the way the real ones are:
the same architecture class and weight names (`save_pretrained`), tied or untied embeddings and biases as
in the released models, and a byte-level BPE tokenizer trained here on the study's own text with the
family's special tokens, chat template and pad token (or none, as shipped). Nothing is downloaded.

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
    """The family's config class at a tiny size, with its real embedding tying and biases."""
    import transformers

    ids = dict(bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    common = dict(vocab_size=len(tok), max_position_embeddings=positions, **SIZE, **ids)
    if family == "llama3":  # Llama-3.2-1B/3B tie their embeddings; rope scaling as llama3 ships
        return transformers.LlamaConfig(**common, tie_word_embeddings=True, rope_theta=500000.0)
    if family == "qwen25":  # q/k/v biases; the small Qwen2.5 models tie their embeddings
        return transformers.Qwen2Config(**common, tie_word_embeddings=True)
    if family == "olmo2":  # q/k norms, post-norms, untied
        return transformers.Olmo2Config(**common, tie_word_embeddings=False)
    if family == "gpt2":  # Conv1D maps, fused q/k/v, learned positions, tied
        return transformers.GPT2Config(vocab_size=len(tok), n_positions=positions, n_embd=32, n_layer=2, n_head=4, **ids)
    if family == "mllama":  # the vision model: a vision tower, cross-attention layers, the text under language_model.
        vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_global_layers=1, attention_heads=4,
                      image_size=28, patch_size=14, max_num_tiles=4, intermediate_layers_indices=[0], vision_output_dim=64)
        text = dict(common, cross_attention_layers=[1], rope_theta=500000.0)
        return transformers.MllamaConfig(vision_config=vision, text_config=text,
                                         image_token_index=tok.convert_tokens_to_ids("<|image|>"))
    raise ValueError(f"unknown family {family!r} (one of {FAMILIES})")


def write(family: str, path: Path, seed: int = 0, positions: int = 4096) -> Path:
    """A tiny checkpoint of `family` in `path`, saved as the released model is (safetensors)."""
    import torch
    import transformers

    tok = tokenizer(family)
    cfg = config(family, tok, positions)
    torch.manual_seed(seed)
    cls = transformers.MllamaForConditionalGeneration if family == "mllama" else transformers.AutoModelForCausalLM
    model = cls(cfg) if family == "mllama" else cls.from_config(cfg)
    model.save_pretrained(path, safe_serialization=True)
    tok.save_pretrained(path)
    return Path(path)
