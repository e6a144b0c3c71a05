"""What a model must hold for this study, checked before its jobs run: the files of a Hugging Face model
directory, a pad token, a chat template that renders the study's turns, and positions for the longest
conversation the study can produce.

The longest conversation is the prompt of a hand, then for each try an answer of `max_new_tokens` tokens
and, between tries, the verifier's feedback turn. Feedback can quote one step of the answer, so its bound
is the longest feedback message measured on typical wrong answers plus one whole answer."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from rlheals import cards
from rlheals.verify import Verifier

# Weight names of learned (absolute) position embeddings: a hard limit, unlike rotary positions.
LEARNED_POSITIONS = re.compile(r"(^|\.)(wpe|position_embeddings|embed_positions)\.weight$")
# The hand with the longest card words under the OOD rule, and answers a verifier rejects in each way.
LONGEST_HAND = ["10", "J", "Q", "K"]
WRONG_ANSWERS = ["", "1 + 1", "10 * 11 = 110 ; 110 - 12 = 98 ; 98 + 13 = 111 ;", "10 * 11 * 12 * 13", "(((", "99 * 99",
                 '{"cards": ["10", "J", "Q", "K"], "number": [10, 11, 12, 13], "formula": "10 * 11"}']


# A tokenizer loads from one of these (fast; sentencepiece; byte-level BPE; WordPiece).
TOKENIZER_FILES = (("tokenizer.json",), ("tokenizer.model",), ("vocab.json", "merges.txt"), ("vocab.txt",))
PICKLED = ("*.bin", "*.pt", "*.pth")


def missing_files(model_dir: str | Path) -> list[str]:
    """What a local model directory lacks to be imported, one phrase each (nothing: an empty list). Only
    names and the safetensors index are read, no weights."""
    path = Path(model_dir)
    if not path.exists():
        return ["no such directory"]
    if not path.is_dir():
        return ["not a directory"]
    missing = [] if (path / "config.json").is_file() else ["no config.json"]
    index = path / "model.safetensors.index.json"
    if index.is_file():
        try:
            shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        except (ValueError, KeyError, AttributeError):
            return [*missing, f"{index.name} is not a safetensors index (no weight_map)"]
        if lost := [name for name in shards if not (path / name).is_file()]:
            missing.append(f"weight shards listed in {index.name} but not there: {', '.join(lost)}")
    elif not any(path.glob("*.safetensors")):
        pickled = sorted(p.name for pattern in PICKLED for p in path.glob(pattern))
        also = f" (only pickled {', '.join(pickled[:3])}, never loaded: convert them to safetensors)"
        missing.append("no weights *.safetensors" + (also if pickled else ""))
    if not any(all((path / name).is_file() for name in names) for names in TOKENIZER_FILES):
        missing.append("no tokenizer files (tokenizer.json, tokenizer.model, vocab.json with merges.txt, "
                       "or vocab.txt)")
    return missing


def check_files(model_dir: str | Path) -> None:
    """Refuse a local model that is not there or is incomplete, naming the path and all that is missing:
    before any job runs, instead of an import that fails later with a message about something else."""
    if missing := missing_files(model_dir):
        raise ValueError(f"config key model.local_path: {model_dir}: {'; '.join(missing)}. It must name a "
                         "local copy of a Hugging Face model (nothing is downloaded)")


def pad_token_fallback(tokenizer) -> str | None:
    """Give a tokenizer without a pad token its end-of-sequence token as pad (what GPT-2 and Llama-3
    training code usually does; padded positions are masked out everywhere here). Returns what was done."""
    if tokenizer.pad_token is not None:
        return None
    if tokenizer.eos_token is None:
        raise ValueError("the tokenizer has neither a pad token nor an end-of-sequence token to pad with")
    tokenizer.pad_token = tokenizer.eos_token
    message = f"the tokenizer has no pad token: padding with its end-of-sequence token {tokenizer.eos_token!r}"
    logging.getLogger("rlheals").info(message)  # in the log of every job that loads it
    return message


def study_turns(fmt: str, target: int, face_values: Mapping[str, int]) -> tuple[str, str]:
    """A prompt of the longest hand in the study's format, and the verifier's longest feedback message."""
    rule = cards.Rule("ood", tuple(face_values[c] for c in ("J", "Q", "K")), "uniform")
    prompt = cards.render_prompt(fmt, LONGEST_HAND, rule, target)
    verifier = Verifier(target=target, fmt=fmt)
    feedback = max((verifier(answer, rule.values(LONGEST_HAND)).feedback for answer in WRONG_ANSWERS), key=len)
    return prompt, feedback


def longest_conversation(tokenizer, prompt: str, feedback: str, tries: int, max_new_tokens: int) -> int:
    """Tokens of the longest conversation: `tries` answers of `max_new_tokens` tokens, each wrong one
    followed by `feedback` quoting up to one whole answer. Fails when the chat template does not render
    the study's turns."""
    chat = [{"role": "user", "content": prompt}]
    for _ in range(tries - 1):
        chat += [{"role": "assistant", "content": "x"}, {"role": "user", "content": feedback}]
    try:
        text = tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
    except Exception as err:  # a template that refuses the study's turns (jinja raises its own errors)
        raise ValueError(f"the chat template cannot render the study's conversation: {err}") from err
    if prompt not in text or (tries > 1 and feedback not in text):
        raise ValueError("the chat template drops the study's prompt or feedback turns")
    rendered = len(tokenizer(text, add_special_tokens=False)["input_ids"])
    return rendered + tries * max_new_tokens + (tries - 1) * max_new_tokens  # answers, and feedback quoting them


@dataclass(frozen=True)
class Positions:
    limit: int | None  # max_position_embeddings (n_positions), None when the config has none
    learned: bool  # learned position embeddings (a hard limit), else rotary or none (extrapolates)


def positions(model_dir: str | Path) -> Positions:
    """The model's position limit from config.json, and whether its weights hold learned positions."""
    model_dir = Path(model_dir)
    config = json.loads((model_dir / "config.json").read_text())
    text = config.get("text_config", config)  # multimodal checkpoints keep the language model's apart
    limit = text.get("max_position_embeddings", text.get("n_positions"))
    return Positions(limit, any(LEARNED_POSITIONS.search(name) for name in weight_names(model_dir)))


def weight_names(model_dir: Path) -> list[str]:
    """Tensor names of a model directory, from the safetensors index or headers (no tensor is read)."""
    index = model_dir / "model.safetensors.index.json"
    if index.exists():
        return list(json.loads(index.read_text())["weight_map"])
    from safetensors import safe_open

    names = []
    for path in sorted(model_dir.glob("*.safetensors")):
        with safe_open(path, framework="pt") as f:
            names += list(f.keys())
    return names


def check_positions(model: str, found: Positions, needed: int) -> str | None:
    """An error when learned positions cannot hold the longest conversation; a warning text when rotary
    positions must stretch past the config's limit; None when it fits."""
    if found.limit is None or needed <= found.limit:
        return None
    message = (f"{model}: the longest conversation the study can produce is {needed} tokens, and the model "
               f"has {found.limit} positions")
    if found.learned:
        raise ValueError(message + " (learned position embeddings: a hard limit). Lower eval.verify_turns, "
                         "eval.max_new_tokens, rl.verify_turns or rl.max_new_tokens, or use another model")
    return message + " (rotary: the model runs past them, with whatever quality it has there)"


def needed_positions(tokenizer, config: Mapping) -> int:
    """The longest conversation (tokens) the study in `config` can produce with this tokenizer: the eval
    protocol's, PPO's rollouts' (when it runs) and SFT's longest example."""
    game, fmt = config["game"], config["prompt"]["format"]
    faces = max((rule["face_values"] for rule in game["rules"].values()), key=lambda f: sum(map(len, map(str, f.values()))))
    prompt, feedback = study_turns(fmt, game["target"], faces)
    protocols = [(config["eval"]["verify_turns"], config["eval"]["max_new_tokens"])]
    if "ppo" in config["rl"]["algos"]:
        protocols.append((config["rl"]["verify_turns"], config["rl"]["max_new_tokens"]))
    needed = max(longest_conversation(tokenizer, prompt, feedback, tries, new) for tries, new in protocols)
    return max(needed, config["sft"]["max_length"])


def check_study(model_dir: str | Path, config: Mapping) -> str | None:
    """The checks above for a local model and a study config, its files first: an error (ValueError)
    that says what does not fit, or a warning text for rotary positions stretched past their limit, or
    None."""
    from rlheals import models

    check_files(model_dir)
    tokenizer = models.load_tokenizer(model_dir)
    if tokenizer.chat_template is None:
        raise ValueError(f"{model_dir}: the tokenizer has no chat template (tokenizer_config.json / chat_template.jinja)")
    try:
        needed = needed_positions(tokenizer, config)
    except ValueError as err:
        raise ValueError(f"{model_dir}: {err}") from err
    return check_positions(str(model_dir), positions(model_dir), needed)
