"""Study tables are built from the recorded metrics only."""

import json

from deepmim.tasks.study.results import aggregate_arm
from deepmim.tasks.study.tables import render_markdown


def _seeds(finetune, cls, avg, knn=None):
    """Per-seed stage results as the study records them (accuracies in %)."""
    out = {}
    for i, ft in enumerate(finetune):
        out[str(i)] = {
            "pretrain": {"seconds": 60.0 * (i + 1), "flops": 2e12, "flops_per_image": 1e9, "epochs": 4},
            "probe": {
                "linear": {
                    "cls": {b: {"top1": v[i]} for b, v in cls.items()},
                    "avg": {b: {"top1": v[i]} for b, v in avg.items()},
                },
                "knn": {"avg": {b: {"top1": v[i]} for b, v in (knn or {}).items()}} if knn else {},
                "seconds": 5.0,
                "flops": 1e10,
            },
            "finetune": {"top1": ft, "best_top1": ft + 1, "seconds": 30.0, "flops": 1e12, "eval_flops": 1e9},
        }
    return out


def test_tables_are_built_from_the_recorded_metrics_only(tmp_path):
    seeds = _seeds(
        [80.0, 81.0, 82.0],
        cls={"1": [50, 52, 54], "2": [60, 61, 62]},
        avg={"1": [70, 70, 70], "2": [65, 66, 67]},
        knn={"1": [40, 44, 48], "2": [30, 30, 30]},
    )
    one = _seeds([75.5], cls={"1": [33.333], "2": [44.0]}, avg={"1": [10.0], "2": [20.0]})
    results = {
        "title": "t",
        "command": "deepmim study --config x",
        "created": "now",
        "machine": {"cpu": "c"},
        "seeds": [0, 1, 2],
        "pools": ["cls", "avg"],
        "config": {"evaluate": {"val_split": "val", "convergence_pools": ["avg"]}},
        "arms": {
            "mae": {"kind": "pretrain", "model": {}, "seeds": seeds, "aggregate": aggregate_arm(seeds)},
            "one": {"kind": "pretrain", "model": {}, "seeds": one, "aggregate": aggregate_arm(one)},
        },
    }
    (tmp_path / "results.json").write_text(json.dumps(results))
    md = render_markdown(json.loads((tmp_path / "results.json").read_text()))
    assert (
        "| mae | pretrain | 3 | 81.00 ± 1.00 | 61.00 ± 1.00 (b2) | 61.00 ± 1.00 | 70.00 ± 0.00 (b1) | "
        "66.00 ± 1.00 | - | 44.00 ± 4.00 (b1) | 2.5 ± 1.0 | 3 TFLOP |"
    ) in md
    assert "| one | pretrain | 1 | 75.50 | 44.00 (b2) | 44.00 | 20.00 (b2) | 20.00 | - | - | 1.5 | 3 TFLOP |" in md
    assert "| 1 | 52.00 ± 2.00 | 33.33 |" in md and "| 2 | 61.00 ± 1.00 | 44.00 |" in md  # per block, cls
    assert "| mae | 120.0 ± 60.0 | 30.0 ± 0.0 | 5.0 ± 0.0 | - | - | 2 TFLOP | 1 TFLOP | 11 GFLOP | 1.000 |" in md
    seeds["2"]["finetune"]["top1"] = 85.0  # a recorded number changes: so does the table
    results["arms"]["mae"]["aggregate"] = aggregate_arm(seeds)
    assert "| mae | pretrain | 3 | 82.00 ± 2.65 |" in render_markdown(results)
