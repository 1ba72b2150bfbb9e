"""Results files are strict JSON: undefined numbers are written as null."""

from __future__ import annotations

import json
import math

import pytest
import torch

from deepmim.analysis.segmentation_metrics import confusion_matrix, segmentation_scores
from deepmim.training.jsonfile import dumps
from tests.helpers.runs import strict_load


def test_strict_json_writes_null_for_undefined_numbers():
    scores = segmentation_scores(confusion_matrix(torch.tensor([[0, 1]]), torch.tensor([[0, 1]]), 4))
    assert math.isnan(scores["IoU"][2])
    with pytest.raises(ValueError, match="NaN"):
        strict_load(json.dumps(scores))  # what json.dumps alone writes
    parsed = strict_load(dumps(scores))
    assert parsed["IoU"] == [100.0, 100.0, None, None] and parsed["present"] == [True, True, False, False]
