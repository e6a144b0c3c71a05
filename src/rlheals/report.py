"""The report's figures, one entry each: what a figure reads, how it is captioned and filed in the
report, and which function of `rlheals.figures` draws it.

rules/report.smk makes one rule per entry, `rule all` asks for every entry's SVG and scripts/figure.py
finds its builder here. Kept light (standard library only): the Snakefile imports it at parse time, and
every cluster job re-parses the Snakefile.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

# A figure input that is not one file but a list of files the workflow computes from the config:
# the spectrum of base -> the last SFT step, and of every RL pair (rules/report.smk).
SPECTRUM_PAIR_FILES = "spectrum_pair_files"
SFT_LOG_FILES = "sft_log_files"  # every SFT seed's loss log


@dataclass(frozen=True)
class Figure:
    """One figure: rule `figure_<name>` writes results/figures/<name>.svg and .html.

    scripts/figure.py reads every input as a table (a list of files is concatenated), in the order
    given here; passes them through `prepare` (a function of scripts/figure.py) when the entry names
    one; and calls `figures.<builder>` with them, then with the rule's params named in `params`.
    """

    name: str
    inputs: Mapping[str, str]  # input key -> path, or the name of a file list (SPECTRUM_PAIR_FILES)
    caption: str  # a file of rules/captions/
    category: str
    builder: str  # a function of rlheals.figures
    subcategory: str | None = None
    params: tuple[str, ...] = ()  # rule params the builder takes after the tables (see report.smk)
    prepare: str | None = None  # a function of scripts/figure.py: the tables -> the builder's arguments

    def __post_init__(self):
        object.__setattr__(self, "inputs", MappingProxyType(dict(self.inputs)))

    @property
    def rule(self) -> str:
        return f"figure_{self.name}"

    @property
    def svg(self) -> str:
        return f"results/figures/{self.name}.svg"

    @property
    def html(self) -> str:
        return f"results/figures/{self.name}.html"

    @property
    def log(self) -> str:
        return f"logs/figures/{self.name}.log"

    def input_files(self, file_lists: Mapping[str, list[str]]) -> dict[str, str | list[str]]:
        """The rule's input: each path as it is, each named file list from `file_lists`."""
        files = {}
        for key, path in self.inputs.items():
            if path.startswith("results/"):
                files[key] = path
            elif path in file_lists:
                files[key] = file_lists[path]
            else:
                raise KeyError(f"figure {self.name!r}: input {key!r} is {path!r}, neither a path nor one of "
                               f"the file lists {sorted(file_lists)}")
        return files


SFT_AND_RL, SPECTRUM, RESTORATION = "1. SFT and RL", "2. Spectrum", "3. Restoration"

FIGURES: tuple[Figure, ...] = (
    Figure(
        "sft_accuracy",
        {"accuracy": "results/tables/accuracy.parquet", "losses": SFT_LOG_FILES,
         "rl_recovery": "results/tables/rl_recovery.parquet"},
        caption="sft_accuracy.rst", category=SFT_AND_RL, builder="sft_accuracy",
    ),
    Figure(
        "format_errors", {"accuracy": "results/tables/accuracy.parquet"},
        caption="format_errors.rst", category=SFT_AND_RL, builder="format_errors",
    ),
    Figure(
        "spectrum_by_rank", {"pairs": SPECTRUM_PAIR_FILES},
        caption="spectrum_by_rank.rst", category=SPECTRUM, builder="spectrum_by_rank", prepare="label_pairs",
    ),
    Figure(
        "rotation_heatmaps", {"spectrum": "results/tables/spectrum.parquet"},
        caption="rotation_heatmaps.rst", category=SPECTRUM, builder="rotation_heatmaps", params=("last_sft",),
    ),
    Figure(
        "update_norms", {"update_norms": "results/tables/update_norms.parquet"},
        caption="update_norms_figure.rst", category=SPECTRUM, builder="update_norms",
    ),
    Figure(
        "rotation_vs_ood",
        {"spectrum": "results/tables/spectrum.parquet", "accuracy": "results/tables/accuracy.parquet"},
        caption="rotation_vs_ood.rst", category=SPECTRUM, builder="rotation_vs_ood",
        prepare="rotation_points",
    ),
    Figure(
        "restoration", {"restoration": "results/tables/restoration.parquet"},
        caption="restoration.rst", category=RESTORATION, builder="restoration",
    ),
)


def figure(name: str) -> Figure:
    """The entry of figure `name` (or of rule `figure_<name>`)."""
    for fig in FIGURES:
        if name in (fig.name, fig.rule):
            return fig
    raise KeyError(f"no figure called {name!r} in rlheals.report.FIGURES: {[f.name for f in FIGURES]}")


# The config of the study in results/: every run that starts jobs records its whole config here (the
# files and --config values merged, defaults filled in), so the report can be made for the study that
# was run: `python3 tasks.py report`, or `snakemake --configfile results/study_config.json --report`.
STUDY_CONFIG = "results/study_config.json"


def record_config(config_text: str, path: str | Path = STUDY_CONFIG) -> None:
    """Write the study's config (sorted-key JSON) to `path`, atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(config_text + "\n")
    tmp.replace(path)


def config_differences(recorded: Mapping, current: Mapping, prefix: str = "") -> list[str]:
    """The dotted keys whose values differ between two configs, with both values."""
    out = []
    for key in sorted(set(recorded) | set(current), key=str):
        name, a, b = f"{prefix}{key}", recorded.get(key), current.get(key)
        if isinstance(a, Mapping) and isinstance(b, Mapping):
            out += config_differences(a, b, f"{name}.")
        elif a != b:
            out.append(f"{name}: {_short(b)} here, {_short(a)} in the study")
    return out


def _short(value, width: int = 40) -> str:
    text = json.dumps(value)
    return text if len(text) <= width else text[:width - 3] + "..."


def report_config_problem(config_text: str, path: str | Path = STUDY_CONFIG) -> str | None:
    """Why a report made with this config would not show the study in results/ (None: it would, or no
    study is recorded): the study there was run with another config, and the report would look for the
    outputs of this one."""
    path = Path(path)
    if not path.is_file():
        return None
    recorded, current = json.loads(path.read_text()), json.loads(config_text)
    if recorded == current:
        return None
    keys = config_differences(recorded, current)
    shown = "; ".join(keys[:6]) + (f"; and {len(keys) - 6} more" if len(keys) > 6 else "")
    return (f"the study in results/ was run with another config than this report's ({shown}). A report "
            f"made with this config would look for the outputs of another study and show none of its "
            f"figures. Make the report of the study that was run with its config, {path}:\n"
            f"    python3 tasks.py report\n"
            f"    snakemake --configfile {path} --report report.html")
