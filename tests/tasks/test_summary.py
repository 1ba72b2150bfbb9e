"""The start-up summary: it notes a resize to the training size, and every task warns when the warm-up
outlasts the run."""

from __future__ import annotations

from types import SimpleNamespace

from deepmim.config.schema import DataConfig, OptimConfig, TrainConfig
from deepmim.data import build_dataset
from deepmim.tasks.summary import resize_note, run_summary
from tests.helpers.data import write_folder


class FourBatchLoader:
    def __len__(self):
        return 4


def test_a_resize_is_noted_and_a_fit_is_not(tmp_path):
    folder = write_folder(tmp_path / "photos")  # 20x20 px images
    photos = build_dataset(DataConfig(name="imagefolder", path=str(folder)), "train")
    note = resize_note(photos, 16)
    assert note == (
        "the data's images are 20x20 px (the first one); they are resized to the 16 px the model is "
        "trained at (data.img_size)"
    )
    assert resize_note(photos, 20) is None
    shapes = build_dataset(DataConfig(name="embedded", num_samples=4, img_size=16), "train")
    assert resize_note(shapes, 16) is None  # rendered at the trained size
    cfg = SimpleNamespace(train=TrainConfig(epochs=1, batch_size=4), optim=OptimConfig(warmup_epochs=0))
    text = run_summary(
        "deepmim pretrain",
        "m",
        "d",
        cfg,
        FourBatchLoader(),
        SimpleNamespace(world_size=1, device="cpu", precision="fp32"),
        notes=[note],
    )
    assert f"  note    {note}" in text.splitlines()


class Loader:
    def __init__(self, n):
        self.n = n

    def __len__(self):
        return self.n


ENV = SimpleNamespace(world_size=1, device="cpu", precision="fp32")


def test_every_task_warns_when_the_warm_up_outlasts_the_run():
    cfg = SimpleNamespace(train=TrainConfig(epochs=2, batch_size=8), optim=OptimConfig(warmup_epochs=5))
    text = run_summary("deepmim pretrain", "model", "data", cfg, Loader(10), ENV)
    assert "5 warm-up epoch(s) = 50 steps" in text
    assert (
        "warning the warm-up (50 steps) is longer than the run (20 steps)" in text and "optim.warmup_epochs=N" in text
    )
    cfg.optim.warmup_epochs = 1
    assert "warning" not in run_summary("deepmim pretrain", "model", "data", cfg, Loader(10), ENV)
