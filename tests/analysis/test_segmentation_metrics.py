"""Segmentation metrics against hand counts: mIoU, the ignore index, per-class tables."""

from __future__ import annotations

import math

import pytest
import torch

from deepmim.analysis.segmentation_metrics import confusion_matrix, per_class_table, segmentation_scores


def test_miou_from_a_hand_checked_confusion_matrix():
    target = torch.tensor([[0, 0, 1, 1], [2, 2, 255, 1]])
    pred = torch.tensor([[0, 1, 1, 1], [2, 0, 2, 2]])
    conf = confusion_matrix(pred, target, 3)
    # rows = truth: class 0 -> {0: 1, 1: 1}; class 1 -> {1: 2, 2: 1}; class 2 -> {0: 1, 2: 1}; 255 dropped
    assert conf.tolist() == [[1, 1, 0], [0, 2, 1], [1, 0, 1]]
    s = segmentation_scores(conf)
    # IoU: 0 -> 1 / (2 + 2 - 1) = 1/3, 1 -> 2 / (3 + 3 - 2) = 1/2, 2 -> 1 / (2 + 2 - 1) = 1/3
    assert s["IoU"] == pytest.approx([100 / 3, 50, 100 / 3])
    assert s["mIoU"] == pytest.approx(100 * (1 / 3 + 1 / 2 + 1 / 3) / 3)
    assert s["mAcc"] == pytest.approx(100 * (1 / 2 + 2 / 3 + 1 / 2) / 3)
    assert s["aAcc"] == pytest.approx(100 * 4 / 7)
    table = per_class_table(s, ["sky", "road", "tree"])
    assert "road" in table and "50.00" in table and "mIoU 38.89" in table


def test_ignore_index_is_never_counted():
    target = torch.full((8, 8), 255)
    target[:2] = 1
    pred_a, pred_b = torch.zeros(8, 8, dtype=torch.long), torch.randint(0, 4, (8, 8))
    pred_b[:2] = pred_a[:2]
    conf_a, conf_b = confusion_matrix(pred_a, target, 4), confusion_matrix(pred_b, target, 4)
    assert torch.equal(conf_a, conf_b) and conf_a.sum() == 16 and conf_a[1, 0] == 16
    s = segmentation_scores(conf_a)  # classes absent from labels and predictions: NaN, out of the mean
    assert math.isnan(s["IoU"][2]) and math.isnan(s["IoU"][3]) and s["mIoU"] == 0.0 and s["aAcc"] == 0.0


def test_per_class_table_shows_the_classes_present_only():
    scores = segmentation_scores(confusion_matrix(torch.tensor([[0, 1, 1]]), torch.tensor([[0, 1, 0]]), 5))
    table = per_class_table(scores, ["sky", "road", "tree", "car", "bus"])
    rows = [line.split()[0] for line in table.splitlines()[1:-2]]
    assert rows == ["sky", "road"] and "tree" not in table and "nan" not in table
    assert "(2 of 5 classes occur in the evaluated labels; the JSON lists all)" in table
