"""The divergence guard: stop a run before a checkpoint is written from weights that training wrecked.

It looks at three things, each only where the loop syncs with the device anyway (logging steps and
checkpoints), so it costs no extra host-device sync per step:

- gradients: non-finite gradient norms (from clipping when it is on, else one norm per step, kept on
  the device). Not under fp16, where the loss scaler skips such steps by design;
- weights: non-finite weights, or a global weight norm that grew more than `factor`-fold since the
  last check (a finite loss can still be a step that sent the weights to 1e4: the next loss is NaN);
- the loss: non-finite, or a spike: more than `factor` times its running average *and* above every
  loss the run has logged (so a loss near zero late in fine-tuning, or a noisy batch, never fires).

`factor` is train.divergence_factor (10 by default; null turns the spike and growth checks off, the
non-finite ones stay). Normal runs change their weight norm by a few percent between logging steps
and their loss by far less than 10x its average; a blown-up run moves both by orders of magnitude.
"""

from __future__ import annotations

import math
from typing import Any, Dict, Iterable, Optional

import torch

from .distributed import all_reduce_sum

EMA_STEPS = 50  # the loss's running average forgets with a time constant of this many optimizer steps


class DivergenceError(RuntimeError):
    """Training diverged; nothing was saved from the diverged state (the message names the good file)."""


def _local(t: torch.Tensor) -> torch.Tensor:
    """A DTensor's shard on this process (FSDP), else the tensor: norms without collectives."""
    return t.to_local() if hasattr(t, "to_local") else t


def squared_norm(tensors: Iterable[torch.Tensor]) -> Optional[torch.Tensor]:
    """Sum of squares of this process's part of `tensors` (fp64, so huge finite weights stay finite), on
    their device, without a sync."""
    tensors = [_local(t).detach() for t in tensors]
    if not tensors:
        return None
    norms = torch._foreach_norm(tensors)
    return torch.stack([n.double() for n in norms]).square().sum()


class DivergenceGuard:
    """Per-run state of the checks; `state_dict` rides in the checkpoint so a resumed run compares
    its losses with the same running average."""

    def __init__(self, factor: Optional[float], check_grads: bool):
        self.factor = factor
        self.check_grads = check_grads
        self.loss_avg: Optional[float] = None
        self.loss_max: Optional[float] = None
        self.observed_step = 0
        self.weight_norm: Optional[float] = None  # at the last check
        self.weight_step = 0
        self.bad_grad_step: Optional[torch.Tensor] = None  # first step with non-finite gradients, or -1

    # ------------------------------------------------------------------ per optimizer step (device only)

    def record_gradients(self, step: int, parameters, total_norm: Optional[torch.Tensor] = None) -> None:
        """Remember, on the device, the first step whose gradients were not finite."""
        if not self.check_grads:
            return
        if total_norm is None:
            total_norm = squared_norm(p.grad for p in parameters if p.grad is not None)
            if total_norm is None:
                return
        bad = ~torch.isfinite(_local(total_norm).float())
        if self.bad_grad_step is None:
            self.bad_grad_step = torch.full((), -1, dtype=torch.int64, device=bad.device)
        self.bad_grad_step = torch.where(bad & (self.bad_grad_step < 0), step, self.bad_grad_step)

    # ------------------------------------------------------------------ at check points (synced)

    def check_weights(self, parameters, step: int) -> Optional[str]:
        """What is wrong with the weights and gradients since the last check (None: nothing). The same
        answer on every process (one small all-reduce under torch.distributed)."""
        sq = squared_norm(parameters)
        device = sq.device if sq is not None else torch.device("cpu")
        bad_grad = (self.bad_grad_step if self.bad_grad_step is not None else torch.full((), -1)).to(device)
        packed = all_reduce_sum(
            torch.stack(
                [
                    sq if sq is not None else torch.zeros((), dtype=torch.float64, device=device),
                    (bad_grad >= 0).double(),
                    bad_grad.clamp(min=0).double(),
                ]
            )
        )
        total, grads_bad, grad_steps = packed.tolist()
        norm = math.sqrt(total) if math.isfinite(total) else float("nan")
        previous, since = self.weight_norm, self.weight_step
        if grads_bad:  # every process that saw them names the same step (DDP: gradients are all-reduced)
            return f"non-finite gradients at step {round(grad_steps / grads_bad) + 1}"
        if not math.isfinite(norm):
            return f"the weights became non-finite (NaN or inf) between step {since} and step {step}"
        if self.factor and previous and norm > self.factor * previous:
            return (
                f"the weights' norm grew {norm / previous:.3g}-fold between step {since} and step {step} "
                f"(from {previous:.4g} to {norm:.4g}; more than train.divergence_factor={self.factor:g})"
            )
        self.weight_norm, self.weight_step = norm, step
        return None

    def check_loss(self, loss: float) -> Optional[str]:
        """What is wrong with a loss (a window's mean or one batch's), compared with the run so far."""
        if not math.isfinite(loss):
            return None  # non-finite values are reported by the caller, with every metric named
        if (
            self.factor
            and self.loss_avg is not None
            and self.loss_max is not None
            and loss > self.factor * self.loss_avg
            and loss > self.loss_max
        ):
            return (
                f"loss {loss:.4g} is {loss / self.loss_avg:.3g} times its running average {self.loss_avg:.4g} "
                f"and above every earlier loss of the run (train.divergence_factor={self.factor:g})"
            )
        return None

    def observe_loss(self, loss: float, step: int) -> None:
        """Fold a checked window mean into the running average (time constant EMA_STEPS steps)."""
        steps = max(step - self.observed_step, 1)
        if self.loss_avg is None:
            self.loss_avg = self.loss_max = loss
        else:
            keep = (1.0 - 1.0 / EMA_STEPS) ** steps
            self.loss_avg = keep * self.loss_avg + (1.0 - keep) * loss
            self.loss_max = max(self.loss_max, loss)
        self.observed_step = step

    # ------------------------------------------------------------------ checkpoint

    def state_dict(self) -> Dict[str, Any]:
        return {"loss_avg": self.loss_avg, "loss_max": self.loss_max, "observed_step": self.observed_step}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        self.loss_avg, self.loss_max = state.get("loss_avg"), state.get("loss_max")
        self.observed_step = state.get("observed_step", 0)
