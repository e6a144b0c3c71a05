"""Logging, atomic file writes with clear errors for the rule scripts, and the fault-injection hook."""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import shutil
import signal
import sys
from collections.abc import Callable, Iterator
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
