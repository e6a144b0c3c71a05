"""Multi-GPU training jobs: a job that holds more than one GPU runs its script again under torchrun, one
worker per GPU; the workers find each other through torch.distributed (NCCL on GPUs, gloo on the CPU)
and the Trainer shards with DeepSpeed when the config names a DeepSpeed file. One process per job stays
the rule on a laptop: nothing here starts unless the job was given several GPUs."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path


def workers(resources: Mapping) -> int:
    """Worker processes for a job: the GPUs snakemake gave it (its `gpu` resource, what the SLURM
    profile asks for), one process otherwise."""
    return max(1, int(resources.get("gpu", 0) or 0))


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_main() -> bool:
    """The worker that publishes models and writes tables (every worker trains)."""
    return rank() == 0


def run_as_workers(n: int, script: str | None = None, log=print) -> bool:
    """In a job's first process, with `n` > 1: run the job's script again under torchrun as `n` workers,
    wait, and return True: the caller stops there. Inside a worker, or with one worker, return False:
    the caller does the work itself. The script is the file being run (`sys.argv[0]`): under snakemake a
    copy that carries the job's snakemake object, so every worker sees the same job."""
    if n <= 1 or "LOCAL_RANK" in os.environ:
        return False
    script = script or sys.argv[0]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={n}", script]
    log(f"launching {n} workers: {' '.join(cmd)}")
    proc = subprocess.run(cmd)
    if proc.returncode != 0:
        raise RuntimeError(f"{n} workers of {script} failed (exit {proc.returncode}); each worker's log is "
                           "beside the job's log (<log>.rank<N>)")
    return True


def log_path(path: str) -> str:
    """The job's log for the main worker; `<log>.rank<N>` for the others, so none truncates another's."""
    return path if is_main() else f"{path}.rank{rank()}"


def per_device_batch(global_batch: int, grad_accum: int, key: str) -> int:
    """The per-worker batch that keeps the config's global batch whatever the number of workers (the
    papers' 64 stays 64 on 8 GPUs): global = per_device x grad_accum x workers."""
    share = grad_accum * world_size()
    if global_batch % share:
        raise ValueError(f"config key {key}: a global batch of {global_batch} does not split over "
                         f"{world_size()} workers x {grad_accum} accumulation steps")
    return global_batch // share


DEEPSPEED_CONFIGS = {"zero2": "config/deepspeed/zero2.json", "zero3": "config/deepspeed/zero3.json"}


def deepspeed_config(name: str | None) -> str | None:
    """The DeepSpeed file a config names (`sft.deepspeed`, `rl.deepspeed`: zero2 | zero3), as an absolute
    path for the Trainer, with what a single process needs to start DeepSpeed; None for no DeepSpeed."""
    if not name:
        return None
    init_single_process_distributed()
    return str(Path(DEEPSPEED_CONFIGS[name]).resolve())


def deepspeed_settings(name: str, micro_batch: int, max_grad_norm: float, bf16: bool) -> dict:
    """A DeepSpeed config file as a dict for a training loop written here (the Trainer fills the "auto"
    values itself): this loop's batch, clipping and precision; no optimizer or scheduler (the loop passes
    its own optimizer and steps its schedule per update); every other "auto" left to DeepSpeed."""
    import json

    def fill(node):
        return {k: fill(v) for k, v in node.items() if v != "auto"} if isinstance(node, dict) else node

    settings = json.loads(Path(deepspeed_config(name)).read_text())
    for section in ("optimizer", "scheduler"):
        settings.pop(section, None)
    settings = fill(settings)
    settings.update({"train_micro_batch_size_per_gpu": micro_batch, "gradient_accumulation_steps": 1,
                     "train_batch_size": micro_batch * world_size(), "gradient_clipping": max_grad_norm,
                     "bf16": {"enabled": bf16}, "fp16": {"enabled": False}})
    return settings


def trainer_flags(work: Path, seed: int, bf16: bool, deepspeed: str | None) -> dict:
    """The Trainer arguments every training run here shares: where it works, its seed, and the flags that
    are right for the device (docs/stack.md, pitfalls 2 and 3): on a CPU float32 and no activation
    checkpointing (30-60% slower for small models); on a GPU bf16 when `bf16`. Checkpoints are written by
    callbacks.Checkpoints, not by the Trainer's save strategy."""
    import torch

    on_gpu = torch.cuda.is_available()
    return {
        "output_dir": str(work),
        "seed": seed,
        "data_seed": seed,
        "save_strategy": "no",
        "bf16": on_gpu and bf16,
        "fp16": False,
        "use_cpu": not on_gpu,
        "activation_checkpointing": False,
        "dataloader_num_workers": 0,
        "report_to": "none",
        "disable_tqdm": True,
        "deepspeed": deepspeed_config(deepspeed),
        "torch_compile": False,
    }


def init_single_process_distributed() -> None:
    """DeepSpeed outside a launcher looks for MPI; a single process needs these set (docs/stack.md, pitfall 6).
    Under torchrun they are already set and left alone."""
    for key, value in {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1",
                       "MASTER_PORT": "29511"}.items():
        os.environ.setdefault(key, value)


# Collectives for a training loop written here (the papers' PPO); the Trainers do their own. With one
# worker each is a no-op, so a laptop run is the plain single-process loop.


def device():
    """The worker's device: its GPU (LOCAL_RANK) when there is one, else the CPU."""
    import torch

    return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0"))) if torch.cuda.is_available() else torch.device("cpu")


def join_workers() -> None:
    """Join the job's other workers in one process group (NCCL on GPUs, gloo on the CPU)."""
    import torch
    import torch.distributed as dist

    if world_size() > 1 and not dist.is_initialized():
        if torch.cuda.is_available():
            torch.cuda.set_device(device())
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")


def all_reduce(tensor, op: str = "sum"):
    """`tensor` summed (or maxed) over the workers, in place; returned."""
    import torch.distributed as dist

    if world_size() > 1:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM if op == "sum" else dist.ReduceOp.MAX)
    return tensor


def gather_objects(obj) -> list:
    """Every worker's `obj`, in rank order."""
    import torch.distributed as dist

    if world_size() == 1:
        return [obj]
    out = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out
