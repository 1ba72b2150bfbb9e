"""The online probe: a linear classifier per encoder block, trained beside pre-training on detached features.

What the numbers mean. `online_probe_top1_blockN` (train and epoch rows of metrics.jsonl, TensorBoard
`train/` and `epoch/`) is the top-1 (%) of block N's probe on the training batches as pre-training sees
them: augmented crops, the masked view (only the visible tokens, pooled), each batch scored just before
the probe learns from it, so it is an online training accuracy that lags the encoder. At each epoch end
`online_probe_val_top1_blockN` (eval rows, TensorBoard `eval/`) scores the first
`train.online_probe_val_images` images of the val split, unmasked and centre-cropped, through the same
heads. Neither is a substitute for `deepmim probe-layers` (a probe trained to convergence on frozen
features); both show, while a run trains, whether its features are becoming linearly separable.

Why it cannot change the pre-training. The heads and their optimizer live here, not in the model's state
dict, the main optimizer or its gradient clipping; they read the block outputs the masked forward computes
anyway, detached (no gradient reaches the encoder); they are initialised under a forked RNG from their own
seed and draw nothing afterwards, so masks, augmentations and data order are untouched. Their state rides
in the checkpoint's hook state, so `train.resume=auto` continues them exactly (one process; under DDP
gradients are averaged and BatchNorm statistics averaged at epoch ends, a mid-epoch checkpoint keeps rank
0's statistics).

Features: the raw residual stream after the block (before the final norm, for every block alike), pooled
as `train.online_probe_pool` says (avg: mean of the patch tokens, cls: the cls token); the head is MAE's
probe head, BatchNorm1d without affine + Linear, trained with AdamW at a constant lr.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import nn

from ..config.loader import ConfigError
from .distributed import all_reduce_sum, is_distributed
from .loop import TrainHooks
from .precision import autocast

POOLS = ("avg", "cls")
PROBE_SEED_STREAM = 0x0B5E  # the heads' init seed: (train.seed, this), never the run's own RNG


def resolve_probe_blocks(spec: Union[str, Sequence[int]], supervised: Sequence[int], depth: int) -> List[int]:
    """`supervised` (the blocks with a decoder), `all`, or a list of 1-based blocks."""
    if spec == "supervised":
        return sorted(supervised)
    if spec == "all":
        return list(range(1, depth + 1))
    if isinstance(spec, (list, tuple)) and spec and all(isinstance(b, int) for b in spec):
        blocks = sorted(set(spec))
        if blocks[0] < 1 or blocks[-1] > depth:
            raise ConfigError(f"train.online_probe_blocks must be in 1..{depth}, got {blocks}")
        return blocks
    raise ConfigError(f"train.online_probe_blocks must be supervised, all or a list of blocks, got {spec!r}")


def pool_visible(tokens: torch.Tensor, pool: str) -> torch.Tensor:
    """(N, 1 + L_visible, D) -> (N, D): the cls token, or the mean of the (visible) patch tokens."""
    return tokens[:, 0] if pool == "cls" else tokens[:, 1:].mean(dim=1)


def probe_head(dim: int, num_classes: int) -> nn.Module:
    head = nn.Sequential(nn.BatchNorm1d(dim, affine=False, eps=1e-6), nn.Linear(dim, num_classes))
    nn.init.trunc_normal_(head[1].weight, std=0.01)
    nn.init.zeros_(head[1].bias)
    return head


class OnlineProbe(TrainHooks):
    """Heads {block: BN + Linear}, their AdamW, one step per training micro-batch, val top-1 per epoch."""

    def __init__(
        self,
        dim: int,
        blocks: Sequence[int],
        num_classes: int,
        device: torch.device,
        pool: str = "avg",
        lr: float = 1e-3,
        seed: int = 0,
        encoder: Optional[nn.Module] = None,
        val_loader=None,
        precision: str = "fp32",
    ):
        if pool not in POOLS:
            raise ConfigError(f"train.online_probe_pool must be one of {POOLS}, got {pool!r}")
        self.blocks, self.pool, self.device = list(blocks), pool, device
        self.encoder, self.val_loader, self.precision = encoder, val_loader, precision
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.heads = nn.ModuleDict({str(b): probe_head(dim, num_classes) for b in self.blocks}).to(device)
        self.optimizer = torch.optim.AdamW(self.heads.parameters(), lr=lr, weight_decay=0.0)

    def train_step(self, taps: Dict[int, torch.Tensor], labels: torch.Tensor) -> Dict[str, torch.Tensor]:
        """One AdamW step of every head on this micro-batch; its top-1 (%) per block, scored before the step."""
        if labels.numel() < 2:  # BatchNorm needs two samples
            return {}
        labels = labels.to(self.device, non_blocking=True)
        with torch.autocast(self.device.type, enabled=False):
            logits = {b: self.heads[str(b)](pool_visible(taps[b].detach().float(), self.pool)) for b in self.blocks}
            loss = sum(F.cross_entropy(z, labels) for z in logits.values())
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if is_distributed():
            self._average_gradients()
        self.optimizer.step()
        return {
            f"online_probe_top1_block{b}": (z.detach().argmax(dim=1) == labels).float().mean() * 100
            for b, z in logits.items()
        }

    def _average_gradients(self) -> None:
        grads = [p.grad for p in self.heads.parameters()]
        flat = all_reduce_sum(torch.cat([g.flatten() for g in grads])) / torch.distributed.get_world_size()
        offset = 0
        for g in grads:
            g.copy_(flat[offset : offset + g.numel()].view_as(g))
            offset += g.numel()

    def _average_batchnorm(self) -> None:
        world = torch.distributed.get_world_size()
        for head in self.heads.values():
            bn = head[0]
            for buf in (bn.running_mean, bn.running_var):
                buf.copy_(all_reduce_sum(buf) / world)

    @torch.no_grad()
    def evaluate(self) -> Dict[str, float]:
        """Top-1 (%) per block on the val loader's full images (this process's shard, counts summed)."""
        counts = torch.zeros(len(self.blocks) + 1, dtype=torch.float64, device=self.device)
        was_training = self.encoder.training
        self.encoder.eval()
        self.heads.eval()
        for batch in self.val_loader:
            if batch.images.shape[0] == 0:
                continue
            images, labels = batch.images.to(self.device), batch.labels.to(self.device)
            with autocast(self.device, self.precision):
                taps, _ = self.encoder(images, taps=self.blocks)
            for i, b in enumerate(self.blocks):
                logits = self.heads[str(b)](pool_visible(taps[b].float(), self.pool))
                counts[i] += (logits.argmax(dim=1) == labels).sum()
            counts[-1] += labels.numel()
        self.encoder.train(was_training)
        self.heads.train()
        counts = all_reduce_sum(counts).tolist()
        return {
            f"online_probe_val_top1_block{b}": 100.0 * counts[i] / max(counts[-1], 1) for i, b in enumerate(self.blocks)
        }

    # ------------------------------------------------------------------ TrainHooks

    def after_epoch(self, trainer, epoch: int) -> Dict[str, float]:
        if is_distributed():
            self._average_batchnorm()
        return self.evaluate() if self.val_loader is not None else {}

    def state_dict(self) -> Dict[str, Any]:
        return {"online_probe": {"heads": self.heads.state_dict(), "optimizer": self.optimizer.state_dict()}}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        saved = state.get("online_probe")
        if saved is None:  # the run so far had no probe: it starts now, from its initialisation
            from .console import say

            say("online probe: the resumed checkpoint has no online-probe state; its heads start from scratch here")
            return
        self.heads.load_state_dict(saved["heads"])
        self.optimizer.load_state_dict(saved["optimizer"])
