"""The SLURM profile (slurm/config.yaml), through the real submit path of snakemake-executor-plugin-slurm.

Stub `sbatch`, `sacct`, `squeue`, `sacctmgr`, `scontrol`, `sinfo` and `srun` on PATH play a one-node cluster:
sbatch records its arguments and runs the job's wrapped command at once (the plugin's jobstep snakemake,
which calls srun, which runs the rule), then prints the job id as `sbatch --parsable` does; sacct reports
the state the job ended in. A job can be made to hit its time limit once (state TIMEOUT, never run) to
see the profile's retry ask for more time, and jobs too big for this machine are refused by sbatch after
their arguments are recorded.
"""

import json
import os
import shlex
import stat
import subprocess
import sys
from pathlib import Path

import pytest

import families
from conftest import ROOT, SNAKEMAKE
from rlheals import config as config_files
from rlheals import costs, resources

STUBS = {
    "sbatch": r'''
"""Stub sbatch: record the call, run the job's --wrap command as the job, print the id (--parsable).

STUB_TIMEOUT_ONCE=<comment prefix>: the first matching job ends TIMEOUT without running.
STUB_REJECT=<rule,rule>: sbatch refuses jobs of these rules, as a cluster does when no node fits them."""
import json, os, subprocess, sys
from pathlib import Path

state = Path(os.environ["STUB_SLURM_DIR"])
args = sys.argv[1:]


def option(*names):
    for i, arg in enumerate(args):
        for name in names:
            if arg == name:
                return args[i + 1]
            if name.startswith("--") and arg.startswith(name + "="):
                return arg[len(name) + 1 :]
    return None


def claim(path):
    """Create `path` unless it exists; True if this call created it (atomic across processes)."""
    try:
        os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        return True
    except FileExistsError:
        return False


(state / "jobs").mkdir(exist_ok=True)
(state / "sbatch").mkdir(exist_ok=True)
jobid = 1000
while not claim(state / "jobs" / str(jobid)):  # the plugin submits from two threads
    jobid += 1
comment = option("--comment")
rule = comment.split("_wildcards_")[0].removeprefix("rule_")
(state / "sbatch" / f"{jobid}.json").write_text(json.dumps({"jobid": jobid, "rule": rule, "argv": args}))
if rule in os.environ.get("STUB_REJECT", "").split(","):
    (state / "jobs" / str(jobid)).write_text("REJECTED")  # never queued: sacct does not list it
    sys.exit("sbatch: error: Batch job submission failed: Requested node configuration is not available")

once = os.environ.get("STUB_TIMEOUT_ONCE")
if once and comment.startswith(once) and claim(state / "timed_out"):
    result = "TIMEOUT"  # as if the job hit its time limit before writing anything
else:
    env = {**os.environ, "SLURM_JOB_ID": str(jobid), "SLURM_JOBID": str(jobid)}
    if option("--gpus"):
        env["SLURM_GPUS"] = option("--gpus").rsplit(":", 1)[-1]
    log = Path(option("--output").replace("%j", str(jobid)))
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as out:
        code = subprocess.run(["/bin/sh", "-c", option("--wrap")], cwd=option("-D"), env=env, stdout=out,
                              stderr=subprocess.STDOUT).returncode
    result = "COMPLETED" if code == 0 else "FAILED"
tmp = state / "jobs" / f"{jobid}.tmp"
tmp.write_text(result)
tmp.rename(state / "jobs" / str(jobid))  # sacct never reads a half-written state
print(jobid)
''',
    "sacct": r'''
"""Stub sacct: job states (the status query), a failed step's reason, the account of recent jobs."""
import os, sys
from pathlib import Path

state = Path(os.environ["STUB_SLURM_DIR"])
args = sys.argv[1:]
if "-j" in args:  # sacct -j ID.STEP --format=Reason --noheader
    jobid, _, step = args[args.index("-j") + 1].partition(".")
    if step == "0" and (state / "jobs" / jobid).read_text() == "TIMEOUT":
        print("TimeLimit")
elif "--format=JobIdRaw,State" in args:  # the plugin's status query
    for job in sorted((state / "jobs").iterdir()):
        if job.name.isdigit() and job.read_text() != "REJECTED":
            print(f"{job.name}|{job.read_text() or 'RUNNING'}")
else:  # sacct -nu USER -o Account%256: the account guessed when none is given
    print(os.environ.get("STUB_RECENT_ACCOUNT", ""))
''',
    "sacctmgr": r'''
"""Stub sacctmgr: the accounts of the user (the plugin validates the account against them)."""
import os
print("\n".join(os.environ.get("STUB_ACCOUNTS", "").split()))
''',
    "squeue": r'''
"""Stub squeue: nothing queued (the plugin asks sacct when sacct exists)."""
''',
    "scontrol": r'''
"""Stub scontrol show config."""
print("MinJobAge               = 300 sec")
print("MaxArraySize            = 1001")
''',
    "sinfo": r'''
"""Stub sinfo -o %P: partitions, the default marked with *."""
print("PARTITION")
print("cpu*")
print("gpu")
''',
    "srun": r'''
"""Stub srun: record the job step's options, then run its command."""
import json, os, sys
from pathlib import Path

state = Path(os.environ["STUB_SLURM_DIR"])
args = sys.argv[1:]
first = next(i for i, arg in enumerate(args) if not arg.startswith("-"))
(state / "srun").mkdir(exist_ok=True)
(state / "srun" / f"{os.environ['SLURM_JOB_ID']}.json").write_text(json.dumps(args[:first]))
os.execvp(args[first], args[first:])
''',
}


# Nothing of the caller's own cluster settings may leak into a test.
SITE_VARIABLES = ("SLURM_", "SBATCH_", "SRUN_", "RLHEALS_", "SNAKEMAKE_PROFILE")


def write_stubs(bin_dir: Path) -> None:
    bin_dir.mkdir()
    for name, body in STUBS.items():
        path = bin_dir / name
        path.write_text(f"#!{sys.executable}\n{body.lstrip()}")
        path.chmod(path.stat().st_mode | stat.S_IXUSR)


def sbatch_options(argv: list[str]) -> dict:
    """`-A x`, `-t 60`, `--mem 4000`, `--cpus-per-task=8`, `--gpus=a100:8` ... as {option: value}."""
    out, i = {}, 0
    while i < len(argv):
        arg = argv[i]
        if arg.startswith("--") and "=" in arg:
            key, value = arg.split("=", 1)
            out[key] = value
        elif arg.startswith("-") and i + 1 < len(argv) and not argv[i + 1].startswith("-"):
            out[arg] = argv[i + 1]
            i += 1
        else:
            out[arg] = True
        i += 1
    return out


class Cluster:
    """The stub cluster: its PATH and environment, and what it saw (every sbatch call and srun step)."""

    def __init__(self, state: Path):
        self.state = state
        write_stubs(state / "bin")
        self.env = {k: v for k, v in os.environ.items() if not k.startswith(SITE_VARIABLES)}
        self.env |= {"PATH": f"{state / 'bin'}{os.pathsep}{os.environ['PATH']}", "STUB_SLURM_DIR": str(state)}

    def submissions(self, rule: str) -> list[dict]:
        """sbatch calls of one rule in submission order: parsed options, the end state, the wrapped command."""
        calls = sorted(
            (json.loads(p.read_text()) for p in (self.state / "sbatch").glob("*.json")),
            key=lambda c: c["jobid"],
        )
        return [
            {
                **sbatch_options(c["argv"]),
                "jobid": c["jobid"],
                "state": (self.state / "jobs" / str(c["jobid"])).read_text(),
            }
            for c in calls
            if c["rule"] == rule
        ]

    def srun(self, jobid: int) -> dict:
        return sbatch_options(json.loads((self.state / "srun" / f"{jobid}.json").read_text()))


@pytest.fixture
def cluster(tmp_path_factory) -> Cluster:
    return Cluster(tmp_path_factory.mktemp("slurm"))


def run_profile(workflow, cluster, *args, env=None, check=True, configfile="config/smoke.yaml") -> subprocess.CompletedProcess:
    """`snakemake --profile slurm` as a user runs it: no --cores (that would cap every job's threads)."""
    # Status checks every second instead of every 40 s (a cluster setting, not the profile's business).
    cmd = [
        str(SNAKEMAKE),
        *args,
        "--profile",
        "slurm",
        "--slurm-init-seconds-before-status-checks",
        "1",
        "--configfile",
        configfile,
    ]
    proc = subprocess.run(
        cmd, cwd=workflow.path, env={**cluster.env, **(env or {})}, capture_output=True, text=True
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    return proc


def wrapped(submission: dict) -> list[str]:
    return shlex.split(submission["--wrap"])


def test_jobs_go_through_sbatch_and_srun_and_a_timed_out_job_is_retried_with_more_time(workflow, cluster):
    site = {
        "SLURM_ACCOUNT": "proj42",
        "SLURM_PARTITION": "cpu",
        "STUB_ACCOUNTS": "other proj42",
        "STUB_TIMEOUT_ONCE": "rule_data_split_wildcards_ood_test",
    }
    run_profile(workflow, cluster, "results/data/id_test.jsonl", "results/data/ood_test.jsonl", env=site)

    # The jobs really ran (sbatch -> jobstep snakemake -> srun -> the rule's script): real splits.
    for split in ("id_test", "ood_test"):
        rows = (workflow.path / f"results/data/{split}.jsonl").read_text().splitlines()
        assert len(rows) == 24 and json.loads(rows[0])["rule"] == ("id" if split == "id_test" else "ood")

    calls = cluster.submissions("data_split")
    assert len(calls) == 3  # id_test once; ood_test timed out, then retried
    for call in calls:
        # Account and partition from the environment; the account checked against sacctmgr's list.
        assert call["-A"] == "proj42" and call["-p"] == "cpu"
        assert call["--ntasks"] == "1" and call["--cpus-per-task"] == "1" and "--gpus" not in call
        assert call["--parsable"] is True and call["-D"] == str(workflow.path)
    first, retry = [c for c in calls if "split=ood_test" in c["--wrap"]]
    assert (first["state"], retry["state"]) == ("TIMEOUT", "COMPLETED")
    assert "--attempt 1" in first["--wrap"] and "--attempt 2" in retry["--wrap"]
    # default-resources: runtime 60 * attempt minutes, mem_mb 4000 * attempt.
    assert (first["-t"], first["--mem"]) == ("60", "4000")
    assert (retry["-t"], retry["--mem"]) == ("120", "8000")
    # Inside the job, the plugin's jobstep ran the rule as one srun step on the cpus sbatch granted.
    step = cluster.srun(retry["jobid"])
    assert step["-n1"] is True and step["--cpus-per-task"] == "1" and "--gpus" not in step


def fake_upstream(root: Path, paths: list[str]) -> None:
    """Stand-ins for finished upstream outputs, in DAG order: each newer than the workflow's scripts and
    than the one before, so neither the code nor the mtime trigger reruns anything upstream."""
    start = max(p.stat().st_mtime for p in root.rglob("*") if p.is_file()) + 1
    for i, path in enumerate(paths):
        target = root / path
        if path.endswith("/"):
            target.mkdir(parents=True)
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text("{}")
        os.utime(target, (start + i, start + i))


DATA = [f"results/data/{s}.jsonl" for s in ("sft_train", "rl_train", "id_test", "ood_test")]
BASE = [
    "results/data/pretrain.jsonl",
    "results/data/pretrain_manifest.json",
    "results/models/base/",
    "results/tables/pretrain.json",
]
SFT = [*(f"results/models/sft-{s}/" for s in (0, 2, 4, 6)), "results/tables/sft_log.parquet"]


def test_training_and_evaluation_jobs_ask_for_gpus_on_the_gpu_partition(workflow, cluster):
    # The paper-sized jobs go through the real submit path, but this stub cluster has no node for them:
    # sbatch records the call, then refuses it. Stand-ins for their inputs let snakemake submit them
    # without running what comes before.
    site = {
        "SLURM_PARTITION": "cpu",
        "SLURM_GPU_PARTITION": "gpu",
        "SLURM_GPU_MODEL": "a100",
        "STUB_RECENT_ACCOUNT": "guessed",
        "STUB_ACCOUNTS": "guessed",
        "STUB_REJECT": "sft,rl,evaluate,svd",
    }
    fake_upstream(workflow.path, [*DATA, *BASE])
    targets = ("results/models/sft-2", "results/eval/base.parquet", "results/svd/base.safetensors")
    proc = run_profile(workflow, cluster, *targets, "--retries", "0", env=site, check=False)
    # snakemake reports sbatch's refusal as the job's error, and stops: --retries 0 (a retry is the same ask).
    assert proc.returncode != 0 and "Requested node configuration is not available" in proc.stderr

    (sft,), (evaluate,), (svd,) = (cluster.submissions(rule) for rule in ("sft", "evaluate", "svd"))
    for call in (sft, evaluate, svd):
        assert call["-A"] == "guessed"  # SLURM_ACCOUNT unset: the plugin's guess from sacct, validated
        assert call["state"] == "REJECTED"
    # GPU jobs: the GPU partition, the GPU model, one node's GPUs for training; CPUs as set-threads says.
    assert (sft["-p"], sft["--gpus"], sft["--cpus-per-task"]) == ("gpu", "a100:8", "32")
    assert (evaluate["-p"], evaluate["--gpus"], evaluate["--cpus-per-task"]) == ("gpu", "a100:1", "8")
    # Sized from the smoke study's tiny model: the shortest runtime, and the host's overhead per rank.
    assert sft["-t"] == evaluate["-t"] == svd["-t"] == str(resources.MIN_RUNTIME)
    assert 8 * 8000 <= int(sft["--mem"]) < 8 * 8000 + 100 and 8000 <= int(evaluate["--mem"]) < 8100
    # The SVD is a CPU job on the CPU partition.
    assert (svd["-p"], svd["--cpus-per-task"], svd["--ntasks"]) == ("cpu", "16", "1") and "--gpus" not in svd
    assert 8000 <= int(svd["--mem"]) < 8100

    # RL from a finished SFT step, with RLHEALS_TRAIN_GPUS for smaller nodes and no GPU model asked for.
    fake_upstream(workflow.path, SFT)
    site |= {"RLHEALS_TRAIN_GPUS": "4", "SLURM_GPU_MODEL": ""}
    run_profile(workflow, cluster, "results/models/rl-ppo-6", "--retries", "0", env=site, check=False)
    (rl,) = cluster.submissions("rl")
    assert (rl["-p"], rl["--gpus"], rl["--cpus-per-task"]) == ("gpu", "4", "16")
    assert 4 * 8000 <= int(rl["--mem"]) < 4 * 8000 + 100  # memory for the job's 4 ranks
    assert "--target-jobs" in wrapped(rl) and "rl:rl_run=ppo-6" in wrapped(rl)


def rendered_profile(monkeypatch, env: dict) -> dict:
    """The profile as snakemake reads it (YTE-rendered) under the environment `env`."""
    import yte

    for name in os.environ:
        if name.startswith(SITE_VARIABLES):
            monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with open(ROOT / "slurm" / "config.yaml") as f:
        return yte.process_yaml(f, require_use_yte=True)


def test_profile_leaves_rerun_triggers_at_the_full_default(monkeypatch):
    profile = rendered_profile(monkeypatch, {})
    triggers = profile.get("rerun-triggers")
    # Unset, or all five: dropping one (e.g. params or code) would silently skip needed reruns.
    assert triggers is None or set(triggers.split() if isinstance(triggers, str) else triggers) == {
        "mtime",
        "params",
        "input",
        "software-env",
        "code",
    }
    assert profile["executor"] == "slurm" and profile["retries"] >= 1 and profile["rerun-incomplete"] is True


def test_unset_site_variables_leave_account_and_partition_to_the_plugin(monkeypatch):
    # An empty slurm_account would reach sbatch as `-A ''`: unset variables must drop the keys.
    bare = rendered_profile(monkeypatch, {})
    assert not {"slurm_account", "slurm_partition"} & set(bare["default-resources"])
    assert not {"slurm_partition", "gpu_model"} & set(bare["set-resources"]["sft"])
    site = rendered_profile(
        monkeypatch, {"SLURM_ACCOUNT": "p1", "SLURM_PARTITION": "cpu", "SLURM_GPU_MODEL": "h100"}
    )
    # Quoted: a resource value is a Python expression to snakemake, and p1 would be a name.
    assert site["default-resources"]["slurm_account"] == "'p1'"
    assert site["set-resources"]["sft"]["slurm_partition"] == "'cpu'"  # no GPU partition: the partition
    assert site["set-resources"]["sft"]["gpu_model"] == "'h100'"


def paper_config(name: str) -> dict:
    """A paper config as the workflow reads it: merged over config/config.yaml, defaults filled."""
    import snakemake.utils

    cfg = config_files.read(ROOT / "config" / "config.yaml", ROOT / "config" / name)
    snakemake.utils.validate(cfg, str(ROOT / "config" / "schema.yaml"))
    return cfg


def smoke_config() -> dict:
    return paper_config("smoke.yaml")


@pytest.mark.parametrize("name", ["paper-qwen2.5-7b.yaml", "paper-llama-3.2-11b.yaml"])
def test_jobs_are_sized_from_the_model_and_ask_more_on_a_retry(name, monkeypatch):
    for variable in (*resources.CAPS.values(), "RLHEALS_TRAIN_GPUS"):
        monkeypatch.delenv(variable, raising=False)
    cfg, smoke = paper_config(name), smoke_config()
    bound = costs.estimate(cfg, {"sft": 8, "rl": 8, "evaluate": 1})["rows"][(costs.REFERENCE_GPU, "bound")]
    for row in bound:  # at least twice the worst case of one job on the slower GPU
        minutes = resources.runtime(row["rule"], cfg, 1, algo=row["algo"])
        assert minutes >= max(2 * 60 * row["wall_hours_per_job"], resources.MIN_RUNTIME), (name, row["stage"])
        assert resources.runtime(row["rule"], cfg, 2, algo=row["algo"]) == 2 * minutes
    disk = costs.disk_and_svd(costs.architecture(cfg))
    assert resources.mem_mb("spectrum", cfg, 1) * 1e6 >= 2 * (disk["model_bytes"] + disk["svd_bytes"])
    for rule in resources.SIZED:
        paper, tiny = resources.mem_mb(rule, cfg, 1), resources.mem_mb(rule, smoke, 1)
        assert paper > tiny, rule  # a 7B model asks for more than the smoke study's tiny one
        # CPU jobs fail by memory and ask for more on a retry; GPU jobs keep theirs (they fail by time).
        assert resources.mem_mb(rule, cfg, 2) == (2 * paper if rule in resources.CPU_RULES else paper), rule
    assert resources.runtime("rl", cfg, 1, algo="ppo") > resources.runtime("rl", cfg, 1, algo="sft_continue")
    assert resources.runtime("svd", cfg, 1, threads=16) < resources.runtime("svd", cfg, 1, threads=1)
    monkeypatch.setenv("RLHEALS_TRAIN_GPUS", "4")  # fewer ranks hold fewer copies of the weights
    assert resources.mem_mb("sft", cfg, 1) < resources.mem_mb("evaluate", cfg, 1) * 8 and resources.gpus("rl") == 4


def test_the_partition_limits_cap_every_ask_with_a_warning(monkeypatch, capsys):
    cfg = paper_config("paper-qwen2.5-7b.yaml")
    monkeypatch.setenv("RLHEALS_MAX_RUNTIME", "600")
    monkeypatch.setenv("RLHEALS_MAX_MEM_MB", "100000")
    assert resources.runtime("rl", cfg, 3, algo="ppo") == 600 and resources.mem_mb("restore", cfg, 1) == 100000
    assert resources.mem_mb("evaluate", cfg, 1) < 100000  # an ask under the cap is left as it is
    warned = capsys.readouterr().err
    assert "a rl job would ask for" in warned and "RLHEALS_MAX_RUNTIME=600 caps it" in warned
    assert "RLHEALS_MAX_MEM_MB=100000" in warned
    monkeypatch.setenv("RLHEALS_MAX_MEM_MB", "100G")
    with pytest.raises(ValueError, match="RLHEALS_MAX_MEM_MB='100G': expected a positive whole number"):
        resources.mem_mb("svd", cfg, 1)


def test_the_profile_gives_training_jobs_the_gpus_the_rules_size_them_for(monkeypatch):
    for gpus in ("8", "2"):
        profile = rendered_profile(monkeypatch, {"RLHEALS_TRAIN_GPUS": gpus})
        assert profile["set-resources"]["sft"]["gpu"] == profile["set-resources"]["rl"]["gpu"] == int(gpus)
        assert resources.gpus("sft") == resources.gpus("rl") == int(gpus) and resources.gpus("evaluate") == 1
        # The sized rules' memory and runtime are the rules' own: the profile does not override them.
        assert not {"mem_mb", "runtime"} & {k for r in resources.SIZED for k in profile["set-resources"].get(r, {})}


def stand_in(path: Path, name: str = "Qwen2.5-7B-Instruct") -> Path:
    """A tiny Qwen2.5 checkpoint (tests/families.py) whose config.json carries the published shape of
    `name`: it passes the checks a local model meets before any job (files, tokenizer, chat template,
    positions), and the jobs are sized as for the real model, which is not on this machine."""
    model = families.write("qwen25", path / name)
    arch = costs.ARCHITECTURES[name]
    shape = dict(hidden_size=arch["hidden"], intermediate_size=arch["intermediate"],
                 num_hidden_layers=arch["layers"], num_attention_heads=arch["heads"],
                 num_key_value_heads=arch["kv_heads"], vocab_size=arch["vocab"], max_position_embeddings=32768,
                 layer_types=["full_attention"] * arch["layers"])
    config = json.loads((model / "config.json").read_text())
    (model / "config.json").write_text(json.dumps({**config, **shape}))
    return model


def local_model(path: Path) -> list[str]:
    """The --config arguments that point the study at the local model in `path`, as docs/cluster.md does."""
    return ["--config", "model=" + json.dumps({"source": "local", "local_path": str(path)})]


def dry_run_asks(text: str) -> dict[str, list[dict]]:
    """The resources each job of a dry run's listing shows, by rule: [{"mem_mb": ..., "runtime": ...}]."""
    asks: dict[str, list[dict]] = {}
    for block in text.split("\n\n"):
        rule = next((line.split()[-1].rstrip(":") for line in block.splitlines()
                     if line.startswith(("rule ", "checkpoint ")) and line.endswith(":")), None)
        lines = [line.strip() for line in block.splitlines()]
        shown = next((line.split(":", 1)[1] for line in lines if line.startswith("resources:")), None)
        if rule and shown:
            pairs = dict(item.strip().split("=", 1) for item in shown.split(","))
            asks.setdefault(rule, []).append({k: int(pairs[k]) for k in ("mem_mb", "runtime") if k in pairs})
    return asks


def test_a_paper_config_reaches_sbatch_with_its_sizes_capped_by_the_partition(workflow, cluster, tmp_path):
    # The paper config through the real submit path: stand-ins for the data and the imported base model,
    # and for the local model a tiny one with the published shape (which sizes the jobs).
    site = {"SLURM_PARTITION": "cpu", "SLURM_GPU_PARTITION": "gpu", "STUB_REJECT": "sft,evaluate,svd",
            "RLHEALS_MAX_RUNTIME": "2880", "RLHEALS_MAX_MEM_MB": "1000000"}
    model = local_model(stand_in(tmp_path))
    fake_upstream(workflow.path, [*DATA, "results/models/base/"])
    targets = ("results/models/sft-10", "results/eval/base.parquet", "results/svd/base.safetensors")

    # The dry run first: it shows the asks the jobs will make. Snakemake runs a dry run on one core, and
    # an SVD job's runtime is sized from its threads: the 16 of the profile, not that one.
    paper = "config/paper-qwen2.5-7b.yaml"
    planned = run_profile(workflow, cluster, "-n", *model, env=site, configfile=paper)
    asks = dry_run_asks(planned.stdout)
    assert {"sft", "rl", "evaluate", "svd", "spectrum", "restore"} <= set(asks), sorted(asks)

    proc = run_profile(workflow, cluster, *targets, "--retries", "0", *model, env=site, check=False, configfile=paper)
    assert proc.returncode != 0 and "Requested node configuration is not available" in proc.stderr
    cfg = paper_config("paper-qwen2.5-7b.yaml")
    cfg["model"]["local_path"] = str(tmp_path / "Qwen2.5-7B-Instruct")
    (sft,), (evaluate,), (svd,) = (cluster.submissions(rule) for rule in ("sft", "evaluate", "svd"))
    submitted = {}
    for rule, call in (("sft", sft), ("evaluate", evaluate), ("svd", svd)):
        submitted[rule] = (int(call["--mem"]), int(call["-t"]))
        threads = int(call["--cpus-per-task"])
        assert submitted[rule] == (min(resources.mem_mb(rule, cfg, 1), 1000000),
                                   min(resources.runtime(rule, cfg, 1, threads=threads), 2880)), rule
        # What the dry run showed is what sbatch was asked for.
        assert {(a["mem_mb"], a["runtime"]) for a in asks[rule]} == {submitted[rule]}, rule
    assert int(svd["--cpus-per-task"]) == 16
    assert submitted["svd"][1] < resources.runtime("svd", cfg, 1, threads=1)  # sized from 16 threads, not 1
    for rule in ("spectrum", "restore"):  # the other CPU jobs, as the dry run shows them
        assert {a["runtime"] for a in asks[rule]} == {resources.runtime(rule, cfg, 1, threads=16)}, rule
    # A 7B model: the SFT job's 8 ranks ask for their copies of the weights, the SVD job for the model and
    # its SVD; the smoke study's asks are the floors.
    assert submitted["sft"][0] > 8 * 2 * 14_000 and submitted["svd"][0] > 40_000
    assert submitted["evaluate"][0] > 20_000
    assert submitted["sft"][1] > resources.MIN_RUNTIME


def test_a_dry_run_of_a_paper_config_without_its_model_fails_naming_the_path(workflow, cluster):
    missing = "/nonexistent/models/Qwen2.5-7B-Instruct"
    proc = run_profile(workflow, cluster, "-n", *local_model(Path(missing)), check=False,
                       configfile="config/paper-qwen2.5-7b.yaml")
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert f"config key model.local_path: {missing}: no such directory" in out
    assert "rule sft:" not in out and "Job stats" not in out  # refused before planning any job


def import_gpu_hours(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import gpu_hours

    return gpu_hours


def test_gpu_hours_doc_quotes_the_current_estimate(monkeypatch, capsys):
    # docs/gpu-hours.md's table is the script's output for the configs and the profile as they are now.
    gpu_hours = import_gpu_hours(monkeypatch)
    gpu_hours.main([])
    readme = (ROOT / "docs" / "gpu-hours.md").read_text().splitlines()
    stale = [line for line in capsys.readouterr().out.splitlines() if line and line not in readme]
    assert not stale, "docs/gpu-hours.md: rerun .venv/bin/python benchmarks/gpu_hours.py and quote it:\n" + "\n".join(
        stale
    )
