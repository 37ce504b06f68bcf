"""Dictionary keys shared by every data pipeline (one home, so transforms and trainers agree)."""

from __future__ import annotations

from enum import Enum


class Keys(str, Enum):
    """Keys of the per-volume and per-patch dictionaries fed through MONAI transforms."""

    IMAGE = "image"
    LABEL = "label"
    HAS_LABEL = "has_label"
    FG_INDICES = "label_fg_indices"  # FgBgToIndicesd naming
    BG_INDICES = "label_bg_indices"

    def __str__(self) -> str:  # so f"{Keys.IMAGE}" == "image"
        return self.value


#: label value of a voxel whose class is unknown (outside the field of view of a partial label map,
#: :func:`medgan.io.readers.place_label_map`): the segmentation losses ignore it
UNLABELLED = -1
