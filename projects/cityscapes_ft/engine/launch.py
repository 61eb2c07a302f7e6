"""Starting one process per device, on CUDA (NCCL) or on CPU (gloo).

detectron2 v0.6's `launch` asserts CUDA whenever it starts more than one process, so tests and CPU
users could not run distributed training. This launcher keeps its calling convention
(`launch(main, num_gpus_per_machine, num_machines, machine_rank, dist_url, args)`); with no CUDA
it starts `num_gpus_per_machine` CPU processes over gloo instead.
"""
import ctypes
import ctypes.util
import logging
import os
import signal
import socket
import sys
from datetime import timedelta

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from detectron2.utils import comm

from ..errors import EXIT_USER_ERROR, CityscapesFTError

logger = logging.getLogger(__name__)
DEFAULT_TIMEOUT = timedelta(minutes=30)


def _find_free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def distributed_backend() -> str:
    return "nccl" if torch.cuda.is_available() else "gloo"


def launch(main_func, num_gpus_per_machine, num_machines=1, machine_rank=0, dist_url=None, args=(),
           timeout=DEFAULT_TIMEOUT):
    """Run `main_func(*args)` in `num_machines * num_gpus_per_machine` processes (or in this one).

    dist_url: "tcp://host:port" of machine 0, or "auto" (one machine, a free local port).
    """
    world_size = num_machines * num_gpus_per_machine
    if world_size <= 1:
        return main_func(*args)
    backend = distributed_backend()
    if backend == "nccl" and num_gpus_per_machine > torch.cuda.device_count():
        raise ValueError(
            f"--num-gpus {num_gpus_per_machine}, but this machine has {torch.cuda.device_count()} "
            "CUDA devices"
        )
    if backend == "gloo":
        logger.warning(f"No CUDA: starting {num_gpus_per_machine} CPU processes per machine over gloo")
    if dist_url in (None, "auto"):
        if num_machines != 1:
            raise ValueError("--dist-url auto only works on one machine; pass tcp://<machine 0>:<port>")
        dist_url = f"tcp://127.0.0.1:{_find_free_port()}"
    mp.start_processes(
        _distributed_worker,
        nprocs=num_gpus_per_machine,
        args=(main_func, backend, world_size, num_gpus_per_machine, machine_rank, dist_url, args, timeout,
              os.getpid()),
        daemon=False,
        start_method="spawn",
    )


def _die_with_parent(parent_pid):
    """A `kill -9` of the launching process must stop its workers too: left running, they would
    train on and keep writing checkpoints beside a `--resume` of the same run (Linux only)."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() != parent_pid:  # the launcher died before the line above
        os._exit(1)


def _distributed_worker(local_rank, main_func, backend, world_size, num_gpus_per_machine,
                        machine_rank, dist_url, args, timeout, parent_pid):
    _die_with_parent(parent_pid)
    if backend == "nccl":
        torch.cuda.set_device(local_rank)
    else:
        # Share the cores between the CPU processes instead of oversubscribing them.
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // num_gpus_per_machine))
    global_rank = machine_rank * num_gpus_per_machine + local_rank
    dist.init_process_group(backend, init_method=dist_url, world_size=world_size, rank=global_rank,
                            timeout=timeout)
    # detectron2.utils.comm answers get_local_rank/get_local_size from this per-machine group.
    for machine in range(world_size // num_gpus_per_machine):
        ranks = list(range(machine * num_gpus_per_machine, (machine + 1) * num_gpus_per_machine))
        group = dist.new_group(ranks)
        if machine == machine_rank:
            comm._LOCAL_PROCESS_GROUP = group
    comm.synchronize()
    try:
        main_func(*args)
    except CityscapesFTError as e:
        print(f"error (rank {global_rank}): {e}", file=sys.stderr)
        sys.exit(EXIT_USER_ERROR)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
