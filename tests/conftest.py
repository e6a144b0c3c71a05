import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from rlheals import plan, report

ROOT = Path(__file__).resolve().parents[1]
SNAKEMAKE = Path(sys.executable).parent / "snakemake"
ONE_THREAD = ("evaluate=1", "evaluate_select=1", "evaluate_numbers=1", "svd=1", "spectrum=1", "restore=1")
WORKFLOW_PARTS = ("Snakefile", "rules", "scripts", "config", "envs", "slurm", "requirements.txt", "requirements-analysis.txt")

# The smoke study's figures, and what an SFT change reruns downstream on the smoke config: 3 RL runs from
# sft-6 (grpo, ppo, control); the evaluation of 4 SFT checkpoints, 6 RL models and 3 edits, and the
# numbers-only probe of the first 10; the SVD of every compared model but the base; all 8 spectrum pairs;
# the 3 edits; every table and figure.
FIGURES = tuple(figure.name for figure in report.FIGURES)
AFTER_SFT = {"rl": 3, "evaluate": 4 + 6 + 3, "evaluate_numbers": 4 + 6, "svd": 6, "spectrum": 8, "restore": 3,
             "rl_log_table": 1, "spectrum_table": 1, "accuracy_table": 1, "restoration_table": 1, "report_tables": 1,
             "checkpoints_table": 1, **{f"figure_{name}": 1 for name in FIGURES}, "all": 1}


class Workflow:
    """A copy of the workflow in a temporary directory, run with the smoke config."""

    def __init__(self, path: Path, copy: bool = True):
        self.path = path
        for part in WORKFLOW_PARTS if copy else ():
            src = ROOT / part
            (shutil.copytree if src.is_dir() else shutil.copy)(src, path / part)

    def run(self, *args, configfile="config/smoke.yaml", check=True, env=None) -> subprocess.CompletedProcess:
        # Targets before --configfile (nargs="+"). The analysis jobs take one thread each: a smoke job is
        # mostly process start-up, so two of them side by side finish the study a third sooner (measured:
        # 126 s -> 82 s); models and evaluations are the same bytes, SVDs differ in the last bits.
        files = [configfile] if isinstance(configfile, str) else list(configfile)  # overlays after the first
        cmd = [str(SNAKEMAKE), *args, "--cores", "2", "--set-threads", *ONE_THREAD, "--configfile", *files]
        proc = subprocess.run(cmd, cwd=self.path, capture_output=True, text=True, env=env)
        if check and proc.returncode != 0:
            raise AssertionError(f"{' '.join(cmd)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
        return proc

    def dry_run_jobs(self, *args, configfile="config/smoke.yaml", env=None) -> dict[str, int]:
        """Rule name -> number of jobs a dry run would run."""
        out = self.run(*args, "-n", "--quiet", "rules", configfile=configfile, env=env)  # targets first
        return plan.job_counts(out.stdout)

    def assert_complete(self, what: str, env=None) -> None:
        """A dry run plans no job: every output is there and up to date (times, params, code, metadata)."""
        jobs = self.dry_run_jobs(env=env)
        if jobs:
            why = self.run("-n", env=env).stdout  # with each job's reason
            raise AssertionError(f"{what} is not complete: a dry run plans {jobs}\n{why[-4000:]}")

    def write_config(self, name: str, text: str) -> str:
        (self.path / "config" / name).write_text(text)
        return f"config/{name}"


@pytest.fixture(scope="session", autouse=True)
def session_environment() -> dict[str, str]:
    """The environment as the session began, which every snakemake run of the tests inherits."""
    return dict(os.environ)


@pytest.fixture(autouse=True)
def no_environment_leaks(session_environment):
    """What a test sets in os.environ ends with it. A variable set in the test process reaches every later
    snakemake job, and some change the numbers (TRANSFORMERS_SDPA_FORCE_GQA=1 sends training down another
    attention path: other weights). Without this, a study built before such a test and one built after it
    would differ, and so the shared smoke study would differ from a rebuild. The
    fixtures that build shared studies also pass the session's environment explicitly."""
    yield
    for key in set(os.environ) - set(session_environment):
        del os.environ[key]
    for key, value in session_environment.items():
        if os.environ.get(key) != value:
            os.environ[key] = value


@pytest.fixture
def workflow(tmp_path) -> Workflow:
    return Workflow(tmp_path)


@pytest.fixture(scope="session")
def smoke_study(tmp_path_factory, session_environment) -> Workflow:
    """The whole smoke study, run once per session on first use (about 2 minutes on 2 cores). Never changed:
    a test that needs a finished study takes its own copy (`finished_study`, `copy_of_smoke_study`)."""
    study = Workflow(tmp_path_factory.mktemp("smoke-study"))
    study.run(env=session_environment)
    study.assert_complete("the smoke study", env=session_environment)
    return study


@pytest.fixture(scope="session")
def copy_of_smoke_study(smoke_study, tmp_path_factory):
    """Makes a copy of the finished smoke study: results, logs, benchmarks, snakemake's metadata (keyed by
    relative output paths) and the workflow sources it ran with (not the tree's: those may be newer than
    the outputs, as in a fresh clone or after an edit, and a script newer than its outputs reruns them),
    every file and folder with its times (copy2). So the copy is as complete as the original: a dry run
    plans nothing, which is checked here (a copy that would rebuild fails loudly, not silently)."""

    def copy() -> Workflow:
        path = tmp_path_factory.mktemp("finished-smoke-study")
        shutil.copytree(smoke_study.path, path, symlinks=True, dirs_exist_ok=True,
                        ignore=lambda folder, names: {"locks"} & set(names) if Path(folder).name == ".snakemake" else ())
        study = Workflow(path, copy=False)
        study.assert_complete(f"the copy of the smoke study in {path}")
        return study

    return copy


@pytest.fixture
def finished_study(copy_of_smoke_study) -> Workflow:
    """This test's own copy of the finished smoke study: it may change anything in it."""
    return copy_of_smoke_study()


@pytest.fixture(scope="session")
def smoke_sft_from_scratch(tmp_path_factory, session_environment) -> Workflow:
    """The smoke config's data, base model and SFT checkpoints made again from nothing, in another directory,
    to compare with the smoke study's (same config and seeds: byte-identical)."""
    again = Workflow(tmp_path_factory.mktemp("smoke-sft-from-scratch"))
    again.run("results/data/manifest.json", "results/tables/sft_log.parquet", env=session_environment)
    return again


# Tests whose answers come from floating-point kernels (SVDs, angles, training steps, decoding): CI runs
# them again on one thread with torch's portable kernels, because BLAS and thread counts round
# differently, and a test that holds on one machine must hold on every machine.
NUMERIC = ("test_spectrum.py", "test_rl.py", "test_evaluate.py", "test_launch.py", "test_sft.py",
           "test_decoding.py", "test_models.py")


STUDIES = {"workflow", "smoke_study", "copy_of_smoke_study", "finished_study", "smoke_sft_from_scratch"}


def pytest_collection_modifyitems(items):
    for item in items:  # the workflow runs are covered by the first pass: their jobs take one thread each
        if item.path.name in NUMERIC and not STUDIES & set(item.fixturenames):
            item.add_marker(pytest.mark.numeric)
