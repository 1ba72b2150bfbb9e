"""`data.max_samples`: a deterministic, class-balanced subset of any labelled dataset.

The subset depends only on the labels and the requested size, never on a run's seed, so every run,
arm and seed of a study sees the same images. Labels come from the dataset's `targets` (IDX files and
image folders keep them in memory: choosing opens no image file); a dataset without `targets` gives
its first n items (the embedded shapes' labels cycle, so their prefix is balanced already).
Classes get equal shares (the smallest ones give what they have, the rest is shared out); within a
class the images are a fixed pseudo-random draw, so a folder sorted by file name is not cut at a
name boundary. The chosen indices keep the dataset's own order.
"""

from __future__ import annotations

from typing import List, Sequence

import torch
from torch.utils.data import Dataset

SUBSET_SEED = 0x5AB5E7  # fixed: the subset is a property of the data, not of a run


def balanced_indices(targets: Sequence[int], n: int, seed: int = SUBSET_SEED) -> List[int]:
    """`n` indices with the classes as equal as the data allows (sorted)."""
    by_class: dict = {}
    for index, label in enumerate(targets):
        by_class.setdefault(int(label), []).append(index)
    generator = torch.Generator().manual_seed(seed)
    pools = {
        c: [idx[i] for i in torch.randperm(len(idx), generator=generator).tolist()]
        for c, idx in sorted(by_class.items())
    }
    quota = {c: 0 for c in pools}
    left = min(n, len(targets))
    while left > 0:  # water-filling: equal shares, classes that run out pass theirs on
        open_classes = [c for c in pools if quota[c] < len(pools[c])]
        share, extra = divmod(left, len(open_classes))
        for rank, c in enumerate(open_classes):
            take = min(share + (rank < extra), len(pools[c]) - quota[c])
            quota[c] += take
            left -= take
    return sorted(i for c, pool in pools.items() for i in pool[: quota[c]])


class ClassBalancedSubset(Dataset):
    """`dataset` restricted to `balanced_indices`; keeps `classes` and `targets` for the tasks that read them."""

    def __init__(self, dataset: Dataset, n: int):
        targets = getattr(dataset, "targets", None)
        if targets is None:  # no labels in memory: the first n items (still deterministic)
            self.indices = list(range(min(n, len(dataset))))
            self.targets = None
        else:
            targets = list(targets)
            self.indices = balanced_indices(targets, n)
            self.targets = [targets[i] for i in self.indices]
        self.dataset = dataset
        if hasattr(dataset, "classes"):
            self.classes = dataset.classes

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int):
        return self.dataset[self.indices[index]]

    def load_with(self, index: int, decode):
        """The underlying ImageFolder's decode-straight-into-the-crop path (SeededAugmentation)."""
        return self.dataset.load_with(self.indices[index], decode)
