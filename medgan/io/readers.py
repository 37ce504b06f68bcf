"""Reading volumes (NIfTI through nibabel with raw-header checks; NRRD/MHA/MHD through SimpleITK) and label maps."""

from __future__ import annotations

import io
import logging
import os
from pathlib import Path

import nibabel as nib
import numpy as np

try:  # python-isal: gzip-compatible (de)compression with Intel ISA-L
    from isal import igzip as _igzip
except ImportError:  # pragma: no cover - optional speed-up
    _igzip = None

from medgan.io.dicom import _read_dicom_series
from medgan.io.volume import (
    _KEPT_INTEGER_TYPES,
    ITK_SUFFIXES,
    NIFTI_SUFFIXES,
    Volume,
    VolumeError,
    _check_path,
    _check_size,
    _itk_to_ras_affine,
    image_suffix,
)

logger = logging.getLogger(__name__)


def read_volume(
    path: str | os.PathLike, *, check_values: bool = True, series_uid: str | None = None, as_float: bool = True,
    max_voxels: int | None = None,
) -> Volume:
    """Read a 3D volume from NIfTI, NRRD, MHA/MHD or a folder holding one DICOM series.

    Args:
        path: file, or folder of DICOM files.
        check_values: refuse NaN/Inf voxels and volumes with a single value (image volumes);
            label maps pass ``False``.
        series_uid: for a folder with several DICOM series, the SeriesInstanceUID to read.
        as_float: return float32 voxels. ``False`` keeps stored 8-32 bit integers (e.g. int16 HU)
            as they are, which halves the memory of a CT and saves a full copy; batch inference
            reads this way, since its first resampling pass converts to float anyway.
        max_voxels: refuse volumes with more voxels than this, from the header, before any voxel
            is read (a batch's memory stays bounded whatever a file claims).

    Returns:
        :class:`Volume` with an ``(I, J, K)`` array (float32 unless ``as_float=False``) and a RAS
        affine in mm.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        VolumeError: not a readable image, not 3D (a trailing axis of size 1 is dropped), larger
            than ``max_voxels``, NaN/Inf voxels, a constant volume, or a DICOM folder with missing
            or ambiguous slices.
    """
    p = Path(path)
    _check_path(p)
    notes: dict = {}
    if p.is_dir():
        array, affine = _read_dicom_series(p, series_uid, max_voxels, notes)
    else:
        suffix = image_suffix(p)
        try:
            if suffix in NIFTI_SUFFIXES:
                array, affine = _read_nifti(p, max_voxels, notes)
            elif suffix in ITK_SUFFIXES:
                array, affine = _read_itk(p, max_voxels)
            else:
                raise VolumeError(
                    f"{p}: unsupported file type {suffix!r}; expected one of "
                    f"{', '.join(NIFTI_SUFFIXES + ITK_SUFFIXES)} or a DICOM folder"
                )
        except VolumeError:
            raise
        except Exception as err:  # nibabel/SimpleITK raise many types for corrupt files
            raise VolumeError(f"{p}: could not be read as an image ({type(err).__name__}: {err})") from err
    array = np.asarray(array)
    while array.ndim > 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim != 3:
        raise VolumeError(f"{p}: expected a 3D volume, got an array of shape {tuple(array.shape)}")
    if min(array.shape) < 2:
        raise VolumeError(f"{p}: expected a 3D volume, got a single slice of shape {tuple(array.shape)}")
    if not np.all(np.isfinite(affine)) or abs(np.linalg.det(affine[:3, :3])) < 1e-9:
        raise VolumeError(f"{p}: the header's voxel-to-world affine is missing or degenerate:\n{affine}")
    if as_float or array.dtype not in _KEPT_INTEGER_TYPES:
        with np.errstate(over="ignore"):  # values beyond float32 become Inf, refused below with the reason
            array = array.astype(np.float32, copy=False)
    if check_values:
        if array.dtype.kind == "f":
            bad = ~np.isfinite(array)
            if bad.any():
                why = ""
                if notes.get("scaled_from_integers"):
                    why = (f" after the header's scaling (scl_slope {notes['scl_slope']:g}, scl_inter {notes['scl_inter']:g}) "
                           "of its integer voxels overflowed float32: the header's scaling is wrong")
                raise VolumeError(f"{p}: {int(bad.sum())} voxels are NaN or Inf{why}; fix or mask them before use")
        if array.max() == array.min():
            raise VolumeError(f"{p}: every voxel has the value {float(array.flat[0])}; nothing to translate")
    notes.pop("scaled_from_integers", None)
    return Volume(array=array, affine=affine, path=str(p), notes=notes)


def check_whole_numbers(volume: Volume) -> Volume:
    """``volume`` itself if every voxel is a whole number, as a label map's must be.

    Raises:
        VolumeError: non-integer or NaN values (naming the file).
    """
    a = volume.array
    if a.dtype.kind == "f" and (not np.all(np.isfinite(a)) or np.any(a != np.round(a))):
        raise VolumeError(f"{volume.path}: a label map must hold whole numbers; found non-integer or NaN values")
    return volume


def read_label_map(path: str | os.PathLike, image: Volume | None = None) -> Volume:
    """Read an integer label map; when ``image`` is given it must share its grid.

    Raises:
        VolumeError: non-integer values, or shape/affine different from ``image``.
    """
    lab = check_whole_numbers(read_volume(path, check_values=False))
    if image is not None:
        check_same_grid(lab, image, "label map", "its image")
    return lab


def check_same_grid(a: Volume, b: Volume, what: str = "volume", other: str = "its pair", atol_mm: float = 1e-3) -> None:
    """Refuse two volumes that are not on one grid (same shape, affines equal within ``atol_mm``).

    Raises:
        VolumeError: naming both files and both grids.
    """
    if a.array.shape != b.array.shape:
        raise VolumeError(f"{a.path}: {what} shape {a.array.shape} differs from {other} {b.path} shape {b.array.shape}")
    if not np.allclose(a.affine, b.affine, atol=atol_mm):
        raise VolumeError(
            f"{a.path}: {what} affine differs from {other} {b.path} (they must share one grid; register and "
            f"resample first):\n{np.round(a.affine, 4)}\nvs\n{np.round(b.affine, 4)}"
        )


def place_label_map(lab: Volume, image: Volume, fill: int, atol_mm: float = 1e-3) -> np.ndarray:
    """``lab``'s values on ``image``'s grid, ``fill`` where ``lab`` has no voxel: a label map drawn
    on a part of its image (a slab of a longer scan, as TotalSegmentator crops are), or on all of it
    (the same grid: ``lab``'s values, no ``fill``). Exact, no
    resampling: ``lab``'s grid must be a block of ``image``'s (same voxel axes and spacing, an
    integer voxel offset, inside the image); anything else is refused.

    Returns an array of ``image``'s shape, ``lab``'s dtype widened to hold ``fill``.

    Raises:
        VolumeError: naming both files: other voxel axes or spacing, a non-integer offset
        (it would need resampling), or a block reaching outside the image.
    """
    if not np.allclose(lab.affine[:3, :3], image.affine[:3, :3], atol=atol_mm):
        raise VolumeError(f"{lab.path}: label map voxel axes/spacing differ from its image {image.path}; a partial label map "
                          f"must be a block of the image's grid (resample it first):\n{np.round(lab.affine, 4)}\nvs\n"
                          f"{np.round(image.affine, 4)}")
    offset = np.linalg.solve(image.affine[:3, :3], lab.affine[:3, 3] - image.affine[:3, 3])  # lab's first voxel, image voxels
    start = np.round(offset).astype(int)
    # the tolerance in mm, measured along each voxel axis
    if np.any(np.abs(offset - start) * np.asarray(image.spacing_mm) > atol_mm):
        raise VolumeError(f"{lab.path}: label map starts between voxels of its image {image.path} (offset "
                          f"{np.round(offset, 4).tolist()} voxels); placing it would need resampling")
    stop = start + np.asarray(lab.array.shape[:3])
    if np.any(start < 0) or np.any(stop > np.asarray(image.array.shape[:3])):
        raise VolumeError(f"{lab.path}: label map covers voxels {start.tolist()}..{(stop - 1).tolist()}, outside its image "
                          f"{image.path} of shape {tuple(image.array.shape[:3])}")
    out = np.full(image.array.shape[:3], fill, dtype=np.result_type(lab.array.dtype, np.min_scalar_type(fill)))
    out[start[0]:stop[0], start[1]:stop[1], start[2]:stop[2]] = lab.array
    return out


class _ChunkedReadinto:
    """A decompressing file whose ``readinto`` fills the buffer 16 MiB at a time.

    nibabel reads a volume with one ``readinto`` of its full size, and gzip readers (the standard
    library's and ISA-L's) serve ``readinto`` by decompressing into a temporary ``bytes`` object of
    that size and copying it: a second copy of the whole volume (137 MiB for a 512x512x275 int16
    CT). In pieces, the temporary is 16 MiB."""

    def __init__(self, fileobj, chunk: int = 1 << 24) -> None:  # noqa: ANN001 - a binary file object
        self._f, self._chunk = fileobj, chunk

    def readinto(self, buffer) -> int:  # noqa: ANN001 - any writable buffer
        with memoryview(buffer) as view, view.cast("B") as flat:
            done = 0
            while done < len(flat):
                got = self._f.readinto(flat[done:done + self._chunk])
                if not got:
                    break
                done += got
            return done

    def __getattr__(self, name: str):  # noqa: ANN204 - read, seek, tell, name... of the wrapped file
        return getattr(self._f, name)


_DEFLATE_MAX_RATIO = 1032
#: largest distance (mm) between where a NIfTI's qform and sform put any corner of the volume for
#: the two to count as the same geometry
QFORM_SFORM_TOLERANCE_MM = 0.1


def _nifti_raw_header(p: Path, block: bytes):  # noqa: ANN202
    """The header as stored in the file's first bytes (nibabel's image header has already replaced
    a zero pixdim by 1 and an infinite ``scl_slope`` by "no scaling"), and the image class of its
    NIfTI version (1 or 2)."""
    import struct

    for order in "<>":
        if len(block) >= 4:
            n = struct.unpack(order + "i", block[:4])[0]
            if n == 348 and len(block) >= 348:
                return nib.Nifti1Header(binaryblock=block[:348], check=False), nib.Nifti1Image
            if n == 540 and len(block) >= 540:
                return nib.Nifti2Header(binaryblock=block[:540], check=False), nib.Nifti2Image
    raise VolumeError(f"{p}: not a NIfTI file (the header does not start with size 348 or 540)")


class _Replay:
    """A forward-read stream whose first bytes (already read to check the header) are served
    again from memory, so a .nii.gz is decompressed once."""

    def __init__(self, prefix: bytes, fileobj) -> None:  # noqa: ANN001
        self._prefix, self._f, self._pos = prefix, fileobj, 0

    def _sync(self) -> None:
        if self._pos >= len(self._prefix) and self._f.tell() != self._pos:
            self._f.seek(self._pos)

    def read(self, n: int = -1) -> bytes:
        head = b""
        if self._pos < len(self._prefix):
            head = self._prefix[self._pos:] if n < 0 else self._prefix[self._pos:self._pos + n]
            self._pos += len(head)
            if n >= 0 and len(head) == n:
                return head
            n = -1 if n < 0 else n - len(head)
        self._sync()
        rest = self._f.read(n)
        self._pos += len(rest)
        return head + rest

    def readinto(self, buffer) -> int:  # noqa: ANN001
        with memoryview(buffer) as view, view.cast("B") as flat:
            done = 0
            if self._pos < len(self._prefix):
                head = self._prefix[self._pos:self._pos + len(flat)]
                flat[:len(head)] = head
                done = len(head)
                self._pos += done
            if done < len(flat):
                self._sync()
                got = self._f.readinto(flat[done:])
                self._pos += got
                done += got
            return done

    def seek(self, pos: int, whence: int = os.SEEK_SET) -> int:
        self._pos = pos if whence == os.SEEK_SET else self._pos + pos if whence == os.SEEK_CUR else None
        if self._pos is None:
            raise io.UnsupportedOperation("seek from the end of a compressed stream")
        return self._pos

    def tell(self) -> int:
        return self._pos

    def __getattr__(self, name: str):  # noqa: ANN204
        return getattr(self._f, name)


def _check_nifti_header(p: Path, hdr, max_voxels: int | None, notes: dict) -> np.ndarray:  # noqa: ANN001
    """Refuse a header whose shape, data type, scaling or geometry would be made up, before any
    voxel is read; returns the RAS affine (the one nibabel uses, checked) and fills ``notes``."""
    ndim = int(hdr["dim"][0])
    dims = [int(d) for d in hdr["dim"][1:ndim + 1]] if 1 <= ndim <= 7 else []
    if not dims or min(dims) < 1:
        raise VolumeError(f"{p}: the header's dimensions {[int(d) for d in hdr['dim']]} are invalid (dim[0] must be 1..7 "
                          "and every size at least 1): the header is corrupt")
    dtype = hdr.get_data_dtype()
    if dtype.kind == "c":
        raise VolumeError(f"{p}: complex voxels ({dtype}); medgan reads real-valued images: save the magnitude "
                          "(or the real part) as its own volume")
    if dtype.kind not in "biuf" or dtype.fields is not None:
        raise VolumeError(f"{p}: voxels of type {dtype} (RGB or vector data); medgan reads single-channel "
                          "grey-value images: convert to one channel first")
    _check_size(p, dims, max_voxels)
    slope, inter = float(hdr["scl_slope"]), float(hdr["scl_inter"])
    if np.isinf(slope) or np.isinf(inter):
        raise VolumeError(f"{p}: the header's scaling is infinite (scl_slope {slope}, scl_inter {inter}); "
                          "nibabel would read it as 'no scaling': fix the header")
    if np.isfinite(slope) and slope != 0 and (slope != 1 or (np.isfinite(inter) and inter != 0)):
        notes.update(scl_slope=slope, scl_inter=inter if np.isfinite(inter) else 0.0, scaled_from_integers=dtype.kind in "iu")
    qcode, scode = int(hdr["qform_code"]), int(hdr["sform_code"])
    if qcode <= 0 and scode <= 0:
        raise VolumeError(f"{p}: neither a qform nor an sform is set (both codes 0), so where the voxels lie in the "
                          "patient is unknown (nibabel would guess from pixdim); set the header's qform or sform "
                          "(e.g. nibabel's set_sform, or fslorient)")
    pixdim = [float(x) for x in hdr["pixdim"][1:4]]
    if scode <= 0 and not all(np.isfinite(x) and x > 0 for x in pixdim):
        raise VolumeError(f"{p}: the qform gives the geometry but the voxel size (pixdim {pixdim}) is not positive "
                          "(nibabel would substitute 1 mm): fix pixdim")
    sform = hdr.get_sform() if scode > 0 else None
    qform = hdr.get_qform() if qcode > 0 and all(np.isfinite(x) and x > 0 for x in pixdim) else None
    if sform is not None and qform is not None:
        corners = np.array([[i, j, k, 1] for i in (0, dims[0] - 1) for j in (0, dims[1] - 1)
                            for k in (0, (dims[2] if ndim >= 3 else 1) - 1)], dtype=np.float64).T
        off = float(np.max(np.linalg.norm((sform @ corners - qform @ corners)[:3], axis=0)))
        flip = np.sign(np.linalg.det(sform[:3, :3])) != np.sign(np.linalg.det(qform[:3, :3]))
        if off > QFORM_SFORM_TOLERANCE_MM or flip:
            raise VolumeError(
                f"{p}: the header's qform and sform disagree (corners up to {off:.2f} mm apart"
                f"{', and one is a mirror image of the other' if flip else ''}); it is not known which is right. "
                "Set the wrong one's code to 0 (e.g. nibabel's set_qform(None)) and read again"
            )
    notes["affine_from"] = "sform" if sform is not None else "qform"
    return np.asarray(sform if sform is not None else hdr.get_qform(), dtype=np.float64)


def _check_nifti_data_size(p: Path, hdr, compressed: bool) -> None:  # noqa: ANN001
    """Refuse a file too small for its header's voxels before the voxels are allocated."""
    import struct

    n_vox = int(np.prod([int(d) for d in hdr["dim"][1:int(hdr["dim"][0]) + 1]], dtype=np.float64))
    need = int(hdr.get_data_offset()) + n_vox * hdr.get_data_dtype().itemsize
    size = p.stat().st_size
    if not compressed:
        if size < need:
            raise VolumeError(f"{p}: truncated: the header needs {need:,} bytes of file, the file has {size:,}")
        return
    if need > size * _DEFLATE_MAX_RATIO:
        raise VolumeError(f"{p}: truncated or corrupt: the header needs {need:,} bytes, more than {size:,} compressed "
                          "bytes can hold")
    if need < 1 << 32 and size >= 18:
        with open(p, "rb") as f:
            f.seek(-4, os.SEEK_END)
            isize = struct.unpack("<I", f.read(4))[0]  # uncompressed size mod 2^32 (RFC 1952)
        if isize < need:
            raise VolumeError(f"{p}: truncated or corrupt: the header needs {need:,} bytes, the gzip stream holds "
                              f"{isize:,} (if it is a multi-member gzip, recompress it with plain gzip)")


def _read_nifti(p: Path, max_voxels: int | None = None, notes: dict | None = None) -> tuple[np.ndarray, np.ndarray]:
    """nibabel reads the header (NIfTI-1 or -2) and applies the scaling; .nii.gz is decompressed by
    ISA-L when the isal package is there (several times faster than zlib), otherwise by gzip.
    The stored header is checked first (:func:`_check_nifti_header`, :func:`_check_nifti_data_size`)."""
    import gzip

    notes = {} if notes is None else notes
    compressed = image_suffix(p) == ".nii.gz"
    if not compressed:
        with open(p, "rb") as f:
            hdr, klass = _nifti_raw_header(p, f.read(540))
        affine = _check_nifti_header(p, hdr, max_voxels, notes)
        _check_nifti_data_size(p, hdr, compressed)
        img = klass.from_filename(str(p))
        return np.asanyarray(img.dataobj), affine
    with (_igzip.open(p, "rb") if _igzip is not None else gzip.open(p, "rb")) as raw:
        block = raw.read(540)
        hdr, klass = _nifti_raw_header(p, block)
        affine = _check_nifti_header(p, hdr, max_voxels, notes)
        _check_nifti_data_size(p, hdr, compressed)
        f = _ChunkedReadinto(_Replay(block, raw))
        # mmap=False: numpy.memmap would first seek to the end of the stream to learn its size,
        # decompressing the whole file once before the real read (0.25 s for a 512x512x275 CT)
        img = klass.from_file_map({"header": nib.FileHolder(fileobj=f), "image": nib.FileHolder(fileobj=f)}, mmap=False)
        return np.asanyarray(img.dataobj), affine


def _read_itk(p: Path, max_voxels: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    import SimpleITK as sitk

    info = sitk.ImageFileReader()
    info.SetFileName(str(p))
    info.ReadImageInformation()
    if info.GetPixelID() in (sitk.sitkComplexFloat32, sitk.sitkComplexFloat64):
        raise VolumeError(f"{p}: complex voxels; medgan reads real-valued images: save the magnitude "
                          "(or the real part) as its own volume")
    _check_size(p, info.GetSize(), max_voxels)
    img = sitk.ReadImage(str(p))
    if img.GetDimension() != 3 or img.GetNumberOfComponentsPerPixel() != 1:
        n = img.GetNumberOfComponentsPerPixel()
        what = f", with {n} components per voxel (complex, RGB or vector data)" if n > 1 else ""
        raise VolumeError(f"{p}: expected a 3D single-channel volume, got a {img.GetDimension()}D image of size "
                          f"{img.GetSize()}{what}; save one real-valued channel as its own volume")
    # SimpleITK arrays are (k, j, i); transpose to the (i, j, k) order of the affine.
    return sitk.GetArrayFromImage(img).transpose(2, 1, 0), _itk_to_ras_affine(img)
