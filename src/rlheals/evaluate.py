"""Evaluation: multi-turn verification episodes (the papers' protocol) for one model, all episodes
advancing together in batches through rlheals.decoding.

An episode is one test hand: the model answers; if the verifier rejects the answer, its feedback ("You
failed this trial because ...") becomes the next user turn, up to `turns` tries. A solved episode leaves
its batch and its cache rows. On the CPU the episodes can be shared out over forked worker processes,
each playing its own batches. `play` is the one loop of the protocol: PPO's rollouts use it too."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from rlheals.decoding import Batch, Decoding, encode, encode_all
from rlheals.episodes import Episode, result_row
from rlheals.verify import Verdict, Verifier

@dataclass(frozen=True)
class Protocol:
    """How episodes are played: the verifier that judges each answer, the tries per episode (`turns`),
    the decoding, and how many episodes advance together in one batch."""

    verifier: Verifier
    turns: int
    decoding: Decoding = Decoding()
    batch_size: int = 256


@dataclass(frozen=True)
class Try:
    """One answer of an episode: the conversation it answered (token ids, as fed), the answer as text and
    as the sampled token ids (RL trains on these), and the verifier's verdict."""

    prompt_ids: list[int]
    answer: str
    answer_ids: list[int]
    verdict: Verdict


def run_episodes(model, tokenizer, episodes: Sequence[Episode], protocol: Protocol, *,
                 log: Callable[[str], object] | None = None, workers: int = 1,
                 progress: Callable[[int, int], object] | None = None) -> list[dict]:
    """Play every episode to the end; one result row per episode, in the order given. `progress(done,
    total)` is called after each batch, in the process that played it, with the episodes it has played
    and the number it plays (with several workers, each counts its own share).

    `workers` > 1, for a model on the CPU under greedy decoding: the episodes are shared out over that many
    processes (this one and forked copies), one thread each. A model this small spends much of each step
    in Python and in per-operator overhead that intra-op threads do not share out; processes do. Greedy
    answers do not depend on the batching, so the results are the same for any number of workers.
    Sampled decoding stays in one process: its draws depend on the batching, and must not depend on the
    machine's core count."""
    import torch

    decoding, size = protocol.decoding, protocol.batch_size
    if decoding.do_sample:
        torch.manual_seed(decoding.seed)
    # Similar prompt lengths share a batch: less padding.
    first = encode_all(tokenizer, [[{"role": "user", "content": e.prompt}] for e in episodes])
    prompts = {e.id: ids for e, ids in zip(episodes, first)}
    order = sorted(episodes, key=lambda e: len(prompts[e.id]))
    if decoding.do_sample or model.device.type != "cpu" or not _can_fork():
        workers = 1
    workers = max(1, min(workers, len(order) // MIN_SHARE))

    def play_share(share: Sequence[Episode]) -> dict[str, list]:
        tries: dict[str, list] = {}
        for start in range(0, len(share), size):
            group = share[start : start + size]
            played = play(model, tokenizer, group, protocol, first=[prompts[e.id] for e in group], log=log)
            tries.update({e.id: [(t.answer, t.verdict) for t in ts] for e, ts in zip(group, played)})
            if progress:
                progress(start + len(group), len(share))
        return tries

    if workers == 1:
        tries = play_share(order)
    else:
        shares = [order[w::workers] for w in range(workers)]
        tries = {k: v for part in _forked_map(play_share, shares) for k, v in part.items()}
    return [result_row(e, tries[e.id]) for e in episodes]


# The fewest episodes worth a worker of their own (a judgement, not a measurement): below it, one more
# process gains less than the larger batches it breaks up.
MIN_SHARE = 32


def _can_fork() -> bool:
    """Forking a process that imported torch is safe on Linux; macOS (Objective-C runtime) and Windows
    do not have a safe fork, and there the episodes stay in one process."""
    import multiprocessing
    import sys

    return sys.platform.startswith("linux") and "fork" in multiprocessing.get_all_start_methods()


def _forked_map(fn, items: Sequence) -> list:
    """[fn(item) for item in items], the first in this process and each other in a forked copy of it,
    all at once with one torch thread each (a forked child must not use the parent's OpenMP pool). A
    child's error is raised here with its traceback; a child that dies is reported with its exit code."""
    import multiprocessing
    import multiprocessing.connection
    import traceback

    import torch

    def child(item, pipe) -> None:
        torch.set_num_threads(1)
        try:
            pipe.send((True, fn(item)))
        except BaseException:  # noqa: BLE001 - everything goes back to the parent
            pipe.send((False, traceback.format_exc()))
        pipe.close()

    ctx = multiprocessing.get_context("fork")
    started = []
    for item in items[1:]:
        reader, writer = ctx.Pipe(duplex=False)
        process = ctx.Process(target=child, args=(item, writer), daemon=True)
        process.start()
        writer.close()
        started.append((process, reader))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        mine, done, pending = fn(items[0]), {}, {reader: process for process, reader in started}
        while pending:  # whichever worker ends first, so a failed one is seen at once
            for reader in multiprocessing.connection.wait(list(pending)):
                process = pending.pop(reader)
                try:
                    ok, value = reader.recv()
                except EOFError:
                    process.join()
                    raise RuntimeError(f"evaluation worker {process.pid} died (exit code {process.exitcode})") from None
                if not ok:
                    raise RuntimeError(f"evaluation worker {process.pid} failed:\n{value}")
                done[process] = value
        return [mine, *(done[process] for process, _ in started)]
    except BaseException:
        for process, _ in started:  # an error here or in one worker stops the others
            process.terminate()
        raise
    finally:
        torch.set_num_threads(threads)
        for process, _ in started:
            process.join()


def play(model, tokenizer, group: Sequence[Episode], protocol: Protocol, *,
         first: Sequence[list[int]] | None = None, log: Callable[[str], object] | None = None) -> list[list[Try]]:
    """One batch of episodes through all its turns, advancing together; a solved episode leaves the batch.
    Returns each episode's tries. `first`: the first turn's token ids when already encoded. The one loop of
    the multi-turn protocol: evaluation plays greedy, PPO's rollouts sample."""
    batch = Batch(model, tokenizer, protocol.decoding)
    chats = [[{"role": "user", "content": e.prompt}] for e in group]
    played: list[list[Try]] = [[] for _ in group]
    active = list(range(len(group)))
    for turn in range(1, protocol.turns + 1):
        ids = list(first) if turn == 1 and first is not None else encode_all(tokenizer, [chats[i] for i in active])
        answers = batch.turn(ids)
        still = []
        for row, (i, prompt, answer, answer_ids) in enumerate(zip(active, ids, answers, batch.answer_ids)):
            verdict = protocol.verifier(answer, group[i].values)
            played[i].append(Try(prompt, answer, answer_ids, verdict))
            if not verdict.correct:
                chats[i] += [{"role": "assistant", "content": answer}, {"role": "user", "content": verdict.feedback}]
                still.append(row)
        if log:
            log(f"turn {turn}: {len(active)} episodes, {len(active) - len(still)} solved")
        if not still or turn == protocol.turns:
            break
        batch.keep(still)
        active = [active[row] for row in still]
    return played


def run_episodes_one_at_a_time(model, tokenizer, episodes: Sequence[Episode], protocol: Protocol) -> list[dict]:
    """The one-at-a-time reference the engine must match (the way the papers' public code evaluates): one
    episode at a time, one `generate` per try over the whole conversation, no batching and no cache kept
    between tries."""
    import torch

    decoding, rows = protocol.decoding, []
    for e in episodes:
        chat, tries = [{"role": "user", "content": e.prompt}], []
        for _ in range(protocol.turns):
            ids = torch.tensor([encode(tokenizer, chat)], device=model.device)
            with torch.inference_mode():
                out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids),
                                     max_new_tokens=decoding.max_new_tokens, pad_token_id=tokenizer.pad_token_id,
                                     eos_token_id=tokenizer.eos_token_id, **decoding.generate_kwargs())
            answer = tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True).strip()
            verdict = protocol.verifier(answer, e.values)
            tries.append((answer, verdict))
            if verdict.correct:
                break
            chat = chat + [{"role": "assistant", "content": answer}, {"role": "user", "content": verdict.feedback}]
        rows.append(result_row(e, tries))
    return rows
