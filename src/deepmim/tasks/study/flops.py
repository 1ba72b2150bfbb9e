"""FLOPs per image, counted by `torch.utils.flop_counter.FlopCounterMode` on one real batch.

Training: forward + backward of the whole model (pre-training: encoder on the visible patches, every
decoder, the target; fine-tuning: the classifier and its loss); inference: the encoder's forward on
full images through every block. Counted with plain (math) attention on the CPU: the counter has no
formula for CPU flash attention and would skip it. A stage's FLOPs are the count per image times the
images it processed, so equal-compute comparisons can be read off next to equal-epoch ones. Optimizer
updates, data loading and the linear probes / k-NN on cached features are not counted (tiny).
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from ...config.schema import DataConfig, EncoderConfig, ModelConfig

SAMPLE_IMAGES = 8


def count_flops(step: Callable[[], None]) -> int:
    with FlopCounterMode(display=False) as counter:
        step()
    return int(counter.get_total_flops())


def sample_images(data: DataConfig, split: str, img_size: int, n: int = SAMPLE_IMAGES) -> torch.Tensor:
    """The first n images of a split, as the evaluation transform gives them (same shape as training crops)."""
    from ...data import build_dataset, build_eval_transform

    dataset = build_dataset(data, split)
    transform = build_eval_transform(img_size, data.mean, data.std)
    images = []
    for i in range(len(dataset)):
        item = dataset[i]
        if item is not None:  # an unreadable file
            images.append(transform(item[0]))
        if len(images) == n:
            break
    return torch.stack(images)


def _without_rng(build: Callable[[], torch.nn.Module]) -> torch.nn.Module:
    with torch.random.fork_rng(devices=[]):
        return build()


def pretrain_flops_per_image(model_cfg: ModelConfig, images: torch.Tensor) -> float:
    """Forward + backward of a pre-training step (masking as configured, every head, the target)."""
    from ...models.deepmim import DeepMIM

    model = _without_rng(lambda: DeepMIM(model_cfg))
    model.set_fused_attn(False)
    noise = torch.rand(images.shape[0], model.encoder.num_patches, generator=torch.Generator().manual_seed(0))
    return count_flops(lambda: model(images, noise=noise).loss.backward()) / images.shape[0]


def classifier_flops_per_image(
    enc: EncoderConfig, num_classes: int, img_size: int, global_pool: str, images: torch.Tensor
) -> tuple:
    """(forward + backward with the loss, forward only) per image of the fine-tuning classifier."""
    from ...models.classifier import vit_classifier

    model = _without_rng(lambda: vit_classifier(enc, num_classes, img_size, global_pool))
    for block in model.blocks:
        block.attn.fused_attn = False
    labels = torch.zeros(images.shape[0], dtype=torch.long)
    train = count_flops(lambda: F.cross_entropy(model(images), labels).backward())
    with torch.no_grad():
        forward = count_flops(lambda: model(images))
    return train / images.shape[0], forward / images.shape[0]


@torch.no_grad()
def encoder_flops_per_image(encoder: torch.nn.Module, images: torch.Tensor) -> float:
    """Forward of the (frozen) encoder on full images through every block, as the probes extract features."""
    fused = [block.attn.fused_attn for block in encoder.blocks]
    encoder.set_fused_attn(False)
    try:
        flops = count_flops(lambda: encoder(images.to(next(encoder.parameters()).device), taps=[encoder.depth]))
    finally:
        for block, value in zip(encoder.blocks, fused):
            block.attn.fused_attn = value
    return flops / images.shape[0]
