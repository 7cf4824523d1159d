"""Sharding an evaluation across processes started by ``torchrun`` (one or several machines).

torchrun sets RANK, WORLD_SIZE and LOCAL_RANK. Only small Python objects (answer records, done
ids) travel between ranks, so the process group is always gloo: it runs on CPU, on every machine,
next to models on any device. Without torchrun (WORLD_SIZE unset or 1) nothing is initialized.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any


@dataclass
class Ranks:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    _owns_group: bool = False

    @classmethod
    def from_env(cls, timeout_min: float = 360.0) -> Ranks:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
        local = int(os.environ.get("LOCAL_RANK", str(rank)))
        if world <= 1:
            return cls()
        import torch.distributed as dist

        owns = False
        if not dist.is_initialized():
            # Ranks wait for each other at the end of their shards; shards can take hours, so the
            # timeout is long and set by the user rather than gloo's 30-minute default.
            dist.init_process_group("gloo", timeout=timedelta(minutes=timeout_min))
            owns = True
        return cls(rank, world, local, owns)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def default_device(self) -> str | None:
        """One GPU per local rank under torchrun; None lets the runtime choose (single process)."""
        if self.world_size <= 1:
            return None
        import torch

        if torch.cuda.is_available():
            return f"cuda:{self.local_rank % torch.cuda.device_count()}"
        return "cpu"

    def all_gather(self, obj: Any) -> list[Any]:
        if self.world_size <= 1:
            return [obj]
        import torch.distributed as dist

        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def gather(self, obj: Any) -> list[Any] | None:
        """Every rank's ``obj`` on rank 0 (in rank order); None on the others."""
        if self.world_size <= 1:
            return [obj]
        import torch.distributed as dist

        out: list[Any] | None = [None] * self.world_size if self.is_main else None
        dist.gather_object(obj, out, dst=0)
        return out

    def barrier(self) -> None:
        if self.world_size > 1:
            import torch.distributed as dist

            dist.barrier()

    def close(self) -> None:
        if self._owns_group:
            import torch.distributed as dist

            dist.destroy_process_group()
            self._owns_group = False
