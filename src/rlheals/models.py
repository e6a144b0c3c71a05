"""Model directories: the embedded tiny model (word-level tokenizer + Llama architecture), local Hugging
Face models, and safe loading (safetensors only, no remote code, offline)."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

from rlheals import runlog

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
        padding_side="left",  # set in the constructor: an attribute set later is not saved (docs/stack.md, pitfall 5)
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


MANIFEST = "checksums.json"  # size and sha256 of every file of a model directory the workflow writes
VERIFY_ENV = "RLHEALS_VERIFY"  # how loads check a manifest: "sha256" (default, every byte) or "size"


def file_checksum(path: str | Path, sync: bool = False) -> dict:
    """Size and sha256 of a file, streamed (never the whole file in memory); `sync` also flushes it to
    the disk, so a directory renamed into place after a crash of the node holds what its manifest says."""
    with open(path, "rb") as fh:
        digest = hashlib.file_digest(fh, "sha256")
        if sync:
            os.fsync(fh.fileno())
        return {"size": os.fstat(fh.fileno()).st_size, "sha256": digest.hexdigest()}


def _checksums(path: Path, names: Sequence[str], sync: bool = False) -> dict[str, dict]:
    """Checksums of several files in threads (hashlib lets go of the GIL): the shards of a large model
    hash in parallel."""
    if not names:
        return {}
    with ThreadPoolExecutor(min(8, len(names), os.cpu_count() or 1)) as pool:
        return dict(zip(names, pool.map(lambda name: file_checksum(path / name, sync), names)))


def model_files(path: Path) -> list[str]:
    """The files a manifest covers: every regular file but dotfiles (snakemake's timestamps) and itself."""
    return sorted(p.name for p in path.iterdir() if p.is_file() and not p.name.startswith(".") and p.name != MANIFEST)


def read_manifest(path: str | Path) -> dict | None:
    """File name -> {size, sha256} of a model directory, or None when it has no manifest."""
    file = Path(path) / MANIFEST
    if not file.exists():
        return None
    try:
        files = json.loads(file.read_text())["files"]
        assert all(set(entry) == {"size", "sha256"} for entry in files.values())
        return files
    except (ValueError, KeyError, TypeError, AttributeError, AssertionError) as err:
        raise ValueError(f"{file}: unreadable checksum manifest ({err!r}); delete the directory and rerun") from err


def verify_manifest(path: Path, files: Mapping[str, Mapping], mode: str) -> None:
    """Every listed file present with its size (and its sha256 in mode "sha256"), nothing unlisted."""
    if mode not in ("sha256", "size"):
        raise ValueError(f"{VERIFY_ENV}={mode!r}: use sha256 (default) or size")
    manifest, present = path / MANIFEST, set(model_files(path))
    hint = "delete the directory and run the same snakemake command again to rebuild it"
    missing, unlisted = sorted(set(files) - present), sorted(present - set(files))
    if missing:
        raise FileNotFoundError(f"{path / missing[0]} is missing (listed in {manifest}): {hint}")
    if unlisted:
        raise ValueError(f"{path / unlisted[0]} is not listed in {manifest}: added after the directory was written; {hint}")
    for name, entry in sorted(files.items()):
        size = (path / name).stat().st_size
        if size != entry["size"]:
            raise ValueError(f"{path / name}: truncated or corrupted ({size} bytes, {entry['size']} in {manifest}); {hint}")
    if mode == "sha256":
        for name, got in _checksums(path, sorted(files)).items():
            if got["sha256"] != files[name]["sha256"]:
                raise ValueError(f"{path / name}: corrupted (its sha256 differs from {manifest}); {hint}")


def check_model_dir(path: str | Path, verify: str | None = None) -> Path:
    """Fail with a message naming the file when a model directory is missing, incomplete or corrupted.
    A directory with a checksum manifest (every one the workflow writes) must hold exactly the files it
    lists, each with its size and, unless verify="size" (or RLHEALS_VERIFY=size), its sha256: a load
    reads every byte anyway, and hashing costs ~0.7 s per GB and core (shards hash in parallel). A
    directory without one (a user's local Hugging Face model) gets the header check alone."""
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"model directory {path} does not exist")
    files = read_manifest(path)
    if files is not None:
        verify_manifest(path, files, verify or os.environ.get(VERIFY_ENV, "sha256"))
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


def weights_sha256(path: str | Path) -> str:
    """The sha256 of a model's weights: of its one safetensors file (what `sha256sum model.safetensors`
    prints), or, for shards, of their `sha256sum *.safetensors` listing. Read from the manifest where
    there is one, else streamed from the files."""
    path = Path(path)
    names = sorted(p.name for p in path.glob("*.safetensors"))
    listed = read_manifest(path) or {}
    sums = {n: listed[n]["sha256"] if n in listed else file_checksum(path / n)["sha256"] for n in names}
    if len(names) == 1:
        return sums[names[0]]
    return hashlib.sha256("".join(f"{sums[n]}  {n}\n" for n in names).encode()).hexdigest()


def load_model(path: str | Path, dtype=None):
    """Load a causal LM from a local directory: safetensors only, no remote code, never the network.
    A directory whose config the auto class does not map (the text model of Llama-3.2-Vision, saved by
    SFT as `mllama_text_model`) loads with the causal-LM class its config.json names."""
    path = check_model_dir(path)
    options = dict(use_safetensors=True, trust_remote_code=False, local_files_only=True, dtype=dtype or "auto")
    model = _as_causal_lm(path, lambda cls: cls.from_pretrained(path, **options))
    # `base_model` is the body TRL's fused LM head runs (SFT, GRPO). MllamaForCausalLM keeps its body in
    # `model` while its base_model_prefix names `language_model`, so `base_model` would be the whole causal
    # LM; this instance's prefix is pointed at the body it has (saved names do not change).
    if model.base_model is model and getattr(model, "model", None) is not None:
        model.base_model_prefix = "model"
    return model


def skeleton(path: str | Path):
    """The model of a local directory built from its config alone on the meta device (no weights, no
    memory, any size), as `load_model` would build it; and its text config."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    path = Path(path)
    config = AutoConfig.from_pretrained(path, trust_remote_code=False, local_files_only=True)
    with torch.device("meta"):
        model = _as_causal_lm(path, lambda cls: (cls.from_config if cls is AutoModelForCausalLM else cls._from_config)(config))
    return model, config.get_text_config()


def _as_causal_lm(path: Path, make: Callable):
    """make(AutoModelForCausalLM), or, for a config the auto class does not map, make(the causal-LM class
    that config.json names)."""
    import transformers
    from transformers import AutoModelForCausalLM

    try:
        return make(AutoModelForCausalLM)
    except ValueError as err:
        if "Unrecognized configuration class" not in str(err):
            raise
        named = json.loads((path / "config.json").read_text()).get("architectures") or []
        # Only a causal-LM class: a multimodal one would build its default (full-size) parts around them.
        causal = [getattr(transformers, name) for name in named if name.endswith("ForCausalLM") and hasattr(transformers, name)]
        if not causal:
            raise ValueError(f"{path}: not a causal LM the auto class knows ({err}), and config.json names no "
                             f"causal-LM class (architectures: {named})") from err
        return make(causal[0])


def load_weights(path: str | Path) -> dict:
    """Every tensor of a model directory's safetensors files (all shards), as stored on disk."""
    from safetensors.torch import load_file

    path = check_model_dir(path)
    weights = {}
    for file in sorted(path.glob("*.safetensors")):
        weights.update(load_file(file))
    return weights


def write_model_dir(dst: str | Path, fill: Callable[[Path], Mapping | None]) -> None:
    """The one writer of model directories. `fill(tmp)` writes the files into `<dst>.tmp` (and may return
    the checksums of files it linked from a directory that lists them); then the checksum manifest is
    written last and the directory renamed into place (an older `dst` is moved aside first, so no
    moment shows a half-deleted one). A job killed on the way leaves `<dst>.tmp` or nothing, never a
    directory that looks complete; a full or read-only disk fails naming the path and the cause."""
    dst = Path(dst)
    tmp, old = dst.with_name(dst.name + ".tmp"), dst.with_name(dst.name + ".old")
    with runlog.writing(dst, tmp):
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        known = fill(tmp) or {}
        names = model_files(tmp)
        files = {n: known[n] for n in names if n in known}
        files.update(_checksums(tmp, [n for n in names if n not in known], sync=True))
        with open(tmp / MANIFEST, "w") as fh:
            json.dump({"files": dict(sorted(files.items()))}, fh, indent=1, sort_keys=True)
            fh.flush()
            os.fsync(fh.fileno())
        shutil.rmtree(old, ignore_errors=True)
        if dst.exists():
            dst.rename(old)
        tmp.rename(dst)
    shutil.rmtree(old, ignore_errors=True)


def save_model(model, tokenizer, dst: str | Path, card: str | None = None) -> None:
    """A transformers model and its tokenizer as a model directory (safetensors), atomically; `card`: the
    text of its model card."""

    def fill(tmp: Path) -> None:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        if card is not None:
            (tmp / CARD).write_text(card)

    write_model_dir(dst, fill)


def save_weights(weights: Mapping, like: str | Path, dst: str | Path) -> None:
    """A model directory holding `weights` and every other file of `like` (config, tokenizer,
    generation config), atomically."""
    from safetensors.torch import save_file

    def fill(tmp: Path) -> dict:
        known = _link_files(Path(like), tmp, lambda name: not name.startswith("model.safetensors")
                            and not name.endswith(".safetensors") and name != CARD)  # not `like`'s card
        save_file({k: v.contiguous() for k, v in weights.items()}, tmp / "model.safetensors", metadata={"format": "pt"})
        return known

    write_model_dir(dst, fill)


def load_tokenizer(path: str | Path):
    """The tokenizer of a model directory; one without a pad token pads with its end-of-sequence token
    (rlheals.limits.pad_token_fallback), the same in every stage."""
    from transformers import AutoTokenizer

    from rlheals import limits

    tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=False, local_files_only=True)
    limits.pad_token_fallback(tokenizer)
    return tokenizer


def link_or_copy_file(src: str | Path, dst: str | Path) -> None:
    """Hard-link a file where the filesystem allows (no extra disk for 15 GB weights), else copy it.
    Files in model directories are never modified in place, so links are safe."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def _link_files(src: Path, tmp: Path, keep: Callable[[str], bool]) -> dict:
    """Link (or copy) the files of `src` that `keep` accepts into `tmp`, never dotfiles (a shared
    .snakemake_timestamp would make one output's timestamp move another's); their checksums from the
    manifest of `src` where it lists them, so a corrupted source is never given a fresh manifest."""
    listed = read_manifest(src) or {}
    known = {}
    for name in model_files(src):
        if keep(name):
            link_or_copy_file(src / name, tmp / name)
            if name in listed:
                known[name] = listed[name]
    return known


def link_or_copy_tree(src: str | Path, dst: str | Path, skip: re.Pattern | None = None,
                      card: str | None = None) -> None:
    """Copy a model directory's files (linked where possible), but those whose name `skip` matches,
    atomically with its checksum manifest. `card`: the copy's model card, in place of the source's."""

    def keep(name: str) -> bool:
        return not (skip and skip.fullmatch(name)) and not (card is not None and name == CARD)

    def fill(tmp: Path) -> dict:
        known = _link_files(Path(src), tmp, keep)
        if card is not None:
            (tmp / CARD).write_text(card)
        return known

    write_model_dir(dst, fill)


def import_local_model(src: str | Path, dst: str | Path, card: Card | None = None) -> None:
    """The `local` source: a Hugging Face directory on disk (Qwen2.5-7B-Instruct, Llama-3.2, ...), checked
    to load as a tokenizer + config with no remote code, then linked into the results. `card`: what the
    study says of it, after the model's own card when it has one (its weights are linked unchanged)."""
    from transformers import AutoConfig

    src = check_model_dir(src)
    config = AutoConfig.from_pretrained(src, trust_remote_code=False, local_files_only=True)
    load_tokenizer(src)
    if not config.architectures:
        raise ValueError(f"{src / 'config.json'}: no `architectures` entry")
    own = (src / CARD).read_text(errors="replace") if (src / CARD).is_file() else None
    link_or_copy_tree(src, dst, card=card.render(Path(dst).name, own=own) if card else None)


# --- Model cards ----------------------------------------------------------------------------------------

CARD = "README.md"  # a Hugging Face model directory's model card
COMMIT_ENV = "RLHEALS_COMMIT"  # the code's commit, for a job that runs where git or the checkout is not


@cache
def code_version() -> str:
    """The commit of the code a job runs, for its model cards: RLHEALS_COMMIT when set, else `git describe
    --always --dirty` of the checkout the package is in, else "unknown". Read when a job runs, never a
    rule's param: a new commit reruns nothing."""
    import subprocess

    if os.environ.get(COMMIT_ENV):
        return os.environ[COMMIT_ENV]
    root = Path(__file__).resolve().parents[2]  # src/rlheals/models.py in a checkout
    if not (root / ".git").exists() or not shutil.which("git"):
        return "unknown"
    try:
        out = subprocess.run(["git", "describe", "--always", "--dirty"], cwd=root, capture_output=True,
                             text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.strip() if out.returncode == 0 and out.stdout.strip() else "unknown"


@dataclass(frozen=True, kw_only=True)
class Card:
    """A model card (README.md), as Hugging Face model directories carry: what the model is (`what`; for a
    checkpoint of a run, followed by its `unit` and step of `total`), how it was made (`made`: what it
    started from, its data with their sha256, ...; the code's commit is added), and the config slice of
    the job that made it (`settings`). The same inputs give the same text: nothing in it changes from one
    run to the next but the commit."""

    what: str
    made: Mapping[str, str] = field(default_factory=dict)
    settings: Mapping | None = None
    unit: str | None = None
    total: int | None = None
    tags: Sequence[str] = ()

    def render(self, name: str, step: int | None = None, own: str | None = None) -> str:
        """The card of model directory `name` (at `step` of a run). `own`: the model's own card (a local
        model's), kept whole at the top, the study's part after it."""
        at = f", after {self.unit} {step} of {self.total}" if step is not None and self.unit else ""
        rows = {**self.made, "code": f"rlheals {code_version()}"}
        level = "##" if own is None else "###"
        body = [f"{self.what}{at}.", "", f"{level} How it was made", "", "| | |", "| --- | --- |",
                *(f"| {key} | {value} |" for key, value in rows.items())]
        if self.settings is not None:
            body += ["", f"{level} Settings", "",
                     "The config slice of the job that made it (config/README.md in the rlheals repository "
                     "describes every key):", "",
                     "```json", json.dumps(self.settings, indent=2, sort_keys=True), "```"]
        if own is not None:
            return own.rstrip() + f"\n\n## In this study (rlheals): {name}\n\n" + "\n".join(body) + "\n"
        front = ["---", "library_name: transformers", "pipeline_tag: text-generation", "tags:",
                 *(f"- {tag}" for tag in ("rlheals", *self.tags)), "---"]
        return "\n".join([*front, "", f"# {name}", "", *body]) + "\n"
