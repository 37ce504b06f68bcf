"""Loading pipeline configs: YAML file + ``dotted.key=value`` overrides -> a pydantic model.

Each pipeline owns one pydantic schema with all defaults (``pipelines/<name>/config.py``); YAML
files in ``configs/`` only override fields. Unknown keys and wrong types are errors that name
the file and the field.
"""

from __future__ import annotations

from pathlib import Path
from typing import TypeVar

import yaml
from pydantic import BaseModel, ValidationError

M = TypeVar("M", bound=BaseModel)


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


def load_config(schema: type[M], path: str | Path | None, overrides: list[str] | None = None) -> M:
    """Read ``path`` (YAML; ``None`` for defaults only), apply overrides, validate with ``schema``.

    Raises:
        FileNotFoundError: no such file.
        ConfigError: unreadable YAML, unknown keys, wrong types (each field named).
    """
    tree: dict = {}
    source = "<defaults>"
    if path is not None:
        p = Path(path)
        source = str(p)
        if not p.is_file():
            raise FileNotFoundError(f"{p}: config file does not exist")
        try:
            tree = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as err:
            raise ConfigError(f"{p}: not valid YAML ({err})") from err
        if not isinstance(tree, dict):
            raise ConfigError(f"{p}: expected a mapping at the top level, got {type(tree).__name__}")
    for o in overrides or []:
        apply_override(tree, o)
    try:
        return schema.model_validate(tree)
    except ValidationError as err:
        lines = [f"{'.'.join(str(x) for x in e['loc'])}: {e['msg']} (got {e.get('input')!r})" for e in err.errors()]
        raise ConfigError(f"{source}: invalid config:\n  " + "\n  ".join(lines)) from None


def dump_config(config: BaseModel) -> str:
    """The resolved config as YAML (saved next to checkpoints and outputs)."""
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)
