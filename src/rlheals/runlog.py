"""Logging, progress lines with an ETA, experiment tracking (TensorBoard), atomic file writes with clear
errors for the rule scripts, and the fault-injection hook."""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import shutil
import signal
import sys
import time
from collections.abc import Callable, Iterator, Mapping
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


def duration(seconds: float) -> str:
    """A duration for a log line: 42s, 5m30s, 2h05m."""
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds // 60 % 60:02d}m"


class Progress:
    """Progress lines of a long loop in its job log, for the training loops and evaluation alike:
    `sft: step 120/800 (15%), 2.1 steps/s, ETA 5m30s`. A line is written at the first update, then at
    most every `every` seconds, and at the last: log files stay readable, unlike a progress bar's.

    `done` counts from `start` (a resumed run's steps before the kill are not timed); the rate is that of
    this process since it began. `clock` is for the tests."""

    def __init__(self, label: str, total: int, log: Callable[[str], object], *, unit: str = "step",
                 start: int = 0, every: float = 30.0, clock: Callable[[], float] = time.monotonic):
        self.label, self.total, self.log, self.unit = label, total, log, unit
        self.start, self.every, self.clock = start, every, clock
        self.began = clock()
        self.last: float | None = None

    def line(self, done: int, total: int | None = None, note: str = "") -> str:
        total = self.total if total is None else total
        elapsed, counted = self.clock() - self.began, done - self.start
        text = f"{self.label}: {self.unit} {done}/{total} ({100 * done // max(total, 1)}%)"
        if counted > 0 and elapsed > 0:
            rate = counted / elapsed
            speed = f"{rate:.3g} {self.unit}s/s" if rate >= 1 else f"{1 / rate:.3g} s/{self.unit}"
            text += f", {speed}, ETA {duration((total - done) / rate)}"
        return text + (f", {note}" if note else "")

    def update(self, done: int, total: int | None = None, note: str = "") -> bool:
        """Log `done` of `total` (the loop's, unless given) when a line is due; whether one was written.
        `note`: more to say on the line (a loss)."""
        now, last = self.clock(), done >= (self.total if total is None else total)
        if self.last is not None and now - self.last < self.every and not last:
            return False
        self.last = now
        self.log(self.line(done, total, note))
        return True


TRACKING = ("none", "tensorboard")
TRACKING_ROOT = Path("logs/tensorboard")


def tracking_dir(mode: str, log_path: str | Path) -> Path | None:
    """Where a job writes its TensorBoard event files, from the config key `tracking` and the job's log:
    logs/rl/ppo-6.log -> logs/tensorboard/rl/ppo-6; None when tracking is off."""
    if mode not in TRACKING:
        raise ValueError(f"config key tracking: {mode!r} is not one of {list(TRACKING)}")
    if mode == "none":
        return None
    log_path = Path(log_path)
    parts = log_path.with_suffix("").parts
    return TRACKING_ROOT.joinpath(*(parts[1:] if parts[0] == "logs" and len(parts) > 1 else parts))


def start_tracking(directory: str | Path | None, fresh: bool) -> None:
    """Before a job writes events into `directory`: a clear error when the tensorboard package is missing;
    with `fresh` (a run that starts over, not one resumed) an earlier run's events removed, so its curves
    are not drawn over a stale run's."""
    import importlib.util

    if directory is None:
        return
    if importlib.util.find_spec("tensorboard") is None:
        raise ModuleNotFoundError("config key tracking: tensorboard needs the tensorboard package, which "
                                  "is not installed in this environment (pip install tensorboard); "
                                  "or set tracking: none")
    if fresh:
        shutil.rmtree(directory, ignore_errors=True)


class Tracker:
    """Scalars written as TensorBoard events into `directory` for a live view (`tensorboard --logdir
    logs/tensorboard`); with no directory, nothing. `fresh`: see `start_tracking`."""

    def __init__(self, directory: str | Path | None, fresh: bool = False):
        self.writer = None
        if directory is None:
            return
        start_tracking(directory, fresh)
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(directory))

    def scalars(self, step: int, values: Mapping[str, object], prefix: str = "") -> None:
        """Every number of `values` (booleans, text and missing values are left out) at `step`."""
        if self.writer is None:
            return
        for key, value in values.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool) and value == value:
                self.writer.add_scalar(prefix + key, value, step)
        self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


class WriteError(OSError):
    """A write that failed for a reason the user must fix (full disk, read-only or forbidden directory);
    its message names the path and the cause."""


CAUSES = {
    errno.ENOSPC: "the disk is full",
    errno.EDQUOT: "the disk quota is exceeded",
    errno.EROFS: "the file system is read-only",
    errno.EACCES: "permission denied",
    errno.EPERM: "permission denied",
}
FULL_BELOW = 1 << 20  # bytes free on the file system below which a failed write is put down to a full disk


def _errno_of(err: BaseException, where: Path) -> int | None:
    """The cause of a failed write as an errno: from the exception chain, from the text libraries wrap
    it in (polars and safetensors say "(os error 28)"; torch.save only "unexpected pos"), else from the
    file system itself (read-only flag, no space left)."""
    chain, seen = [], err
    while seen is not None and len(chain) < 10:
        chain.append(seen)
        seen = seen.__cause__ or seen.__context__
    for e in chain:
        if getattr(e, "errno", None) in CAUSES:
            return e.errno
    text = " ".join(str(e) for e in chain)
    for code in CAUSES:
        if f"os error {code})" in text or os.strerror(code) in text:
            return code
    folder = where
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    try:
        stat = os.statvfs(folder)
    except OSError:
        return None
    if stat.f_flag & os.ST_RDONLY:
        return errno.EROFS
    if stat.f_bavail * stat.f_frsize < FULL_BELOW:
        return errno.ENOSPC
    return None


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(OSError):  # a read-only file system refuses even a missing file's unlink
            path.unlink(missing_ok=True)


@contextlib.contextmanager
def writing(path: str | Path, tmp: str | Path | None = None) -> Iterator[None]:
    """Around a write of `path` (through `tmp`, a file or directory): when it fails, `tmp` is removed,
    and a full disk, a read-only or a forbidden directory becomes a WriteError naming the path and the
    cause (the original error chained)."""
    path = Path(path)
    try:
        yield
    except BaseException as err:  # a kill or Ctrl-C too: the temp output goes either way
        known = isinstance(err, WriteError) or not isinstance(err, Exception)
        code = None if known else _errno_of(err, Path(tmp or path))  # before removing tmp frees space
        if tmp is not None:
            _remove(Path(tmp))
        if code is None:
            raise
        raise WriteError(code, f"cannot write {path}: {CAUSES[code]} ({type(err).__name__}: {err})") from err


def write_atomic(path: str | Path, write: Callable[[Path], object]) -> None:
    """`write(tmp)`, flushed to disk, then renamed to `path`: a killed job never leaves a file that looks
    complete, and a failed write leaves no temp file and says why (see `writing`)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with writing(path, tmp):
        path.parent.mkdir(parents=True, exist_ok=True)
        write(tmp)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        tmp.replace(path)


def write_json_atomic(obj, path: str | Path) -> None:
    write_atomic(path, lambda tmp: tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n"))


FAULT_ENV = "RLHEALS_FAULT_AFTER_STEP"


def fault_point(step: int) -> None:
    """Fault injection for tests/test_faults.py and benchmarks/reliability.py, called by the SFT and RL
    loops at the end of every training step (before that step's checkpoint): with RLHEALS_FAULT_AFTER_STEP=N
    the job SIGKILLs itself after step N, and with RLHEALS_FAULT_GROUP=1 its whole process group (snakemake
    too, when it runs in a session of its own, as a lost node would). Unset, it does nothing."""
    if os.environ.get(FAULT_ENV) == str(step):
        os.killpg(0, signal.SIGKILL) if os.environ.get("RLHEALS_FAULT_GROUP") else os.kill(os.getpid(), signal.SIGKILL)
