"""data.max_samples: a fixed, class-balanced subset of labelled data (idx, imagefolder), the same in every run."""

from collections import Counter

import numpy as np
import pytest
import torch

from deepmim.config.schema import DataConfig
from deepmim.data import DataError, build_dataset, build_pretrain_loader
from deepmim.data.subset import balanced_indices
from tests.helpers.data import write_idx
from tests.helpers.models import save_tiny_pretrained


def test_balanced_indices_share_equally_and_pass_on_what_small_classes_lack():
    targets = [0] * 50 + [1] * 30 + [2] * 4
    chosen = balanced_indices(targets, 30)
    assert chosen == sorted(chosen) and len(set(chosen)) == 30
    counts = Counter(targets[i] for i in chosen)
    assert counts == {0: 13, 1: 13, 2: 4}  # class 2 has 4: its missing 6 are shared out (3 + 3)
    assert balanced_indices(targets, 30) == chosen  # deterministic
    assert Counter(targets[i] for i in balanced_indices(targets, 31)) == {0: 14, 1: 13, 2: 4}
    assert balanced_indices(targets, 1000) == list(range(84))  # more than there is: everything


def _idx_folder(tmp_path, n_train=60, n_val=40):
    rng = np.random.default_rng(0)
    for prefix, n in (("train", n_train), ("t10k", n_val)):
        write_idx(tmp_path / f"{prefix}-images-idx3-ubyte", rng.integers(0, 256, (n, 8, 8), dtype=np.uint8))
        labels = np.array([i % 3 if i < n // 2 else 0 for i in range(n)], dtype=np.uint8)  # class 0 is common
        write_idx(tmp_path / f"{prefix}-labels-idx1-ubyte", labels)
    return tmp_path


def test_max_samples_cuts_every_split_to_a_balanced_subset_that_keeps_the_labels(tmp_path):
    root = _idx_folder(tmp_path)
    full = build_dataset(DataConfig(name="idx", path=str(root), img_size=8))
    sub = build_dataset(DataConfig(name="idx", path=str(root), img_size=8, max_samples=24))
    assert len(full) == 60 and len(sub) == 24
    assert Counter(sub.targets) == {0: 8, 1: 8, 2: 8}  # the full split has 40 / 10 / 10
    assert sub.classes == full.classes == ["0", "1", "2"]
    for i in (0, 11, 23):
        j = sub.indices[i]
        assert torch.equal(sub[i][0], full[j][0]) and sub[i][1] == full[j][1] == sub.targets[i]
    val = build_dataset(DataConfig(name="idx", path=str(root), img_size=8, max_samples=24), split="val")
    assert len(val) == 24
    assert len(build_dataset(DataConfig(name="idx", path=str(root), img_size=8, max_samples=500))) == 60
    loader = build_pretrain_loader(
        DataConfig(name="idx", path=str(root), img_size=8, max_samples=24, num_workers=0), batch_size=8, seed=0
    )
    assert len(loader) == 3 and loader.raw_dataset.classes == ["0", "1", "2"]


def test_max_samples_on_the_embedded_data_takes_its_balanced_prefix_and_refuses_nonsense():
    sub = build_dataset(DataConfig(num_samples=100, img_size=8, max_samples=20))
    assert len(sub) == 20 and [sub[i][1] for i in range(20)] == [i % 10 for i in range(20)]
    with pytest.raises(DataError, match="max_samples"):
        build_dataset(DataConfig(num_samples=100, img_size=8, max_samples=0))


def test_feature_cache_key_tells_subsets_apart(tmp_path):
    from deepmim.analysis.features import cache_key

    ckpt = save_tiny_pretrained(tmp_path / "c.pt")
    key = lambda **kw: cache_key(ckpt, DataConfig(name="idx", path=str(tmp_path), **kw), "train", 16, "cls", 1.0, None)
    assert key() != key(max_samples=10) != key(max_samples=20)
    assert key() == key(max_samples=None)
