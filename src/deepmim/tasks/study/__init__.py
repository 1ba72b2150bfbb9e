"""`deepmim study`: a declared comparison of arms (MAE, DeepMIM, an untrained encoder) over seeds, end to end.

Every arm/seed/stage is an ordinary run in output_dir/<arm>/seed<k>/, recorded in stages/<stage>.json;
a killed study continues where it stopped; results.json, results.md, PNGs and report.html come out.
"""

from ...config.study import ArmConfig, StudyConfig, StudyEvalConfig, StudyFinetuneConfig
from .arms import ARM_KINDS
from .runner import run_study
from .stages import StudyChangedError
from .validate import load_study_config

__all__ = [
    "ARM_KINDS",
    "ArmConfig",
    "StudyChangedError",
    "StudyConfig",
    "StudyEvalConfig",
    "StudyFinetuneConfig",
    "load_study_config",
    "run_study",
]
