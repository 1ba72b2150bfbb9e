"""Semantic-segmentation scores from one confusion matrix summed over all images (and processes).

mIoU is the mean over classes of TP / (TP + FP + FN) of the whole data set, not a mean of
per-image scores; classes that never occur in the labels or the predictions have no IoU
(NaN) and are left out of the mean, as mmseg does. Ignored pixels are never counted.
"""

from __future__ import annotations

import math
from typing import Dict, List, Optional, Sequence

import torch


def confusion_matrix(
    pred: torch.Tensor, target: torch.Tensor, num_classes: int, ignore_index: int = 255
) -> torch.Tensor:
    """int64 (num_classes, num_classes): rows = true class, columns = predicted class.
    Pixels labelled `ignore_index` (or anything outside [0, num_classes)) are dropped."""
    if pred.shape != target.shape:
        raise ValueError(f"prediction {tuple(pred.shape)} and label {tuple(target.shape)} differ in shape")
    keep = (target != ignore_index) & (target >= 0) & (target < num_classes)
    index = target[keep].long() * num_classes + pred[keep].long()
    return torch.bincount(index, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def segmentation_scores(conf: torch.Tensor) -> Dict[str, object]:
    """aAcc (pixel accuracy), mIoU and mAcc (class means, NaN classes left out), all in %, the per-class
    IoU / Acc lists (NaN where undefined; null in the JSON files) and `present`: whether each class
    occurs in the evaluated labels."""
    conf = conf.double().cpu()
    tp = conf.diag()
    label_area, pred_area = conf.sum(1), conf.sum(0)
    union = label_area + pred_area - tp
    iou = torch.where(union > 0, tp / union.clamp(min=1), torch.full_like(tp, math.nan))
    acc = torch.where(label_area > 0, tp / label_area.clamp(min=1), torch.full_like(tp, math.nan))
    total = label_area.sum()
    return {
        "aAcc": 100 * float(tp.sum() / total) if total > 0 else math.nan,
        "mIoU": 100 * float(iou.nanmean()),
        "mAcc": 100 * float(acc.nanmean()),
        "IoU": [100 * float(v) for v in iou],
        "Acc": [100 * float(v) for v in acc],
        "present": [bool(v > 0) for v in label_area],
    }


def per_class_table(scores: Dict[str, object], class_names: Optional[Sequence[str]] = None) -> str:
    """A plain-text table: class, IoU, Acc, one row for each class that occurs in the evaluated labels
    (the others have no score to show; the JSON keeps every class), then the summary line."""
    ious: List[float] = scores["IoU"]  # type: ignore[assignment]
    accs: List[float] = scores["Acc"]  # type: ignore[assignment]
    names = list(class_names) if class_names else [str(i) for i in range(len(ious))]
    present = scores.get("present") or [True] * len(ious)
    shown = [k for k, p in enumerate(present) if p]
    width = max(len("class"), *(len(names[k]) for k in shown)) if shown else len("class")
    rows = [f"{'class':<{width}}  {'IoU':>6}  {'Acc':>6}"]
    rows += [f"{names[k]:<{width}}  {_fmt(ious[k])}  {_fmt(accs[k])}" for k in shown]
    if len(shown) < len(ious):
        rows.append(f"({len(shown)} of {len(ious)} classes occur in the evaluated labels; the JSON lists all)")
    rows.append(f"aAcc {scores['aAcc']:.2f}  mIoU {scores['mIoU']:.2f}  mAcc {scores['mAcc']:.2f}")
    return "\n".join(rows)


def _fmt(value: float) -> str:
    return f"{'nan':>6}" if math.isnan(value) else f"{value:6.2f}"
