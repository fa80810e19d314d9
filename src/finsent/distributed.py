"""Data-parallel training: the train stage run as N processes by torch's own launcher (torchrun).

The stage relaunches its own command under `python -m torch.distributed.run` when `train.num_processes`
is above 1, so that `dvc.yaml` keeps one command for every N. Inside the launch, each process trains on
its share of every batch (DDP, through Trainer); rank 0 alone writes outputs.
"""

import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path

import torch
import torch.distributed as dist

from finsent.atomic import remove_stale
from finsent.errors import FinsentError


def world_size() -> int:
    """How many processes this launch has: torchrun (and `accelerate launch`) set WORLD_SIZE; 1 without."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_main_process() -> bool:
    """Rank 0, the one process that writes outputs, logs and prints (also the only one without a launch)."""
    return int(os.environ.get("RANK", "0")) == 0


def needs_launch(num_processes: int) -> bool:
    """Whether this process must start `num_processes` workers rather than train itself."""
    return num_processes > 1 and "WORLD_SIZE" not in os.environ


def launch_workers(num_processes: int) -> int:
    """Run this same command as `num_processes` workers under torchrun; returns torchrun's exit status.

    torchrun stops every worker once one fails, and exits non-zero then.
    """
    # torchrun would give each worker 1 thread; share the cores instead (on CPU they do the work).
    # A value the user set wins.
    threads = max(1, len(os.sched_getaffinity(0)) // num_processes)
    env = {"OMP_NUM_THREADS": str(threads), **os.environ}
    # torchrun's own folder of (here empty) worker logs; it would leave one in /tmp at every launch.
    with tempfile.TemporaryDirectory(prefix="finsent-torchrun-") as log_dir:
        command = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",  # one machine, a free port of its own: launches side by side do not clash
            f"--nproc-per-node={num_processes}",
            f"--log-dir={log_dir}",
            *sys.argv,
        ]
        with subprocess.Popen(command, env=env) as launcher:
            try:
                return launcher.wait()
            except BaseException:
                # Stopped (SIGTERM from `kill` or a queue worker, Ctrl-C): torchrun passes SIGTERM on
                # to the workers, whose `finally` blocks remove their staging folders; wait for that.
                launcher.terminate()
                launcher.wait()
                raise


@contextmanager
def process_group(num_processes: int) -> Iterator[None]:
    """Join the launch's process group (nccl on GPUs, one GPU a process; gloo on CPU).

    Trainer (through accelerate) finds it initialised and trains with DDP on it. Nothing to join when
    there is one process.
    """
    if world_size() != num_processes:
        raise FinsentError(
            f"train.num_processes: {num_processes}, but this process was launched as one of "
            f"{world_size()}: set train.num_processes to {world_size()}"
        )
    if num_processes == 1:
        yield
        return
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
        dist.init_process_group("nccl")
    else:
        dist.init_process_group("gloo")
    try:
        yield
    finally:
        dist.destroy_process_group()


@contextmanager
def shared_tempdir(prefix: str) -> Iterator[str]:
    """A temporary folder, the same for every process of the launch: rank 0 makes it and removes it.

    Trainer saves checkpoints from rank 0 only, then every rank loads the best one at the end: all
    must look in the same folder. Its name carries rank 0's process id, so that a later run removes
    what a killed one left (`finsent.atomic.remove_stale`).
    """
    folder_context = nullcontext()
    if is_main_process():
        remove_stale(Path(tempfile.gettempdir()), prefix)
        folder_context = tempfile.TemporaryDirectory(prefix=f"{prefix}{os.getpid()}.")
    with folder_context as folder:
        if world_size() == 1:
            yield folder
            return
        names = [folder]
        dist.broadcast_object_list(names, src=0)
        yield names[0]
        dist.barrier()  # no rank reads from it any more once rank 0 removes it
