"""The rank layout of a process that a framework launched (shared by the integrations)."""

from __future__ import annotations

import os


def export_rank_layout(rank: int | None = None, world_size: int | None = None) -> None:
    """Fill RANK / WORLD_SIZE / LOCAL_RANK for runwire's identity when the launcher did not
    (Lightning's and Accelerate's own launchers set only some of them). Values torch.distributed
    knows win over the framework's guesses; variables already set are kept."""
    try:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            rank, world_size = dist.get_rank(), dist.get_world_size()
    except ImportError:
        pass
    if rank is not None:
        os.environ.setdefault("RANK", str(rank))
        os.environ.setdefault("LOCAL_RANK", str(rank))  # one node; multi-node launchers set it
    if world_size is not None:
        os.environ.setdefault("WORLD_SIZE", str(world_size))
