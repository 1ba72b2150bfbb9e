"""`deepmim pretrain`: masked image modeling with deep supervision, end to end."""
from __future__ import annotations

import dataclasses
import itertools
from pathlib import Path
from typing import Any, Dict, Tuple

import torch

from ..config.loader import ConfigError, dump_yaml, load_config, to_dict
from ..config.schema import DataConfig, PretrainConfig
from ..models.deepmim import DeepMIM
from ..models.factory import expand_model_dict
from ..training import Trainer, TrainResult, resolve_device, resolve_precision, use_fused_attention
from ..training.distributed import cleanup, setup_distributed
from ..training.compile import should_compile
from ..training.parallel import is_sharded, prepare_model
from ..training.threads import apply_thread_plan
from ..training.logging import METRICS_FILE, say


def load_pretrain_config(recipe: str | None, overrides=()) -> PretrainConfig:
    """Recipe + overrides -> a validated PretrainConfig (model presets resolved)."""
    cfg = load_config(PretrainConfig, recipe, overrides, expand=_expand_preset)
    fill_target_normalisation(cfg)
    return cfg


def _expand_preset(data: Dict[str, Any]) -> Dict[str, Any]:
    if isinstance(data.get("model"), dict):
        data = {**data, "model": expand_model_dict(data["model"])}
    return data


def fill_target_normalisation(cfg: PretrainConfig) -> None:
    """Targets that need the raw pixels (hog, teacher) undo the input normalisation: give them
    data.mean/std unless the recipe set their own."""
    from ..targets import TARGETS

    specs = [cfg.model.target] + [h.target for h in cfg.model.heads if h.target is not None]
    for spec in specs:
        target_cls = TARGETS.get(spec.get("name"))
        fields = getattr(getattr(target_cls, "Config", None), "__dataclass_fields__", {})
        for key, value in (("mean", cfg.data.mean), ("std", cfg.data.std)):
            if key in fields and key not in spec:
                spec[key] = list(value)


def check_compatible(cfg: PretrainConfig) -> None:
    """Model/data mismatches that would otherwise surface as a shape error mid-run."""
    if cfg.data.img_size != cfg.model.encoder.img_size:
        raise ConfigError(f"data.img_size={cfg.data.img_size} but model.encoder.img_size="
                          f"{cfg.model.encoder.img_size}; set both to the same value")
    if len(cfg.data.mean) != cfg.model.encoder.in_chans or len(cfg.data.std) != cfg.model.encoder.in_chans:
        raise ConfigError("data.mean and data.std need one value per input channel")
    if cfg.train.accum_steps < 1 or cfg.train.batch_size < 1 or cfg.train.epochs < 1:
        raise ConfigError("train.batch_size, train.accum_steps and train.epochs must be at least 1")
    for i, spec in enumerate([cfg.model.target] + [h.target for h in cfg.model.heads]):
        if spec and spec.get("name") in ("teacher", "hybrid") and not spec.get("path"):
            where = "model.target" if i == 0 else f"model.heads.{i - 1}.target"
            raise ConfigError(f"{where}.path is not set: the {spec['name']} target needs the weights of its frozen "
                              f"model (e.g. {where}.path=/weights/clip_vit_b16.pt)")
    if cfg.train.log_every_steps < 1:
        raise ConfigError("train.log_every_steps must be at least 1")


def pretrain_loss(model, batch, generator: torch.Generator) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
    """The loss the loop minimises. Masks come from the noise the loader drew from per-sample seeds
    (Batch.noise), so they do not depend on how samples are split into micro-batches or processes."""
    device = next(model.parameters()).device
    noise = batch.noise.to(device, non_blocking=True) if batch.noise is not None else None  # pinned on CUDA
    out = model(batch.images.to(device, non_blocking=True), noise=noise, generator=generator)
    return out.loss, {f"loss_block{block}": loss for block, loss in out.losses.items()}


def run_pretrain(cfg: PretrainConfig) -> TrainResult:
    """Build everything from the config (failing fast on bad input), train, then draw the plots."""
    from ..data import build_pretrain_loader

    check_compatible(cfg)
    device, rank, world_size = setup_distributed(resolve_device(cfg.train.device))
    precision = resolve_precision(cfg.train.precision, device)
    if cfg.train.strategy == "fsdp" and precision == "fp16":
        raise ConfigError("train.strategy=fsdp with fp16 is not supported (the loss scaler is not shard-aware); "
                          "use train.precision=bf16 or fp32, or train.strategy=ddp")
    threads = apply_thread_plan(cfg.data.num_workers)
    torch.manual_seed(cfg.train.seed)
    model = DeepMIM(cfg.model).to(device)
    model.store_frozen_targets_in(precision)
    choose_attention(model, cfg, device, precision, rank)
    loader = build_pretrain_loader(dataclasses.replace(cfg.data, num_workers=threads.workers), cfg.train.batch_size,
                                   cfg.train.seed, rank, world_size, mask_patches=model.encoder.num_patches)
    cfg.train.compile = should_compile(cfg.train.compile, cfg.train.epochs * (len(loader) // cfg.train.accum_steps))
    unused = model.unused_parameter_names()
    model, forward_model = prepare_model(model, device, cfg.train.strategy, cfg.train.activation_checkpointing,
                                         cfg.train.compile, find_unused_parameters=bool(unused))
    output_dir = Path(cfg.train.output_dir)
    if rank == 0:
        output_dir.mkdir(parents=True, exist_ok=True)
        (output_dir / "config.yaml").write_text(dump_yaml(cfg))
        n_params = sum(p.numel() for p in model.parameters())
        say(f"deepmim pretrain: {n_params / 1e6:.2f}M parameters ({sum(p.numel() for p in model.encoder.parameters()) / 1e6:.2f}M encoder), "
            f"heads at blocks {model.blocks}, {len(loader.dataset)} images, device {device}, precision {precision}, "
            f"{world_size} process(es)\n{threads.describe()}; torch.compile {'on' if cfg.train.compile else 'off'}"
            f"\n--- resolved config ---\n{dump_yaml(cfg)}-----------------------")
    trainer = Trainer(model, loader, pretrain_loss, cfg.train, cfg.optim, to_dict(cfg), device, precision,
                      rank, world_size, batch_size_of=lambda b: b.images.shape[0], forward_model=forward_model)
    try:
        result = trainer.fit()
        if rank == 0 and cfg.train.plots:
            write_plots(plain_model(model, cfg, result.checkpoint), cfg, output_dir)
    finally:
        cleanup()
    return result


def choose_attention(model: DeepMIM, cfg: PretrainConfig, device: torch.device, precision: str, rank: int) -> None:
    """Set the attention kernel. attn_impl=measure times both kernels on a batch of the run's shape, once:
    a resumed run takes the choice recorded in its checkpoint (same kernel, same numbers). The choice
    replaces 'measure' in the config, so config.yaml and the checkpoints record it."""
    from ..training.checkpoint import find_resume_checkpoint, load_training_checkpoint

    impl = cfg.model.attn_impl
    if impl == "measure":
        previous = find_resume_checkpoint(Path(cfg.train.output_dir), cfg.train.resume)
        recorded = (load_training_checkpoint(previous).get("config") or {}).get("model", {}).get("attn_impl") \
            if previous else None
        if recorded in ("fused", "math"):
            impl = recorded
        else:
            impl = measure_attention(model, cfg, device, precision, rank)
        cfg.model.attn_impl = impl
    model.set_fused_attn(use_fused_attention(impl, device, precision))


def measure_attention(model: DeepMIM, cfg: PretrainConfig, device: torch.device, precision: str, rank: int) -> str:
    from ..training.precision import autocast, fastest_attention

    enc = cfg.model.encoder
    gen = torch.Generator().manual_seed(0)
    images = torch.randn(cfg.train.batch_size, enc.in_chans, enc.img_size, enc.img_size, generator=gen).to(device)

    def step():
        with autocast(device, precision):
            loss = model(images, generator=torch.Generator().manual_seed(0)).loss
        loss.backward()
        model.zero_grad(set_to_none=True)

    fused, best = fastest_attention(step, model.set_fused_attn, device)
    if rank == 0:
        say(f"attention kernel by measurement: SDPA {1e3 * best['fused']:.1f} ms, plain {1e3 * best['math']:.1f} ms "
            f"per forward+backward of a batch -> {'fused (SDPA)' if fused else 'math'}")
    return "fused" if fused else "math"


def plain_model(model: DeepMIM, cfg: PretrainConfig, checkpoint) -> DeepMIM:
    """`model` itself, or under FSDP (sharded parameters) an unsharded copy read from the checkpoint."""
    if not is_sharded(model) or checkpoint is None:
        return model
    plain = DeepMIM(cfg.model)
    plain.load_state_dict(torch.load(checkpoint, map_location="cpu", weights_only=True)["model"])
    return plain


def preview_images(cfg: DataConfig, n_images: int) -> torch.Tensor:
    """The first n images of the validation split (the train split where there is none), resized, normalised."""
    from ..data import build_dataset, build_eval_transform

    try:
        dataset = build_dataset(cfg, split="val")
    except ValueError:
        dataset = build_dataset(cfg)
    transform = build_eval_transform(cfg.img_size, cfg.mean, cfg.std)
    items = (dataset[i] for i in range(len(dataset)))
    images = list(itertools.islice((transform(item[0]) for item in items if item is not None), n_images))
    return torch.stack(images)


def write_plots(model: DeepMIM, cfg: PretrainConfig, output_dir: Path, n_images: int = 8) -> None:
    """loss.png from the run's log; reconstruction.png for fixed images under a fixed mask."""
    from ..analysis.plots import plot_loss_curves, plot_reconstructions, reconstruction_grid

    plot_loss_curves(output_dir / METRICS_FILE, output_dir / "loss.png")
    images = preview_images(cfg.data, n_images).to(next(model.parameters()).device)
    noise = torch.rand(images.shape[0], model.encoder.num_patches, generator=torch.Generator().manual_seed(0))
    rows = reconstruction_grid(model.float(), images, noise, cfg.data.mean, cfg.data.std)
    plot_reconstructions(rows, output_dir / "reconstruction.png")
    say(f"wrote {output_dir / 'loss.png'} and {output_dir / 'reconstruction.png'}")

