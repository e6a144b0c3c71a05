"""Logging and atomic file writes for the rule scripts."""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Callable
from pathlib import Path


def setup(log_path: str | Path, name: str = "rlheals") -> logging.Logger:
    """Log to the rule's log file and to stderr (so progress shows in the snakemake output)."""
    Path(log_path).parent.mkdir(parents=True, exist_ok=True)
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(message)s",
        handlers=[logging.FileHandler(log_path, mode="w"), logging.StreamHandler(sys.stderr)],
        force=True,
    )
    logger = logging.getLogger(name)

    def log_uncaught(kind, err, tb):  # the job's log names what failed, not only snakemake's stderr
        logger.error("failed: %s: %s", kind.__name__, err, exc_info=(kind, err, tb))

    sys.excepthook = log_uncaught
    return logger


def write_atomic(path: str | Path, write: Callable[[Path], object]) -> None:
    """`write(tmp)` then rename to `path`: a killed job never leaves a file that looks complete."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    write(tmp)
    tmp.replace(path)


def write_json_atomic(obj, path: str | Path) -> None:
    write_atomic(path, lambda tmp: tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n"))
