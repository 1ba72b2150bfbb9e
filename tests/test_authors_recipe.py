"""The recipes that reproduce the authors train as the authors' code does, parameter by parameter.

Each reference below is written here from the rules in the authors' files (DeepMIM's main_pretrain.py and
engine_pretrain.py, MAE's main_finetune.py, util/lr_decay.py, util/lr_sched.py and util/datasets.py, which
DeepMIM's fine-tuning runs, and the mmseg config and LayerDecayOptimizerConstructor of DeepMIM's
Segmentation folder), not imported from them:

- pre-training (timm 0.3.2 `add_weight_decay`, empty skip list): no weight decay on 1-D tensors and names
  ending in ".bias", weight decay on every other trainable tensor (cls_token and the decoders' mask_token
  included); one lr; AdamW betas (0.9, 0.95); lr per iteration: linear warm-up, then half-cycle cosine to
  min_lr; the loss is the plain sum of the heads' losses.
- fine-tuning (`param_groups_lrd`, `no_weight_decay()` = {pos_embed, cls_token, dist_token}): layer id 0 for
  cls_token, pos_embed and patch_embed.*, i + 1 for blocks.i.*, depth + 1 for the rest; lr scale
  layer_decay ** (depth + 1 - id); no decay on 1-D tensors and the named ones; AdamW's default betas.
- segmentation (num_layers = 12, layer_decay_rate = 0.9): layer id 0 for backbone.cls_token,
  backbone.mask_token, backbone.pos_embed and backbone.patch_embed.*, i + 1 for backbone.blocks.i.*,
  num_layers + 1 for the rest; lr scale rate ** (num_layers + 1 - id); no decay on 1-D tensors and names
  ending in ".bias" only (its ('pos_embed', 'cls_token') check compares unprefixed names and never matches).

ViT-B models are built on the meta device (no memory, well under a second).

The trajectory tests run the real task and a reference loop on the same batches and masks. Both step
with torch's fused AdamW kernel (the one the Trainer uses on CPUs and GPUs), so equal rules give equal
weights to the last bit; with the for-each kernel instead, the 1-ulp differences between the two kernels
grow, through Adam's division by the root of tiny second moments, to ~2e-3 after these 24 steps at this lr,
as large as the effect of one tensor's weight decay, and the comparison would prove nothing.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import warnings
from typing import Callable, Dict, List, Tuple

import pytest
import torch
import torch.nn.functional as F

from deepmim.config.schema import (
    DataConfig,
    EncoderConfig,
    HeadConfig,
    ModelConfig,
    OptimConfig,
    PretrainConfig,
    PretrainTrainConfig,
)
from deepmim.models import DeepMIM
from deepmim.models.classifier import build_classifier
from deepmim.tasks.finetune import FinetuneTask, load_finetune_config, run_finetune
from deepmim.tasks.pretrain import PretrainTask, load_pretrain_config, run_pretrain
from deepmim.tasks.segment import SegmentTask, build_segmentor, load_segment_config
from deepmim.training.optim import build_adamw
from tests.helpers.models import save_tiny_pretrained, tiny_model_config

CPU = torch.device("cpu")

# The ImageNet pre-training recipes that state the authors' settings (DeepMIM's and, for the MAE
# baselines, MAE's main_pretrain.py, which builds its groups the same way).
AUTHORS_PRETRAIN = [
    f"deepmim_{t}_vit_{s}" for t in ("clip", "pixel", "hog", "hybrid") for s in ("small", "base", "large")
]
AUTHORS_PRETRAIN += [
    "deepmim_pixel_vit_tiny",
    "mae_vit_tiny",
    "mae_vit_small",
    "mae_vit_base",
    "mae_vit_large",
    "mae_clip_vit_small",
    "mae_clip_vit_base",
    "mae_clip_vit_large",
]

Rule = Callable[[str, torch.Tensor], Tuple[float, float]]  # (name, parameter) -> (weight decay, lr scale)


# ----------------------------------------------------------------------------- the authors' rules


def authors_pretrain_rule(weight_decay: float) -> Rule:
    def rule(name, param):
        return (0.0 if param.ndim == 1 or name.endswith(".bias") else weight_decay), 1.0

    return rule


def mae_finetune_rule(weight_decay: float, layer_decay: float, depth: int) -> Rule:
    last = depth + 1
    named = {"pos_embed", "cls_token", "dist_token"}

    def rule(name, param):
        if name in ("cls_token", "pos_embed") or name.startswith("patch_embed"):
            layer = 0
        elif name.startswith("blocks."):
            layer = int(name.split(".")[1]) + 1
        else:
            layer = last
        decay = 0.0 if param.ndim == 1 or name in named else weight_decay
        return decay, layer_decay ** (last - layer)

    return rule


def authors_segmentation_rule(weight_decay: float, rate: float, num_layers: int) -> Rule:
    total = num_layers + 2

    def rule(name, param):
        theirs = name.replace("backbone.vit.", "backbone.", 1)  # their backbone's names have no ".vit"
        if theirs in ("backbone.cls_token", "backbone.mask_token", "backbone.pos_embed") or theirs.startswith(
            "backbone.patch_embed"
        ):
            layer = 0
        elif theirs.startswith("backbone.blocks."):
            layer = int(theirs.split(".")[2]) + 1
        else:
            layer = total - 1
        decay = 0.0 if param.ndim == 1 or name.endswith(".bias") or name in ("pos_embed", "cls_token") else weight_decay
        return decay, rate ** (total - layer - 1)

    return rule


# ----------------------------------------------------------------------------- comparing groups


def settings_of(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> Dict[str, Tuple[float, float]]:
    """(weight decay, lr scale) of every parameter the optimizer holds, by name; each exactly once."""
    names = {id(p): n for n, p in model.named_parameters()}
    settings: Dict[str, Tuple[float, float]] = {}
    for group in optimizer.param_groups:
        for p in group["params"]:
            name = names[id(p)]
            assert name not in settings, f"{name} is in two groups"
            settings[name] = (group["weight_decay"], group.get("lr_scale", 1.0))
    return settings


def differences(model: torch.nn.Module, optimizer: torch.optim.Optimizer, rule: Rule) -> List[str]:
    """The trainable parameters whose (weight decay, lr scale) differ from `rule`'s; the optimizer must hold
    exactly the trainable parameters."""
    ours = settings_of(model, optimizer)
    want = {n: rule(n, p) for n, p in model.named_parameters() if p.requires_grad}
    assert sorted(ours) == sorted(want)
    return sorted(
        n
        for n, (decay, scale) in want.items()
        if ours[n][0] != decay or not math.isclose(ours[n][1], scale, rel_tol=1e-12, abs_tol=0.0)
    )


@pytest.fixture(scope="module")
def frozen_mae_p16(tmp_path_factory):
    """A tiny pixel MAE with 16px patches: the frozen model the hybrid recipes need a file for."""
    cfg = ModelConfig(
        encoder=EncoderConfig(img_size=32, patch_size=16, embed_dim=32, depth=2, num_heads=2),
        heads=[HeadConfig(block=2, decoder_dim=32, decoder_depth=1, decoder_heads=2)],
        target={"name": "pixel", "norm_pix": True},
    )
    path = tmp_path_factory.mktemp("frozen") / "mae.pt"
    torch.save(
        {"task": "pretrain", "model": DeepMIM(cfg).state_dict(), "config": {"model": dataclasses.asdict(cfg)}}, path
    )
    return path


def pretrain_optimizer(recipe: str, frozen: str, *overrides: str):
    """A recipe's model (on the meta device) and the optimizer the pre-training Trainer builds for it."""
    extra = [f"model.heads.{i}.target.path={frozen}" for i in range(3)] if "hybrid" in recipe else []
    cfg = load_pretrain_config(recipe, [*extra, *overrides])
    with torch.device("meta"), warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # loading a frozen model's weights into meta tensors: a no-op
        model = DeepMIM(cfg.model)
    groups = PretrainTask(cfg).param_groups(model)  # None: build_adamw's weight-decay groups, as the Trainer
    return cfg, model, build_adamw(model, cfg.optim, 1e-3, CPU, groups=groups)


@pytest.mark.parametrize("recipe", AUTHORS_PRETRAIN)
def test_pretraining_groups_are_the_authors(recipe, frozen_mae_p16):
    cfg, model, optimizer = pretrain_optimizer(recipe, frozen_mae_p16)
    assert cfg.optim.no_decay_tokens is False and cfg.optim.weight_decay == 0.05
    assert differences(model, optimizer, authors_pretrain_rule(0.05)) == []
    assert optimizer.defaults["betas"] == (0.9, 0.95) and optimizer.defaults["eps"] == 1e-8
    decayed = {n for n, (wd, _) in settings_of(model, optimizer).items() if wd > 0}
    assert "encoder.cls_token" in decayed and sum(n.endswith(".mask_token") for n in decayed) == len(model.blocks)


def test_pretraining_groups_of_the_clip_vit_base_parameter_by_parameter(frozen_mae_p16):
    """deepmim_clip_vit_base: 369 trainable tensors, 5 of them tokens (decayed), and today's option
    (optim.no_decay_tokens=true) differs from the authors' exactly on those 5."""
    _, model, optimizer = pretrain_optimizer("deepmim_clip_vit_base", frozen_mae_p16)
    settings = settings_of(model, optimizer)
    assert len(settings) == 369
    # decayed: the patch embedding, 12 blocks x (qkv, proj, fc1, fc2), 4 decoders x (embed, 4 blocks x 4, pred),
    # the 5 tokens
    assert sum(wd == 0.05 for wd, _ in settings.values()) == 1 + 12 * 4 + 4 * 18 + 5
    _, model, optimizer = pretrain_optimizer("deepmim_clip_vit_base", frozen_mae_p16, "optim.no_decay_tokens=true")
    assert differences(model, optimizer, authors_pretrain_rule(0.05)) == [
        "decoders.10.mask_token",
        "decoders.12.mask_token",
        "decoders.6.mask_token",
        "decoders.8.mask_token",
        "encoder.cls_token",
    ]


def test_finetuning_groups_are_the_authors_at_layer_decay_0_6():
    cfg = load_finetune_config("finetune_vit_base_in1k", ["model.preset=deepmim_clip_vit_base"])
    assert (cfg.optim.layer_decay, cfg.optim.weight_decay, cfg.optim.no_decay_tokens) == (0.6, 0.05, True)
    with torch.device("meta"):
        model, enc = build_classifier(cfg.model, 1000, 224)
    optimizer = build_adamw(model, cfg.optim, 1e-3, CPU, groups=FinetuneTask(cfg).param_groups(model))
    assert len(settings_of(model, optimizer)) == 152
    assert differences(model, optimizer, mae_finetune_rule(0.05, 0.6, enc.depth)) == []
    assert optimizer.defaults["betas"] == (0.9, 0.999)
    scales = settings_of(model, optimizer)
    assert scales["patch_embed.proj.weight"][1] == pytest.approx(0.6**13)
    assert scales["blocks.11.mlp.fc2.weight"][1] == pytest.approx(0.6) and scales["head.weight"][1] == 1.0


def segmentation_optimizer(*overrides: str):
    cfg = load_segment_config("upernet_vit_base_ade20k", ["model.preset=deepmim_clip_vit_base", *overrides])
    with torch.device("meta"):
        model, enc = build_segmentor(cfg.model, 150, cfg.data.crop_size)
    return cfg, model, build_adamw(model, cfg.optim, 5e-5, CPU, groups=SegmentTask(cfg).param_groups(model))


def test_segmentation_groups_are_the_authors():
    cfg, model, optimizer = segmentation_optimizer()
    assert (cfg.optim.layer_decay, cfg.optim.weight_decay, cfg.optim.lr) == (0.9, 0.05, 5e-5)
    assert cfg.optim.no_decay_tokens is False and tuple(cfg.optim.betas) == (0.9, 0.999)
    assert len(settings_of(model, optimizer)) == 247
    assert differences(model, optimizer, authors_segmentation_rule(0.05, 0.9, 12)) == []
    settings = settings_of(model, optimizer)
    for name in (
        "backbone.vit.cls_token",
        "backbone.vit.pos_embed",
        "backbone.vit.blocks.3.attn.relative_position_bias_table",
    ):
        assert settings[name][0] == 0.05, name


def test_segmentation_option_keeps_tokens_and_tables_undecayed():
    """optim.no_decay_tokens=true (the option's default) differs from the authors' on exactly 14 tensors."""
    _, model, optimizer = segmentation_optimizer("optim.no_decay_tokens=true")
    diff = differences(model, optimizer, authors_segmentation_rule(0.05, 0.9, 12))
    assert diff == sorted(
        ["backbone.vit.cls_token", "backbone.vit.pos_embed"]
        + [f"backbone.vit.blocks.{i}.attn.relative_position_bias_table" for i in range(12)]
    )


# ----------------------------------------------------------------------------- trajectories


def mae_lr(epoch: float, peak: float, min_lr: float, warmup_epochs: float, epochs: float) -> float:
    """util/lr_sched.adjust_learning_rate: `epoch` is fractional (iteration / iterations per epoch)."""
    if epoch < warmup_epochs:
        return peak * epoch / warmup_epochs
    return min_lr + (peak - min_lr) * 0.5 * (
        1.0 + math.cos(math.pi * (epoch - warmup_epochs) / (epochs - warmup_epochs))
    )


def run_recorded(task_cls, run, cfg, monkeypatch) -> Dict:
    """Run the real task on `cfg`, keeping a copy of the model as built (its initial weights) and every
    batch its loss was called with, in order; and the weights of the last checkpoint."""
    record: Dict = {"batches": []}
    build, loss = task_cls.build_model, task_cls.loss

    def build_and_copy(self, env):
        model = build(self, env)
        record["initial"] = copy.deepcopy(model)
        return model

    def recording_loss(self):
        compute = loss(self)

        def recorded(model, batch, generator):
            record["batches"].append(copy.deepcopy(batch))
            return compute(model, batch, generator)

        return recorded

    monkeypatch.setattr(task_cls, "build_model", build_and_copy)
    monkeypatch.setattr(task_cls, "loss", recording_loss)
    result = run(cfg)
    record["final"] = torch.load(result.checkpoint, weights_only=True)["model"]
    return record


def steps_of(record: Dict) -> List:
    """The batches of the 24 optimizer steps (the loop may score the final weights once more, without a step)."""
    steps = STEPS_PER_EPOCH * EPOCHS
    assert len(record["batches"]) in (steps, steps + 1)
    return record["batches"][:steps]


def max_difference(a: Dict[str, torch.Tensor], b: Dict[str, torch.Tensor], keys=None) -> float:
    keys = sorted(a) if keys is None else keys
    assert sorted(a) == sorted(b)
    return max((a[k].float() - b[k].float()).abs().max().item() for k in keys)


TRAIN = dict(
    progress=False, tensorboard=False, plots=False, device="cpu", precision="fp32", compile=False, log_every_steps=4
)
STEPS_PER_EPOCH, EPOCHS = 8, 3  # 64 images, batch 8: 24 optimizer steps


def reference_pretraining(model: DeepMIM, batches, cfg, decay_rule: Rule) -> Dict[str, torch.Tensor]:
    """DeepMIM's main_pretrain.py + engine_pretrain.py in fp32: AdamW (0.9, 0.95) over `decay_rule`'s two
    groups, lr = blr * batch / 256 set at every iteration by the warm-up + half-cycle cosine, loss = sum of
    the heads' losses (the model's own forward, masks from the batch's noise)."""
    o, t = cfg.optim, cfg.train
    peak = o.base_lr * t.batch_size / 256
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    groups = [
        {"params": [p for n, p in params if decay_rule(n, p)[0] == 0], "weight_decay": 0.0},
        {"params": [p for n, p in params if decay_rule(n, p)[0] > 0], "weight_decay": o.weight_decay},
    ]
    optimizer = torch.optim.AdamW(groups, lr=peak, betas=(0.9, 0.95), fused=True)  # FUSED: see the module doc
    model.train()
    for it, batch in enumerate(batches):
        lr = mae_lr(it / STEPS_PER_EPOCH, peak, o.min_lr, o.warmup_epochs, t.epochs)
        for group in optimizer.param_groups:
            group["lr"] = lr
        out = model(batch.images, noise=batch.noise)
        loss = sum(out.losses.values())
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    return model.state_dict()


def test_pretraining_trajectory_is_the_authors(tmp_path, monkeypatch):
    """A tiny DeepMIM with 3 heads, 24 steps of the real `deepmim pretrain` and of the authors' loop on the
    same batches and masks: the same weights to fp32 rounding. The same loop with tokens exempt from weight
    decay for the cls_token alone ends measurably elsewhere: the comparison sees a one-tensor change of the rule."""
    cfg = PretrainConfig(
        model=tiny_model_config(img_size=16, heads=(2, 3, 4)),
        data=DataConfig(name="embedded", img_size=16, num_samples=64, num_workers=0),
        optim=OptimConfig(base_lr=0.2, min_lr=1e-4, weight_decay=0.3, warmup_epochs=1, no_decay_tokens=False),
        train=PretrainTrainConfig(epochs=EPOCHS, batch_size=8, output_dir=str(tmp_path), **TRAIN),
    )
    record = run_recorded(PretrainTask, run_pretrain, cfg, monkeypatch)
    batches = steps_of(record)
    assert len({b.noise.sum().item() for b in batches}) == len(batches)  # fresh masks every step
    initial = record["initial"].state_dict()
    assert max_difference(initial, record["final"]) > 1e-2  # it trained

    authors = reference_pretraining(copy.deepcopy(record["initial"]), batches, cfg, authors_pretrain_rule(0.3))
    assert max_difference(authors, record["final"]) <= 1e-6  # measured: 0.0

    def cls_token_exempt(name, param):
        return (0.0, 1.0) if name == "encoder.cls_token" else authors_pretrain_rule(0.3)(name, param)

    other = reference_pretraining(copy.deepcopy(record["initial"]), batches, cfg, cls_token_exempt)
    assert max_difference(other, record["final"], ["encoder.cls_token"]) > 1e-4  # measured: 1.5e-3


def reference_finetuning(model, batches, cfg, depth: int) -> Dict[str, torch.Tensor]:
    """MAE's main_finetune.py + engine_finetune.py without Mixup, in fp32: `param_groups_lrd` groups,
    AdamW (default betas), lr = blr * batch / 256 by the warm-up + cosine schedule, times each group's scale,
    set at every iteration; label-smoothed cross-entropy."""
    o, t, a = cfg.optim, cfg.train, cfg.augment
    peak = o.base_lr * t.batch_size / 256
    rule = mae_finetune_rule(o.weight_decay, o.layer_decay, depth)
    groups = [
        {"params": [p], "weight_decay": rule(n, p)[0], "lr_scale": rule(n, p)[1]}
        for n, p in model.named_parameters()
        if p.requires_grad
    ]
    optimizer = torch.optim.AdamW(groups, lr=peak, fused=True)  # FUSED: see the module doc
    model.train()
    for it, batch in enumerate(batches):
        lr = mae_lr(it / STEPS_PER_EPOCH, peak, o.min_lr, o.warmup_epochs, t.epochs)
        for group in optimizer.param_groups:
            group["lr"] = lr * group["lr_scale"]
        loss = F.cross_entropy(model(batch.images), batch.labels, label_smoothing=a.label_smoothing)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    return model.state_dict()


def test_finetuning_trajectory_is_the_authors_without_mixup(tmp_path, monkeypatch):
    """24 steps of the real `deepmim finetune` (layer decay 0.6, smoothing 0.1, no Mixup/CutMix, no drop
    path) and of MAE's loop on the same batches: the same weights to fp32 rounding."""
    pretrained = save_tiny_pretrained(tmp_path / "pre.pt")
    cfg = load_finetune_config(
        "finetune_demo",
        [
            *[f"train.{k}={v}" for k, v in TRAIN.items()],
            "data.num_workers=0",
            f"model.checkpoint={pretrained}",
            f"train.output_dir={tmp_path / 'ft'}",
            "data.img_size=16",
            "data.num_samples=64",
            "train.batch_size=8",
            f"train.epochs={EPOCHS}",
            "augment.mixup=0",
            "augment.cutmix=0",
            "augment.label_smoothing=0.1",
            "model.drop_path=0",
            "optim.layer_decay=0.6",
            "optim.warmup_epochs=1",
            "optim.base_lr=0.2",
            "optim.min_lr=1e-4",
            "optim.weight_decay=0.3",
        ],
    )
    record = run_recorded(FinetuneTask, run_finetune, cfg, monkeypatch)
    batches = steps_of(record)
    initial = record["initial"].state_dict()
    assert max_difference(initial, record["final"]) > 1e-2

    depth = len(record["initial"].blocks)
    authors = reference_finetuning(copy.deepcopy(record["initial"]), batches, cfg, depth)
    assert max_difference(authors, record["final"]) <= 1e-6

    changed = copy.deepcopy(cfg)
    changed.optim.layer_decay = 0.59  # one scale per block off by a little: the comparison must see it
    other = reference_finetuning(copy.deepcopy(record["initial"]), batches, changed, depth)
    assert max_difference(other, record["final"]) > 1e-4


# ----------------------------------------------------------------------------- data recipes

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)

# DeepMIM's main_pretrain.py: RandomResizedCrop(224, scale=(0.2, 1.0), bicubic) with torchvision's default
# ratio, RandomHorizontalFlip(), ToTensor, Normalize(ImageNet mean and std).
AUTHORS_PRETRAIN_DATA = dict(
    img_size=224,
    crop_scale=(0.2, 1.0),
    ratio=(3 / 4, 4 / 3),
    interpolation="bicubic",
    hflip=0.5,
    mean=IMAGENET_MEAN,
    std=IMAGENET_STD,
)

# MAE's main_finetune.py defaults, the authors' README command (--reprob 0.25 --mixup 0.8 --cutmix 1.0) and
# util/datasets.py: timm's create_transform with torchvision's RandomResizedCrop scale and ratio, bicubic,
# flip 0.5, no colour jitter, RandAugment rand-m9-mstd0.5-inc1, random erasing 0.25 (pixel mode, one box);
# eval: bicubic resize to int(224 / (224 / 256)) = 256, centre crop 224; Mixup 0.8 / CutMix 1.0 (switch 0.5,
# per batch, always applied), label smoothing 0.1 into the soft targets, soft-target cross-entropy.
AUTHORS_FINETUNE_DATA = dict(
    img_size=224,
    crop_scale=(0.08, 1.0),
    ratio=(3 / 4, 4 / 3),
    interpolation="bicubic",
    hflip=0.5,
    color_jitter=None,
    rand_augment=dict(ops_per_image=2, magnitude=9, magnitude_std=0.5, increasing=True),
    reprob=0.25,
    remode="pixel",
    recount=1,
    eval_resize=256,
    eval_crop=224,
    mixup=0.8,
    cutmix=1.0,
    cutmix_minmax=None,
    mixup_prob=1.0,
    switch_prob=0.5,
    mixup_mode="batch",
    smoothing=0.1,
    mean=IMAGENET_MEAN,
    std=IMAGENET_STD,
)

# timm's "inc1" RandAugment ops: the ones whose strength grows with the magnitude
INCREASING_OPS = {
    "AutoContrast",
    "Equalize",
    "Invert",
    "Rotate",
    "PosterizeIncreasing",
    "SolarizeIncreasing",
    "SolarizeAdd",
    "ColorIncreasing",
    "ContrastIncreasing",
    "BrightnessIncreasing",
    "SharpnessIncreasing",
    "ShearX",
    "ShearY",
    "TranslateXRel",
    "TranslateYRel",
}


@pytest.mark.parametrize(
    "recipe",
    [
        "deepmim_clip_vit_base",
        "deepmim_pixel_vit_base",
        "deepmim_hybrid_vit_base",
        "deepmim_hog_vit_base",
        "mae_vit_base",
    ],
)
def test_pretraining_data_is_the_authors(recipe, monkeypatch):
    """The recipe's loader augments as main_pretrain.py: the crop box drawn with the authors' scale and
    ratio, resized bicubic (antialiased, as PIL), flipped with probability 1/2, normalised."""
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms.v2 import functional as TF

    from deepmim.data import loader as loader_module
    from deepmim.data import transforms as transforms_module

    a = AUTHORS_PRETRAIN_DATA
    cfg = load_pretrain_config(
        recipe, [f"model.heads.{i}.target.path=unused" for i in range(3)] if "hybrid" in recipe else []
    )
    d = cfg.data
    assert (d.img_size, d.crop_scale_min, d.hflip, tuple(d.mean), tuple(d.std)) == (
        a["img_size"],
        a["crop_scale"][0],
        True,
        a["mean"],
        a["std"],
    )
    loader = loader_module.build_pretrain_loader(
        dataclasses.replace(d, name="embedded", num_samples=8, num_workers=0), 4, seed=0
    )
    transform = loader.dataset.transform
    assert (tuple(transform.size), transform.scale, transform.ratio) == ((224, 224), a["crop_scale"], a["ratio"])

    drawn = []
    sample = transforms_module.sample_crop_box

    def recording_box(height, width, scale, ratio, uniforms):
        drawn.append((sample(height, width, scale, ratio, uniforms), scale, ratio, uniforms[-1]))
        return drawn[-1][0]

    monkeypatch.setattr(transforms_module, "sample_crop_box", recording_box)
    image = torch.randint(0, 256, (3, 300, 400), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    flips = 0
    for seed in range(4):
        torch.manual_seed(seed)
        out = transform(image)
        box, scale, ratio, flip_draw = drawn[-1]
        assert (scale, ratio) == (a["crop_scale"], a["ratio"])
        want = TF.resized_crop(image, *box, [224, 224], InterpolationMode.BICUBIC, antialias=True).float() / 255
        if flip_draw < a["hflip"]:
            want, flips = want.flip(-1), flips + 1
        want = (want - torch.tensor(a["mean"]).view(3, 1, 1)) / torch.tensor(a["std"]).view(3, 1, 1)
        torch.testing.assert_close(out, want, rtol=0, atol=1e-5)
    assert 0 < flips < 4  # both branches were compared


def test_finetuning_data_is_the_authors():
    from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
    from torchvision.transforms import InterpolationMode

    from deepmim.tasks.finetune import build_transforms, make_loss

    a = AUTHORS_FINETUNE_DATA
    cfg = load_finetune_config("finetune_vit_base_in1k")
    train, evaluate = build_transforms(cfg)
    steps = train.transform.transforms
    assert [type(t).__name__ for t in steps] == [
        "RandomResizedCropAndInterpolation",
        "RandomHorizontalFlip",
        "RandAugment",
        "MaybeToTensor",
        "Normalize",
        "RandomErasing",
    ]
    crop, flip, rand_augment, _, normalize, erase = steps  # no ColorJitter: a["color_jitter"] is None
    assert a["color_jitter"] is None and cfg.augment.color_jitter is None
    assert (crop.size, crop.scale, crop.ratio, crop.interpolation) == (
        (a["img_size"],) * 2,
        a["crop_scale"],
        a["ratio"],
        InterpolationMode.BICUBIC,
    )
    assert flip.p == a["hflip"]
    ra = a["rand_augment"]
    assert cfg.augment.auto_augment == "rand-m9-mstd0.5-inc1" and rand_augment.num_layers == ra["ops_per_image"]
    assert {op.name for op in rand_augment.ops} == INCREASING_OPS and rand_augment.choice_weights is None
    for op in rand_augment.ops:
        assert (op.magnitude, op.magnitude_std, op.prob) == (ra["magnitude"], ra["magnitude_std"], 0.5)
        assert op.hparams["translate_const"] == int(224 * 0.45) and op.hparams["img_mean"] == (124, 116, 104)
        assert op.hparams["interpolation"] == 3  # PIL's BICUBIC, as create_transform(interpolation="bicubic")
    assert tuple(normalize.mean.tolist()) == pytest.approx(a["mean"]) and tuple(
        normalize.std.tolist()
    ) == pytest.approx(a["std"])
    assert (erase.probability, erase.mode, erase.max_count) == (a["reprob"], a["remode"], a["recount"])

    resize, center, _, normalize = evaluate.transform.transforms
    assert (resize.size, resize.interpolation, center.size) == (
        a["eval_resize"],
        InterpolationMode.BICUBIC,
        (a["eval_crop"],) * 2,
    )
    assert int(cfg.data.img_size / cfg.augment.eval_crop_pct) == a["eval_resize"]

    loss = make_loss(cfg, 1000)
    m = loss.mixup
    assert (m.mixup_alpha, m.cutmix_alpha, m.cutmix_minmax, m.mix_prob, m.switch_prob, m.mode, m.label_smoothing) == (
        a["mixup"],
        a["cutmix"],
        a["cutmix_minmax"],
        a["mixup_prob"],
        a["switch_prob"],
        a["mixup_mode"],
        a["smoothing"],
    )
    assert m.correct_lam and isinstance(loss.criterion, SoftTargetCrossEntropy)
    plain = make_loss(load_finetune_config("finetune_vit_base_in1k", ["augment.mixup=0", "augment.cutmix=0"]), 1000)
    assert plain.mixup is None and isinstance(plain.criterion, LabelSmoothingCrossEntropy)
    assert plain.criterion.smoothing == a["smoothing"]


def test_finetuning_schedule_and_model_are_the_authors():
    """The README command: 100 epochs, batch 8 x 128, blr 1e-4, layer decay 0.6, weight decay 0.05, drop path
    0.1; MAE's defaults: 5 warm-up epochs, min lr 1e-6, no gradient clipping, global average pooling, head
    initialised with std 2e-5, AdamW's default betas."""
    cfg = load_finetune_config("finetune_vit_base_in1k")
    o, t, m = cfg.optim, cfg.train, cfg.model
    assert (t.epochs, t.batch_size, t.accum_steps) == (100, 128, 1)
    assert (o.base_lr, o.lr, o.layer_decay, o.weight_decay, o.warmup_epochs, o.min_lr, o.clip_grad) == (
        1e-4,
        None,
        0.6,
        0.05,
        5,
        1e-6,
        None,
    )
    assert tuple(o.betas) == (0.9, 0.999)
    assert (m.drop_path, m.global_pool, m.head_init_std) == (0.1, "avg", 2e-5)


@pytest.mark.parametrize(
    "recipe,epochs",
    [
        ("deepmim_clip_vit_base", 1600),
        ("deepmim_pixel_vit_base", 1600),
        ("deepmim_hog_vit_base", 1600),
        ("deepmim_hybrid_vit_base", 300),
    ],
)
def test_pretraining_schedule_is_the_authors(recipe, epochs):
    """The README command: batch 32 x 128, blr 1.5e-4, weight decay 0.05, 40 warm-up epochs, mask ratio 0.75
    (1600 epochs; the hybrid target's paper number is at 300); main_pretrain.py: min lr 0, AdamW (0.9, 0.95),
    no gradient clipping."""
    cfg = load_pretrain_config(recipe)
    o, t = cfg.optim, cfg.train
    assert (t.epochs, t.batch_size, t.accum_steps, cfg.model.mask_ratio) == (epochs, 128, 1, 0.75)
    assert (o.base_lr, o.lr, o.weight_decay, o.warmup_epochs, o.min_lr, o.clip_grad) == (
        1.5e-4,
        None,
        0.05,
        40,
        0,
        None,
    )
    assert tuple(o.betas) == (0.9, 0.95)
