"""`deepmim submit`: a training command as a SLURM job, through submitit (the optional `submit` extra).

    deepmim submit --nodes 4 --gpus-per-node 8 --partition gpu --time 72:00:00 --account proj \\
        pretrain --config deepmim_pixel_vit_base data.name=imagefolder data.path=/data/imagenet

The recipe and overrides are those `deepmim pretrain` takes; they are checked here, before anything is
submitted. The job runs one task per GPU (`srun`, as MAE's submitit scripts do), each task the same
command with torch.distributed set up from SLURM's variables (submitit's TorchDistributedEnvironment).

Stopping and requeueing: SLURM signals the job (submitit's USR2, `--signal=USR2@<signal-delay>`) ahead of
its time limit, and at preemption. Training takes that signal as `train.save_signal`: every task finishes
its step, a checkpoint is written, and submitit requeues the job (a Checkpointable: `TrainingJob.checkpoint`
continues with train.resume=auto). SIGTERM (scancel, or preemption without a requeue) saves and ends the
job. A requeued job resumes from the newest checkpoint in train.output_dir.

`--dry-run` prints the sbatch script and the command every task runs, and submits nothing.
"""

from __future__ import annotations

import argparse
import os
import shlex
import signal
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional

TRAINING_COMMANDS = ("pretrain", "finetune")


# Its place and lines in the command list of `deepmim --help` (cli/main.py gathers them from every module)
ORDER = 90
SUMMARY = """\
  submit     a training command as a SLURM job (submitit): nodes, GPUs, partition, time; requeued on timeout
"""


def add_parser(sub) -> None:
    s = sub.add_parser(
        "submit",
        help="run a training command as a SLURM job (submitit), requeued on timeout and preemption",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=__doc__.split("\n", 1)[1],
    )
    s.add_argument("--nodes", type=int, default=1, help="nodes (default 1)")
    s.add_argument(
        "--gpus-per-node", type=int, default=1, help="GPUs per node, one task each (0: one CPU task per node)"
    )
    s.add_argument("--tasks-per-node", type=int, default=None, help="default: --gpus-per-node (or 1 without GPUs)")
    s.add_argument("--cpus-per-task", type=int, default=10, help="CPU cores per task (default 10)")
    s.add_argument("--mem-gb", type=int, default=None, help="memory per node in GB (default: the partition's)")
    s.add_argument("--partition", default=None, help="SLURM partition")
    s.add_argument("--time", default="72:00:00", help="time limit: minutes, or [D-]HH:MM:SS (default 72:00:00)")
    s.add_argument("--account", default=None, help="SLURM account")
    s.add_argument("--qos", default=None, help="SLURM quality of service")
    s.add_argument("--constraint", default=None, help="SLURM constraint (e.g. a GPU kind)")
    s.add_argument(
        "--signal-delay",
        type=int,
        default=120,
        help="seconds before the time limit at which the job is asked to save and requeue (default 120)",
    )
    s.add_argument("--max-requeues", type=int, default=100, help="times the job may time out and be requeued")
    s.add_argument(
        "--job-dir",
        default=None,
        help="submitit's folder (scripts, logs, job state); default: train.output_dir/submitit",
    )
    s.add_argument("--name", default=None, help="job name (default: deepmim-COMMAND)")
    s.add_argument(
        "--cluster",
        default="slurm",
        choices=("slurm", "local", "debug"),
        help="slurm (default) | local: the tasks as processes on this machine | debug: in this process "
        "(both submitit's executors, for trying a job before sending it to the cluster)",
    )
    s.add_argument(
        "--dry-run", action="store_true", help="print the sbatch script and the task command; submit nothing"
    )
    s.add_argument(
        "job_command",
        metavar="COMMAND",
        choices=TRAINING_COMMANDS,
        help=f"the training command to run: {' | '.join(TRAINING_COMMANDS)}",
    )
    s.add_argument("arguments", nargs=argparse.REMAINDER, help="--config RECIPE and key=value overrides")
    s.set_defaults(handler=run)


def parse_time(text: str) -> int:
    """'90' (minutes), 'HH:MM:SS', 'MM:SS' or 'D-HH:MM:SS' -> minutes (rounded up)."""
    text = str(text).strip()
    try:
        if text.isdigit():
            return int(text)
        days, _, clock = text.rpartition("-")
        parts = [int(p) for p in clock.split(":")]
        if len(parts) == 2:
            parts = [0] + parts
        hours, minutes, seconds = parts
        return int(days or 0) * 1440 + hours * 60 + minutes + (1 if seconds else 0)
    except ValueError:
        raise ValueError(f"--time must be minutes or [D-]HH:MM:SS, got {text!r}") from None


def split_arguments(arguments: List[str]) -> tuple:
    """REMAINDER after the command -> (recipe or None, overrides)."""
    recipe, overrides, rest = None, [], list(arguments)
    while rest:
        item = rest.pop(0)
        if item in ("--config", "-c"):
            if not rest:
                raise ValueError("--config needs a recipe name or path")
            recipe = rest.pop(0)
        elif item.startswith("--config="):
            recipe = item.split("=", 1)[1]
        elif item.startswith("-"):
            raise ValueError(
                f"deepmim submit passes --config and key=value overrides to the command; {item!r} "
                f"is neither (options of submit itself go before the command)"
            )
        else:
            overrides.append(item)
    return recipe, overrides


def load_config(command: str, recipe: Optional[str], overrides: List[str]):
    """The command's config, checked as the command checks it (nothing is submitted for a config it refuses)."""
    if command == "pretrain":
        from ..tasks.pretrain import load_pretrain_config

        return load_pretrain_config(recipe, overrides)
    from ..tasks.finetune import load_finetune_config

    return load_finetune_config(recipe, overrides)


def run_command(command: str, cfg):
    """Train: what `deepmim pretrain` / `deepmim finetune` run after loading their config."""
    if command == "pretrain":
        from ..tasks.pretrain import run_pretrain

        return run_pretrain(cfg)
    from ..tasks.finetune import run_finetune

    return run_finetune(cfg)


def preempt_signal() -> str:
    """The signal submitit asks SLURM to send ahead of the time limit (USR2 unless SUBMITIT_PREEMPT_SIGNAL)."""
    return "SIG" + os.environ.get("SUBMITIT_PREEMPT_SIGNAL", "USR2")


class TrainingJob:
    """What each task of the job runs: `deepmim COMMAND` with torch.distributed set from SLURM's variables.
    submitit calls `checkpoint` when it requeues the job: the next attempt continues with train.resume=auto."""

    def __init__(self, argv: List[str]):
        self.argv = list(argv)

    def __call__(self) -> int:
        import submitit

        from ..training.distributed import is_rank_zero
        from ..training.signals import Stopped

        if submitit.JobEnvironment().num_tasks > 1:
            submitit.helpers.TorchDistributedEnvironment().export(overwrite=True)
        usr = getattr(signal, preempt_signal())
        command = self.argv[0]
        recipe, overrides = split_arguments(self.argv[1:])
        cfg = load_config(command, recipe, overrides + [f"train.save_signal={usr.name}"])
        try:
            result = run_command(command, cfg)
        except Stopped as stop:
            if is_rank_zero():
                print(f"deepmim {command}: {stop}", file=sys.stderr, flush=True)
            if stop.signum == usr:  # submitit's signal, after the checkpoint: let submitit requeue the job
                handler = signal.getsignal(usr)
                if callable(handler):
                    handler(usr, None)  # rank 0: checkpoint() below, requeue, exit; the other ranks return
            return stop.exit_code
        if is_rank_zero():
            print(f"deepmim {command} finished: {result.step} steps, checkpoint {result.checkpoint}", flush=True)
        return 0

    def checkpoint(self, *args: Any, **kwargs: Any):
        """submitit's Checkpointable hook: the requeued job resumes (never overwrites) the run."""
        import submitit

        argv = [a for a in self.argv if not a.startswith(("train.resume=", "train.overwrite="))]
        return submitit.helpers.DelayedSubmission(TrainingJob(argv + ["train.resume=auto"]))


def job_parameters(args, cfg) -> Dict[str, Any]:
    """submitit's parameters for the job (the sbatch options)."""
    tasks = args.tasks_per_node or max(args.gpus_per_node, 1)
    params: Dict[str, Any] = dict(
        nodes=args.nodes,
        tasks_per_node=tasks,
        cpus_per_task=args.cpus_per_task,
        timeout_min=parse_time(args.time),
        name=args.name or f"deepmim-{args.job_command}",
    )
    if args.gpus_per_node:
        params["gpus_per_node"] = args.gpus_per_node
    if args.mem_gb:
        params["mem_gb"] = args.mem_gb
    slurm = dict(
        slurm_partition=args.partition,
        slurm_account=args.account,
        slurm_qos=args.qos,
        slurm_constraint=args.constraint,
        slurm_signal_delay_s=args.signal_delay,
        slurm_additional_parameters={"requeue": True},
    )
    params.update({k: v for k, v in slurm.items() if v is not None})
    return params


def sbatch_text(params: Dict[str, Any], folder: Path) -> str:
    """The sbatch script submitit would write for `params` (also where SLURM is not installed)."""
    from submitit.slurm.slurm import SlurmExecutor, _convert_mem, _make_sbatch_string

    names = SlurmExecutor._equivalence_dict()
    options = {names.get(k, k): v for k, v in params.items() if not k.startswith("slurm_")}
    options.update({k[len("slurm_") :]: v for k, v in params.items() if k.startswith("slurm_")})
    if "mem" in options:
        options["mem"] = _convert_mem(options["mem"])
    command = " ".join([shlex.quote(sys.executable), "-u -m submitit.core._submit", shlex.quote(str(folder))])
    return _make_sbatch_string(command=command, folder=str(folder), **options)


def run(args) -> int:
    try:
        import submitit
    except ImportError:
        raise ValueError("deepmim submit needs submitit: pip install 'deepmim[submit]'") from None
    args.time = str(args.time)
    recipe, overrides = split_arguments(args.arguments)
    cfg = load_config(args.job_command, recipe, overrides)  # refuses what the command would, before submitting
    argv = [args.job_command] + (["--config", recipe] if recipe else []) + overrides
    folder = Path(args.job_dir or Path(cfg.train.output_dir) / "submitit") / "%j"
    params = job_parameters(args, cfg)
    if args.dry_run:
        print(
            f"# deepmim submit --dry-run: nothing submitted. Every task runs:\n#   deepmim {shlex.join(argv)} "
            f"train.save_signal={preempt_signal()}\n# ({params['nodes']} node(s) x {params['tasks_per_node']} "
            f"task(s); requeued on timeout/preemption, resuming from {cfg.train.output_dir})"
        )
        print(sbatch_text(params, folder))
        return 0
    executor = submitit.AutoExecutor(
        folder=str(folder),
        cluster=None if args.cluster == "slurm" else args.cluster,
        slurm_max_num_timeout=args.max_requeues,
    )
    if args.cluster != "slurm":
        params = {k: v for k, v in params.items() if not k.startswith("slurm_")}
        params.pop("cpus_per_task", None)
    executor.update_parameters(**params)
    job = executor.submit(TrainingJob(argv))
    print(
        f"submitted job {job.job_id}: deepmim {shlex.join(argv)} on {params['nodes']} node(s) x "
        f"{params['tasks_per_node']} task(s); logs in {str(folder).replace('%j', str(job.job_id))}"
    )
    if args.cluster != "slurm":  # a local job runs as long as this command does
        job.wait()
        state = job.state
        print(f"job {job.job_id} {state.lower()}")
        return 0 if state in ("FINISHED", "COMPLETED") and not job.exception() else 1
    return 0
