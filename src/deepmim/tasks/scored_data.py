"""Which data a command that scores a checkpoint reads, and how it says so.

knn, linprobe, probe-layers and analyze default to the data the checkpoint was trained on, as its
recorded config names it (`config.data` of a pretrain or finetune checkpoint): a probe of a model
pre-trained on a folder of photos is scored on that folder, not on the built-in shapes. data.*
overrides (or a recipe's data section, or analyze's --data) change it: keys given on top of the
recorded ones refine them (data.max_samples=500), a data.name other than the recorded one starts
from that name alone. A checkpoint that records no data (bare weights: MAE's, the authors', timm's)
is refused until the data is named, and so is recorded data that is not there any more.
evaluate and segment eval read their checkpoint's config whole; `check_available` refuses for them
the same way.

Every scoring command prints `data_line(record)` and writes `record` into its JSON: the dataset, where
the choice came from, and the images of each split it read.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Dict, Iterable, Optional, Sequence, Tuple, TypeVar

from ..checkpoint import CheckpointError, read_checkpoint
from ..config.loader import ConfigError, deep_merge, from_dict, parse_overrides, read_yaml, resolve_recipe_path
from ..config.schema import DataConfig

C = TypeVar("C")
CLASSIFICATION_DATA = ("embedded", "imagefolder", "idx", "wds", "hf")
LOCAL_FOLDERS = ("imagefolder", "idx", "ade20k", "maskfolder")  # data.name values whose data.path must exist
HOW_TO_NAME = (
    "name the data with data.name=imagefolder data.path=/data/photos (a folder with train/ and val/), "
    "data.name=idx data.path=FOLDER (MNIST-style IDX files), or data.name=embedded for the built-in "
    "shapes"
)


def recorded_data(checkpoint: str) -> Optional[Dict[str, Any]]:
    """The data.* a deepmim checkpoint was trained with, or None (bare weights, a file that cannot be
    read: the command's own loading then says what is wrong with it)."""
    if not Path(checkpoint).exists():
        return None
    try:
        config = read_checkpoint(checkpoint).config or {}
    except (CheckpointError, OSError, ValueError):
        return None
    data = config.get("data")
    if not isinstance(data, dict) or data.get("name") not in CLASSIFICATION_DATA:
        return None
    fields = {f.name for f in dataclasses.fields(DataConfig)}
    return {k: v for k, v in data.items() if k in fields}


def given_data(recipe: Optional[str], overrides: Iterable[str], extra: Iterable[str] = ()) -> Dict[str, Any]:
    """The data.* keys the user set: the recipe's data section, then the data.* overrides (and `extra`,
    e.g. what analyze's --data stands for)."""
    given: Dict[str, Any] = {}
    if recipe:
        section = read_yaml(resolve_recipe_path(recipe)).get("data")
        if isinstance(section, dict):
            given = dict(section)
    for items in (list(extra), list(overrides)):
        section = parse_overrides([o for o in items if o.startswith("data.")]).get("data", {})
        given = deep_merge(given, section)
    return given


def _identity(data: Dict[str, Any]) -> Tuple[Any, ...]:
    return data.get("name"), data.get("path"), data.get("max_samples")


def resolve_scored_data(
    cfg: C,
    checkpoints: Sequence[str],
    recipe: Optional[str],
    overrides: Iterable[str],
    command: str,
    extra: Iterable[str] = (),
) -> Tuple[C, str]:
    """`cfg` with the data to score `checkpoints` on, and where that choice came from (for the record).
    See the module docstring for the rule. No checkpoints (--print-config alone): `cfg` as given."""
    if not checkpoints:
        return cfg, "given"
    given = given_data(recipe, overrides, extra)
    first = checkpoints[0]
    recorded = recorded_data(first)
    if "name" in given and (recorded is None or given["name"] != recorded.get("name")):
        check_available(cfg.data, f"the data given to deepmim {command}")
        return cfg, "given"
    if not Path(first).exists():
        raise FileNotFoundError(f"checkpoint '{first}' does not exist")
    if recorded is None:
        what = "asks for data.* keys but not which data" if given else "was given no data"
        raise ConfigError(
            f"deepmim {command} scores a checkpoint on the data it was trained on, but {first} records "
            f"no training data (weights without a deepmim config, or a run's initial encoder) and the "
            f"command {what}: {HOW_TO_NAME}"
        )
    for other in checkpoints[1:]:
        theirs = recorded_data(other)
        if theirs is not None and _identity(theirs) != _identity(recorded) and "name" not in given:
            raise ConfigError(
                f"{first} was trained on {_where(recorded)} and {other} on {_where(theirs)}; "
                f"deepmim {command} scores every checkpoint on the same data: choose it with "
                f"data.name=... data.path=... (or analyze's --data)"
            )
    data = from_dict(DataConfig, deep_merge(recorded, given))
    check_available(data, f"the data {first} was trained on")
    return dataclasses.replace(cfg, data=data), f"recorded in {first}"


def _where(data: Dict[str, Any]) -> str:
    return f"{data.get('name')} {data['path']}" if data.get("path") else str(data.get("name"))


def check_available(data: Any, what: str) -> None:
    """Refuse, in one paragraph, data whose folder is not there."""
    if data.name in LOCAL_FOLDERS and data.path and not Path(data.path).expanduser().exists():
        raise ConfigError(
            f"{what}, data.name={data.name} data.path={data.path}, is not there: give "
            f"data.path=WHERE_IT_IS_NOW, or score on other data ({HOW_TO_NAME})"
        )


def data_record(data: Any, source: str, images: Dict[str, int]) -> Dict[str, Any]:
    """What a scoring command's JSON records of its data: name, path, where the choice came from, and
    the number of images read per split ({"train": 1200, "val": 400})."""
    record: Dict[str, Any] = {"name": data.name, "path": data.path, "source": source, "images": dict(images)}
    if getattr(data, "name", None) == "embedded" and hasattr(data, "num_samples"):
        record["num_samples"] = data.num_samples
    if getattr(data, "max_samples", None) is not None:
        record["max_samples"] = data.max_samples
    return record


def data_line(record: Dict[str, Any]) -> str:
    """`data: imagefolder /data/photos (recorded in CKPT); train 1200 images, val 400 images`."""
    where = f"{record['name']} {record['path']}" if record.get("path") else record["name"]
    splits = ", ".join(f"{split} split {n} images" for split, n in record["images"].items())
    return f"data: {where} ({record['source']}); {splits or 'no split read by a probe'}"
