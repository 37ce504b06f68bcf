"""The pipelines ``medgan train CONFIG`` knows: a config's ``pipeline`` key (or, in configs
without one, its top-level sections) picks the schema and the trainer. A new method is one entry
here, a pipeline folder (config schema + a :class:`~medgan.training.Trainer` subclass) and a
YAML config."""

from __future__ import annotations

import importlib
from pathlib import Path

from medgan.config import load_config, read_config_tree

# name -> (config schema, trainer), as "module:attribute" so the CLI imports only what it runs
PIPELINES: dict[str, tuple[str, str]] = {
    "cyclegan": ("medgan.pipelines.cyclegan.config:CycleGANConfig", "medgan.pipelines.cyclegan.trainer:CycleGANTrainer"),
    "adda": ("medgan.pipelines.adda.config:AddaConfig", "medgan.pipelines.adda.trainer:AddaTrainer"),
    "cvae": ("medgan.pipelines.cvae.config:CVAEConfig", "medgan.pipelines.cvae.trainer:CVAETrainer"),
    "paired": ("medgan.pipelines.paired.config:PairedConfig", "medgan.pipelines.paired.trainer:PairedTrainer"),
}
# configs written before the ``pipeline`` key: the section only that pipeline has
_SECTION = {"domain_a": "cyclegan", "source": "adda", "domain": "cvae"}


def _load(ref: str):  # noqa: ANN202
    module, attr = ref.split(":")
    return getattr(importlib.import_module(module), attr)


def pipeline_of(config_path: str | Path) -> str:
    """The pipeline a YAML config is for.

    Raises:
        FileNotFoundError: no such file.
        ValueError: unreadable YAML, unknown ``pipeline`` key, or no key and no section that names one.
    """
    tree = read_config_tree(config_path)
    name = tree.get("pipeline")
    if name is None:
        name = next((p for key, p in _SECTION.items() if key in tree), None)
    if name not in PIPELINES:
        raise ValueError(f"{config_path}: pipeline {name!r} is not one of {sorted(PIPELINES)}; set 'pipeline:' in the config")
    return name


def build_trainer(config_path: str | Path, overrides: list[str] | None = None, resume: str | Path | None = None,
                  progress: bool = True, pipeline: str | None = None):  # noqa: ANN201 - a medgan.training.Trainer
    """The trainer of ``pipeline`` (default: the config's own, :func:`pipeline_of`), with the
    config loaded and ``overrides`` applied.

    Raises:
        FileNotFoundError, ValueError: see :func:`pipeline_of` and :func:`medgan.config.load_config`.
    """
    schema, trainer = (_load(ref) for ref in PIPELINES[pipeline or pipeline_of(config_path)])
    return trainer(load_config(schema, config_path, overrides), resume=resume, progress=progress)
