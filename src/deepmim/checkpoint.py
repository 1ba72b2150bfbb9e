"""The checkpoint file, owned in one place: what a deepmim checkpoint holds, what the files of a
run are called, how they are written (atomically) and read (`torch.load(weights_only=True)` or
safetensors), and the one strict state-dict loader every caller uses.

A deepmim checkpoint is a dict:

    task          the kind of checkpoint, named by the task that wrote it: pretrain | finetune | segment |
                  linprobe (one `TaskKind` record each: what wrote it, its config class, how to rebuild
                  and export its model)
    model         the weights, parameter names as keys (a linear probe's: `head`)
    config        the run's config: `to_dict` of the task's config dataclass
    architecture  what the weights need besides the config (finetune, segment: encoder, classes)
    epoch, step   where training stood; with optimizer, scaler, rng, steps_per_epoch and hooks,
                  everything an exact resume needs (training/loop.py writes and reads those)

A file with a deepmim config (or a probe head) but no `task` is refused with a message that says how
to add it: the kind is read from `task` alone. A safetensors file that `save_weights` wrote with
`checkpoint_metadata` (`deepmim export` of a classifier or a segmentation model) reads back as that
checkpoint. Files deepmim did not write (MAE's, the authors', timm's) and exported encoders are bare
weights: task None.

This module sits on the ground floor (it imports only the configs), so models, targets, training
and tasks all read and write checkpoints through it. `save_checkpoint` is the one writer of a
run's checkpoints: it keeps the checkpoint before the last one as checkpoint-prev.pt. Files are
written with the modes the umask gives (not mkstemp's 0600). Reading errors say what is wrong with
the file, never that `weights_only=False` would help: a file of pickled objects stays refused.
"""

from __future__ import annotations

import errno
import fnmatch
import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Tuple, Union

import torch

from .config.loader import from_dict
from .config.schema import FinetuneConfig, LinprobeConfig, ModelConfig, PretrainConfig, SegmentConfig

LAST = "checkpoint-last.pt"
PREV = "checkpoint-prev.pt"  # the checkpoint before LAST (save_checkpoint rotates it)
SET_ASIDE = "checkpoint-last-not-resumed.pt"  # a LAST that a run resumed from PREV replaced (kept, not deleted)
TEMP_FILES = ".checkpoint-*.tmp"  # what an interrupted atomic write of a run's checkpoint leaves behind
EPOCH_FILE = re.compile(r"checkpoint-epoch(\d+)\.pt$")
WEIGHT_KEYS = ("model", "state_dict", "model_state", "module")  # where files keep their weights
PROBE_HEAD = "head"  # a linear probe keeps its weights here (its files always did)

PathLike = Union[str, Path]


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be read, is of the wrong kind, or does not fit the model."""


class CheckpointNotFoundError(CheckpointError, FileNotFoundError):
    """The file is not there (a FileNotFoundError too, for callers that catch that)."""


# ----------------------------------------------------------------------------- kinds of checkpoint

Hook = Union[str, Callable[..., Any], None]  # a callable, or its import path "package.module:function"


@dataclass(frozen=True)
class TaskKind:
    """One kind of checkpoint, named after the task that writes it: everything the code that checks,
    reads, rebuilds or exports a checkpoint needs to know about its task, in one record.

    The hooks (`build_model`, `export`, `export_hf`) are work of the floors above (models/, tasks/).
    The built-in kinds name them by import path, which only the code calling them resolves (tasks/:
    `load_trained`, `deepmim export`); this module never imports them. So the records live here, on
    the ground floor, where every reader of a file finds its kind (models/ reads checkpoints and may
    not import tasks/, and reading a file loads no training code), and the import graph stays the
    one tests/test_architecture.py checks. A kind registered from outside the package may give the
    callables themselves."""

    name: str  # the checkpoint's `task`
    written_by: str  # the command that writes it, for messages: "deepmim segment train"
    display_name: str  # what the file is, for messages: "a segmentation checkpoint"
    config_class: type  # the dataclass whose `to_dict` its `config` holds
    build_model: Hook = None  # (config, architecture) -> the trained model before its weights load
    export: Hook = None  # deepmim export (safetensors, timm): (ckpt, out, img_size, preset, folder) -> message
    export_hf: Hook = None  # deepmim export --format hf: (ckpt, out, img_size) -> message
    weights_key: str = "model"  # where its files keep the weights

    def describe(self) -> str:
        return f"{self.display_name} (written by {self.written_by})"


_TASK_KINDS: Dict[str, TaskKind] = {}


def register_task_kind(kind: TaskKind) -> TaskKind:
    """Add a kind of checkpoint (a new training task's); its name must be new."""
    if kind.name in _TASK_KINDS:
        raise ValueError(f"checkpoint task {kind.name!r} is registered already")
    _TASK_KINDS[kind.name] = kind
    return kind


def unregister_task_kind(name: str) -> None:
    _TASK_KINDS.pop(name, None)


def task_kinds() -> Tuple[str, ...]:
    """The names of every registered kind, in the order they were registered."""
    return tuple(_TASK_KINDS)


def task_kind(name: str) -> TaskKind:
    """The record of `name`; ValueError naming the registered kinds for any other name."""
    if name not in _TASK_KINDS:
        raise ValueError(f"unknown checkpoint task {name!r}; one of {', '.join(_TASK_KINDS)}")
    return _TASK_KINDS[name]


register_task_kind(
    TaskKind(
        "pretrain",
        "deepmim pretrain",
        "a pre-training checkpoint",
        PretrainConfig,
        export="deepmim.tasks.export:export_pretrained",
    )
)
register_task_kind(
    TaskKind(
        "finetune",
        "deepmim finetune",
        "a fine-tuning checkpoint",
        FinetuneConfig,
        build_model="deepmim.models.classifier:trained_classifier",
        export="deepmim.tasks.export:export_classifier",
        export_hf="deepmim.tasks.export_hf:export_hf_classifier",
    )
)
register_task_kind(
    TaskKind(
        "segment",
        "deepmim segment train",
        "a segmentation checkpoint",
        SegmentConfig,
        build_model="deepmim.tasks.segment:trained_segmentor",
        export="deepmim.tasks.export:export_segmentor",
        export_hf="deepmim.tasks.export_hf:export_hf_segmentor",
    )
)
register_task_kind(
    TaskKind(
        "linprobe",
        "deepmim linprobe",
        "a linear-probe head",
        LinprobeConfig,
        export="deepmim.tasks.export:refuse_probe_head",
        weights_key=PROBE_HEAD,
    )
)


# ----------------------------------------------------------------------------- a run's files


def epoch_file_name(epochs_done: int) -> str:
    """The numbered copy kept after `epochs_done` epochs (train.save_every_epochs): checkpoint-epoch0001.pt
    after the first epoch, epochs counted from 1 as everywhere people read them."""
    return f"checkpoint-epoch{epochs_done:04d}.pt"


def epoch_checkpoints(run_dir: Path) -> Dict[int, Path]:
    """{epochs trained: path} of a run's numbered checkpoints (checkpoint-epochNNNN.pt holds the state
    after NNNN epochs)."""
    out = {}
    for p in Path(run_dir).glob("checkpoint-epoch*.pt"):
        m = EPOCH_FILE.search(p.name)
        if m:
            out[int(m.group(1))] = p
    return dict(sorted(out.items()))


def run_checkpoints(output_dir: Path) -> List[Path]:
    """The checkpoints a run left in output_dir (last, previous, numbered), newest kind first."""
    out = Path(output_dir)
    if not out.is_dir():
        return []
    named = [out / name for name in (LAST, PREV) if (out / name).is_file()]
    return named + sorted(out.glob("checkpoint-epoch*.pt"), reverse=True)


def find_resume_checkpoint(output_dir: Path, resume: Optional[str]) -> Optional[Path]:
    """resume=None: start fresh; 'auto': the newest checkpoint in output_dir if any (checkpoint-last.pt,
    else checkpoint-prev.pt, which is all a crash inside save_checkpoint's rotation can leave, else the
    newest numbered one); else a path."""
    if not resume:
        return None
    if resume == "auto":
        found = run_checkpoints(output_dir)
        return found[0] if found else None
    path = Path(resume)
    if not path.exists():
        raise FileNotFoundError(
            f"train.resume={resume}: no such checkpoint (use train.resume=auto to continue "
            f"from the newest checkpoint in train.output_dir, or remove the option)"
        )
    return path


# ----------------------------------------------------------------------------- writing


def file_mode() -> int:
    """The mode open() gives a new file under this process's umask (0o644 under umask 022): what the
    temp files of atomic writes (created 0600 by mkstemp) are set to before they are renamed."""
    try:  # Linux: read the umask without changing it (os.umask would, for every thread, for a moment)
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return 0o666 & ~int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def _write_temp(obj: Any, path: Path) -> str:
    """`obj` saved in full to a temp file beside `path` (fsynced, umask mode); returns its name."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fchmod(f.fileno(), file_mode())
            os.fsync(f.fileno())
    except RuntimeError as err:
        os.unlink(tmp)
        if not any(text in str(err) for text in WRITE_FAILURES):
            raise
        raise _write_failure(path) from err
    except OSError as err:  # e.g. ENOSPC from f.write, which names no file
        os.unlink(tmp)
        if err.filename is not None or err.errno is None:
            raise
        raise OSError(err.errno, err.strerror, str(path)) from err
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return tmp


# torch.save's words for a write the file system refused (its zip writer hides the OSError, e.g. ENOSPC)
WRITE_FAILURES = ("unexpected pos", "file write failed", "PytorchStreamWriter failed")


def _write_failure(path: Path) -> OSError:
    """An OSError naming `path`: ENOSPC when its disk has (almost) no space left, else EIO."""
    try:
        full = shutil.disk_usage(path.parent).free < 64 * 2**20
    except OSError:
        full = False
    code = errno.ENOSPC if full else errno.EIO
    return OSError(code, os.strerror(code), str(path))


def atomic_save(obj: Any, path: Path) -> None:
    """Write to a temp file in the same folder, fsync, then rename: a crash leaves the old file intact."""
    path = Path(path)
    tmp = _write_temp(obj, path)
    try:
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def weights_key(task: Optional[str]) -> str:
    """Where a checkpoint of `task` keeps its weights ("model" for kinds this process does not know)."""
    return _TASK_KINDS[task].weights_key if task in _TASK_KINDS else "model"


def make_checkpoint(
    task: str,
    model_state: Dict[str, torch.Tensor],
    config: Dict[str, Any],
    architecture: Optional[Dict[str, Any]] = None,
    **training_state: Any,
) -> Dict[str, Any]:
    """The checkpoint dict of a `task` run (training_state: step, epoch, optimizer, ... for resume)."""
    task_kind(task)  # a known kind, or ValueError naming them
    obj: Dict[str, Any] = {"task": task, weights_key(task): model_state, "config": config}
    if architecture is not None:
        obj["architecture"] = architecture
    obj.update(training_state)
    return obj


def _keep_as_prev(path: Path, prev: Path) -> None:
    """`path` also as `prev`, `path` left in place (a hard link renamed over `prev`: atomic), or moved to
    `prev` where the file system has no hard links."""
    link = path.parent / f".{path.name}.prev.tmp"  # matches TEMP_FILES: removed at the next start if left
    try:
        if link.exists():
            link.unlink()
        os.link(path, link)
    except OSError:
        os.replace(path, prev)
        return
    os.replace(link, prev)


def save_checkpoint(
    obj: Dict[str, Any], output_dir: Path, numbered_epoch: Optional[int] = None, keep_prev: bool = False
) -> Path:
    """A run's checkpoint: output_dir/checkpoint-last.pt, plus a numbered copy for `numbered_epoch`.
    The checkpoint it replaces is kept as checkpoint-prev.pt: the new file is written in full (temp
    file, fsync) before anything is renamed, the old one becomes checkpoint-prev.pt through a hard link
    (so checkpoint-last.pt never goes missing, even for a moment), and the new one replaces it in one
    atomic rename. Where hard links are refused, the old file is renamed instead, and a crash between
    the two renames leaves checkpoint-prev.pt (find_resume_checkpoint takes whichever is there).
    `keep_prev` (the first save of a run resumed from checkpoint-prev.pt): checkpoint-prev.pt stays as it
    is, and the checkpoint-last.pt the run did not resume from is kept as checkpoint-last-not-resumed.pt."""
    out = Path(output_dir)
    path = out / LAST
    tmp = _write_temp(obj, path)  # named as TEMP_FILES: the next start removes it if we die before the renames
    if path.exists():
        _keep_as_prev(path, out / (SET_ASIDE if keep_prev else PREV))
    os.replace(tmp, path)
    if numbered_epoch is not None:
        atomic_save(obj, out / epoch_file_name(numbered_epoch))
    return path


def remove_temp_files(output_dir: Path) -> List[Path]:
    """Delete the temp files that interrupted checkpoint writes left in output_dir (only a run that
    owns the folder may call this: another run's write in progress looks the same)."""
    removed = []
    for tmp in Path(output_dir).glob(TEMP_FILES):
        if tmp.is_file():
            tmp.unlink()
            removed.append(tmp)
    return removed


def save_weights(state: Dict[str, torch.Tensor], path: PathLike, metadata: Dict[str, str]) -> Path:
    """Weights as a safetensors file (no pickle), written atomically; `metadata` goes in its header."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        save_file({k: v.contiguous() for k, v in state.items()}, tmp, metadata=metadata)
        os.chmod(tmp, file_mode())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def checkpoint_metadata(ckpt: "Checkpoint") -> Dict[str, str]:
    """The safetensors metadata that makes exported weights read back as `ckpt` (task, config, architecture)."""
    meta = {"task": ckpt.task or "", "config": json.dumps(ckpt.config)}
    if ckpt.architecture is not None:
        meta["architecture"] = json.dumps(ckpt.architecture)
    return meta


# ----------------------------------------------------------------------------- reading


class PickledObjectsError(CheckpointError):
    """The file holds pickled Python objects besides tensors: refused, as loading them could run code."""


DAMAGED_HINT = "use an intact copy of the file (a copy made while it was being written is incomplete)"
HF_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")  # a Hugging Face folder's weights


def read_state_file(path: PathLike) -> dict:
    """The dict in a .pt/.pth (torch.load with weights_only=True) or .safetensors file, or the weights of
    a Hugging Face folder (config.json + model.safetensors or pytorch_model.bin). A file that cannot be
    read raises CheckpointError saying what is wrong with it in one paragraph."""
    path = Path(path)
    if not path.exists():
        raise CheckpointNotFoundError(f"checkpoint '{path}' does not exist")
    if path.is_dir():
        found = [path / name for name in HF_WEIGHT_FILES if (path / name).is_file()]
        if not found:
            raise CheckpointError(
                f"checkpoint '{path}' is a folder without {' or '.join(HF_WEIGHT_FILES)}; give "
                f"the checkpoint file inside it (e.g. {path / LAST}) or a Hugging Face model folder"
            )
        path = found[0]
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as err:  # noqa: BLE001 - SafetensorError, OSError: re-raised as a message
            raise _damaged(path, "safetensors", err) from err
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - torch's text would invite weights_only=False: never pass it on
        raise explain_load_error(path, err) from err


def explain_load_error(path: Path, err: Exception) -> CheckpointError:
    """What torch.load(weights_only=True) refused, in our words: a file of pickled objects (named by the
    first global it asks for) or a damaged / incomplete / foreign file."""
    text = str(err)
    wanted = re.search(r"GLOBAL ([\w.]+)", text)
    if wanted:
        return PickledObjectsError(
            f"'{path}' is not a plain weights file: besides tensors it holds pickled Python objects (it asks for "
            f"{wanted.group(1)}), and deepmim does not unpickle objects, because that can run arbitrary code. "
            f"Use a checkpoint written by deepmim, or a file of tensors only (a state dict saved with torch.save, "
            f"or .safetensors)"
        )
    return _damaged(path, "PyTorch", err)


def _damaged(path: Path, kind: str, err: Exception) -> CheckpointError:
    with open(path, "rb") as f:
        head = f.read(4)
    if kind == "PyTorch" and head == b"PK\x03\x04":
        detail = "a PyTorch zip archive, damaged or cut short"
    else:
        detail = f"not a readable {kind} file: damaged, cut short, or another kind of file"
    return CheckpointError(
        f"cannot read checkpoint '{path}' ({path.stat().st_size} bytes): it is {detail} "
        f"({kind} says: {_reason(err)}); {DAMAGED_HINT}"
    )


def _reason(err: Exception) -> str:
    """The first sentence of a reader's error (for weights-only refusals: the unpickler's own words)."""
    text = str(err).strip()
    if "WeightsUnpickler error:" in text:
        text = text.split("WeightsUnpickler error:", 1)[1].strip()
    elif text.startswith("Weights only load failed"):
        text = "not a pickle of tensors"
    first_line = text.splitlines()[0] if text else ""
    return re.split(r"(?<=\.)\s", first_line, maxsplit=1)[0].rstrip(".") or type(err).__name__


def read_metadata(path: PathLike) -> Dict[str, str]:
    """The metadata of a .safetensors file (`deepmim export` writes the architecture there), or of a model
    folder's model.safetensors (a timm folder from `deepmim export --format timm`); {} otherwise."""
    if Path(path).is_dir() and (Path(path) / HF_WEIGHT_FILES[0]).is_file():
        path = Path(path) / HF_WEIGHT_FILES[0]
    if Path(path).suffix != ".safetensors":
        return {}
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return dict(f.metadata() or {})
    except Exception as err:  # noqa: BLE001 - SafetensorError: re-raised as a message
        raise _damaged(Path(path), "safetensors", err) from err


def extract_state_dict(obj: Mapping[str, Any]) -> Dict[str, torch.Tensor]:
    """The weights inside a checkpoint dict (under 'model', 'state_dict', ... or at the top)."""
    for key in WEIGHT_KEYS:
        if key in obj and isinstance(obj[key], dict):
            return obj[key]
    return dict(obj)


def strip_module_prefix(state: Mapping[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """Drop the `module.` that saves of a DistributedDataParallel wrapper add to every key."""
    if state and all(k.startswith("module.") for k in state):
        return {k[len("module.") :]: v for k, v in state.items()}
    return dict(state)


@dataclass(frozen=True)
class Checkpoint:
    """A typed view of a checkpoint dict (`raw`), read from `path` when there is one."""

    raw: Dict[str, Any]
    path: Optional[Path] = None

    def __post_init__(self) -> None:
        holds = (
            "config"
            if isinstance(self.raw.get("config"), dict)
            else "probe head"
            if isinstance(self.raw.get(PROBE_HEAD), dict)
            else None
        )
        if holds is not None and self.task is None:
            raise CheckpointError(
                f"{self.name} holds a deepmim run's {holds} but no `task` key, and deepmim reads the kind of a "
                f"checkpoint from `task` alone (every file deepmim writes records it). Write the file again with "
                f"the command that made it, or add the key: ckpt = torch.load(path, weights_only=True); "
                f"ckpt['task'] = 'pretrain' (or the kind it is: {', '.join(_TASK_KINDS)}); torch.save(ckpt, path)"
            )

    @property
    def name(self) -> str:
        return f"'{self.path}'" if self.path is not None else "the checkpoint"

    @property
    def task(self) -> Optional[str]:
        """The kind's name, as the file records it; None for bare weights."""
        task = self.raw.get("task")
        return task if isinstance(task, str) else None

    @property
    def task_kind(self) -> Optional[TaskKind]:
        """The record of the file's kind; None for bare weights and for kinds this process does not know."""
        return _TASK_KINDS.get(self.task) if self.task is not None else None

    @property
    def kind(self) -> str:
        """What the file is, in words, for messages."""
        if self.task is None:
            return "bare weights without a deepmim config (MAE's, the authors', timm's or an export)"
        if self.task_kind is None:
            return f"a {self.task} checkpoint (written by deepmim {self.task})"
        return self.task_kind.describe()

    @property
    def model_state(self) -> Dict[str, torch.Tensor]:
        """The weights, without DDP's `module.` prefix."""
        key = weights_key(self.task)
        if key != "model":  # a probe head: kept under its own key, never wrapped by DDP
            return dict(self.raw[key])
        return strip_module_prefix(extract_state_dict(self.raw))

    @property
    def config(self) -> Dict[str, Any]:
        """The run's config as a plain dict ({} for bare weights)."""
        config = self.raw.get("config")
        return dict(config) if isinstance(config, dict) else {}

    @property
    def architecture(self) -> Optional[Dict[str, Any]]:
        return self.raw.get("architecture")

    @property
    def epoch(self) -> Optional[int]:
        return self.raw["epoch"] if isinstance(self.raw.get("epoch"), int) else None

    @property
    def step(self) -> Optional[int]:
        return self.raw["step"] if isinstance(self.raw.get("step"), int) else None

    def model_config(self) -> Optional[ModelConfig]:
        """The pre-trained model's config; None for bare weights. Another kind of checkpoint is refused
        by name: it holds a classifier, a segmentor or a probe, not a DeepMIM model."""
        if self.task is None:
            return None
        self.require("pretrain", "it holds no pre-trained DeepMIM model")
        return from_dict(ModelConfig, self.config["model"], "model.")

    def require(self, task: str, why: str = "") -> None:
        """Refuse a checkpoint of another kind, saying which kind it is."""
        if self.task != task:
            expected = task_kind(task).describe()
            raise CheckpointError(f"{self.name} is {self.kind}, not {expected}" + (f": {why}" if why else ""))


def read_checkpoint(path_or_obj: Union[PathLike, Mapping[str, Any], Checkpoint]) -> Checkpoint:
    """A file path, or a dict already loaded, as a `Checkpoint` (one already read is returned as it is)."""
    if isinstance(path_or_obj, Checkpoint):
        return path_or_obj
    if not isinstance(path_or_obj, (str, Path)):
        return Checkpoint(dict(path_or_obj))
    raw = read_state_file(path_or_obj)
    meta = read_metadata(path_or_obj)
    if meta.get("task") in _TASK_KINDS and "config" in meta:  # exported weights with their checkpoint's metadata
        raw = {
            "task": meta["task"],
            weights_key(meta["task"]): raw,
            "config": _metadata_json(path_or_obj, meta, "config"),
            "architecture": _metadata_json(path_or_obj, meta, "architecture") if "architecture" in meta else None,
        }
    return Checkpoint(raw, Path(path_or_obj))


def _metadata_json(path: PathLike, meta: Dict[str, str], key: str) -> Dict[str, Any]:
    """A JSON mapping from a safetensors header's metadata, or a message naming the file and the key."""
    try:
        value = json.loads(meta[key])
    except ValueError as err:
        raise CheckpointError(
            f"cannot read checkpoint '{path}': its safetensors metadata '{key}' is not valid "
            f"JSON ({err}); the file was changed after deepmim export wrote it. Export the "
            f"checkpoint again, or remove the metadata to load the weights as bare weights"
        ) from err
    if not isinstance(value, dict):
        raise CheckpointError(
            f"cannot read checkpoint '{path}': its safetensors metadata '{key}' is "
            f"{type(value).__name__}, not a mapping; the file was changed after deepmim export "
            f"wrote it. Export the checkpoint again"
        )
    return value


# ----------------------------------------------------------------------------- the strict loader


def compare_state_dicts(
    own: Mapping[str, torch.Tensor], incoming: Mapping[str, torch.Tensor]
) -> Tuple[List[str], List[str], List[str]]:
    """(missing, unexpected, mis-shaped) keys of `incoming` against `own`, each sorted."""
    missing = sorted(k for k in own if k not in incoming)
    unexpected = sorted(k for k in incoming if k not in own)
    mismatched = sorted(
        f"{k}: file {tuple(incoming[k].shape)} vs model {tuple(own[k].shape)}"
        for k in incoming
        if k in own and incoming[k].shape != own[k].shape
    )
    return missing, unexpected, mismatched


def _matches(key: str, patterns: Iterable[str]) -> bool:
    return any(fnmatch.fnmatchcase(key, p) for p in patterns)


def load_strict(
    module: torch.nn.Module,
    state: Mapping[str, torch.Tensor],
    *,
    context: str = "checkpoint does not fit the model",
    allow_missing: Iterable[str] = (),
    allow_unexpected: Iterable[str] = (),
) -> None:
    """load_state_dict that names every key the file has and the module lacks, every key the module
    needs and the file lacks, and every shape that differs, and loads nothing unless all fit.

    allow_missing / allow_unexpected: fnmatch patterns ('head.*', '*.gamma_1') of keys that may stay
    at their initialisation (a new head) or be left out on purpose."""
    allow_missing, allow_unexpected = tuple(allow_missing), tuple(allow_unexpected)
    own = module.state_dict()
    missing, unexpected, mismatched = compare_state_dicts(own, state)
    missing = [k for k in missing if not _matches(k, allow_missing)]
    unexpected = [k for k in unexpected if not _matches(k, allow_unexpected)]
    problems = []
    if mismatched:
        problems.append("shape mismatch: " + "; ".join(mismatched))
    if unexpected:
        problems.append("keys in the file that the model lacks: " + ", ".join(unexpected))
    if missing:
        problems.append("keys the model needs that the file lacks: " + ", ".join(missing))
    if problems:
        raise CheckpointError(f"{context}:\n  " + "\n  ".join(problems))
    check_weight_values(module, state, context)
    module.load_state_dict({k: v for k, v in state.items() if k in own}, strict=False)


def check_weight_values(module: torch.nn.Module, state: Mapping[str, torch.Tensor], context: str) -> None:
    """Refuse what load_state_dict would take without a word: integer, bool or complex tensors for float
    weights (copied in, they would be silently cast: a quantized or foreign file is not these weights)
    and parameters holding NaN or inf (a model that can only produce NaN)."""
    own = module.state_dict()
    wrong = [
        f"{k} ({str(v.dtype).replace('torch.', '')})"
        for k, v in state.items()
        if k in own and own[k].is_floating_point() and not v.is_floating_point()
    ]
    if wrong:
        raise CheckpointError(
            f"{context}: {len(wrong)} tensor(s) are not floating point where the model has float weights, e.g. "
            f"{', '.join(wrong[:3])}; such a file (quantized, or not weights at all) would be silently cast. "
            f"Use the file's float weights (float32, float16 or bfloat16)"
        )
    parameters = {name for name, _ in module.named_parameters()}
    bad = [
        k for k, v in state.items() if k in parameters and v.is_floating_point() and not bool(torch.isfinite(v).all())
    ]
    if bad:
        raise CheckpointError(
            f"{context}: {len(bad)} weight tensor(s) hold NaN or inf values, e.g. {', '.join(bad[:3])}; a model "
            f"with them can only produce NaN. Use a checkpoint from before the values broke (a run's "
            f"checkpoint-prev.pt or a numbered one)"
        )
