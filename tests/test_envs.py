"""The software environments: the conda env files (written out from requirements*.txt), the torch build that
tasks.py installs, the package's declared dependencies and citation, and how a job in a conda env imports
the package."""

import importlib.util
import json
import subprocess
import sys
import tomllib
from importlib import metadata
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
ENV_REQUIREMENTS = {"train": "requirements.txt", "analysis": "requirements-analysis.txt"}
TRAINERS = {"trl", "accelerate", "datasets", "deepspeed"}


def load_tasks():
    """A fresh copy of tasks.py as a module (it is a script, not part of the package)."""
    spec = importlib.util.spec_from_file_location("tasks_under_test", ROOT / "tasks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def read_pins(path: Path) -> list[str]:
    """The requirements of a requirements file with its -r includes, read independently of tasks.py."""
    out = []
    for line in path.read_text().splitlines():
        line = line.split("#")[0].strip()
        if line.startswith("-r"):
            out += read_pins(path.parent / line[2:].strip())
        elif line:
            out.append(line)
    return out


def env_pip_section(name: str) -> tuple[list[str], list[str]]:
    env = yaml.safe_load((ROOT / "envs" / f"{name}.yaml").read_text())
    conda = [d for d in env["dependencies"] if isinstance(d, str)]
    (pip,) = [d["pip"] for d in env["dependencies"] if isinstance(d, dict)]
    return conda, pip


@pytest.mark.parametrize("name", ENV_REQUIREMENTS)
def test_env_file_is_self_contained(name):
    """Snakemake copies an env file into .snakemake/conda/ and hashes its text: every package must be
    a pin written in the file, with no -r, -e, option, path or URL that would point elsewhere."""
    conda, pip = env_pip_section(name)
    assert "pip" in conda and any(d.startswith("python=") for d in conda)
    assert pip, f"envs/{name}.yaml installs nothing with pip"
    for entry in pip:
        assert not entry.startswith("-"), f"envs/{name}.yaml: {entry!r} is an option, not a pin"
        assert "/" not in entry and "\\" not in entry and not entry.startswith("."), (name, entry)
        req = Requirement(entry)
        assert req.url is None and not req.marker, (name, entry)
        assert [spec.operator for spec in req.specifier] == ["=="], f"envs/{name}.yaml: {entry!r} unpinned"


@pytest.mark.parametrize("name", ENV_REQUIREMENTS)
def test_env_file_holds_the_pins_of_its_requirements(name):
    _, pip = env_pip_section(name)
    assert pip == read_pins(ROOT / ENV_REQUIREMENTS[name])


def test_env_files_are_what_tasks_envs_writes(tmp_path, monkeypatch):
    """`python3 tasks.py envs` is the one way the env files change: run on the repository it rewrites
    nothing, and run on a changed pin it writes the change."""
    tasks = load_tasks()
    for name in ENV_REQUIREMENTS:
        assert tasks.env_text(name) == (ROOT / "envs" / f"{name}.yaml").read_text(), (
            f"envs/{name}.yaml differs from {ENV_REQUIREMENTS[name]}: run `python3 tasks.py envs`"
        )
    for part in ("requirements.txt", "requirements-analysis.txt"):
        (tmp_path / part).write_text((ROOT / part).read_text())
    (tmp_path / "envs").mkdir()
    analysis = tmp_path / "requirements-analysis.txt"
    analysis.write_text(analysis.read_text().replace("polars==2.1.0", "polars==2.1.1"))
    monkeypatch.setattr(tasks, "ROOT", tmp_path)
    assert tasks.write_envs() == 0
    for name in ENV_REQUIREMENTS:
        _, before = env_pip_section(name)
        after = yaml.safe_load((tmp_path / "envs" / f"{name}.yaml").read_text())["dependencies"][-1]["pip"]
        assert after == [p.replace("polars==2.1.0", "polars==2.1.1") for p in before]


def test_analysis_env_has_no_trainers_and_train_env_has_everything():
    analysis = {canonicalize_name(Requirement(p).name) for p in env_pip_section("analysis")[1]}
    train = {canonicalize_name(Requirement(p).name) for p in env_pip_section("train")[1]}
    assert not analysis & TRAINERS
    assert analysis < train and TRAINERS <= train and "tensorboard" in train


def test_a_requirements_file_with_an_option_is_refused(tmp_path):
    (tmp_path / "requirements.txt").write_text("torch==2.13.0\n-e ..\n")
    with pytest.raises(SystemExit, match=r"requirements.txt, line 2: '-e \.\.'"):
        load_tasks().pins(tmp_path / "requirements.txt")


def install_commands(monkeypatch, tmp_path, index: str | None) -> list[list[str]]:
    """The pip commands tasks.py runs to build a venv, recorded instead of run."""
    tasks = load_tasks()
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "python").touch()
    calls = []
    monkeypatch.setattr(tasks, "VENV", tmp_path)
    monkeypatch.setattr(tasks, "BIN", tmp_path / "bin")
    monkeypatch.setattr(tasks, "run", lambda *cmd: calls.append([str(c) for c in cmd]))
    if index is None:
        monkeypatch.delenv("RLHEALS_TORCH_INDEX", raising=False)
    else:
        monkeypatch.setenv("RLHEALS_TORCH_INDEX", index)
    tasks.ensure_venv(dev=False)
    return calls


def test_torch_alone_comes_from_the_chosen_index(monkeypatch, tmp_path):
    cpu = "https://download.pytorch.org/whl/cpu"
    (torch_pin,) = [p for p in read_pins(ROOT / "requirements-analysis.txt") if p.startswith("torch==")]
    first, *rest = install_commands(monkeypatch, tmp_path, cpu)
    assert first[-3:] == ["--index-url", cpu, torch_pin]
    assert rest[0][-2:] == ["-r", str(ROOT / "requirements.txt")]
    assert rest[-1][-3:] == ["--no-deps", "-e", str(ROOT)]
    assert not any("--index-url" in cmd for cmd in rest)


def test_without_a_torch_index_pip_configuration_decides(monkeypatch, tmp_path):
    calls = install_commands(monkeypatch, tmp_path, None)
    assert calls[0][-1].startswith("torch==") and calls[0][-2] == "-q"
    assert not any("--index-url" in cmd for cmd in calls)


@pytest.mark.parametrize("index", ["", "cpu", "download.pytorch.org/whl/cpu"])
def test_a_torch_index_that_is_no_url_is_refused_before_installing(monkeypatch, tmp_path, index):
    with pytest.raises(SystemExit, match=f"RLHEALS_TORCH_INDEX={index!r} is not an index URL"):
        install_commands(monkeypatch, tmp_path, index)
    assert not (tmp_path / ".installed-run").exists()


def test_declared_dependencies_are_ranges_that_admit_the_pins():
    """pyproject.toml declares ranges (what the code works with); requirements*.txt pin what is tested.
    Every pinned package is declared, every range admits its pin (or the installed version of what is
    not pinned), and no range is itself a pin."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    core = [Requirement(r) for r in project["dependencies"]]
    declared = core + [Requirement(r) for extra in project["optional-dependencies"].values() for r in extra]
    pins = {canonicalize_name(r.name): r for r in map(Requirement, read_pins(ROOT / "requirements-dev.txt"))}
    names = {canonicalize_name(r.name) for r in declared}
    assert set(pins) <= names, f"pinned but not declared in pyproject.toml: {set(pins) - names}"
    for req in declared:
        assert {spec.operator for spec in req.specifier} == {">=", "<"}, f"{req} is not a range"
        pin = pins.get(canonicalize_name(req.name))
        version = next(iter(pin.specifier)).version if pin else metadata.version(req.name)
        assert req.specifier.contains(version), f"pyproject.toml: {req} excludes {version}"
    # The library's own imports, needed by every stage, are the core; the trainers are an extra.
    analysis = {canonicalize_name(Requirement(p).name) for p in read_pins(ROOT / "requirements-analysis.txt")}
    assert analysis <= {canonicalize_name(r.name) for r in core}
    assert not TRAINERS & {canonicalize_name(r.name) for r in core}


def test_licence_and_citation_agree():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    cff = yaml.safe_load((ROOT / "CITATION.cff").read_text())
    assert project["license"] == cff["license"] == "MIT"
    assert (ROOT / "LICENSE").read_text().startswith("MIT License")
    assert cff["version"] == project["version"] and cff["cff-version"] == "1.2.0"
    papers = " ".join((ROOT / "docs" / "papers.md").read_text().split())
    arxiv = {ref["identifiers"][0]["value"]: ref for ref in cff["references"]}
    assert set(arxiv) == {"arXiv:2509.12235", "arXiv:2508.16546", "arXiv:2507.10616"}
    for ident, ref in arxiv.items():
        assert ident.removeprefix("arXiv:") in papers and ref["title"].split(":")[0] in papers
        assert ref["url"] in project["urls"].values()


STUB_CONDA = """#!{python}
# Enough of conda for snakemake --sdm conda: `env create` makes an empty venv (no package at all).
import json, sys, venv
args = sys.argv[1:]
if args == ["--version"]:
    print("conda 24.11.0")
elif args[:2] == ["info", "--json"]:
    print(json.dumps({{"conda_prefix": "{prefix}", "platform": "linux-64"}}))
elif args[:2] == ["config", "--get"]:
    print(json.dumps({{"get": {{"channel_priority": "strict"}}}}))
elif args[:2] == ["env", "create"]:
    venv.create(args[args.index("--prefix") + 1].strip('"'), with_pip=False)
elif args[:1] != ["clean"]:
    sys.exit(f"stub conda: {{args}}")
"""

JOB = """
import rlheals


rule job:
    output:
        "where.json",
    conda:
        "env.yaml"
    script:
        "job.py"
"""

JOB_SCRIPT = """import json, sys
import rlheals
json.dump({"python": sys.executable, "rlheals": rlheals.__file__}, open(snakemake.output[0], "w"))
"""


def test_a_job_in_a_conda_env_imports_the_package_without_installing_it(tmp_path):
    """A rule's script runs with its conda env's Python, in which the package is not installed: snakemake
    hands every script the search path of the snakemake process, which imports the package itself (the
    Snakefile does). A stand-in conda makes the env an empty venv, so only that path can provide it."""
    conda = tmp_path / "conda"
    (conda / "bin").mkdir(parents=True)
    stub = conda / "bin" / "conda"
    stub.write_text(STUB_CONDA.format(python=sys.executable, prefix=conda))
    stub.chmod(0o755)
    (conda / "bin" / "activate").write_text('export PATH="$1/bin:$PATH"\n')
    (tmp_path / "Snakefile").write_text(JOB)
    (tmp_path / "job.py").write_text(JOB_SCRIPT)
    (tmp_path / "env.yaml").write_text((ROOT / "envs" / "analysis.yaml").read_text())
    snakemake = Path(sys.executable).parent / "snakemake"
    env = {"PATH": f"{conda / 'bin'}:/usr/bin:/bin", "HOME": str(tmp_path)}
    proc = subprocess.run([str(snakemake), "--sdm", "conda", "--cores", "1"], cwd=tmp_path, env=env,
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    where = json.loads((tmp_path / "where.json").read_text())
    (env_dir,) = [p for p in (tmp_path / ".snakemake" / "conda").iterdir() if p.is_dir()]
    assert Path(where["python"]).parent == env_dir / "bin"
    assert Path(where["rlheals"]).resolve() == (ROOT / "src" / "rlheals" / "__init__.py").resolve()
    alone = subprocess.run([str(env_dir / "bin" / "python"), "-c", "import rlheals"], cwd=tmp_path, env=env)
    assert alone.returncode != 0, "the env's Python finds the package by itself: the test proves nothing"
