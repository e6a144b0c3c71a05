"""The documentation quotes only wall times that were measured and recorded: a results page records it
(docs/results/, written by docs/results/record.py), or the paragraph that quotes it gives the date it was
measured. A time from an older run, left in a page after the study changed, fails here."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", ROOT / "config" / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
RESULTS = sorted((ROOT / "docs" / "results").glob("*.md"))
TIME = re.compile(r"(\d+(?:\.\d+)?)\s+(?:minutes|min)\b")
DATE = re.compile(r"\b20\d\d-\d\d-\d\d\b")
# A limit or a job's ask is not a measurement.
LIMIT = re.compile(r"\b(budget|never less than|at most|at least|limit|cap)\b", re.IGNORECASE)


def recorded_wall_times() -> set[str]:
    """The wall times the results pages record (`wall time: 19.6 minutes on 2 cores ...`)."""
    found = set()
    for page in RESULTS:
        found |= set(re.findall(r"wall time: (\d+(?:\.\d+)?) minutes", page.read_text()))
    return found


def quoted_times(text: str):
    """(number, sentence, paragraph) of every time in minutes quoted in prose (tables hold job asks)."""
    for paragraph in re.split(r"\n\s*\n", text):
        prose = " ".join(line for line in paragraph.splitlines() if not line.lstrip().startswith("|"))
        for sentence in re.split(r"(?<=[.;:])\s+(?=[A-Z(])", prose):
            for match in TIME.finditer(sentence):
                yield match.group(1), sentence, paragraph


def unrecorded(text: str, recorded: set[str]) -> list[str]:
    return [f"{number} minutes in: {sentence.strip()[:160]}"
            for number, sentence, paragraph in quoted_times(text)
            if number not in recorded and not DATE.search(paragraph) and not LIMIT.search(sentence)]


def test_every_wall_time_in_the_docs_is_recorded_or_dated():
    recorded = recorded_wall_times()
    assert recorded, "no results page records a wall time"
    problems = [f"{page.relative_to(ROOT)}: {problem}"
                for page in PAGES for problem in unrecorded(page.read_text(), recorded)]
    assert not problems, "times no results page records and no date dates:\n" + "\n".join(problems)


def test_the_check_catches_an_old_time_and_accepts_a_recorded_or_dated_one():
    recorded = {"19.6"}
    assert unrecorded("The default study runs in about 30\nminutes on 2 cores.", recorded)
    assert unrecorded("| a | b |\n\nIt took 27.6 minutes at 5959e57.", recorded)
    assert not unrecorded("The default study ran in 19.6 minutes on 2 cores.", recorded)
    assert not unrecorded("Measured on 2026-12-03 on a fresh clone: 14.6 minutes.", recorded)
    assert not unrecorded("| job | 30 min |\n\nJobs ask never less than 30 minutes.", recorded)
