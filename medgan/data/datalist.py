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
    """Entries of an MSD-style ``dataset.json`` section, paths resolved against its folder; the
    paired keys ``target`` and ``mask`` are kept where an entry has them."""
    path = Path(dataset_json)
    try:
        table = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"{path}: cannot read the MSD dataset.json ({err})") from err
    if section not in table:
        raise ValueError(f"{path}: no section {section!r}; found {sorted(table)}")
    entries = []
    for item in table[section]:
        image = item["image"] if isinstance(item, dict) else item
        if include is not None and not fnmatch.fnmatch(image, include):
            continue
        entry = {"image": str((path.parent / image).resolve())}
        for key in ("label", *(("target", "mask") if isinstance(item, dict) else ())):
            value = item.get(key) if isinstance(item, dict) else None
            if key == "label" or value:  # paired data (SynthRAD-style) adds target and mask
                entry[key] = str((path.parent / value).resolve()) if value else None
        entries.append(entry)
    if not entries:
        raise ValueError(f"{path}: section {section!r} has no entries matching include={include!r}")
    return entries


#: what SynthRAD's case folders hold, in the order looked for
SYNTHRAD_SUFFIXES = (".mha", ".nii.gz", ".nii", ".nrrd")


def datalist_from_synthrad(root: str | Path, image: str = "mr", target: str = "ct", mask: str | None = "mask") -> list[dict[str, str | None]]:
    """Paired entries ``{"image", "target", "mask"}`` of SynthRAD's layout: one folder per case
    under ``root`` holding ``{image}``, ``{target}`` and ``{mask}`` (``.mha``; SynthRAD 2023 also
    ``.nii.gz``), e.g. ``1ABA005/mr.mha, ct.mha, mask.mha``. Sorted by case.

    Raises:
        FileNotFoundError: no such folder.
        ValueError: no case folders, or a case missing a file (names the case and the file).
    """
    base = Path(root)
    if not base.is_dir():
        raise FileNotFoundError(f"{base}: SynthRAD data folder does not exist")

    def find(case: Path, name: str) -> str | None:
        return next((str(case / (name + sfx)) for sfx in SYNTHRAD_SUFFIXES if (case / (name + sfx)).is_file()), None)

    entries = []
    for case in sorted(p for p in base.iterdir() if p.is_dir()):
        found = {"image": find(case, image), "target": find(case, target), "mask": find(case, mask) if mask else None}
        missing = [n for k, n in (("image", image), ("target", target), ("mask", mask)) if n and found[k] is None]
        if missing:
            raise ValueError(f"{case}: case folder without {', '.join(missing)} "
                             f"(looked for {', '.join(SYNTHRAD_SUFFIXES)})")
        entries.append(found)
    if not entries:
        raise ValueError(f"{base}: no case folders (SynthRAD layout: <root>/<case>/{image}.mha, {target}.mha, {mask}.mha)")
    return entries
