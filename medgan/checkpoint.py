"""Checkpoints: a folder per save, written atomically.

``<run>/checkpoints/iter_000500/`` holds

- ``weights.safetensors``: every network's parameters, keys prefixed by the network name
  (``G_CT2MR.model.0.0.weight``); loading safetensors cannot execute code;
- ``training_state.pt``: optimizers, schedulers, image pools, random states and the iteration,
  loaded with ``torch.load(weights_only=True)`` (tensors and plain containers only);
- ``config.yaml``: the resolved pipeline config;
- ``meta.json``: pipeline name, medgan version, iteration, and pipeline extras such as the
  intensity normalisation parameters.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from medgan.io import creation_mode, fsync_dir

WEIGHTS = "weights.safetensors"
STATE = "training_state.pt"
CONFIG = "config.yaml"
META = "meta.json"


class CheckpointError(ValueError):
    """A checkpoint that is missing, incomplete or from another model."""


def save_checkpoint(
    folder: str | Path, networks: dict[str, nn.Module], meta: dict, config_yaml: str, training_state: dict | None = None
) -> Path:
    """Write a checkpoint folder atomically (temporary folder, then rename)."""
    out = Path(folder)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    try:
        tmp.chmod(creation_mode(directory=True))  # not mkdtemp's 0700
        tensors = {f"{name}.{k}": v.detach().cpu().contiguous() for name, net in networks.items() for k, v in net.state_dict().items()}
        save_file(tensors, str(tmp / WEIGHTS))
        if training_state is not None:
            torch.save(training_state, tmp / STATE)
        (tmp / CONFIG).write_text(config_yaml, encoding="utf-8")
        (tmp / META).write_text(json.dumps(meta, indent=2), encoding="utf-8")
        for f in tmp.iterdir():  # durable before it carries the final name
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
        fsync_dir(tmp)
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
        fsync_dir(out.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def checkpoint_damage(folder: Path, need_state: bool = False) -> str | None:
    """Why the checkpoint in ``folder`` cannot be used (a missing or unreadable file), or ``None``.
    Reads the weights' header and every tensor's extent (safetensors), meta.json and config.yaml,
    and with ``need_state`` the training state."""
    import yaml
    from safetensors import safe_open

    try:
        with safe_open(str(folder / WEIGHTS), framework="pt") as f:
            for k in f.keys():
                f.get_slice(k)
        json.loads((folder / META).read_text(encoding="utf-8"))
        yaml.safe_load((folder / CONFIG).read_text(encoding="utf-8"))
        if need_state:
            torch.load(folder / STATE, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - each library raises its own types for a damaged file
        return f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
    return None


def resolve_checkpoint(path: str | Path, need_state: bool = False) -> Path:
    """A checkpoint folder, or the newest one in a run folder or ``checkpoints`` folder, checked
    to be intact (:func:`checkpoint_damage`).

    Raises:
        CheckpointError: nothing that looks like a medgan checkpoint, or a damaged one (the message
            names the newest intact checkpoint beside it, to pass instead; none is used silently).
    """
    p = Path(path)
    if not p.exists():
        raise CheckpointError(f"{p}: checkpoint does not exist")
    if (p / WEIGHTS).is_file() or (p / META).is_file():
        chosen, siblings = p, sorted(x.parent for x in p.parent.glob("iter_*/" + META))
    else:
        chosen, siblings = None, []
        for folder in (p / "checkpoints", p):
            found = sorted(x.parent for x in folder.glob("iter_*/" + META)) if folder.is_dir() else []
            if found:
                chosen, siblings = found[-1], found
                break
        if chosen is None:
            raise CheckpointError(f"{p}: not a medgan checkpoint (no {WEIGHTS} in it or in {p}/checkpoints/iter_*)")
    why = checkpoint_damage(chosen, need_state)
    if why is None:
        return chosen
    older = [s for s in reversed(siblings) if s.name < chosen.name and checkpoint_damage(s, need_state) is None]
    hint = f"; the newest intact checkpoint before it is {older[0]}: pass that one" if older else "; no intact earlier checkpoint"
    raise CheckpointError(f"{chosen}: damaged checkpoint ({why}){hint}")


def checkpoint_pipeline(path: str | Path) -> tuple[Path, str | None]:
    """``(checkpoint folder, the pipeline its meta.json names)`` of a checkpoint or run folder;
    the pipeline is ``None`` when meta.json cannot be read (the loader then says what is wrong).

    Raises:
        CheckpointError: not a checkpoint, or damaged (see :func:`resolve_checkpoint`).
    """
    folder = resolve_checkpoint(path)
    try:
        return folder, json.loads((folder / META).read_text(encoding="utf-8")).get("pipeline")
    except (OSError, ValueError, AttributeError):
        return folder, None


def read_meta(folder: Path, pipeline: str) -> dict:
    """``meta.json`` of a checkpoint, checked to come from ``pipeline``."""
    try:
        meta = json.loads((folder / META).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise CheckpointError(f"{folder}: missing or unreadable {META} ({err})") from err
    if meta.get("pipeline") != pipeline:
        raise CheckpointError(f"{folder}: checkpoint of pipeline {meta.get('pipeline')!r}, expected {pipeline!r}")
    return meta


def load_networks(folder: Path, networks: dict[str, nn.Module]) -> None:
    """Load ``weights.safetensors`` into ``networks`` (strict: every key and shape must match)."""
    try:
        tensors = load_file(str(folder / WEIGHTS))
    except Exception as err:  # safetensors raises its own error types for corrupt files
        raise CheckpointError(f"{folder / WEIGHTS}: cannot read weights ({err})") from err
    for name, net in networks.items():
        prefix = name + "."
        sd = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
        try:
            net.load_state_dict(sd, strict=True)
        except RuntimeError as err:
            first = str(err).splitlines()[0:3]
            raise CheckpointError(
                f"{folder}: weights of {name} do not fit this model's {name} (another architecture or config?): {' '.join(first)}"
            ) from err


def load_training_state(folder: Path, map_location: str | torch.device = "cpu") -> dict:
    """``training_state.pt`` with ``weights_only=True`` (no code execution)."""
    path = folder / STATE
    if not path.is_file():
        raise CheckpointError(f"{folder}: no {STATE}; this checkpoint cannot resume training")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:
        raise CheckpointError(f"{path}: refused or unreadable training state ({err})") from err


def open_checkpoint(path: str | Path, pipeline: str, schema: type):  # noqa: ANN201
    """``(folder, meta, config)`` of a checkpoint of ``pipeline``; ``config`` validated by ``schema``.

    Raises:
        CheckpointError: not a checkpoint, another pipeline's, or an unreadable config.
    """
    import yaml

    folder = resolve_checkpoint(path)
    meta = read_meta(folder, pipeline)
    try:
        config = schema.model_validate(yaml.safe_load((folder / CONFIG).read_text(encoding="utf-8")))
    except Exception as err:  # noqa: BLE001 - yaml or pydantic errors
        raise CheckpointError(f"{folder / CONFIG}: unreadable or invalid config ({err})") from err
    return folder, meta, config
