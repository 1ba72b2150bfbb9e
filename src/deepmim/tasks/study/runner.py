"""`deepmim study`: plan every arm x seed x stage, check what is already done, run the rest, write the results.

Order: seed-major (every arm of seed 0, then seed 1, ...), so a partly finished study already compares
all arms. results.json and results.md are rewritten after each arm/seed; figures and report.html at the end.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional

from ...config.loader import ConfigError, dump_yaml
from ...config.study import StudyConfig
from .arms import Arm, build_arm
from .measures import attention_stage, convergence_stage, finetune_stage, probe_stage
from .results import build_results, machine_info
from .stages import Stage, StageRunner, StudyChangedError, describe_change, inputs_hash, read_json, write_json
from .validate import validate_study

logger = logging.getLogger(__name__)


@dataclass
class Planned:
    arm: Arm
    seed: int
    stages: List[Stage]
    records: List[Path]


def plan_study(cfg: StudyConfig, arms: List[Arm], out: Path) -> List[Planned]:
    """Every stage of every arm and seed, with its inputs, before anything runs."""
    ev = cfg.evaluate
    planned = []
    for seed in cfg.seeds:
        for arm in arms:
            folder = out / arm.name / f"seed{seed}"
            trained = folder / arm.stage_name
            train = arm.training_stage(seed, trained)
            up = inputs_hash(train.inputs)
            checkpoint = arm.final_checkpoint(trained)
            stages = [train, probe_stage(cfg, checkpoint, seed, up)]
            if ev.attention_images > 0:
                stages.append(attention_stage(cfg, checkpoint, up))
            if ev.convergence and arm.trains:
                stages.append(convergence_stage(cfg, arm.model_config(), seed, trained, folder / "convergence", up))
            if cfg.finetune.enabled:
                stages.append(finetune_stage(cfg, checkpoint, seed, folder / "finetune", up))
            planned.append(Planned(arm, seed, stages, [folder / "stages" / f"{s.name}.json" for s in stages]))
    return planned


def check_plan(planned: List[Planned], on_change: str) -> int:
    """The number of stages already done; with on_change=refuse, stop before any work if a stage changed."""
    done, changed = 0, []
    for p in planned:
        for stage, path in zip(p.stages, p.records):
            record = read_json(path)
            if record is None:
                continue
            if record["hash"] != inputs_hash(stage.inputs):
                changed.append(
                    f"{p.arm.name}/seed{p.seed} {stage.name}: {describe_change(record['inputs'], stage.inputs)}"
                )
            elif record["status"] == "done":
                done += 1
    if changed and on_change == "refuse":
        more = f"\n  ... and {len(changed) - 10} more" if len(changed) > 10 else ""
        raise StudyChangedError(
            f"{len(changed)} stage(s) of this study were made with other inputs than the config asks for now:\n  "
            + "\n  ".join(changed[:10])
            + more
            + "\nResults would mix two configurations. Use another output_dir, "
            "or pass on_change=rerun to delete and recompute the changed stages (and what depends on them)."
        )
    return done


def check_arms(cfg: StudyConfig, arms: List[Arm]) -> None:
    """Arms compare the same encoder on the same labelled data, in one process."""
    from ...data import build_dataset

    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ConfigError(
            "deepmim study runs in one process (each stage uses the machine's devices); run it without torchrun"
        )
    encoders = {a.name: dataclasses.asdict(a.model_config().encoder) for a in arms}
    first = next(iter(encoders))
    for name, enc in encoders.items():
        if enc != encoders[first]:
            raise ConfigError(
                f"arms '{first}' and '{name}' have different encoders ({describe_change(encoders[first], enc)});"
                f" a study compares one encoder architecture: align the arms' model settings"
            )
    for split in (cfg.data.split, cfg.evaluate.val_split):
        classes = getattr(build_dataset(cfg.data, split), "classes", None)
        if not classes or len(classes) < 2:
            raise ConfigError(
                f"the {split} split has no labels (or one class): probes and fine-tuning need a labelled dataset"
            )


def run_study(cfg: StudyConfig, command: Optional[str] = None) -> Dict[str, Any]:
    """Run (or continue) the study; returns the results dict also written to output_dir/results.json."""
    from .figures import write_figures
    from .report import write_study_report
    from .tables import render_markdown

    validate_study(cfg)
    command = command or " ".join(shlex.quote(a) for a in sys.argv)
    start = time.perf_counter()

    def log(message: str) -> None:  # called between stages: the stages' own output goes to their log files
        elapsed = int(time.perf_counter() - start)
        logger.info(f"study {elapsed // 3600}:{elapsed // 60 % 60:02d}:{elapsed % 60:02d}  {message}")

    arms = [build_arm(a, cfg) for a in cfg.arms]
    check_arms(cfg, arms)
    out = Path(cfg.output_dir)
    planned = plan_study(cfg, arms, out)
    done = check_plan(planned, cfg.on_change)
    total = sum(len(p.stages) for p in planned)
    out.mkdir(parents=True, exist_ok=True)
    (out / "study.yaml").write_text(dump_yaml(cfg))
    log(f"{len(arms)} arms x {len(cfg.seeds)} seeds = {total} stages in {out} ({done} done before)")
    machine = machine_info()
    runner = StageRunner(cfg.on_change, log)
    per_arm: Dict[str, Dict[str, Dict]] = {a.name: {} for a in arms}
    index = 0
    for p in planned:
        results = {}
        for stage, record in zip(p.stages, p.records):
            index += 1
            results[stage.name] = runner.run(stage, record, f"[{index}/{total}] {p.arm.name}/seed{p.seed} {stage.name}")
        per_arm[p.arm.name][str(p.seed)] = results
        partial = build_results(cfg, arms, per_arm, command, machine)
        write_json(out / "results.json", partial)
        (out / "results.md").write_text(render_markdown(partial))
    results = build_results(cfg, arms, per_arm, command, machine)
    results["figures"] = write_figures(results, out)
    write_json(out / "results.json", results)
    (out / "results.md").write_text(render_markdown(results))
    write_study_report(results, out, results["figures"])
    log(
        f"finished: {len(runner.ran)} stages computed, {total - len(runner.ran)} taken from earlier runs; wrote "
        f"{out / 'results.md'}, results.json, report.html and {len(results['figures'])} figures"
    )
    return {**results, "out_dir": out, "computed": list(runner.ran)}
