"""The tiny model's pretraining: a synthetic corpus that gives it general arithmetic and rule-following
before SFT, like a real base LLM, and a plain training loop (nanoGPT-style).

Corpus (never a card puzzle for the study's target under the study's own rules; never a test hand's or a
reserved value multiset with that target, except in numeric puzzles when `numbers_banned` lifts it):
  - numeric puzzles for the target: `numbers 3 8 target 24 =>` and steps reaching it, of 2, 3 or 4
    numbers (`sizes`); the 4-number ones may cover the test hands' value multisets, so the base model
    knows the arithmetic of every hand, as a real base LLM knows the 24 game (docs/design.md, round 4);
  - numeric puzzles for other targets;
  - card puzzles for other targets under random face-card rules (`rule J 5 Q 7 K 2 cards cJ c3 ...`),
    answered in the study's answer format: the card values the written rule gives, restated, then steps
    (`compact`), or the steps alone (`steps`);
  - optionally (`cards_target`), card puzzles for the target under random rules that are never the
    study's own, with no test or reserved value multiset: the base model then knows the game under a
    written rule, as the papers' base models do, and SFT teaches the study's rule and answer format.
Most documents are raw text; a share (`chat_share`) is wrapped in the chat template, so the base model
has seen the chat format but not mastered it."""

from __future__ import annotations

import random
import time
from collections.abc import Iterable, Mapping
from fractions import Fraction

from rlheals import cards, formula, runlog, verify

NUMBER_RANGE = range(-400, 401)
KINDS = ("numbers_target", "numbers_other", "cards_other", "cards_target")
DEFAULT_SIZES = {"two": 0.3, "three": 0.7, "four": 0.0}  # numbers_target puzzles of 2, 3 and 4 numbers
SUB_PUZZLE_MAX = 40


def vocabulary(target: int) -> list[str]:
    """Every word the tiny model can read or write: prompts, answers, numbers, feedback messages."""
    words = ["rule", "J", "Q", "K", "cards", "numbers", "target", "=>", ";", "=", "+", "-", "*", "/", "(", ")"]
    words += [".", ",", ":", "'"]  # punctuation of the feedback turns
    words += ["c" + r for r in cards.RANKS]
    words += [str(n) for n in NUMBER_RANGE]
    fractions = set()
    for values in cards.ALL_VALUE_MULTISETS:
        for solution in cards.solve(values, target):
            for *_, c in formula.steps(formula.parse(solution)):
                if c.denominator != 1:
                    fractions.add(formula.fmt_number(c))
    words += sorted(fractions)
    words += feedback_words(target)
    return list(dict.fromkeys(words))


def feedback_words(target: int) -> list[str]:
    """The words of the verifier's feedback turns, collected by running it on typical wrong answers."""
    import re

    checker = verify.Verifier(target=target)
    samples = ["", "1 + 1", "1 * 2 = 3 ;", "1 + 2 = 3 ;", "3/(1-1)", "1+", "(((", "99 * 99", "1 2 3 4 ; 5 + 5 = 10 ;",
               "1 * 9 = 9 ;", "x" * 9000, "1 ++ 2", "a"]
    words = set()
    for text in samples:
        words.update(re.findall(r"[A-Za-z_]+", checker(text, [1, 2, 3, 4]).feedback))
    return sorted(words)


def _random_solution(rng: random.Random, values: list[int]) -> tuple[str, Fraction] | None:
    """A random formula over `values` (each once): random order, operators and bracketing. Returns it with
    its value when every step stays a whole number in NUMBER_RANGE."""
    items = [(formula.fmt_number(Fraction(v)), formula.ATOM, Fraction(v)) for v in values]
    while len(items) > 1:
        i, j = rng.sample(range(len(items)), 2)
        (at, ap, a), (bt, bp, b) = items[i], items[j]
        op = rng.choice(formula.OPERATORS)
        if op == "/" and (b == 0 or a % b != 0):
            return None
        c = formula.apply(op, a, b)
        if c.denominator != 1 or c not in NUMBER_RANGE:
            return None
        text, prec = formula.join((at, ap), op, (bt, bp))
        items = [x for k, x in enumerate(items) if k not in (i, j)] + [(text, prec, c)]
    return items[0][0], items[0][2]


def make_corpus(n: int, target: int, banned: set[tuple], mix: Mapping[str, float], seed: int,
                sizes: Mapping[str, float] = DEFAULT_SIZES, restate: bool = True,
                study_rules: Iterable[tuple[int, int, int]] = (), numbers_banned: set[tuple] | None = None) -> list[dict]:
    """`n` documents as {kind, target, prompt, answer}. `banned`: 4-value multisets never used with
    `target` (`numbers_banned`, when given, replaces it for the numeric puzzles). `sizes`: shares of 2-, 3- and 4-number puzzles among the `numbers_target` documents.
    `restate`: answers begin by restating the numbers, as the study's answer format does or not.
    `study_rules`: the face values of the study's own rules, never used by a `cards_target` document."""
    rng = random.Random(seed)
    numbers_banned = banned if numbers_banned is None else numbers_banned
    target_multisets = [m for m in cards.ALL_VALUE_MULTISETS if cards.can_reach(m, target) and m not in numbers_banned]
    if mix.get("numbers_target", 0.0) and sizes["four"] and not target_multisets:
        raise ValueError(f"pretrain.target_puzzle_sizes.four is {sizes['four']}, but every value multiset that "
                         f"reaches {target} is banned: no 4-number puzzle for the target can be made")
    kinds, weights = zip(*((k, mix.get(k, 0.0)) for k in KINDS))
    context = {"target_multisets": target_multisets, "sizes": sizes, "restate": restate, "banned": banned,
               "study_rules": frozenset(map(tuple, study_rules))}
    docs = []
    while len(docs) < n:
        kind = rng.choices(kinds, weights)[0]
        doc = None
        while doc is None:  # redraw within the kind, so the mix weights are the corpus shares
            doc = _make_doc(rng, kind, target, context)
        docs.append(doc)
    return docs


def _make_doc(rng: random.Random, kind: str, target: int, context: Mapping) -> dict | None:
    """One document of a kind, or None when the random draw does not make a valid one."""
    target_multisets, sizes, restate = context["target_multisets"], context["sizes"], context["restate"]
    if kind == "cards_target":
        # A hand for the target under a random written rule: never the study's rules, never a banned
        # (test or reserved) value multiset.
        rule = cards.Rule("random", tuple(rng.randint(1, 13) for _ in range(3)), rng.choice(cards.HAND_KINDS))
        if rule.face_values in context["study_rules"]:
            return None
        ranks, _ = rule.draw(rng)
        values = rule.values(ranks)
        if cards.value_key(values) in context["banned"]:
            return None
        plain = [s for s in cards.solve(values, target) if cards.is_plain(s)]
        if not plain:
            return None
        return {"kind": kind, "target": target, "prompt": cards.compact_prompt(ranks, rule, target),
                "answer": cards.steps_answer(values, rng.choice(plain), restate)}
    if kind == "numbers_target":
        # Sub-puzzles of 2 or 3 numbers teach which small sets reach the target: the skill a greedy
        # step-by-step solver needs to pick a good first step on a hand it has never seen.
        size = rng.choices((2, 3, 4), [sizes["two"], sizes["three"], sizes["four"]])[0]
        if size == 4:
            values = list(rng.choice(target_multisets))
        else:
            values = [rng.randint(1, SUB_PUZZLE_MAX) for _ in range(size)]
            if not cards.can_reach(values, target):
                return None
        rng.shuffle(values)
        plain = [s for s in cards.solve(values, target) if cards.is_plain(s)]
        if not plain:
            return None
        prompt = cards.numbers_prompt("compact", values, target)
        return {"kind": kind, "target": target, "prompt": prompt, "answer": cards.steps_answer(values, rng.choice(plain), restate)}
    if kind == "numbers_other":
        values = [rng.randint(1, 13) for _ in range(4)]
        prompt_of = lambda t: cards.numbers_prompt("compact", values, t)  # noqa: E731
    else:
        rule = cards.Rule("random", tuple(rng.randint(1, 13) for _ in range(3)), rng.choice(cards.HAND_KINDS))
        ranks, _ = rule.draw(rng)
        values = rule.values(ranks)
        prompt_of = lambda t: cards.compact_prompt(ranks, rule, t)  # noqa: E731
    found = _random_solution(rng, values)
    if found is None or found[1] == target or not 1 <= found[1] <= 99:
        return None
    value = int(found[1])
    return {"kind": kind, "target": value, "prompt": prompt_of(value), "answer": cards.steps_answer(values, found[0], restate)}


def corpus_texts(docs: Iterable[dict], tokenizer, chat_share: float, seed: int) -> list[str]:
    """Documents as training text: raw `<s> prompt answer </s>`, or a chat turn for a share of them."""
    rng = random.Random(seed)
    texts = []
    for doc in docs:
        if rng.random() < chat_share:
            messages = [{"role": "user", "content": doc["prompt"]}, {"role": "assistant", "content": doc["answer"]}]
            texts.append(tokenizer.apply_chat_template(messages, tokenize=False))
        else:
            texts.append(f"{tokenizer.bos_token} {doc['prompt']} {doc['answer']} {tokenizer.eos_token}")
    return texts


def train_causal_lm(model, tokenizer, texts: list[str], settings: Mapping, log=print,
                    tracking=None) -> list[dict]:
    """Full-sequence language-model training with AdamW and a cosine schedule: a plain loop. Its loss is
    logged every `log_every` steps, on progress lines with an ETA; `tracking`: a directory for TensorBoard
    events of the loss and learning rate (config key `tracking`)."""
    import torch
    from transformers import get_cosine_with_min_lr_schedule_with_warmup

    torch.manual_seed(settings["seed"])
    steps, batch, warmup = settings["steps"], settings["batch_size"], settings["warmup_steps"]
    opt = torch.optim.AdamW(model.parameters(), lr=settings["lr"], betas=(0.9, 0.98), eps=1e-8, weight_decay=0.0)
    sched = get_cosine_with_min_lr_schedule_with_warmup(opt, warmup, steps, min_lr_rate=settings["min_lr_ratio"])
    enc = tokenizer(texts, add_special_tokens=False)["input_ids"]
    order = torch.randperm(len(enc), generator=torch.Generator().manual_seed(settings["seed"])).tolist()
    model.train()
    history, start = [], time.time()
    progress, tracker = runlog.Progress("pretrain", steps, log), runlog.Tracker(tracking, fresh=True)
    for step in range(steps):
        idx = [order[(step * batch + k) % len(order)] for k in range(batch)]
        input_ids, labels, attention = _pad_batch([enc[i] for i in idx], tokenizer.pad_token_id)
        loss = model(input_ids=input_ids, attention_mask=attention, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        if step % settings.get("log_every", 25) == 0 or step == steps - 1:
            value = loss.item()
            history.append({"step": step + 1, "loss": value, "lr": sched.get_last_lr()[0], "seconds": time.time() - start})
            progress.update(step + 1, note=f"loss {value:.4f}")
            tracker.scalars(step + 1, {"loss": value, "learning_rate": history[-1]["lr"]}, "pretrain/")
    tracker.close()
    model.eval()
    return history


def _pad_batch(seqs: list[list[int]], pad_id: int):
    """Right-pad token lists into (input_ids, labels with -100 on padding, attention_mask)."""
    import torch

    width = max(map(len, seqs))
    input_ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    attention = torch.zeros((len(seqs), width), dtype=torch.long)
    for row, seq in enumerate(seqs):
        input_ids[row, : len(seq)] = torch.tensor(seq)
        attention[row, : len(seq)] = 1
    labels = input_ids.masked_fill(attention == 0, -100)
    return input_ids, labels, attention




def doc_key(doc: dict) -> tuple:
    """The value multiset a document's puzzle uses: its numbers, or its cards under its written rule."""
    words = doc["prompt"].split()
    if words[0] == "rule":
        return cards.value_key(card_values(doc))
    return cards.value_key(int(w) for w in words[1 : words.index("target")])


def card_values(doc: dict) -> list[int]:
    """The values of a card document's cards under the rule its prompt writes (`rule J 5 Q 7 K 2 cards ...`)."""
    words = doc["prompt"].split()
    rule = cards.Rule("written", written_rule(doc), "uniform")
    return rule.values(w[1:] for w in words[words.index("cards") + 1 : words.index("target")])


def written_rule(doc: dict) -> tuple[int, int, int]:
    words = doc["prompt"].split()
    return tuple(map(int, words[2:7:2]))
