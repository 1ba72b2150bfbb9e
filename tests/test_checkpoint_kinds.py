"""Every kind of checkpoint deepmim writes round-trips through its owner, deepmim.checkpoint: written
by its task (tiny models, a few steps), read back as that kind, then exported, loaded and evaluated
where that applies. A file with a deepmim config or probe head but no `task` is refused, the message
naming the file and saying how to add the key."""
import json
from pathlib import Path

import pytest
import timm
import torch

from deepmim.checkpoint import CheckpointError, read_checkpoint
from deepmim.cli.main import main
from deepmim.config.loader import to_dict
from deepmim.config.schema import FeatureConfig, LinearProbeConfig, LinprobeConfig
from deepmim.models import load_checkpoint
from deepmim.tasks.finetune import load_classifier, load_finetune_config, run_evaluate, run_finetune
from deepmim.tasks.linprobe import run_linprobe
from deepmim.tasks.pretrain import load_pretrain_config, run_pretrain
from deepmim.tasks.segment import load_segment_config, load_segmentor, run_segment_eval, run_segment_train
from tests.test_probe import tiny_data

COMMON = ["train.progress=false", "train.tensorboard=false", "train.device=cpu", "train.precision=fp32"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """One checkpoint of each kind, each written by its task."""
    tmp = tmp_path_factory.mktemp("kinds")
    pre = run_pretrain(load_pretrain_config(None, [
        "model.preset=deepmim_pixel_vit_micro_p4_32", "model.encoder.img_size=16", "model.encoder.depth=4",
        "model.heads.0.block=1", "model.heads.1.block=2", "model.heads.2.block=3", "model.heads.3.block=4",
        "data.img_size=16", "data.num_samples=32", "data.num_workers=0", "train.batch_size=8", "train.epochs=2",
        "train.max_steps=5", "train.plots=false", f"train.output_dir={tmp / 'pre'}", *COMMON]))
    ft = run_finetune(load_finetune_config("finetune_demo", [
        f"model.checkpoint={pre.checkpoint}", "data.img_size=16", "data.num_samples=40", "data.num_workers=0",
        "train.batch_size=8", "train.epochs=1", "train.max_steps=2", f"train.output_dir={tmp / 'ft'}", *COMMON]))
    seg, _ = run_segment_train(load_segment_config("upernet_demo", [
        f"model.checkpoint={pre.checkpoint}", "model.channels=16", "model.aux_channels=8", "data.img_size=16",
        "data.scale=[16,16]", "data.crop_size=16", "data.num_samples=8", "data.val_samples=3", "data.num_workers=0",
        "eval.crop_size=16", "train.batch_size=4", "train.iterations=2", "train.eval_every=2",
        "optim.warmup_iters=1", f"train.output_dir={tmp / 'seg'}", *COMMON]))
    lp_cfg = LinprobeConfig(data=tiny_data(20), features=FeatureConfig(cache_dir=None, progress=False, pool="cls"),
                            probe=LinearProbeConfig(epochs=1, warmup_epochs=1, batch_size=8), augment=False)
    run_linprobe(str(pre.checkpoint), lp_cfg, str(tmp / "lp"))
    return {"tmp": tmp, "pretrain": pre.checkpoint, "finetune": ft.checkpoint, "segment": seg.checkpoint,
            "linprobe": tmp / "lp" / "probe-head.pt"}


def without_task(path: Path, out: Path, keep_config: bool = True) -> Path:
    """The same checkpoint without its `task` key (`keep_config=False`: without its config too)."""
    obj = torch.load(path, weights_only=True)
    dropped = ("task",) if keep_config else ("task", "config")
    torch.save({k: v for k, v in obj.items() if k not in dropped}, out)
    return out


def test_each_kind_reads_back_as_itself(runs):
    for kind in ("pretrain", "finetune", "segment", "linprobe"):
        ckpt = read_checkpoint(runs[kind])
        assert ckpt.task == kind, runs[kind]
        assert "architecture" not in ckpt.config
        expected = torch.load(runs[kind], weights_only=True)
        assert sorted(ckpt.model_state) == sorted(expected["head" if kind == "linprobe" else "model"])
    pre = read_checkpoint(runs["pretrain"])
    assert (pre.step, pre.epoch) == (5, 1) and [h.block for h in pre.model_config().heads] == [1, 2, 3, 4]
    ft = read_checkpoint(runs["finetune"])
    assert ft.architecture["num_classes"] == 10 and ft.architecture["encoder"]["depth"] == 4
    seg = read_checkpoint(runs["segment"])
    assert seg.architecture["classes"][0] == "background" and seg.config["model"]["channels"] == 16


def test_a_file_without_its_task_is_refused_saying_how_to_add_it(runs, tmp_path):
    for kind in ("pretrain", "finetune", "segment", "linprobe"):
        for keep_config in (True, False):
            path = without_task(runs[kind], tmp_path / f"{kind}-{keep_config}.pt", keep_config)
            if not keep_config and kind != "linprobe":
                assert read_checkpoint(path).task is None  # weights alone: bare weights, as MAE's releases
                continue
            with pytest.raises(CheckpointError) as refused:
                read_checkpoint(path)
            message = str(refused.value)
            assert message.startswith(f"'{path}' holds a deepmim run's {'config' if keep_config else 'probe head'} "
                                      f"but no `task` key"), message
            assert "ckpt['task'] = 'pretrain' (or the kind it is: pretrain, finetune, segment, linprobe)" in message


def test_pretrained_checkpoint_loads_and_exports_its_encoder_to_timm(runs, tmp_path):
    model = load_checkpoint(runs["pretrain"])
    state = torch.load(runs["pretrain"], weights_only=True)["model"]
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    out = tmp_path / "encoder.safetensors"
    assert main(["export", str(runs["pretrain"]), "--out", str(out)]) == 0
    vit = timm.create_model("vit_tiny_patch16_224", img_size=16, patch_size=4, embed_dim=128, depth=4, num_heads=4,
                            num_classes=0, checkpoint_path=str(out)).eval()
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(vit.forward_features(x), model.eval().encoder.forward_features(x))
    assert read_checkpoint(out).task is None  # an exported encoder is bare weights (loadable with a preset)


def test_finetuned_checkpoint_exports_and_the_export_evaluates_the_same(runs, tmp_path):
    out = tmp_path / "classifier.safetensors"
    assert main(["export", str(runs["finetune"]), "--out", str(out)]) == 0
    assert read_checkpoint(out).task == "finetune"
    model, _ = load_classifier(runs["finetune"])
    again, _ = load_classifier(out)
    assert all(torch.equal(v, again.state_dict()[k]) for k, v in model.state_dict().items())
    assert run_evaluate(str(out)) == run_evaluate(str(runs["finetune"]))


def test_segmentation_checkpoint_exports_and_the_export_scores_the_same(runs, tmp_path):
    """The bug this fixes: export of a segmentation checkpoint read it as a fine-tuning one and stopped
    with "unknown config key 'model.out_indices'"."""
    out = tmp_path / "upernet.safetensors"
    assert main(["export", str(runs["segment"]), "--out", str(out)]) == 0
    assert read_checkpoint(out).task == "segment"
    model, _, names = load_segmentor(runs["segment"])
    again, _, names_again = load_segmentor(out)
    assert names_again == names and all(torch.equal(v, again.state_dict()[k]) for k, v in model.state_dict().items())
    (exported, _), (original, _) = run_segment_eval(str(out)), run_segment_eval(str(runs["segment"]))
    assert exported.pop("data")["source"] == f"recorded in {out}"  # each names the file it read
    original.pop("data")
    same = json.dumps(exported) == json.dumps(original)
    assert same  # (compared as JSON: a class absent from the images scores nan, and nan != nan)


def test_the_cli_refuses_a_file_without_its_task_in_one_paragraph(runs, tmp_path, capsys):
    for kind in ("finetune", "segment"):
        path = without_task(runs[kind], tmp_path / f"{kind}.pt")
        assert main(["export", str(path), "--out", str(tmp_path / f"{kind}.safetensors")]) == 2
        err = capsys.readouterr().err
        assert f"'{path}' holds a deepmim run's config but no `task` key" in err and "torch.save(ckpt, path)" in err
        assert not (tmp_path / f"{kind}.safetensors").exists()


def test_kinds_that_do_not_fit_are_refused_by_name(runs, tmp_path, capsys):
    assert main(["export", str(runs["linprobe"]), "--out", str(tmp_path / "x.safetensors")]) == 2
    err = capsys.readouterr().err
    assert "is a linear-probe head (written by deepmim linprobe)" in err and "Export the checkpoint it probed" in err
    assert not (tmp_path / "x.safetensors").exists()
    assert main(["export", str(runs["segment"]), "--out", str(tmp_path / "y.safetensors"), "--img-size", "32"]) == 2
    assert "is a segmentation checkpoint" in capsys.readouterr().err
    with pytest.raises(CheckpointError, match="is a segmentation checkpoint .*not a fine-tuning checkpoint"):
        load_classifier(runs["segment"])
    with pytest.raises(CheckpointError, match="is a fine-tuning checkpoint .* no pre-trained DeepMIM model"):
        load_checkpoint(runs["finetune"])
    assert main(["knn", str(runs["finetune"]), "data.num_samples=20"]) == 2
    assert "is a fine-tuning checkpoint (written by deepmim finetune)" in capsys.readouterr().err


def test_the_probe_head_records_its_run(runs):
    ckpt = read_checkpoint(runs["linprobe"])
    assert ckpt.raw["block"] == 4 and ckpt.raw["pool"] == "cls" and ckpt.model_state["head.weight"].shape == (10, 128)
    assert ckpt.config == to_dict(LinprobeConfig(data=tiny_data(20), features=FeatureConfig(cache_dir=None,
        progress=False, pool="cls"), probe=LinearProbeConfig(epochs=1, warmup_epochs=1, batch_size=8), augment=False))


def test_resume_refuses_a_checkpoint_of_another_task(runs, tmp_path):
    with pytest.raises(CheckpointError, match="is a pre-training checkpoint .*train.resume continues a run of the "
                                              "same task"):
        run_finetune(load_finetune_config("finetune_demo", [
            f"model.checkpoint={runs['pretrain']}", "data.img_size=16", "data.num_samples=40", "data.num_workers=0",
            "train.batch_size=8", "train.epochs=1", f"train.resume={runs['pretrain']}",
            f"train.output_dir={tmp_path / 'ft'}", *COMMON]))
