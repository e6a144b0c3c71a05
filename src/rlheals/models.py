"""Model directories: the embedded tiny model (word-level tokenizer + Llama architecture), local Hugging
Face models, and safe loading (safetensors only, no remote code, offline)."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterable, Mapping
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

PAD, BOS, EOS, UNK = "<pad>", "<s>", "</s>", "<unk>"
USER, ASSISTANT = "<user>", "<assistant>"
SPECIAL_TOKENS = [PAD, BOS, EOS, UNK, USER, ASSISTANT]
# One token per number (-4, 33), fraction ((8/3)), word, marker or symbol; whitespace only separates.
TOKEN_PATTERN = r"\(-?\d+/\d+\)|-?\d+|<[a-z/]+>|=>|[A-Za-z_]+\d*|\S"
# Chat turns as words: the tiny model sees `<s> <user> prompt <assistant> answer </s>`.
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}"
    "{% if m['role'] == 'user' %}<user> {{ m['content'] }} "
    "{% else %}<assistant> {{ m['content'] }} {{ eos_token }} {% endif %}"
    "{% endfor %}{% if add_generation_prompt %}<assistant> {% endif %}"
)


def build_tokenizer(words: Iterable[str]):
    """A word-level tokenizer (the `tokenizers` library) over a fixed vocabulary, as a transformers
    tokenizer with a chat template. Padding on the left, for batched generation."""
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(dict.fromkeys([*SPECIAL_TOKENS, *words]))}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    core.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Split(Regex(TOKEN_PATTERN), behavior="isolated")]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=core,
        bos_token=BOS,
        eos_token=EOS,
        unk_token=UNK,
        pad_token=PAD,
        padding_side="left",  # set in the constructor: an attribute set later is not saved (STACK.md)
        chat_template=CHAT_TEMPLATE,
        model_max_length=512,
    )


def build_tiny_model(tokenizer, size: Mapping, seed: int):
    """A randomly initialised Llama-architecture model sized by config (`model.tiny`)."""
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=size["hidden_size"],
        intermediate_size=size["intermediate_size"],
        num_hidden_layers=size["num_layers"],
        num_attention_heads=size["num_heads"],
        num_key_value_heads=size["num_kv_heads"],
        max_position_embeddings=size["max_positions"],
        tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        attention_dropout=0.0,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        do_sample=False,
        max_new_tokens=48,
    )
    return model


def check_model_dir(path: str | Path) -> Path:
    """Fail with a message naming the file when a model directory is missing or incomplete."""
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"model directory {path} does not exist")
    weights = sorted(path.glob("*.safetensors"))
    if not weights:
        if list(path.glob("*.bin")) or list(path.glob("*.pt")):
            raise ValueError(f"{path} holds only pickled weights (.bin/.pt); only safetensors are loaded")
        raise FileNotFoundError(f"{path} has no *.safetensors weights")
    if not (path / "config.json").exists():
        raise FileNotFoundError(f"{path / 'config.json'} is missing")
    from safetensors import SafetensorError, safe_open

    for file in weights:  # reads only the header, which also covers the file's length: truncation shows
        try:
            with safe_open(file, "pt") as handle:
                handle.keys()
        except (SafetensorError, OSError) as err:
            raise ValueError(f"{file}: corrupted or truncated safetensors file ({err})") from err
    return path


def load_model(path: str | Path, dtype=None):
    """Load a causal LM from a local directory: safetensors only, no remote code, never the network."""
    from transformers import AutoModelForCausalLM

    path = check_model_dir(path)
    return AutoModelForCausalLM.from_pretrained(
        path, use_safetensors=True, trust_remote_code=False, local_files_only=True, dtype=dtype or "auto"
    )


def load_weights(path: str | Path) -> dict:
    """Every tensor of a model directory's safetensors files (all shards), as stored on disk."""
    from safetensors.torch import load_file

    path = check_model_dir(path)
    weights = {}
    for file in sorted(path.glob("*.safetensors")):
        weights.update(load_file(file))
    return weights


def save_weights(weights: Mapping, like: str | Path, dst: str | Path) -> None:
    """A model directory holding `weights` and every other file of `like` (config, tokenizer,
    generation config), written to a temp directory and renamed into place."""
    from safetensors.torch import save_file

    like, dst = Path(like), Path(dst)
    tmp = dst.with_name(dst.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for file in like.iterdir():
        if file.is_file() and not file.name.startswith(".") and not file.name.startswith("model.safetensors") \
                and file.suffix != ".safetensors":
            shutil.copy(file, tmp / file.name)
    save_file({k: v.contiguous() for k, v in weights.items()}, tmp / "model.safetensors", metadata={"format": "pt"})
    shutil.rmtree(dst, ignore_errors=True)
    tmp.rename(dst)


def load_tokenizer(path: str | Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path, trust_remote_code=False, local_files_only=True)


def link_or_copy_file(src: str | Path, dst: str | Path) -> None:
    """Hard-link a file where the filesystem allows (no extra disk for 15 GB weights), else copy it.
    Files in model directories are never modified in place, so links are safe."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def link_or_copy_tree(src: str | Path, dst: str | Path) -> None:
    """Copy a model directory (files linked where possible), atomically: write aside, then rename."""
    src, dst = Path(src), Path(dst)
    tmp = dst.with_name(dst.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(src, tmp, copy_function=link_or_copy_file, ignore=shutil.ignore_patterns(".*"))
    shutil.rmtree(dst, ignore_errors=True)
    tmp.rename(dst)


def import_local_model(src: str | Path, dst: str | Path) -> None:
    """The `local` source: a Hugging Face directory on disk (Qwen2.5-7B-Instruct, Llama-3.2, ...), checked
    to load as a tokenizer + config with no remote code, then linked into the results."""
    from transformers import AutoConfig

    src = check_model_dir(src)
    config = AutoConfig.from_pretrained(src, trust_remote_code=False, local_files_only=True)
    tokenizer = load_tokenizer(src)
    if tokenizer.chat_template is None:
        raise ValueError(f"{src}: the tokenizer has no chat template (tokenizer_config.json / chat_template.jinja)")
    if not config.architectures:
        raise ValueError(f"{src / 'config.json'}: no `architectures` entry")
    link_or_copy_tree(src, dst)
