"""Where a process runs: what every task's set-up produces (tasks/base.py's `session`) and the Trainer
runs on."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Optional, TypeVar

import torch

C = TypeVar("C")


@dataclass(frozen=True)
class Env:
    """Where this process runs: its device and precision, its rank among world_size processes."""

    device: torch.device
    precision: str
    rank: int = 0
    world_size: int = 1
    loader_workers: Optional[int] = None  # DataLoader workers the thread plan allows (None: as configured)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def data(self, cfg: C) -> C:
        """A task's data config with the workers the thread plan allows (training/threads.py)."""
        if self.loader_workers is None or self.loader_workers == cfg.num_workers:
            return cfg
        return dataclasses.replace(cfg, num_workers=self.loader_workers)
