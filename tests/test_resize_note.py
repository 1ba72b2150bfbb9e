"""The start-up summary says when the data's images are resized to the size the model is trained at."""
from __future__ import annotations

from types import SimpleNamespace

from deepmim.config.schema import DataConfig, OptimConfig, TrainConfig
from deepmim.data import build_dataset
from deepmim.tasks.summary import resize_note, run_summary
from tests.test_scored_data import write_folder


class Loader:
    def __len__(self):
        return 4


def test_a_resize_is_noted_and_a_fit_is_not(tmp_path):
    folder = write_folder(tmp_path / "photos")  # 20x20 px images
    photos = build_dataset(DataConfig(name="imagefolder", path=str(folder)), "train")
    note = resize_note(photos, 16)
    assert note == ("the data's images are 20x20 px (the first one); they are resized to the 16 px the model is "
                    "trained at (data.img_size)")
    assert resize_note(photos, 20) is None
    shapes = build_dataset(DataConfig(name="embedded", num_samples=4, img_size=16), "train")
    assert resize_note(shapes, 16) is None  # rendered at the trained size
    cfg = SimpleNamespace(train=TrainConfig(epochs=1, batch_size=4), optim=OptimConfig(warmup_epochs=0))
    text = run_summary("deepmim pretrain", "m", "d", cfg, Loader(), SimpleNamespace(world_size=1, device="cpu",
                                                                                     precision="fp32"), notes=[note])
    assert f"  note    {note}" in text.splitlines()
