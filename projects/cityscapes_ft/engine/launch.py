"""Starting the processes of a run: our own spawner, torchrun, or SLURM's srun.

detectron2's `launch` spawns one process per GPU itself, asserts CUDA whenever it starts more than
one, and does not understand processes that another launcher started. This `launch` keeps its
calling convention (`launch(main, num_gpus_per_machine, num_machines, machine_rank, dist_url,
args)`) and

- with no CUDA, starts `num_gpus_per_machine` CPU processes over gloo;
- in a process started by torchrun (RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR,
  MASTER_PORT) or by srun with several tasks (SLURM_PROCID, SLURM_NTASKS, SLURM_LOCALID,
  SLURM_NTASKS_PER_NODE, SLURM_JOB_NODELIST), joins that job instead of spawning: the right
  global and local rank, device and per-machine process group. Flags that would start more
  processes on top of such a launcher are refused.
"""
import ctypes
import ctypes.util
import logging
import os
import re
import signal
import socket
import sys
from dataclasses import dataclass
from datetime import timedelta
from typing import Mapping, Optional

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from ..errors import EXIT_USER_ERROR, CityscapesFTError, ConfigNotRunnable
from ..compat import create_local_process_group

logger = logging.getLogger(__name__)
DEFAULT_TIMEOUT = timedelta(minutes=30)
# Without MASTER_PORT or --dist-url, the processes of a SLURM job meet on a port derived from the
# job id, so two jobs sharing a first node do not collide.
SLURM_PORT_BASE, SLURM_PORT_RANGE = 20000, 20000


@dataclass
class ProcessPlace:
    """Where this process sits in a job that another launcher started."""

    launcher: str  # "torchrun" or "SLURM"
    rank: int
    world_size: int
    local_rank: int
    local_size: int
    machine_rank: int
    init_method: str


def _find_free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def distributed_backend() -> str:
    """NCCL where CUDA is available, gloo otherwise."""
    return "nccl" if torch.cuda.is_available() else "gloo"


def first_slurm_host(nodelist: str) -> str:
    """The first host of a SLURM node list: "gpu[03-05,9],cpu1" -> "gpu03"."""
    match = re.match(r"([^,\[]*)(?:\[([^\]]*)\])?([^,]*)", nodelist.strip())
    if not match or not (match.group(1) or match.group(2)):
        raise ConfigNotRunnable(f"Cannot read the first host of SLURM_JOB_NODELIST '{nodelist}'")
    prefix, ranges, suffix = match.groups()
    first = re.split(r"[,-]", ranges)[0] if ranges else ""
    return f"{prefix}{first}{suffix}"


def _slurm_tasks_per_node(env: Mapping[str, str]) -> int:
    # "4", "4(x2)" or "4,2": the first node's count (our local groups need equal counts).
    value = env.get("SLURM_NTASKS_PER_NODE") or env.get("SLURM_TASKS_PER_NODE") or "1"
    counts = [int(c) for c in re.findall(r"(\d+)(?:\(x\d+\))?", value)]
    if len(set(counts)) > 1:
        raise ConfigNotRunnable(
            f"SLURM runs a different number of tasks per node ({value}); start the same number of "
            "tasks on every node (srun --ntasks-per-node N)"
        )
    return counts[0] if counts else 1


def find_process_place(env: Mapping[str, str], dist_url: Optional[str] = None) -> Optional[ProcessPlace]:
    """This process's place in a job started by torchrun or srun; None when neither started it
    (then `launch` spawns the processes itself)."""
    if all(k in env for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK")):
        world, rank, local_rank = int(env["WORLD_SIZE"]), int(env["RANK"]), int(env["LOCAL_RANK"])
        local_size = int(env.get("LOCAL_WORLD_SIZE", world))
        machine = int(env.get("GROUP_RANK", rank // max(local_size, 1)))
        return ProcessPlace("torchrun", rank, world, local_rank, local_size, machine, "env://")
    if "SLURM_PROCID" in env and int(env.get("SLURM_NTASKS", "1")) > 1:
        world, rank = int(env["SLURM_NTASKS"]), int(env["SLURM_PROCID"])
        local_rank = int(env.get("SLURM_LOCALID", 0))
        local_size = _slurm_tasks_per_node(env)
        machine = int(env.get("SLURM_NODEID", rank // local_size))
        if dist_url and dist_url != "auto":
            init = dist_url
        else:
            host = env.get("MASTER_ADDR") or first_slurm_host(
                env.get("SLURM_JOB_NODELIST") or env.get("SLURM_NODELIST") or "127.0.0.1"
            )
            port = env.get("MASTER_PORT") or SLURM_PORT_BASE + int(env.get("SLURM_JOB_ID", 0)) % SLURM_PORT_RANGE
            init = f"tcp://{host}:{port}"
        return ProcessPlace("SLURM", rank, world, local_rank, local_size, machine, init)
    return None


def launch(main_func, num_gpus_per_machine, num_machines=1, machine_rank=0, dist_url=None, args=(),
           timeout=DEFAULT_TIMEOUT):
    """Run `main_func(*args)` in this process, in the job torchrun/srun started it in, or in
    `num_machines * num_gpus_per_machine` processes that it spawns.

    dist_url: "tcp://host:port" of machine 0, or "auto" (one machine, a free local port).
    """
    place = find_process_place(os.environ, dist_url)
    if place is not None:
        if num_gpus_per_machine > 1 or num_machines > 1 or machine_rank > 0:
            raise ConfigNotRunnable(
                f"This process was started by {place.launcher} as rank {place.rank} of "
                f"{place.world_size}, which starts the processes itself: drop --num-gpus "
                f"{num_gpus_per_machine} / --num-machines {num_machines} / --machine-rank "
                f"{machine_rank} (or run without {place.launcher})"
            )
        if place.world_size <= 1:
            return main_func(*args)
        _join_job(place, timeout)
        return _run_in_job(main_func, args, place.rank)

    world_size = num_machines * num_gpus_per_machine
    if world_size <= 1:
        return main_func(*args)
    backend = distributed_backend()
    if backend == "nccl" and num_gpus_per_machine > torch.cuda.device_count():
        raise ConfigNotRunnable(
            f"--num-gpus {num_gpus_per_machine}, but this machine has {torch.cuda.device_count()} "
            "CUDA devices"
        )
    if backend == "gloo":
        logger.warning(f"No CUDA: starting {num_gpus_per_machine} CPU processes per machine over gloo")
    if dist_url in (None, "auto"):
        if num_machines != 1:
            raise ConfigNotRunnable("--dist-url auto only works on one machine; pass tcp://<machine 0>:<port>")
        dist_url = f"tcp://127.0.0.1:{_find_free_port()}"
    mp.start_processes(
        _spawned_worker,
        nprocs=num_gpus_per_machine,
        args=(main_func, world_size, num_gpus_per_machine, machine_rank, dist_url, args, timeout,
              os.getpid()),
        daemon=False,
        start_method="spawn",
    )


def die_with_parent(parent_pid):
    """A `kill -9` of the launching process must stop its workers too: left running, they would
    train on and keep writing checkpoints beside a `--resume` of the same run (Linux only)."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() != parent_pid:  # the launcher died before the line above
        os._exit(1)


def _join_job(place: ProcessPlace, timeout):
    """init_process_group, the per-machine group detectron2's comm answers get_local_* from, this
    process's GPU (CUDA) or its share of the machine's cores (CPU)."""
    backend = distributed_backend()
    if backend == "nccl":
        if place.local_rank >= torch.cuda.device_count():
            raise ConfigNotRunnable(
                f"{place.launcher} started {place.local_size} processes on this machine, but it has "
                f"{torch.cuda.device_count()} CUDA devices"
            )
        torch.cuda.set_device(place.local_rank)
    else:
        # Share the cores between the CPU processes instead of oversubscribing them.
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // place.local_size))
    if place.rank != place.machine_rank * place.local_size + place.local_rank:
        raise ConfigNotRunnable(
            f"{place.launcher} gave rank {place.rank} to local rank {place.local_rank} of machine "
            f"{place.machine_rank} ({place.local_size} per machine): ranks must be numbered machine "
            "by machine (SLURM: --distribution=block)"
        )
    dist.init_process_group(
        backend, init_method=place.init_method, world_size=place.world_size, rank=place.rank,
        timeout=timeout,
    )
    create_local_process_group(place.local_size)
    dist.barrier()


def _run_in_job(main_func, args, rank):
    try:
        return main_func(*args)
    except CityscapesFTError as e:
        print(f"error (rank {rank}): {e}", file=sys.stderr)
        sys.exit(EXIT_USER_ERROR)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def _spawned_worker(local_rank, main_func, world_size, num_gpus_per_machine, machine_rank, dist_url,
                    args, timeout, parent_pid):
    die_with_parent(parent_pid)
    rank = machine_rank * num_gpus_per_machine + local_rank
    place = ProcessPlace("launch", rank, world_size, local_rank, num_gpus_per_machine,
                         machine_rank, dist_url)
    _join_job(place, timeout)
    _run_in_job(main_func, args, rank)
