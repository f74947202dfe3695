"""A function run as a 2-task SLURM job: torch.distributed set up from SLURM's variables."""

from __future__ import annotations

import torch

from common.distributed import cleanup, detect_env, init_distributed


def all_reduce_ranks() -> dict:
    """Initialise gloo from SLURM_* variables and sum (rank + 1) over the processes."""
    env = init_distributed(torch.device("cpu"))
    value = torch.tensor([float(env.rank + 1)])
    torch.distributed.all_reduce(value)
    out = {
        "rank": env.rank,
        "world_size": env.world_size,
        "source": detect_env().source,
        "master": f"{env.master_addr}:{env.master_port}",
        "sum": value.item(),
    }
    cleanup()
    return out
