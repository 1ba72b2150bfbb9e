"""`deepmim pretrain`: masked image modeling with deep supervision, end to end."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

import torch

from ..checkpoint import find_resume_checkpoint, load_strict, read_checkpoint
from ..config.loader import ConfigError, load_config
from ..config.schema import PretrainConfig
from ..data import (
    TransformedDataset,
    build_dataset,
    build_eval_transform,
    build_pretrain_loader,
    collate_skip_broken,
    mix_seed,
    preview_images,
    validate_data_config,
)
from ..data.labels import ONLINE_PROBE
from ..models.deepmim import DeepMIM, validate_model_config
from ..models.factory import expand_model_dict
from ..models.head_names import loss_key
from ..targets import TARGETS
from ..training.console import say
from ..training.distributed import is_distributed, shard_indices
from ..training.env import Env
from ..training.loop import TrainResult
from ..training.metrics_log import METRICS_FILE
from ..training.online_probe import PROBE_SEED_STREAM, OnlineProbe, resolve_probe_blocks
from ..training.parallel import is_sharded
from ..training.precision import autocast, fastest_attention, use_fused_attention
from .base import TrainingTask, check_config, run_training
from .summary import count_parameters, describe_data, resize_note, run_summary


def load_pretrain_config(recipe: str | None, overrides=()) -> PretrainConfig:
    """Recipe + overrides -> a validated PretrainConfig (model presets resolved, derived values filled in
    by PretrainTask, as for a config built in Python)."""
    cfg = load_config(PretrainConfig, recipe, overrides, expand=_expand_preset)
    check_config(PretrainTask(cfg), require_paths=False)  # --print-config refuses the values a run would
    return cfg


def resolve_pretrain_config(cfg: PretrainConfig) -> PretrainConfig:
    """The config values derived from others, filled in once for every way a run starts (the CLI,
    --print-config, run_pretrain(PretrainConfig(...))): the target normalisation (hog and teacher targets
    undo data.mean/std). The numbers derived from the run's size (effective batch, peak lr, warm-up in
    steps, the image size trained) are training/derived.py's, shown by --print-config and the start-up
    summary. Idempotent: a value already set stays."""
    fill_target_normalisation(cfg)
    return cfg


def derived_values(cfg: PretrainConfig, world_size: int = 1):
    """training/derived.py's values for `cfg` before its data is read (steps per epoch still unknown)."""
    from ..training.derived import derive

    return derive(cfg.train, cfg.optim, world_size, img_size=cfg.data.img_size)


def _expand_preset(data: Dict[str, Any]) -> Dict[str, Any]:
    if isinstance(data.get("model"), dict):
        data = {**data, "model": expand_model_dict(data["model"])}
    return data


def fill_target_normalisation(cfg: PretrainConfig) -> None:
    """Targets that need the raw pixels (hog, teacher) undo the input normalisation: give them
    data.mean/std unless the recipe set their own."""
    specs = [cfg.model.target] + [h.target for h in cfg.model.heads if h.target is not None]
    for spec in specs:
        target_cls = TARGETS.get(spec.get("name"))
        fields = getattr(getattr(target_cls, "Config", None), "__dataclass_fields__", {})
        for key, value in (("mean", cfg.data.mean), ("std", cfg.data.std)):
            if key in fields and key not in spec:
                spec[key] = list(value)


def check_compatible(cfg: PretrainConfig, require_paths: bool = True) -> None:
    """Model/data mismatches that would otherwise surface as a shape error mid-run (`require_paths`: and
    the frozen model's weights a target needs, `Target.needs_weights`; --print-config shows a recipe before
    they are given)."""
    if cfg.data.img_size != cfg.model.encoder.img_size:
        raise ConfigError(
            f"data.img_size={cfg.data.img_size} but model.encoder.img_size="
            f"{cfg.model.encoder.img_size}; set both to the same value"
        )
    if len(cfg.data.mean) != cfg.model.encoder.in_chans or len(cfg.data.std) != cfg.model.encoder.in_chans:
        raise ConfigError("data.mean and data.std need one value per input channel")
    for i, spec in enumerate([cfg.model.target] + [h.target for h in cfg.model.heads]):
        target = TARGETS.get(spec.get("name")) if spec else None
        if require_paths and target is not None and target.needs_weights and not spec.get("path"):
            where = "model.target" if i == 0 else f"model.heads.{i - 1}.target"
            raise ConfigError(
                f"{where}.path is not set: the {spec['name']} target needs the weights of its frozen "
                f"model (e.g. {where}.path=/weights/clip_vit_b16.pt)"
            )


def pretrain_loss(
    model, batch, generator: torch.Generator, online_probe=None
) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
    """The loss the loop minimises. Masks come from one source only, the noise the loader drew from
    per-sample seeds (Batch.noise), so they do not depend on how samples are split into micro-batches
    or processes. (The step's `generator` serves losses that draw, e.g. fine-tuning's Mixup.)
    With an online probe, its heads take one step on this batch's detached block outputs."""
    device = next(model.parameters()).device
    noise = batch.noise.to(device, non_blocking=True)  # pinned on CUDA
    taps = online_probe.blocks if online_probe is not None else ()
    out = model(batch.images.to(device, non_blocking=True), noise=noise, taps=taps)
    metrics = {loss_key(block): loss for block, loss in out.losses.items()}
    if online_probe is not None:
        metrics.update(online_probe.train_step(out.taps, batch.labels))
    return out.loss, metrics


class PretrainTask(TrainingTask):
    """The skeleton's steps for pre-training: the seeded loader with per-sample masking noise, DeepMIM
    with its attention kernel chosen, the loss of every head; the pictures at the end."""

    kind, title, strategies = "pretrain", "pre-training", ("ddp", "fsdp")

    def __init__(self, cfg: PretrainConfig):
        super().__init__(resolve_pretrain_config(cfg))

    def validate(self, require_paths: bool = True) -> None:
        validate_model_config(self.cfg.model)
        validate_data_config(self.cfg.data, require_path=require_paths)
        check_compatible(self.cfg, require_paths)

    def build_data(self, env: Env):
        enc = self.cfg.model.encoder
        # labels only for the online probe: pre-training itself reads unlabelled images (data/labels.py)
        labels = ONLINE_PROBE if getattr(self.cfg.train, "online_probe", False) else None
        self.loader = build_pretrain_loader(
            env.data(self.cfg.data),
            self.cfg.train.batch_size,
            self.cfg.train.seed,
            env.rank,
            env.world_size,
            mask_patches=(enc.img_size // enc.patch_size) ** 2,
            labels=labels,
        )
        return self.loader

    def build_model(self, env: Env) -> DeepMIM:
        model = DeepMIM(self.cfg.model).to(env.device)
        model.store_frozen_targets_in(env.precision)  # a teacher's weights in bf16/fp16 once, not per op
        choose_attention(model, self.cfg, env.device, env.precision, env.rank)
        return model

    def hooks(self, model: DeepMIM, env: Env):
        self.online_probe = build_online_probe(
            self.cfg, model, self.loader, env.device, env.precision, env.rank, env.world_size
        )
        return self.online_probe

    def check_loss(self):
        return pretrain_loss  # without the online probe's training step

    def loss(self):
        if self.online_probe is not None:
            return functools.partial(pretrain_loss, online_probe=self.online_probe)
        return pretrain_loss  # looked up at run time (tests replace it)

    def find_unused_parameters(self, model: DeepMIM) -> bool:
        return bool(model.unused_parameter_names())

    def describe(self, model: DeepMIM, loader, env: Env) -> str:
        enc, cfg = self.cfg.model.encoder, self.cfg.model
        kind = "MAE" if len(model.blocks) == 1 else "DeepMIM"
        targets = sorted({(h.target or cfg.target).get("name", "?") for h in cfg.heads})
        model_line = (
            f"{kind} ViT {enc.embed_dim} wide x {enc.depth} blocks, {enc.img_size}px / patch {enc.patch_size}, "
            f"{enc.in_chans} channel(s); decoders at blocks {', '.join(map(str, model.blocks))}, target "
            f"{'+'.join(targets)}, mask ratio {cfg.mask_ratio}; {count_parameters(model)} "
            f"({count_parameters(model.encoder).split()[0]} encoder)"
        )
        notes = [note for note in [resize_note(getattr(loader, "raw_dataset", loader.dataset), enc.img_size)] if note]
        return run_summary(
            "deepmim pretrain",
            model_line,
            describe_data(self.cfg.data, len(loader.dataset)),
            self.cfg,
            loader,
            env,
            notes=notes,
        )

    def finish(self, result: TrainResult, model: DeepMIM, env: Env) -> TrainResult:
        """The plots, after training or, when a kill came between the last checkpoint and the plots, on the
        resume that finds nothing left to train (missing or older than the checkpoint: drawn again)."""
        out = Path(self.cfg.train.output_dir)
        if (
            env.is_main
            and self.cfg.train.plots
            and (result.step > result.start_step or plots_missing(out, result.checkpoint))
        ):
            write_plots(plain_model(model, self.cfg, result.checkpoint), self.cfg, out)
        return result


def run_pretrain(cfg: PretrainConfig) -> TrainResult:
    """Build everything from the config (failing fast on bad input), train, then draw the plots."""
    return run_training(PretrainTask(cfg))


def build_online_probe(
    cfg: PretrainConfig,
    model: DeepMIM,
    loader,
    device: torch.device,
    precision: str,
    rank: int = 0,
    world_size: int = 1,
) -> Optional[OnlineProbe]:
    """The online probe a PretrainConfig asks for (train.online_probe*), or None when it is off."""
    train = cfg.train
    if not getattr(train, "online_probe", False):
        return None
    classes = getattr(loader.raw_dataset, "classes", None)
    if not classes or len(classes) < 2:
        raise ConfigError(
            "train.online_probe=true needs labelled data with at least 2 classes; this data has "
            f"{len(classes) if classes else 'no'} classes (set train.online_probe=false)"
        )
    encoder = model.encoder
    blocks = resolve_probe_blocks(train.online_probe_blocks, model.blocks, encoder.depth)
    val_loader = None
    if train.online_probe_val_images > 0:
        if train.strategy == "fsdp" and is_distributed():
            raise ConfigError(
                "the online probe's val top-1 runs the encoder outside the sharded forward; under "
                "train.strategy=fsdp set train.online_probe_val_images=0"
            )
        data = cfg.data
        val = build_dataset(data, "val", labels=ONLINE_PROBE)
        n = min(train.online_probe_val_images, len(val))
        mine = shard_indices(n, rank, world_size)
        dataset = TransformedDataset(
            torch.utils.data.Subset(val, mine), build_eval_transform(data.img_size, data.mean, data.std)
        )
        # Own generator: creating the iterator must not draw from the global RNG.
        val_loader = torch.utils.data.DataLoader(
            dataset,
            batch_size=train.batch_size,
            shuffle=False,
            num_workers=0,
            collate_fn=collate_skip_broken,
            generator=torch.Generator().manual_seed(0),
        )
    return OnlineProbe(
        encoder.cfg.embed_dim,
        blocks,
        len(classes),
        device,
        pool=train.online_probe_pool,
        lr=train.online_probe_lr,
        seed=mix_seed(train.seed, PROBE_SEED_STREAM),
        encoder=encoder,
        val_loader=val_loader,
        precision=precision,
    )


def choose_attention(model: DeepMIM, cfg: PretrainConfig, device: torch.device, precision: str, rank: int) -> None:
    """Set the attention kernel. attn_impl=measure times both kernels on a batch of the run's shape, once:
    a resumed run takes the choice recorded in its checkpoint (same kernel, same numbers). The choice
    replaces 'measure' in the config, so config.yaml and the checkpoints record it."""
    impl = cfg.model.attn_impl
    if impl == "measure":
        previous = find_resume_checkpoint(Path(cfg.train.output_dir), cfg.train.resume)
        recorded = read_checkpoint(previous).config.get("model", {}).get("attn_impl") if previous else None
        if recorded in ("fused", "math"):
            impl = recorded
        else:
            impl = measure_attention(model, cfg, device, precision, rank)
        cfg.model.attn_impl = impl
    model.set_fused_attn(use_fused_attention(impl, device, precision))


def measure_attention(model: DeepMIM, cfg: PretrainConfig, device: torch.device, precision: str, rank: int) -> str:
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
        say(
            f"attention kernel by measurement: SDPA {1e3 * best['fused']:.1f} ms, plain {1e3 * best['math']:.1f} ms "
            f"per forward+backward of a batch -> {'fused (SDPA)' if fused else 'math'}"
        )
    return "fused" if fused else "math"


def plain_model(model: DeepMIM, cfg: PretrainConfig, checkpoint) -> DeepMIM:
    """`model` itself, or under FSDP (sharded parameters) an unsharded copy read from the checkpoint."""
    if not is_sharded(model) or checkpoint is None:
        return model
    plain = DeepMIM(cfg.model)
    load_strict(plain, read_checkpoint(checkpoint).model_state)
    return plain


PLOTS = ("loss.png", "reconstruction.png")


def plots_missing(output_dir: Path, checkpoint) -> bool:
    """Whether a plot of the run is absent or older than its checkpoint (a kill before or while they were drawn)."""
    if checkpoint is None or not Path(checkpoint).is_file():
        return False
    written = Path(checkpoint).stat().st_mtime
    return any(not (output_dir / name).is_file() or (output_dir / name).stat().st_mtime < written for name in PLOTS)


def write_plots(model: DeepMIM, cfg: PretrainConfig, output_dir: Path, n_images: int = 8) -> None:
    """loss.png from the run's log; reconstruction.png for fixed images under a fixed mask."""
    from ..analysis.plots import plot_loss_curves, plot_reconstructions, reconstruction_grid

    plot_loss_curves(output_dir / METRICS_FILE, output_dir / "loss.png")
    images = preview_images(cfg.data, n_images).to(next(model.parameters()).device)
    noise = torch.rand(images.shape[0], model.encoder.num_patches, generator=torch.Generator().manual_seed(0))
    rows = reconstruction_grid(model.float(), images, noise, cfg.data.mean, cfg.data.std)
    plot_reconstructions(rows, output_dir / "reconstruction.png")
    say(f"wrote {output_dir / 'loss.png'} and {output_dir / 'reconstruction.png'}")
