"""The volume type, file-name rules and the checks every reader shares."""

from __future__ import annotations

import errno
import os
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np

NIFTI_SUFFIXES = (".nii", ".nii.gz")
ITK_SUFFIXES = (".nrrd", ".nhdr", ".mha", ".mhd")
_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
#: default largest volume a batch reads: 2**30 voxels (4 GiB as float32), e.g. 1024 x 1024 x 1024
MAX_VOXELS = 1 << 30
#: stored integer types that ``read_volume(as_float=False)`` keeps (torch can index all of them)
_KEPT_INTEGER_TYPES = (np.dtype(np.int8), np.dtype(np.uint8), np.dtype(np.int16), np.dtype(np.int32))


class VolumeError(ValueError):
    """A file that cannot be used as a volume; the message names the file and the problem."""


@dataclass(frozen=True)
class Grid:
    """Where a volume lives: ``shape (I, J, K)`` and RAS ``affine`` (4x4, mm) of its file."""

    shape: tuple[int, int, int]
    affine: np.ndarray
    path: str


@dataclass
class Volume:
    """A 3D scan: ``array`` of shape ``(I, J, K)`` (float32, or the stored integer type when read
    with ``as_float=False``) and its RAS ``affine`` (4x4, mm)."""

    array: np.ndarray
    affine: np.ndarray
    path: str
    #: how the geometry was read where a choice was made (e.g. DICOM slices interpolated onto a
    #: regular grid); written into each output's sidecar
    notes: dict = field(default_factory=dict)

    @property
    def grid(self) -> Grid:
        """The grid alone (lets a batch drop the voxels once they are preprocessed)."""
        return Grid(tuple(int(s) for s in self.array.shape), self.affine, self.path)  # type: ignore[arg-type]

    @property
    def spacing_mm(self) -> tuple[float, float, float]:
        """Voxel size along each array axis in mm."""
        return tuple(float(s) for s in np.linalg.norm(self.affine[:3, :3], axis=0))  # type: ignore[return-value]

    @property
    def orientation(self) -> str:
        """Axis codes such as ``"RAS"`` or ``"LPS"`` (nibabel convention)."""
        return "".join(nib.aff2axcodes(self.affine))


def image_suffix(path: Path) -> str:
    """The format suffix of ``path`` (``.nii.gz`` counts as one), lower case."""
    name = path.name.lower()
    if name.endswith(".nii.gz"):
        return ".nii.gz"
    return path.suffix.lower()


def is_image_path(path: Path) -> bool:
    """True for a file with a supported image suffix (not for DICOM folders)."""
    return image_suffix(path) in NIFTI_SUFFIXES + ITK_SUFFIXES


def _check_path(p: Path) -> None:
    """Refuse what is not a regular file or a folder before anything opens it: a FIFO or device
    named ``*.nii.gz`` would block a reader forever, and a link loop is not "no such file"."""
    import stat

    try:
        st = p.stat()
    except FileNotFoundError:
        if p.is_symlink():
            raise FileNotFoundError(f"{p}: a symbolic link to {os.readlink(p)}, which does not exist") from None
        raise FileNotFoundError(f"{p}: no such file or folder") from None
    except OSError as err:
        if err.errno == errno.ELOOP:
            raise VolumeError(f"{p}: a loop of symbolic links; point it at a real file") from None
        raise VolumeError(f"{p}: cannot be opened ({err.strerror})") from None
    if not (stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode)):
        kind = "a FIFO (named pipe)" if stat.S_ISFIFO(st.st_mode) else "a socket" if stat.S_ISSOCK(st.st_mode) else "a device"
        raise VolumeError(f"{p}: is {kind}, not a regular file; medgan reads image files and DICOM folders only")


def _check_size(p: Path, shape: tuple[int, ...], max_voxels: int | None) -> None:
    n = int(np.prod([int(s) for s in shape], dtype=np.float64))
    if max_voxels is not None and n > max_voxels:
        raise VolumeError(
            f"{p}: the header gives a volume of {' x '.join(str(int(s)) for s in shape)} = {n:,} voxels, more than "
            f"the limit of {max_voxels:,}; crop or downsample it, or raise the limit (--max-voxels)"
        )


#: deflate cannot compress better than about 1032:1, so a .nii.gz of ``c`` bytes holds at most this
#: many times ``c`` bytes of NIfTI (RFC 1951 limit; used to refuse impossible headers unread)
def _itk_to_ras_affine(img) -> np.ndarray:  # noqa: ANN001 - SimpleITK.Image
    direction = np.asarray(img.GetDirection(), dtype=np.float64).reshape(3, 3)
    lps = np.eye(4)
    lps[:3, :3] = direction @ np.diag(img.GetSpacing())
    lps[:3, 3] = img.GetOrigin()
    return _LPS_TO_RAS @ lps


def strip_image_suffix(path: Path) -> str:
    """File name without its image suffix (``ct.nii.gz`` -> ``ct``); a folder keeps its name."""
    if path.is_dir():
        return path.name
    suffix = image_suffix(path)
    return path.name[: -len(suffix)] if suffix else path.name


def expand_inputs(patterns: list[str | os.PathLike]) -> list[Path]:
    """Files, folders and globs -> the volumes they name, in order, without duplicates.

    A folder holding image files stands for those files; a folder without any stands for one
    DICOM series. A path that does not exist is kept, so the caller reports it as missing.
    """
    import glob

    out: list[Path] = []
    for pat in patterns:
        s = str(pat)
        if any(ch in s for ch in "*?[") and not Path(s).exists():
            matches = sorted(glob.glob(s))
            out += [Path(m) for m in matches] if matches else [Path(s)]
            continue
        p = Path(s)
        if p.is_dir():
            images = sorted(f for f in p.iterdir() if f.is_file() and is_image_path(f))
            out += images if images else [p]
        else:
            out.append(p)
    return list(dict.fromkeys(out))


def sha256_of(path: str | os.PathLike, chunk: int = 1 << 22) -> str:
    """SHA-256 of a file, or of a folder's files (sorted by name) for DICOM series."""
    import hashlib

    p = Path(path)
    _check_path(p)  # a FIFO would block the hash forever
    h = hashlib.sha256()
    for f in sorted(x for x in p.iterdir() if x.is_file()) if p.is_dir() else [p]:
        with open(f, "rb") as fh:
            while block := fh.read(chunk):
                h.update(block)
    return h.hexdigest()
