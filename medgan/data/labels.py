"""Remapping each dataset's label ids into one shared class list.

A pipeline config names the classes it segments (``classes: [liver, spleen, ...]``); each domain
says how its label maps encode them, either with explicit ids (``ids: {liver: [5]}``) or with a
class-map JSON (``classmap: totalsegmentator.json, space: total``) holding ``id -> name`` tables
and optional groups (``groups: mr_merged_from_ct`` merges the CT's 25 vertebrae into one class).
Ids of the label space that are not in the class list become background (0); ids that the label
space does not know raise an error naming the file, since they mean the wrong class map.
"""

from __future__ import annotations

import difflib
import json
from pathlib import Path
from typing import TypeVar

import numpy as np


T = TypeVar("T")  # numpy array or torch tensor: what keep_largest_components takes it gives back


class LabelMapper:
    """Maps raw label ids of one label space to shared class indices ``0..K`` (0 = background).

    Args:
        classes: shared class names; class ``classes[i]`` gets index ``i + 1``.
        class_ids: for each class name, the raw ids that belong to it.
        known_ids: every id the label space defines (besides 0); others raise.
    """

    def __init__(self, classes: list[str], class_ids: dict[str, list[int]], known_ids: set[int]) -> None:
        missing = [c for c in classes if c not in class_ids]
        if missing:
            raise ValueError(f"no label ids given for classes {missing}")
        self.classes = list(classes)
        self.class_ids = {c: [int(i) for i in class_ids[c]] for c in classes}
        self.known_ids = set(known_ids) | {0} | {i for ids in class_ids.values() for i in ids}
        self.lut = np.zeros(max(self.known_ids) + 1, dtype=np.int64)
        for index, name in enumerate(classes, start=1):
            for raw in class_ids[name]:
                self.lut[raw] = index

    @property
    def num_classes(self) -> int:
        """Number of output channels of a segmenter: classes plus background."""
        return len(self.classes) + 1

    def __call__(self, labels: np.ndarray, path: str = "<array>") -> np.ndarray:
        """Raw ids ``(I, J, K)`` -> class indices ``(I, J, K)`` int64.

        Raises:
            ValueError: an id the label space does not define (names the file and the ids).
        """
        ids = np.unique(labels).astype(np.int64)
        unknown = [int(i) for i in ids if i < 0 or int(i) not in self.known_ids]
        if unknown:
            raise ValueError(
                f"{path}: label ids {unknown[:10]} are not in the class map of this domain; "
                "check the domain's labels.classmap/space or labels.ids"
            )
        return self.lut[labels.astype(np.int64)]

    @classmethod
    def from_classmap(
        cls, classes: list[str], classmap: str | Path, space: str, groups: str | None = None
    ) -> LabelMapper:
        """Build from a class-map JSON ``{space: {id: name}, groups: {name: [ids]}}``."""
        path = Path(classmap)
        try:
            table = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as err:
            raise ValueError(f"{path}: cannot read the class map ({err})") from err
        if space not in table:
            raise ValueError(f"{path}: no label space {space!r}; found {sorted(k for k in table if not k.startswith('_'))}")
        id_to_name = {int(k): v for k, v in table[space].items()}
        name_to_ids: dict[str, list[int]] = {}
        for i, name in id_to_name.items():
            name_to_ids.setdefault(name, []).append(i)
        if groups is not None:
            if groups not in table:
                raise ValueError(f"{path}: no group table {groups!r}")
            for name, ids in table[groups].items():
                name_to_ids[name] = [int(i) for i in ids]
        class_ids = {}
        for c in classes:
            if c not in name_to_ids:
                close = difflib.get_close_matches(c, list(name_to_ids), n=3)
                hint = f"; did you mean {close}?" if close else ""
                raise ValueError(f"{path}: class {c!r} is not in label space {space!r}{hint}")
            class_ids[c] = name_to_ids[c]
        return cls(classes, class_ids, set(id_to_name))


def keep_largest_components(seg: T, n_classes: int) -> T:
    """Keep, for each class ``1..n_classes``, only its largest connected component (26-connected
    in 3D); the voxels of the other components become background (0).

    The standard post-processing of organ segmentation (nnU-Net, Isensee et al., Nature Methods
    2021, "remove all but the largest component"): right for classes that are one connected
    organ each (liver, spleen, each kidney), wrong for classes with several parts (a tissue class,
    vertebrae labelled one by one under a shared name), so the callers keep it off by default.
    MONAI's ``KeepLargestConnectedComponent`` does the work.

    Args:
        seg: class indices ``(D, H, W)`` or ``(B, D, H, W)``, numpy array or torch tensor.
        n_classes: number of foreground classes.

    Returns:
        the cleaned map, same type, shape and dtype.

    Raises:
        ValueError: ``seg`` not 3D or 4D.
    """
    import torch
    from monai.transforms import KeepLargestConnectedComponent

    if seg.ndim not in (3, 4):
        raise ValueError(f"keep_largest_components: class indices (D, H, W) or (B, D, H, W), got shape {tuple(seg.shape)}")
    t = torch.as_tensor(seg)
    keep = KeepLargestConnectedComponent(applied_labels=list(range(1, n_classes + 1)), is_onehot=False, independent=True)
    batch = t[None] if t.ndim == 3 else t
    # one channel-first map per item; MONAI wants a signed or float type for its label comparisons
    out = torch.stack([torch.as_tensor(keep(b[None].long()))[0] for b in batch]).to(t.dtype)
    out = out[0] if t.ndim == 3 else out
    return out.numpy() if isinstance(seg, np.ndarray) else out.to(seg.device)
