"""Loading pipeline configs: YAML file + ``dotted.key=value`` overrides -> a pydantic model.

Each pipeline owns one pydantic schema with all defaults (``pipelines/<name>/config.py``); YAML
files in ``configs/`` only override fields. Unknown keys and wrong types are errors that name
the file and the field.

**Paths**: input paths (data folders, ``dataset.json`` files, class maps; the fields typed
:data:`InputPath` or :data:`InputPaths`) written in a YAML file are relative to that file's own
folder, and those given as command-line overrides to the working directory; both are made
absolute when the config is loaded, so a resolved config (the one saved with a checkpoint)
means the same files from any folder. Output folders stay relative to the working directory.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

M = TypeVar("M", bound=BaseModel)


class _InputMarker:
    """Field metadata: this field names input files (resolved against the config's folder)."""


INPUT = _InputMarker()
#: a path to an input file or folder (see the module docstring)
InputPath = Annotated[Path, INPUT]
#: a list of ``{key: path}`` entries of input files (``data.files``)
InputPaths = Annotated[list[dict[str, str | None]], INPUT]


def _absolute(value: Any, base: Path) -> Any:
    if value is None:
        return None
    if isinstance(value, (str, Path)):
        resolved = (base / Path(value).expanduser()).resolve()  # base / an absolute path is that path
        return resolved if isinstance(value, Path) else str(resolved)
    if isinstance(value, list):
        return [_absolute(v, base) for v in value]
    if isinstance(value, dict):
        return {k: _absolute(v, base) for k, v in value.items()}
    return value


def _marked(annotation: Any) -> bool:
    """Whether an annotation (e.g. ``InputPath | None``) carries the input marker."""
    from typing import get_args, get_origin

    if get_origin(annotation) is Annotated:
        return any(isinstance(m, _InputMarker) for m in getattr(annotation, "__metadata__", ()))
    return any(_marked(a) for a in get_args(annotation))


def resolve_input_paths(model: BaseModel, base: Path, cwd: Path, overridden: list[str], prefix: str = "") -> BaseModel:
    """A copy of ``model`` whose input-path fields are absolute: against ``cwd`` for fields set
    by an override (dotted keys in ``overridden``), against ``base`` otherwise."""
    update = {}
    for name, info in type(model).model_fields.items():
        value = getattr(model, name)
        where = f"{prefix}{name}"
        if any(isinstance(m, _InputMarker) for m in info.metadata) or _marked(info.annotation):
            from_override = any(where == o or where.startswith(o + ".") or o.startswith(where + ".") for o in overridden)
            update[name] = _absolute(value, cwd if from_override else base)
        elif isinstance(value, BaseModel):
            update[name] = resolve_input_paths(value, base, cwd, overridden, where + ".")
        elif isinstance(value, list) and value and all(isinstance(v, BaseModel) for v in value):
            update[name] = [resolve_input_paths(v, base, cwd, overridden, f"{where}.{i}.") for i, v in enumerate(value)]
    return model.model_copy(update=update)


class ConfigError(ValueError):
    """A config file or override that does not fit the schema."""


def apply_override(tree: dict, override: str) -> None:
    """Set ``a.b.c=value`` in a nested dict; ``value`` is parsed as YAML (numbers, lists, null)."""
    if "=" not in override:
        raise ConfigError(f"override {override!r} must look like key.subkey=value")
    key, raw = override.split("=", 1)
    node = tree
    parts = key.strip().split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {override!r}: {part!r} is not a section")
    node[parts[-1]] = yaml.safe_load(raw)


def read_config_tree(path: str | Path) -> dict:
    """The YAML mapping of a config file, unvalidated.

    Raises:
        FileNotFoundError: no such file.
        ConfigError: unreadable YAML, or not a mapping at the top level.
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{p}: config file does not exist")
    try:
        tree = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{p}: not valid YAML ({err})") from err
    if not isinstance(tree, dict):
        raise ConfigError(f"{p}: expected a mapping at the top level, got {type(tree).__name__}")
    return tree


def load_config(schema: type[M], path: str | Path | None, overrides: list[str] | None = None) -> M:
    """Read ``path`` (YAML; ``None`` for defaults only), apply overrides, validate with ``schema``.

    Raises:
        FileNotFoundError: no such file.
        ConfigError: unreadable YAML, unknown keys, wrong types (each field named).
    """
    tree: dict = read_config_tree(path) if path is not None else {}
    source = "<defaults>" if path is None else str(path)
    for o in overrides or []:
        apply_override(tree, o)
    try:
        config = schema.model_validate(tree)
    except ValidationError as err:
        lines = [f"{'.'.join(str(x) for x in e['loc'])}: {e['msg']} (got {e.get('input')!r})" for e in err.errors()]
        raise ConfigError(f"{source}: invalid config:\n  " + "\n  ".join(lines)) from None
    base = Path(path).resolve().parent if path is not None else Path.cwd()
    keys = [o.split("=", 1)[0].strip() for o in overrides or []]
    return resolve_input_paths(config, base, Path.cwd(), keys)  # type: ignore[return-value]


def dump_config(config: BaseModel) -> str:
    """The resolved config as YAML (saved next to checkpoints and outputs). A config that can make
    itself self-contained (``self_contained()``, e.g. label tables read from class-map files put
    inline) is dumped in that form, so a checkpoint needs no file beside it."""
    if hasattr(config, "self_contained"):
        config = config.self_contained()
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)
