"""Datalists: ``[{"image": path, "label": path | None}, ...]`` from the layouts users have.

- **folder**: every image in a folder (``*.nii.gz``, ``*.nii``, ``*.nrrd``, ``*.mha``, ...); the
  label of ``x.nii.gz`` is ``x{label_suffix}.nii.gz`` beside it, or ``labels_folder/x.nii.gz``
  (TotalSegmentator/SynthRAD-style folders). Files that are labels are not images.
- **msd**: an MSD-style ``dataset.json`` (AMOS, Medical Segmentation Decathlon): entries of its
  ``training`` (or another) section, paths relative to the json's folder; ``include`` keeps
  entries whose image path matches a glob (AMOS mixes CT and MR ids in one list).
- **files**: explicit ``{image, label}`` entries.

Labels are optional per volume; unlabelled volumes still feed the adversarial and cycle terms.
"""

from __future__ import annotations

import fnmatch
import json
from pathlib import Path

from medgan.io import image_suffix, is_image_path, strip_image_suffix


def datalist_from_folder(
    folder: str | Path, label_suffix: str = "_labels", labels_folder: str | Path | None = None
) -> list[dict[str, str | None]]:
    """One entry per image in ``folder`` (sorted), with its label when one exists."""
    root = Path(folder)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: data folder does not exist")
    entries = []
    for f in sorted(root.iterdir()):
        if not f.is_file() or not is_image_path(f) or strip_image_suffix(f).endswith(label_suffix):
            continue
        stem, suffix = strip_image_suffix(f), image_suffix(f)
        candidates = [root / f"{stem}{label_suffix}{suffix}"]
        if labels_folder is not None:
            candidates.insert(0, Path(labels_folder) / f.name)
        label = next((str(c) for c in candidates if c.is_file()), None)
        entries.append({"image": str(f), "label": label})
    if not entries:
        raise ValueError(f"{root}: no images found (looked for .nii, .nii.gz, .nrrd, .nhdr, .mha, .mhd)")
    return entries


def datalist_from_msd(
    dataset_json: str | Path, section: str = "training", include: str | None = None
) -> list[dict[str, str | None]]:
    """Entries of an MSD-style ``dataset.json`` section, paths resolved against its folder."""
    path = Path(dataset_json)
    try:
        table = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"{path}: cannot read the MSD dataset.json ({err})") from err
    if section not in table:
        raise ValueError(f"{path}: no section {section!r}; found {sorted(table)}")
    entries = []
    for item in table[section]:
        image = item["image"] if isinstance(item, dict) else item
        if include is not None and not fnmatch.fnmatch(image, include):
            continue
        label = item.get("label") if isinstance(item, dict) else None
        entries.append(
            {
                "image": str((path.parent / image).resolve()),
                "label": str((path.parent / label).resolve()) if label else None,
            }
        )
    if not entries:
        raise ValueError(f"{path}: section {section!r} has no entries matching include={include!r}")
    return entries
