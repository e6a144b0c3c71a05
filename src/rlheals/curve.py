"""The SFT accuracy curve: its peak and last checkpoint, and whether it shows forgetting by the criterion
of docs/design.md (the same test chooses the default study's design and is reported in the findings)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

# The criterion: OOD at its SFT peak this many points, and this share (relative), above the last
# checkpoint, the two 95% intervals apart; ID at the last checkpoint this many points above the base.
MIN_DROP = 0.10
MIN_RELATIVE_DROP = 0.40
MIN_ID_GAIN = 0.15


@dataclass(frozen=True)
class Forgetting:
    peak_step: int
    last_step: int
    ood_peak: float
    ood_last: float
    id_base: float
    id_last: float
    intervals_apart: bool

    @property
    def drop(self) -> float:
        return self.ood_peak - self.ood_last

    @property
    def shown(self) -> bool:
        return (self.drop >= MIN_DROP - 1e-12 and self.ood_peak >= (1 + MIN_RELATIVE_DROP) * self.ood_last
                and self.intervals_apart and self.id_last - self.id_base >= MIN_ID_GAIN - 1e-12)


def peak(ood: Sequence[Mapping]) -> Mapping:
    """The SFT checkpoint (step above 0) with the highest OOD accuracy; the earliest on a tie."""
    trained = [r for r in ood if r["sft_step"] > 0]
    if not trained:
        raise ValueError("the SFT curve has no checkpoint after step 0")
    return max(trained, key=lambda r: (r["accuracy"], -r["sft_step"]))


def forgetting(id_rows: Sequence[Mapping], ood_rows: Sequence[Mapping], best_step: int | None = None) -> Forgetting:
    """The criterion's figures for one SFT run. Rows: sft_step, accuracy, accuracy_low, accuracy_high. The
    best checkpoint is `best_step` (B as chosen on other hands) when given, else `peak` of these rows."""
    id_by_step = {r["sft_step"]: r for r in id_rows}
    top = next((r for r in ood_rows if r["sft_step"] == best_step), None) or peak(ood_rows)
    last = max(ood_rows, key=lambda r: r["sft_step"])
    if 0 not in id_by_step or last["sft_step"] not in id_by_step:
        raise ValueError("the ID curve needs the base model (step 0) and the last checkpoint")
    return Forgetting(
        peak_step=top["sft_step"], last_step=last["sft_step"], ood_peak=top["accuracy"], ood_last=last["accuracy"],
        id_base=id_by_step[0]["accuracy"], id_last=id_by_step[last["sft_step"]]["accuracy"],
        intervals_apart=top["accuracy_low"] > last["accuracy_high"])


# The RL starting points the workflow can choose, relative to the OOD peak (B) and the last step (T).
START_POINTS = ("before_peak", "peak", "mid_decline", "last")


def _nearest(steps: Sequence[int], goal: float) -> int | None:
    return min(steps, key=lambda s: (abs(s - goal), s)) if steps else None


def choose_points(ood_rows: Sequence[Mapping]) -> dict[str, int | None]:
    """B (the best-OOD checkpoint after step 0; the earliest on a tie), T (the last checkpoint) and the
    RL starting points: the checkpoint nearest half-way to B (before_peak), B (peak), the checkpoint
    nearest half-way from B to T (mid_decline) and T (last). A point with no checkpoint strictly in its
    range (B is the first checkpoint, or B is T) is None."""
    steps = sorted(r["sft_step"] for r in ood_rows)
    b, t = peak(ood_rows)["sft_step"], steps[-1]
    return {"B": b, "T": t,
            "before_peak": _nearest([s for s in steps if 0 < s < b], b / 2),
            "peak": b,
            "mid_decline": _nearest([s for s in steps if b < s < t], (b + t) / 2),
            "last": t}
