"""Map YAML recipes and dotted `key=value` overrides onto the typed config dataclasses.

Every key is checked against the dataclass it lands in, and every value against its
annotation, so a typo or a wrong type stops the run with a message naming the key,
before any model is built or any data is read.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import typing
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Type, TypeVar, Union

import yaml

T = TypeVar("T")
RECIPE_DIR = Path(__file__).resolve().parent.parent / "recipes"


class ConfigError(ValueError):
    """A recipe or override that does not fit the schema."""


def from_dict(cls: Type[T], data: Any, path: str = "") -> T:
    """Build dataclass `cls` from a plain dict, checking keys and types recursively."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        where = path.rstrip(".") or "config"
        raise ConfigError(f"{where}: expected a mapping for {cls.__name__}, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in data.items():
        if key not in names:
            raise ConfigError(_unknown_key_message(f"{path}{key}", key, names))
        kwargs[key] = _coerce(hints[key], value, f"{path}{key}")
    return cls(**kwargs)


def to_dict(cfg: Any) -> Dict[str, Any]:
    """Plain-dict view of a config (for checkpoints, logs and YAML dumps)."""
    return dataclasses.asdict(cfg)


def flatten(tree: Any, prefix: str = "") -> Dict[str, Any]:
    """Nested dicts -> {"a.b.c": leaf}: the dotted keys of overrides, for comparing two configs key by key."""
    if isinstance(tree, dict):
        out: Dict[str, Any] = {}
        for k, v in tree.items():
            out.update(flatten(v, f"{prefix}{k}."))
        return out
    return {prefix.rstrip("."): tree}


def dump_yaml(cfg: Any) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False, default_flow_style=False, width=100)


def _unknown_key_message(full_key: str, key: str, names: List[str]) -> str:
    close = difflib.get_close_matches(key, names, n=1)
    hint = f" Did you mean '{close[0]}'?" if close else ""
    return f"unknown config key '{full_key}'.{hint} Valid keys here: {', '.join(names)}"


def _coerce(tp: Any, value: Any, path: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is Union:
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        if len(inner) == 1:
            return _coerce(inner[0], value, path)
        return value
    if value is None:
        raise ConfigError(f"{path}: null is not allowed here (expected {_type_name(tp)})")
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, path + ".")
    if origin in (list, List):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{path}: expected a list, got {value!r}")
        (item_tp,) = args or (Any,)
        return [_coerce(item_tp, v, f"{path}.{i}") for i, v in enumerate(value)]
    if origin in (dict, Dict):
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: expected a mapping, got {value!r}")
        return dict(value)
    if tp is Any:
        return value
    return _coerce_scalar(tp, value, path)


def _coerce_scalar(tp: Any, value: Any, path: str) -> Any:
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            if abs(value) >= 2**63:  # torch and numpy take 64-bit integers: a larger one fails deep inside
                raise ConfigError(f"{path}: {value} is out of range (a whole number below 2**63 in size)")
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
    elif tp is float:
        number = None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            number = float(value)
        elif isinstance(value, str):  # YAML reads '1e-4' (no dot) as a string
            try:
                number = float(value)
            except ValueError:
                pass
        if number is not None:
            if not math.isfinite(number):  # NaN would surface mid-run as a "divergence", inf as a NaN later
                raise ConfigError(f"{path}: expected a finite number, got {value!r}")
            return number
    elif tp is str:
        if isinstance(value, str):
            return value
    raise ConfigError(f"{path}: expected {_type_name(tp)}, got {value!r} ({type(value).__name__})")


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp))


# ----------------------------------------------------------------------------- overrides


def parse_overrides(items: Iterable[str]) -> Dict[str, Any]:
    """['train.epochs=5', 'model.heads.0.weight=2'] -> nested dict (values parsed as YAML)."""
    out: Dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"override '{item}' is not of the form key=value (e.g. train.epochs=10)")
        key, raw = item.split("=", 1)
        if not key:
            raise ConfigError(f"override '{item}' has an empty key")
        try:
            value = safe_yaml(raw, f"override '{key}'") if raw != "" else ""
        except yaml.YAMLError as err:
            raise ConfigError(f"override '{item}': the value is not valid YAML ({err}); quote it") from err
        _set_dotted(out, key.split("."), value)
    return out


def _set_dotted(tree: Dict[str, Any], parts: List[str], value: Any) -> None:
    node = tree
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override key '{'.'.join(parts)}' sets a value inside a non-mapping")
    node[parts[-1]] = value


def deep_merge(base: Any, update: Any) -> Any:
    """Merge `update` into `base`. Dicts merge by key; a list is indexed by integer keys
    ('heads.0.weight'), otherwise replaced whole."""
    if isinstance(base, dict) and isinstance(update, dict):
        merged = dict(base)
        for key, value in update.items():
            merged[key] = deep_merge(base[key], value) if key in base else value
        return merged
    if isinstance(base, list) and isinstance(update, dict) and all(_is_index(k) for k in update):
        merged_list = list(base)
        for key, value in update.items():
            i = int(key)
            if not 0 <= i < len(merged_list):
                raise ConfigError(f"list index {i} out of range (the list has {len(merged_list)} items)")
            merged_list[i] = deep_merge(merged_list[i], value)
        return merged_list
    return update


def _is_index(key: Any) -> bool:
    return isinstance(key, int) or (isinstance(key, str) and key.isdigit())


# ----------------------------------------------------------------------------- recipes


def list_recipes() -> List[Path]:
    return sorted(RECIPE_DIR.glob("*.yaml"))


def resolve_recipe_path(name_or_path: str) -> Path:
    """A bundled recipe name ('demo') or a path to a YAML file."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") and path.exists():
        return path
    bundled = RECIPE_DIR / f"{path.stem if path.suffix else name_or_path}.yaml"
    if bundled.exists():
        return bundled
    names = [p.stem for p in list_recipes()]
    close = difflib.get_close_matches(path.stem, names, n=3)
    hint = f" Did you mean: {', '.join(close)}?" if close else ""
    raise ConfigError(
        f"recipe '{name_or_path}' is neither a YAML file nor a bundled recipe.{hint} "
        f"Run 'deepmim recipes' to list the bundled ones."
    )


def recipe_description(path: Path) -> str:
    """The first comment line of a recipe: what it is and where it comes from."""
    for line in path.read_text().splitlines():
        if line.startswith("#"):
            return line.lstrip("# ").strip()
    return ""


MAX_YAML_VALUES = 100_000  # a recipe's values with its aliases expanded; real recipes hold a few hundred


def safe_yaml(text: str, where: str) -> Any:
    """yaml.safe_load, refusing documents whose aliases expand to more than MAX_YAML_VALUES values (or into
    themselves): an "alias bomb" of a few lines would otherwise fill the memory once anything walks it."""
    data = yaml.safe_load(text)
    if _expanded_size(data, {}) > MAX_YAML_VALUES:
        raise ConfigError(
            f"{where}: its YAML aliases (&name / *name) expand to more than {MAX_YAML_VALUES:,} "
            f"values, or into themselves; write the values out instead of nesting aliases"
        )
    return data


def _expanded_size(obj: Any, memo: Dict[int, float]) -> float:
    """How many values `obj` holds once every shared (aliased) part is counted each time it appears;
    linear in the distinct objects (memoised by id), infinite for a structure that contains itself."""
    if not isinstance(obj, (dict, list)):
        return 1
    key = id(obj)
    if key in memo:
        return memo[key]
    memo[key] = float("inf")  # while counting: a part that reaches itself again is infinite
    items = [v for kv in obj.items() for v in kv] if isinstance(obj, dict) else obj
    total = 1.0
    for item in items:
        total += _expanded_size(item, memo)
        if total > MAX_YAML_VALUES:
            break
    memo[key] = total
    return total


def read_yaml(path: Path) -> Dict[str, Any]:
    try:
        data = safe_yaml(path.read_text(), str(path))
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from err
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a recipe must be a mapping at the top level")
    return data


def recipe_task(path: Path) -> str:
    """Which command a recipe is for: its top-level `task` key (default: pretrain)."""
    return str(read_yaml(path).get("task", "pretrain"))


def load_config(
    cls: Type[T],
    recipe: Optional[str] = None,
    overrides: Iterable[str] = (),
    expand: Optional[typing.Callable[[Dict[str, Any]], Dict[str, Any]]] = None,
    task: str = "pretrain",
) -> T:
    """Recipe (optional) + overrides -> validated dataclass. `expand` resolves presets; `task`
    refuses a recipe written for another command."""
    data: Dict[str, Any] = read_yaml(resolve_recipe_path(recipe)) if recipe else {}
    recipe_for = data.pop("task", "pretrain" if recipe else task)  # no recipe: nothing to refuse
    if recipe_for != task:
        raise ConfigError(
            f"recipe '{recipe}' is for 'deepmim {recipe_for}', not 'deepmim {task}'; "
            f"run: deepmim {recipe_for} --config {recipe}"
        )
    data = deep_merge(data, parse_overrides(overrides)) if overrides else data
    if expand is not None:
        data = expand(data)
    return from_dict(cls, data)
