"""Faults: checksum manifests, kills mid-write, resume after a kill, full and read-only disks.

Kills inside training use the hook runlog.fault_point (RLHEALS_FAULT_AFTER_STEP=N: the job SIGKILLs itself
after step N; RLHEALS_FAULT_GROUP=1: its process group, snakemake too). In-process tests make the hook
raise instead, which leaves the work directory exactly as a kill at that point would."""

import errno
import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import polars as pl
import pytest
import torch
import yaml

from rlheals import data, episodes, models, pretrain, rl, runlog, tables
from rlheals.jobs import Job, Task
from rlheals.settings import rl_settings
from rlheals.verify import Verifier

ROOT = Path(__file__).resolve().parents[1]
TINY = {"hidden_size": 32, "intermediate_size": 64, "num_layers": 2, "num_heads": 4, "num_kv_heads": 2, "max_positions": 256}


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def flip_byte(path: Path, offset: int = -100) -> None:
    with open(path, "r+b") as fh:
        fh.seek(offset, os.SEEK_END if offset < 0 else os.SEEK_SET)
        byte = fh.read(1)
        fh.seek(-1, os.SEEK_CUR)
        fh.write(bytes([byte[0] ^ 0xFF]))


@pytest.fixture(scope="module")
def tokenizer():
    return models.build_tokenizer(pretrain.vocabulary(24))


def tiny_model_dir(path: Path, tokenizer, seed: int = 0) -> Path:
    models.save_model(models.build_tiny_model(tokenizer, TINY, seed), tokenizer, path)
    return path


# --- checksum manifests ---------------------------------------------------------------------------


def test_model_directories_carry_a_manifest_that_every_load_verifies(tmp_path, tokenizer, monkeypatch):
    src = tiny_model_dir(tmp_path / "src", tokenizer)
    listed = models.read_manifest(src)
    assert set(listed) == set(models.model_files(src)) and "model.safetensors" in listed
    assert listed["model.safetensors"] == models.file_checksum(src / "model.safetensors")
    assert not list(tmp_path.glob("*.tmp")) and models.load_model(src).config.hidden_size == 32

    # A linked copy takes the source's checksums (nothing hashed again, a corrupted source never laundered).
    monkeypatch.setattr(models, "file_checksum", lambda *a, **k: pytest.fail("hashed a linked file again"))
    models.link_or_copy_tree(src, tmp_path / "copy")
    monkeypatch.undo()
    assert models.read_manifest(tmp_path / "copy") == listed
    assert os.path.samefile(src / "model.safetensors", tmp_path / "copy" / "model.safetensors")

    # A flipped byte keeps the size: the sha256 check names the file; RLHEALS_VERIFY=size skips it.
    bad = tmp_path / "bad"
    models.link_or_copy_tree(src, bad)
    (bad / "model.safetensors").unlink()
    shutil.copy(src / "model.safetensors", bad / "model.safetensors")
    flip_byte(bad / "model.safetensors")
    with pytest.raises(ValueError, match=r"bad/model\.safetensors: corrupted \(its sha256 differs"):
        models.load_model(bad)
    models.check_model_dir(bad, verify="size")
    monkeypatch.setenv("RLHEALS_VERIFY", "size")
    models.check_model_dir(bad)
    monkeypatch.delenv("RLHEALS_VERIFY")
    models.link_or_copy_tree(bad, tmp_path / "bad-copy")  # copied from a corrupted directory: still caught
    with pytest.raises(ValueError, match="corrupted"):
        models.check_model_dir(tmp_path / "bad-copy")

    # Truncated, missing, unlisted files; an unreadable manifest.
    truncated = tmp_path / "truncated"
    shutil.copytree(src, truncated)
    with open(truncated / "model.safetensors", "r+b") as fh:
        fh.truncate(1000)
    with pytest.raises(ValueError, match=r"truncated/model\.safetensors: truncated or corrupted \(1000 bytes"):
        models.check_model_dir(truncated, verify="size")
    missing = tmp_path / "missing"
    shutil.copytree(src, missing)
    (missing / "tokenizer.json").unlink()
    with pytest.raises(FileNotFoundError, match=r"missing/tokenizer\.json is missing \(listed in"):
        models.check_model_dir(missing)
    extra = tmp_path / "extra"
    shutil.copytree(src, extra)
    shutil.copy(src / "model.safetensors", extra / "model-00002.safetensors")
    with pytest.raises(ValueError, match=r"extra/model-00002\.safetensors is not listed"):
        models.check_model_dir(extra)
    (extra / "model-00002.safetensors").unlink()
    (extra / models.MANIFEST).write_text("{not json")
    with pytest.raises(ValueError, match=r"extra/checksums\.json: unreadable checksum manifest"):
        models.check_model_dir(extra)

    # A user's Hugging Face directory (no manifest) is still accepted, with its header checked.
    user = tmp_path / "user-model"
    models.build_tiny_model(tokenizer, TINY, 0).save_pretrained(user)
    tokenizer.save_pretrained(user)
    assert models.read_manifest(user) is None and models.check_model_dir(user) == user


def test_checkpoint_table_reads_checksums_never_whole_files(tmp_path, tokenizer, monkeypatch):
    listed = tiny_model_dir(tmp_path / "sft-2", tokenizer)
    user = tmp_path / "base"  # no manifest: the file is hashed, streamed
    models.build_tiny_model(tokenizer, TINY, 1).save_pretrained(user)
    sharded = tmp_path / "sft-4"  # two shards: the sha256 of their `sha256sum` listing
    weights = models.load_weights(listed)
    names = sorted(weights)

    def two_shards(tmp):
        from safetensors.torch import save_file

        shutil.copy(listed / "config.json", tmp / "config.json")
        save_file({k: weights[k] for k in names[:3]}, tmp / "model-00001-of-00002.safetensors", metadata={"format": "pt"})
        save_file({k: weights[k] for k in names[3:]}, tmp / "model-00002-of-00002.safetensors", metadata={"format": "pt"})

    models.write_model_dir(sharded, two_shards)
    expected = {"sft-2": sha256(listed / "model.safetensors"), "base": sha256(user / "model.safetensors"),
                "sft-4": hashlib.sha256("".join(f"{sha256(f)}  {f.name}\n" for f in sorted(sharded.glob("*.safetensors"))).encode()).hexdigest()}
    monkeypatch.setattr(Path, "read_bytes", lambda self: pytest.fail(f"read {self} whole"))
    table = tables.checkpoint_table({name: str(tmp_path / name) for name in expected})
    assert dict(zip(table["model_id"], table["sha256"])) == expected


# --- full and read-only disks ---------------------------------------------------------------------


def raising(err):
    def write(tmp):  # something on disk first (a file, or a file in the directory): it must not stay behind
        (Path(tmp) / "model.safetensors" if Path(tmp).is_dir() else Path(tmp)).write_bytes(b"partial")
        raise err

    return write


@pytest.mark.parametrize("err, cause", [
    (OSError(errno.ENOSPC, "No space left on device"), "the disk is full"),
    (OSError(errno.EDQUOT, "Disk quota exceeded"), "the disk quota is exceeded"),
    (OSError(errno.EROFS, "Read-only file system"), "the file system is read-only"),
    (RuntimeError("parquet: underlying IO error: No space left on device (os error 28)"), "the disk is full"),
    (RuntimeError("Error while serializing: I/O error: Read-only file system (os error 30)"), "the file system is read-only"),
])
def test_write_errors_name_the_path_and_the_cause(tmp_path, err, cause):
    out = tmp_path / "results" / "eval" / "sft-6.parquet"
    with pytest.raises(runlog.WriteError, match=rf"cannot write {out}: {cause}") as caught:
        runlog.write_atomic(out, raising(err))
    assert caught.value.__cause__ is err and os.listdir(out.parent) == []
    with pytest.raises(runlog.WriteError, match=rf"cannot write {tmp_path / 'm'}: {cause}"):
        models.write_model_dir(tmp_path / "m", raising(err))
    assert sorted(os.listdir(tmp_path)) == ["results"]  # neither m nor m.tmp


def test_other_write_errors_pass_unchanged_and_leave_nothing(tmp_path):
    with pytest.raises(ValueError, match="a bug"):
        runlog.write_atomic(tmp_path / "x.json", raising(ValueError("a bug")))
    with pytest.raises(KeyboardInterrupt):
        models.write_model_dir(tmp_path / "m", raising(KeyboardInterrupt()))
    assert os.listdir(tmp_path) == []


@pytest.fixture
def tmpfs(tmp_path):
    """A 1 MiB tmpfs (root only): mount(options) -> its path; unmounted afterwards."""
    mounted = []

    def mount(options: str) -> Path:
        path = tmp_path / f"fs{len(mounted)}"
        path.mkdir()
        proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size=1m,{options}", "tmpfs", str(path)], capture_output=True)
        if proc.returncode:
            pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.decode().strip()}")
        mounted.append(path)
        return path

    yield mount
    for path in mounted:
        subprocess.run(["umount", str(path)], check=True)


def test_a_real_full_disk_and_a_read_only_one(tmpfs, tokenizer):
    full, read_only = tmpfs("rw"), tmpfs("ro")
    fd = os.open(full / "filler", os.O_WRONLY | os.O_CREAT)
    with pytest.raises(OSError) as filled:  # fill it to the last byte
        while True:
            os.write(fd, b"\0" * 4096)
    os.close(fd)
    assert filled.value.errno == errno.ENOSPC
    table = pl.DataFrame({"a": list(range(10_000))})
    model = models.build_tiny_model(tokenizer, TINY, 0)
    writes = {  # polars and safetensors wrap the errno in text; torch.save says only "unexpected pos"
        "table.parquet": lambda out: runlog.write_atomic(out, table.write_parquet),
        "state.pt": lambda out: runlog.write_atomic(out, lambda tmp: torch.save(model.state_dict(), tmp)),
        "model": lambda out: models.save_model(model, tokenizer, out),
    }
    for fs, cause in ((full, "the disk is full"), (read_only, "the file system is read-only")):
        for name, write in writes.items():
            with pytest.raises(runlog.WriteError, match=rf"cannot write {fs / name}: {cause}"):
                write(fs / name)
        assert sorted(os.listdir(fs)) == (["filler"] if fs == full else [])  # no temp file or directory left


# --- kills mid-write ------------------------------------------------------------------------------

WRITER = textwrap.dedent("""
    import os, signal, sys
    from pathlib import Path
    import numpy as np
    from safetensors.numpy import save_file
    from rlheals import models

    dst, mode = Path(sys.argv[1]), sys.argv[2]
    if mode == "before-rename":  # SIGKILL between the finished temp directory and its rename
        real = Path.rename
        Path.rename = lambda self, target: os.kill(os.getpid(), signal.SIGKILL) if self.name.endswith(".tmp") else real(self, target)

    def fill(version):
        def write(tmp):
            (tmp / "config.json").write_text('{"version": %d}' % version)
            save_file({"w": np.full(1 << 20, version, dtype=np.float32)}, str(tmp / "model.safetensors"))
        return write

    print("ready", flush=True)
    version = 0
    while True:  # the same directory rewritten over and over, until killed
        version += 1
        models.write_model_dir(dst, fill(version))
        if mode == "once":
            break
""")


def run_writer(dst: Path, mode: str) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(dst), mode], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline() == "ready\n"
    return proc


def assert_complete_or_absent(dst: Path) -> None:
    """What a later job would read: nothing, or a whole directory (manifest, sizes and hashes agree)."""
    if dst.exists():
        models.check_model_dir(dst)
        version = json.loads((dst / "config.json").read_text())["version"]
        from safetensors.numpy import load_file

        assert (load_file(dst / "model.safetensors")["w"] == version).all()
    leftovers = {p.name for p in dst.parent.iterdir()} - {dst.name, dst.name + ".tmp", dst.name + ".old"}
    assert not leftovers, leftovers


def test_a_writer_killed_at_any_point_leaves_nothing_that_looks_complete(tmp_path):
    dst = tmp_path / "models" / "sft-2"
    proc = run_writer(dst, "before-rename")
    assert proc.wait(timeout=60) == -signal.SIGKILL
    assert not dst.exists() and (tmp_path / "models" / "sft-2.tmp" / models.MANIFEST).exists()
    rng = random.Random(0)
    seen = set()
    for _ in range(12):  # SIGKILL at random moments of a writer that rewrites the directory in a loop
        proc = run_writer(dst, "loop")
        time.sleep(rng.uniform(0.0, 0.3))
        proc.kill()
        proc.wait()
        assert_complete_or_absent(dst)
        seen.add(dst.exists())
    assert seen == {True, False} or seen == {True}  # most kills find an older whole version in place
    run_writer(dst, "once").wait(timeout=60)  # the next run cleans up and writes it whole
    assert_complete_or_absent(dst) is None and dst.exists()
    assert sorted(p.name for p in dst.parent.iterdir()) == ["sft-2"]


# --- resume after a kill, in process --------------------------------------------------------------


class Killed(Exception):
    pass


def kill_after(step: int):
    def fault_point(at: int) -> None:
        if at == step:
            raise Killed(step)

    return fault_point


def study_config() -> dict:
    def merge(a, b):
        return {**a, **{k: merge(a[k], v) if isinstance(v, dict) and isinstance(a.get(k), dict) else v for k, v in b.items()}}

    return merge(yaml.safe_load((ROOT / "config" / "config.yaml").read_text()),
                 yaml.safe_load((ROOT / "config" / "smoke.yaml").read_text()))


class TextReward(Verifier):
    """The verifier's verdict, with a reward that varies with the answer's text: an untrained model's
    answers are all illegal, and GRPO learns nothing from equal rewards."""

    def __call__(self, answer, values):
        import dataclasses

        return dataclasses.replace(super().__call__(answer, values), reward=float(sum(map(ord, answer)) % 5))


@pytest.fixture(scope="module")
def rl_setup(tmp_path_factory, tokenizer):
    cfg = study_config()
    start = tiny_model_dir(tmp_path_factory.mktemp("start") / "sft-6", tokenizer)
    game, fmt = cfg["game"], cfg["prompt"]["format"]
    splits = {"holdout_seed": 0, "holdout_share": 0.25, "splits": {
        "rl_train": {"rule": "id", "size": 12, "seed": 1}, "id_test": {"rule": "id", "size": 2, "seed": 2},
        "ood_test": {"rule": "ood", "size": 2, "seed": 3}}}
    rows = {split: data.make_split(split, game, splits) for split in splits["splits"]}
    rules = data.rules_from_config(game)
    verifier = TextReward(game["target"], fmt, cfg["verify"]["strict_format"], cfg["verify"]["rewards"])
    probe = rl.Probe(episodes.from_rows([*rows["id_test"], *rows["ood_test"]], rules, fmt), verifier, 1, 8)
    # Probes (and the control's loss logs) every 2 updates: the resume from update 1 falls between two.
    settings = {**cfg["rl"], "updates": 3, "save_updates": [1], "max_new_tokens": 6, "probe": {"every": 2, "episodes": 2}}
    return {"cfg": cfg, "start": start, "rows": rows, "rules": rules, "fmt": fmt, "verifier": verifier,
            "probe": probe, "settings": settings}


def run_algo(algo: str, s: dict, root: Path, log=print) -> list[dict]:
    outputs = {3: root / "models" / f"rl-{algo}-6", 1: root / "models" / f"rl-{algo}-6-u1"}
    job = Job(start=s["start"], outputs=outputs, work=root / "work", seed=1, threads=1, log=log)
    task = Task(train=s["rows"]["rl_train"], rules=s["rules"], fmt=s["fmt"], id_test=s["rows"]["id_test"],
                ood_test=s["rows"]["ood_test"], verifier=s["verifier"], probe=s["probe"])
    return rl.run(algo, job=job, task=task, settings=rl_settings(algo, s["settings"], s["cfg"]["sft"]))


@pytest.mark.parametrize("algo", ["ppo", "grpo", "sft_continue"])
def test_probe_every_0_runs_no_probe(algo, rl_setup, tmp_path):
    calls = []
    probe = rl_setup["probe"]
    counted = {**rl_setup, "probe": lambda model, tokenizer: calls.append(1) or probe(model, tokenizer)}
    with_probe = run_algo(algo, counted, tmp_path / "every2")
    assert len(calls) == 3 and "probe_ood_accuracy" in with_probe[0]  # updates 0, 2 and the last (3)
    calls.clear()
    off = {**counted, "settings": {**counted["settings"], "probe": {"every": 0, "episodes": 2}}}
    rows = run_algo(algo, off, tmp_path / "off")
    assert calls == [] and [r["update"] for r in rows] == [0, 1, 2, 3]
    assert not any(k.startswith("probe_") for r in rows for k in r)


def weights_of(root: Path) -> dict[str, str]:
    return {p.name: sha256(p / "model.safetensors") for p in sorted((root / "models").iterdir())}


@pytest.mark.parametrize("algo", ["ppo", "grpo", "sft_continue"])
def test_rl_killed_after_an_update_resumes_to_the_same_model(algo, rl_setup, tmp_path, monkeypatch):
    """Killed after update 2 (checkpoints at 1, 2, 3; update 2's not yet written): the rerun resumes from
    update 1, publishes u1 again (snakemake removed it), and ends bit-identical, log rows included (the
    control's train loss logged at update 2 averages updates 1 and 2 as in the uninterrupted run). The
    control takes 2 optimizer steps per update: killed at step 4, it resumes from step 3, inside update 2."""
    per = rl_settings(algo, rl_setup["settings"], rl_setup["cfg"]["sft"]).steps_per_update if algo == "sft_continue" else 1
    clean = run_algo(algo, rl_setup, tmp_path / "clean")
    monkeypatch.setattr(runlog, "fault_point", kill_after(2 * per))
    with pytest.raises(Killed):
        run_algo(algo, rl_setup, tmp_path / "killed")
    monkeypatch.undo()
    killed = tmp_path / "killed"
    kept = f"checkpoint-{2 * per - 1}"
    assert [p.name for p in (killed / "work").glob("checkpoint-*")] == [kept]
    assert sorted(p.name for p in (killed / "models").iterdir()) == [f"rl-{algo}-6-u1"]
    shutil.rmtree(killed / "models")  # what snakemake does to a failed job's outputs
    logs = []
    resumed = run_algo(algo, rl_setup, killed, log=logs.append)
    assert any(line.startswith("resuming from") and line.endswith(kept) for line in logs), logs
    final = weights_of(tmp_path / "clean")
    assert final[f"rl-{algo}-6"] != sha256(rl_setup["start"] / "model.safetensors")  # it trained
    assert weights_of(killed) == final
    assert json.dumps(resumed) == json.dumps(clean)  # exact floats
    for name in (f"rl-{algo}-6", f"rl-{algo}-6-u1"):
        models.check_model_dir(killed / "models" / name)


# --- the workflow: corrupted models, full and read-only results, kills of real jobs ----------------


def frozen_package(workflow) -> dict:
    """The environment for this test's snakemake runs, with the package as it is now: an edit to the tree
    during a long test would change the rules' code hashes (and the work directories' keys) between runs."""
    shutil.copytree(ROOT / "src" / "rlheals", workflow.path / "package" / "rlheals")
    return {**os.environ, "PYTHONPATH": str(workflow.path / "package")}


def mount_tmpfs(path: Path, options: str) -> bool:
    path.mkdir(parents=True, exist_ok=True)
    return subprocess.run(["mount", "-t", "tmpfs", "-o", f"size=1m,{options}", "tmpfs", str(path)], capture_output=True).returncode == 0


def test_a_corrupted_model_and_a_full_or_read_only_disk_fail_the_evaluation_clearly(workflow, tokenizer):
    env = frozen_package(workflow)
    quick = workflow.write_config("quick.yaml", (workflow.path / "config" / "smoke.yaml").read_text()
                                  + "eval: {episodes: 2, verify_turns: 1, max_new_tokens: 4}\n")
    workflow.run("results/data/id_test.jsonl", "results/data/ood_test.jsonl", configfile=quick, env=env)
    results = workflow.path / "results"
    model = tiny_model_dir(results / "models" / "sft-6", tokenizer)
    original = (model / "model.safetensors").read_bytes()
    flip_byte(model / "model.safetensors", offset=len(original) // 2)
    target = ("results/eval/sft-6.parquet", "--allowed-rules", "evaluate")  # the model stands as given
    proc = workflow.run(*target, configfile=quick, check=False, env=env)
    log = (workflow.path / "logs" / "eval" / "sft-6.log").read_text()
    assert proc.returncode != 0
    assert "results/models/sft-6/model.safetensors: corrupted (its sha256 differs from results/models/sft-6/checksums.json)" in log
    assert not (results / "eval").exists() or os.listdir(results / "eval") == []

    (model / "model.safetensors").write_bytes(original)
    eval_dir = results / "eval"
    if not mount_tmpfs(eval_dir, "ro"):
        pytest.skip("cannot mount a tmpfs here (the write errors are tested in process above)")
    try:  # snakemake itself stops first, when it clears the job's output
        proc = workflow.run(*target, configfile=quick, check=False, env=env)
        assert proc.returncode != 0 and "Read-only file system: 'results/eval/sft-6.parquet'" in proc.stdout + proc.stderr
    finally:
        subprocess.run(["umount", str(eval_dir)], check=True)
    assert mount_tmpfs(eval_dir, "rw")
    try:
        subprocess.run(["dd", "if=/dev/zero", f"of={eval_dir / 'filler'}", "bs=4k"], capture_output=True)
        proc = workflow.run(*target, configfile=quick, check=False, env=env)
        log = (workflow.path / "logs" / "eval" / "sft-6.log").read_text()
        assert proc.returncode != 0
        assert "WriteError: [Errno 28] cannot write results/eval/sft-6.parquet: the disk is full" in log
        assert os.listdir(eval_dir) == ["filler"]  # no temp file, no output
    finally:
        subprocess.run(["umount", str(eval_dir)], check=True)


def outputs_of(results: Path) -> dict[str, str]:
    """sha256 of every SFT and RL model's weights and of their logs."""
    found = {p.name: sha256(p / "model.safetensors") for p in (results / "models").glob("*-*") if not p.name.startswith("edit-")}
    found.update({p.name: sha256(p) for p in [results / "tables" / "sft_log.parquet", *(results / "tables" / "rl").glob("*.parquet")]})
    return found


@pytest.mark.slow
def test_sft_and_rl_killed_by_sigkill_resume_to_the_same_outputs(finished_study):
    """Uninterrupted, then: SIGKILL of the SFT job and snakemake together after step 4 (a lost node), rerun
    with --rerun-incomplete (from step 3, between two logged steps); every RL job (grpo, ppo, control) SIGKILLed after update 2 (a job killed by
    the scheduler), rerun. Every model and log ends byte-identical to the uninterrupted run."""
    workflow = finished_study  # the uninterrupted run: the smoke study's
    env = frozen_package(workflow)
    target = "results/tables/rl_log.parquet"
    workflow.run(target, env=env)
    results = workflow.path / "results"
    clean = outputs_of(results)
    assert len(clean) == 4 + 6 + 4  # sft-0..6, 3 RL runs with u1, sft_log and 3 RL logs
    for path in [*(results / "models").glob("sft-*"), *(results / "models").glob("rl-*"), results / "tables" / "rl"]:
        shutil.rmtree(path)
    for name in ("sft_log.parquet", "rl_log.parquet", "rl_log.csv"):
        (results / "tables" / name).unlink()

    from conftest import SNAKEMAKE

    killed = subprocess.run([str(SNAKEMAKE), target, "--cores", "2", "--configfile", "config/smoke.yaml"], cwd=workflow.path,
                            env={**env, "RLHEALS_FAULT_AFTER_STEP": "4", "RLHEALS_FAULT_GROUP": "1"},
                            capture_output=True, text=True, start_new_session=True)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert list((results / "work").glob("sft-*/checkpoint-3")) and not (results / "models" / "sft-4").exists()
    workflow.run("--unlock", env=env)
    rl_killed = workflow.run(target, "--rerun-incomplete", "--keep-going", check=False,
                             env={**env, "RLHEALS_FAULT_AFTER_STEP": "2"})
    assert rl_killed.returncode != 0 and "resuming from" in (workflow.path / "logs" / "sft.log").read_text()
    assert len(list((results / "work").glob("rl-*/checkpoint-1"))) == 3 and not list((results / "models").glob("rl-*"))
    workflow.run(target, env=env)
    for run in ("grpo-6", "ppo-6", "sft_continue-6"):
        assert "resuming from" in (workflow.path / "logs" / "rl" / f"{run}.log").read_text(), run
    assert outputs_of(results) == clean
    assert not list((results / "work").iterdir())


@pytest.mark.slow
@pytest.mark.parametrize("deepspeed", [False, True])
def test_ppo_on_two_workers_killed_after_an_update_resumes_to_the_same_model(workflow, deepspeed):
    """PPO as two workers (`rl:gpu=2`; with `rl.deepspeed: zero2`, their optimizer shards saved beside the
    checkpoint), SIGKILLed after update 2, rerun: it resumes from update 1 with each worker's own
    sampling state and ends byte-identical to an uninterrupted two-worker run."""
    env = {**frozen_package(workflow), "DS_ACCELERATOR": "cpu"}
    smoke = (workflow.path / "config" / "smoke.yaml").read_text()
    config = workflow.write_config("ppo2.yaml", smoke.replace("rl:\n", "rl:\n  deepspeed: zero2\n", 1) if deepspeed else smoke)
    target, two = "results/models/rl-ppo-6", ("--set-resources", "rl:gpu=2")
    workflow.run(target, *two, env=env, configfile=config)
    results = workflow.path / "results"
    clean = sha256(results / "models" / "rl-ppo-6" / "model.safetensors")
    for name in ("rl-ppo-6", "rl-ppo-6-u1"):
        shutil.rmtree(results / "models" / name)
    killed = workflow.run(target, *two, check=False, env={**env, "RLHEALS_FAULT_AFTER_STEP": "2"}, configfile=config)
    checkpoints = list((results / "work").glob("rl-*/checkpoint-1"))
    assert killed.returncode != 0 and checkpoints
    assert list(checkpoints[0].glob("deepspeed/**/*optim_states.pt")) if deepspeed else not (checkpoints[0] / "deepspeed").exists()
    workflow.run(target, *two, env=env, configfile=config)
    log = (workflow.path / "logs" / "rl" / "ppo-6.log").read_text()
    assert "resuming from" in log and ("workers: 2; deepspeed: enabled (zero2)" if deepspeed else "workers: 2; deepspeed: no") in log
    assert sha256(results / "models" / "rl-ppo-6" / "model.safetensors") == clean
