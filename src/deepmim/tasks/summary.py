"""The few lines a training run prints at start, instead of its whole config (which goes to
output_dir/config.yaml, and to the console as well with train.print_config=true):

    deepmim pretrain: DeepMIM ViT 128 wide x 6 blocks, 32px / patch 4, 3 channel(s); decoders at blocks 3, 4, 5, 6 ...
      data    embedded (train): 6144 images, 32px, mean [0.485, 0.456, 0.406] std [0.229, 0.224, 0.225]
      steps   48 per epoch x 8 epochs = 384; batch 128 per process x 1 accumulation x 1 process(es) = 128
      lr      7.50e-04 peak (base_lr 0.0015 x 128 / 256), 1 warm-up epoch(s) = 48 steps, cosine to 0
      device  cpu, precision fp32
      output  runs/demo (full config: runs/demo/config.yaml)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, List, Optional, Sequence

from torch import nn

from ..config.loader import dump_yaml
from ..training.derived import derive


def count_parameters(module: nn.Module) -> str:
    return f"{sum(p.numel() for p in module.parameters()) / 1e6:.2f}M parameters"


def describe_data(data: Any, images: int, split: Optional[str] = None) -> str:
    """`name path (split): N images, size, normalisation`."""
    where = f"{data.name} {data.path}" if getattr(data, "path", None) else data.name
    norm = f", mean {list(data.mean)} std {list(data.std)}" if hasattr(data, "mean") else ""
    return f"{where} ({split or data.split}): {images} images, {data.img_size}px{norm}"


def resize_note(dataset: Any, img_size: int) -> Optional[str]:
    """A note when the data's images (the first one, read as the loader reads it) are not `img_size` square:
    training resizes them (RandomResizedCrop / the eval resize), which the summary should say. None when
    they fit or when the data cannot be read by index (streamed shards)."""
    try:
        item = dataset[0]
    except Exception:  # noqa: BLE001 - a streamed or unreadable first item: nothing to note here
        return None
    image = item[0] if isinstance(item, (tuple, list)) else getattr(item, "image", None)
    shape = getattr(image, "shape", None)
    if shape is None or len(shape) < 2 or tuple(shape[-2:]) == (img_size, img_size):
        return None
    return (
        f"the data's images are {shape[-1]}x{shape[-2]} px (the first one); they are resized to the "
        f"{img_size} px the model is trained at (data.img_size)"
    )


def run_summary(
    title: str,
    model_line: str,
    data_line: str,
    cfg: Any,
    loader,
    env,
    train: Any = None,
    optim: Any = None,
    iterations: bool = False,
    notes: Sequence[str] = (),
) -> str:
    """The start-up lines: model, data, steps and batch, lr, device and precision, output folder, then
    `notes` and a warning when the warm-up is longer than the run. `train` / `optim`: the sections the
    Trainer runs on (segmentation's, with epochs and warm-up derived from iterations; `iterations=True`
    words the steps that way). The numbers come from training/derived.py, as the Trainer's do."""
    train, optim = train or cfg.train, optim or cfg.optim
    steps = len(loader) // max(train.accum_steps, 1)
    d = derive(train, optim, env.world_size, steps)
    how = f"lr {optim.lr}" if optim.lr is not None else f"base_lr {optim.base_lr} x {d.effective_batch} / 256"
    batch = (
        f"batch {train.batch_size} per process x {train.accum_steps} accumulation x {env.world_size} "
        f"process(es) = {d.effective_batch}"
    )
    schedule = getattr(optim, "schedule", "cosine")
    if iterations:
        step_line = f"{d.total_steps} iterations, validation every {steps}; {batch}"
        warmup = f"{d.warmup_steps:g} warm-up iteration(s)"
    else:
        step_line = f"{steps} per epoch x {train.epochs} epochs = {d.total_steps}; {batch}"
        warmup = f"{optim.warmup_epochs:g} warm-up epoch(s) = {d.warmup_steps:g} steps"
    out = Path(train.output_dir)
    lines: List[str] = [
        f"{title}: {model_line}",
        f"  data    {data_line}",
        f"  steps   {step_line}",
        f"  lr      {d.peak_lr:.2e} peak ({how}), {warmup}, {schedule} to {optim.min_lr:g}",
        f"  device  {env.device}, precision {env.precision}",
        f"  output  {out} (full config: {out / 'config.yaml'})",
    ]
    lines += [f"  note    {note}" for note in notes]
    if d.warmup_longer_than_run:
        key = "optim.warmup_iters" if iterations else "optim.warmup_epochs"
        lines.append(
            f"  warning the warm-up ({d.warmup_steps:g} steps) is longer than the run ({d.total_steps} steps): "
            f"the lr never reaches its peak of {d.peak_lr:.2e}; shorten it with {key}=N"
        )
    if getattr(train, "print_config", False):
        lines += ["--- resolved config ---", dump_yaml(cfg).rstrip("\n"), "-----------------------"]
    return "\n".join(lines)
