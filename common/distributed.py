"""torch.distributed set-up from torchrun or SLURM variables, and small collective helpers."""

from __future__ import annotations

import logging
import os
import re
import socket
import subprocess
from dataclasses import dataclass

import torch
import torch.distributed as dist

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistEnv:
    """Where this process sits: global rank, world size, rank on its node, rendezvous address."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    master_addr: str = "127.0.0.1"
    master_port: int = 29500
    source: str = "single"


def first_host(nodelist: str) -> str:
    """First hostname of a SLURM nodelist (``node[03-05,7],gpu1`` -> ``node03``)."""
    try:
        out = subprocess.run(
            ["scontrol", "show", "hostnames", nodelist],
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        )
        return out.stdout.split()[0]
    except (OSError, subprocess.SubprocessError, IndexError):
        pass
    head = re.split(r",(?![^\[]*\])", nodelist)[0]
    m = re.match(r"^([^\[]+)\[([^\]]+)\]", head)
    if not m:
        return head
    first = m.group(2).split(",")[0].split("-")[0]
    return m.group(1) + first


def port_from_job_id(job_id: str) -> int:
    """A rendezvous port derived from the job id, so concurrent jobs on a node do not clash."""
    digits = int(re.sub(r"\D", "", job_id) or 0)
    return 20000 + digits % 20000


def local_address(master_addr: str) -> str:
    """This host's address on the route to ``master_addr`` (what the other ranks connect to);
    a UDP connect picks the route without sending anything."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect((master_addr, 9))
            return s.getsockname()[0]
    except OSError:
        return "unknown"


def detect_env() -> DistEnv:
    """Read torchrun's variables first (they win inside srun+torchrun), then SLURM's."""
    env = os.environ
    if "RANK" in env and "WORLD_SIZE" in env:
        return DistEnv(
            rank=int(env["RANK"]),
            world_size=int(env["WORLD_SIZE"]),
            local_rank=int(env.get("LOCAL_RANK", 0)),
            master_addr=env.get("MASTER_ADDR", "127.0.0.1"),
            master_port=int(env.get("MASTER_PORT", 29500)),
            source="torchrun",
        )
    if int(env.get("SLURM_NTASKS", "1")) > 1 and "SLURM_PROCID" in env:
        job = env.get("SLURM_JOB_ID", "0")
        return DistEnv(
            rank=int(env["SLURM_PROCID"]),
            world_size=int(env["SLURM_NTASKS"]),
            local_rank=int(env.get("SLURM_LOCALID", 0)),
            master_addr=env.get("MASTER_ADDR") or first_host(env.get("SLURM_JOB_NODELIST", "")),
            master_port=int(env.get("MASTER_PORT") or port_from_job_id(job)),
            source="slurm",
        )
    return DistEnv()


def init_distributed(device: torch.device) -> DistEnv:
    """Initialise the default process group when more than one process runs (idempotent)."""
    denv = detect_env()
    if denv.world_size == 1 or dist.is_initialized():
        return denv
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(denv.local_rank)
    dist.init_process_group(
        backend=backend,
        init_method=f"tcp://{denv.master_addr}:{denv.master_port}",
        rank=denv.rank,
        world_size=denv.world_size,
    )
    log.info(
        "distributed: rank %d/%d (local %d) via %s, backend %s, master %s:%d",
        denv.rank,
        denv.world_size,
        denv.local_rank,
        denv.source,
        backend,
        denv.master_addr,
        denv.master_port,
    )
    log_placement(denv)
    return denv


def log_placement(denv: DistEnv) -> None:
    """Per-node identity in every rank's log (``launch status`` lists each node's logs from
    it): wrong hosts or addresses show up here first."""
    log.info(
        "distributed: rank %d runs on host %s, address %s",
        denv.rank,
        socket.gethostname(),
        local_address(denv.master_addr),
    )


def is_dist() -> bool:
    return dist.is_available() and dist.is_initialized()


def get_rank() -> int:
    return dist.get_rank() if is_dist() else 0


def get_world_size() -> int:
    return dist.get_world_size() if is_dist() else 1


def is_main_process() -> bool:
    return get_rank() == 0


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """In-place sum over processes (no-op when single-process); returns the tensor."""
    if is_dist():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def all_reduce_mean(tensor: torch.Tensor) -> torch.Tensor:
    """In-place mean over processes (no-op when single-process); returns the tensor."""
    if is_dist():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        tensor /= dist.get_world_size()
    return tensor


def any_rank(flag: bool) -> bool:
    """``flag`` OR-ed over all ranks (a one-element all-reduce); ``flag`` itself when alone.

    A stop signal reaches each node at its own moment: decided per rank, rank 0 could stop
    after step k while rank 1 runs step k+1, and their collectives would no longer match."""
    if not is_dist():
        return flag
    on_gpu = dist.get_backend() == "nccl"
    device = torch.device("cuda", torch.cuda.current_device()) if on_gpu else torch.device("cpu")
    t = torch.tensor([int(flag)], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def barrier() -> None:
    if is_dist():
        dist.barrier()


def cleanup() -> None:
    if is_dist():
        dist.destroy_process_group()
