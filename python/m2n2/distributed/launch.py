"""Starting the ranks: under torchrun (`init_from_env`), or R local processes on
the CPU (`spawn`, gloo) for a quick run or a test.

Every collective has the process group's timeout: a rank that dies ends the others'
collectives with an error at once (its sockets close), one that hangs ends them when
the timeout passes; either way no rank waits silently, and the run stops after its
last complete checkpoint.
"""
import datetime
import os
import socket

import torch
import torch.distributed as dist

DEFAULT_TIMEOUT_S = 600


def init_from_env(device="cpu", timeout_s=DEFAULT_TIMEOUT_S):
    """Join the group that torchrun (or `spawn`) describes in the environment (RANK,
    WORLD_SIZE, MASTER_ADDR, MASTER_PORT): NCCL for a CUDA device, gloo otherwise.
    Returns the device this rank uses (cuda:LOCAL_RANK for "cuda")."""
    missing = [k for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT") if k not in os.environ]
    if missing:
        raise RuntimeError(f"--distributed needs torchrun's environment ({', '.join(missing)} not set): start it with "
                           "`torchrun --nproc-per-node R -m m2n2 evolve ... --distributed`, or use --nproc R")
    device = torch.device(device)
    if device.type == "cuda":
        local = int(os.environ.get("LOCAL_RANK", 0))
        device = torch.device("cuda", device.index if device.index is not None else local)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo",
                                timeout=datetime.timedelta(seconds=timeout_s))
    return device


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _entry(rank, fn, world, port, threads, args):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world))
    torch.set_num_threads(threads)
    try:
        fn(*args)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def spawn(fn, nproc, *args, threads=None):
    """Run fn(*args) in `nproc` new processes that form one group on this machine
    (each calls init_from_env itself). Raises when any of them fails; the others are
    then stopped. `threads`: torch threads per process (default: the cores shared)."""
    if isinstance(nproc, bool) or not isinstance(nproc, int) or nproc < 1:
        raise ValueError(f"nproc must be a positive integer, got {nproc!r}")
    threads = threads or max(1, (os.cpu_count() or 1) // nproc)
    torch.multiprocessing.start_processes(
        _entry, args=(fn, nproc, free_port(), threads, args), nprocs=nproc, join=True, start_method="spawn"
    )
