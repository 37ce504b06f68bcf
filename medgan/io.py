"""Reading and writing volumes with their geometry.

Every volume read here comes back as a :class:`Volume`: a float32 array (stored integers on request) in the file's own voxel
order (``i, j, k``) and the 4x4 voxel-to-world affine in **RAS+ millimetres** (nibabel's and
MONAI's convention). NIfTI goes through nibabel (which applies ``scl_slope``/``scl_inter`` and
treats a NaN or zero slope as "no scaling"); NRRD, MHA/MHD and DICOM series go through SimpleITK,
whose LPS direction/origin are converted to RAS here. Writing is NIfTI with the given affine, to a
temporary name in the target folder and then renamed, so a killed run never leaves a half-written
file under the final name.
"""

from __future__ import annotations

import errno
import io
import logging
import mmap
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np

try:  # python-isal: gzip-compatible (de)compression with Intel ISA-L
    from isal import igzip as _igzip
except ImportError:  # pragma: no cover - optional speed-up
    _igzip = None

logger = logging.getLogger(__name__)

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
        if lab.array.shape != image.array.shape:
            raise VolumeError(
                f"{lab.path}: label map shape {lab.array.shape} differs from its image "
                f"{image.path} shape {image.array.shape}"
            )
        if not np.allclose(lab.affine, image.affine, atol=1e-3):
            raise VolumeError(
                f"{lab.path}: label map affine differs from its image {image.path}:\n"
                f"{np.round(lab.affine, 4)}\nvs\n{np.round(image.affine, 4)}"
            )
    return lab


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


def _check_size(p: Path, shape: tuple[int, ...], max_voxels: int | None) -> None:
    n = int(np.prod([int(s) for s in shape], dtype=np.float64))
    if max_voxels is not None and n > max_voxels:
        raise VolumeError(
            f"{p}: the header gives a volume of {' x '.join(str(int(s)) for s in shape)} = {n:,} voxels, more than "
            f"the limit of {max_voxels:,}; crop or downsample it, or raise the limit (--max-voxels)"
        )


#: deflate cannot compress better than about 1032:1, so a .nii.gz of ``c`` bytes holds at most this
#: many times ``c`` bytes of NIfTI (RFC 1951 limit; used to refuse impossible headers unread)
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


def _itk_to_ras_affine(img) -> np.ndarray:  # noqa: ANN001 - SimpleITK.Image
    direction = np.asarray(img.GetDirection(), dtype=np.float64).reshape(3, 3)
    lps = np.eye(4)
    lps[:3, :3] = direction @ np.diag(img.GetSpacing())
    lps[:3, 3] = img.GetOrigin()
    return _LPS_TO_RAS @ lps


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


def dicom_slice_tolerance_mm(gap_mm: float) -> float:
    """How far (mm) a DICOM slice may sit from its place on the regular grid and still be read as
    that grid's slice: 1 % of the slice gap, at most 0.1 mm (DICOM positions are written to about
    1e-5 mm). Further off, the slices are interpolated onto the grid (see :func:`_read_dicom_series`)."""
    return min(0.1, 0.01 * gap_mm)


#: most grid slices in a row that may be interpolated between two recorded slices (one missing
#: slice); longer runs of missing slices are refused
DICOM_MAX_INTERPOLATED_RUN = 1


def _read_dicom_series(
    folder: Path, series_uid: str | None, max_voxels: int | None = None, notes: dict | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """A DICOM series on a regular grid, with no slice moved from where it was recorded.

    The slices are sorted along the normal of their ImageOrientationPatient. The grid runs from
    the first to the last slice in steps of the median gap (rounded so that the last slice is on
    it). A grid position within :func:`dicom_slice_tolerance_mm` of a slice takes that slice's
    voxels unchanged; one between two slices (a missing slice, or unevenly spaced slices) is
    interpolated linearly from its two neighbours, which is logged and written to ``notes`` (and
    so to each output's sidecar). Refused: slices of other size, orientation or pixel spacing,
    duplicate positions, more than :data:`DICOM_MAX_INTERPOLATED_RUN` missing slices in a row, and
    gantry-tilted (sheared) series, whose slices are not stacked along their normal.

    Others, checked on these cases: SimpleITK's ``ImageSeriesReader`` spaces the slices evenly
    from the first to the last with only a warning (one missing slice in 8 at 3 mm: 7 slices of
    3.5 mm, slices up to 1.5 mm off; a tilted series: slices stacked along the normal, the last one
    3.5 mm off), and dcm2niix 1.0.20220720 writes the shared MEMPRAGE series (one 2 mm gap among
    1 mm gaps) as 175 slices of 1 mm, every slice after the gap 1 mm off, with a warning.
    """
    import SimpleITK as sitk

    notes = {} if notes is None else notes
    reader = sitk.ImageSeriesReader()
    uids = list(reader.GetGDCMSeriesIDs(str(folder)) or ())
    if not uids:
        raise VolumeError(f"{folder}: a folder must hold one DICOM series; no DICOM files found")
    if series_uid is None and len(uids) > 1:
        raise VolumeError(f"{folder}: holds {len(uids)} DICOM series ({', '.join(uids)}); choose one with series_uid")
    uid = series_uid or uids[0]
    if uid not in uids:
        raise VolumeError(f"{folder}: no DICOM series {uid}; found {', '.join(uids)}")
    files = list(reader.GetGDCMSeriesFileNames(str(folder), uid))
    if len(files) < 2:
        raise VolumeError(f"{folder}: DICOM series {uid} has {len(files)} slice; expected a volume")
    positions, first = [], None
    for f in files:
        r = sitk.ImageFileReader()
        r.SetFileName(f)
        try:
            r.ReadImageInformation()
            pos = [float(v) for v in r.GetMetaData("0020|0032").split("\\")]
            iop = [float(v) for v in r.GetMetaData("0020|0037").split("\\")]
        except (RuntimeError, ValueError) as err:
            raise VolumeError(f"{f}: a slice of series {uid} without a readable ImagePositionPatient / "
                              f"ImageOrientationPatient ({str(err).splitlines()[0]})") from err
        info = (tuple(r.GetSize()[:2]), tuple(np.round(r.GetSpacing()[:2], 4)))
        if first is None:
            first, iop0 = info, np.asarray(iop)
            _check_size(folder, (*info[0], len(files)), max_voxels)
        elif info != first or np.abs(np.asarray(iop) - iop0).max() > 1e-4:
            raise VolumeError(
                f"{f}: this slice of series {uid} is {info[0][0]}x{info[0][1]} pixels of {info[1][0]}x{info[1][1]} mm "
                f"with orientation {np.round(iop, 4).tolist()}, the first is {first[0][0]}x{first[0][1]} of "
                f"{first[1][0]}x{first[1][1]} mm with {np.round(iop0, 4).tolist()}: one series must have one slice geometry"
            )
        positions.append(pos)
    row, col = iop0[:3], iop0[3:]
    normal = np.cross(row, col)
    pos = np.asarray(positions)
    order = np.argsort(pos @ normal, kind="stable")
    files, pos = [files[i] for i in order], pos[order]
    dist = pos @ normal
    gaps = np.diff(dist)
    if gaps.min() <= 1e-3:
        i = int(np.argmin(gaps))
        raise VolumeError(f"{folder}: slices {Path(files[i]).name} and {Path(files[i + 1]).name} of series {uid} lie "
                          f"at the same position ({dist[i]:.3f} mm along the normal): duplicated slices")
    step0 = float(np.median(gaps))
    span = float(dist[-1] - dist[0])
    n_grid = int(round(span / step0)) + 1
    step = span / (n_grid - 1)
    tol = dicom_slice_tolerance_mm(step)
    # gantry tilt: slice k must lie at first + d_k x normal; a tilt shows as an in-plane drift
    drift = pos - pos[0] - np.outer(dist - dist[0], normal)
    tilt = np.linalg.norm(drift, axis=1)
    if tilt.max() > tol:
        k = int(np.argmax(tilt))
        raise VolumeError(
            f"{folder}: series {uid} is gantry-tilted or sheared: its slices are not stacked along their normal "
            f"(slice {Path(files[k]).name} lies {tilt.max():.2f} mm off the normal through the first slice). "
            "medgan does not resample tilted series; correct the tilt first (e.g. dcm2niix's tilt correction)"
        )
    if gaps.max() > (DICOM_MAX_INTERPOLATED_RUN + 1) * step + tol:
        i = int(np.argmax(gaps))
        raise VolumeError(
            f"{folder}: DICOM slice gaps range {gaps.min():.3f}..{gaps.max():.3f} mm (median {step0:.3f} mm): "
            f"between {Path(files[i]).name} and {Path(files[i + 1]).name} {gaps.max() / step - 1:.0f} slices are "
            f"missing; slices are missing or duplicated (at most {DICOM_MAX_INTERPOLATED_RUN} missing slice in a row "
            "is interpolated)"
        )
    reader.SetFileNames(files)
    prev = sitk.ProcessObject.GetGlobalWarningDisplay()
    sitk.ProcessObject.SetGlobalWarningDisplay(False)  # the checks above replace ITK's warning
    try:
        img = reader.Execute()
    finally:
        sitk.ProcessObject.SetGlobalWarningDisplay(prev)
    stack = sitk.GetArrayFromImage(img)  # (k, j, i) in the sorted order
    grid = dist[0] + step * np.arange(n_grid)
    hi = np.clip(np.searchsorted(dist, grid), 1, len(dist) - 1)
    lo = hi - 1
    w = (grid - dist[lo]) / (dist[hi] - dist[lo])
    exact_lo, exact_hi = np.abs(grid - dist[lo]) <= tol, np.abs(grid - dist[hi]) <= tol
    interpolated = [k for k in range(n_grid) if not (exact_lo[k] or exact_hi[k])]
    if n_grid == len(files) and not interpolated:
        array = stack
    else:
        array = np.empty((n_grid, *stack.shape[1:]), dtype=np.float32)
        for k in range(n_grid):
            if exact_lo[k]:
                array[k] = stack[lo[k]]
            elif exact_hi[k]:
                array[k] = stack[hi[k]]
            else:
                array[k] = (1 - w[k]) * stack[lo[k]].astype(np.float32) + w[k] * stack[hi[k]].astype(np.float32)
        nearest = [float(np.min(np.abs(dist - grid[k]))) for k in interpolated]
        notes["dicom_interpolated_slices"] = {
            "grid_slices": interpolated, "recorded_slices": len(files), "grid_size": n_grid, "grid_step_mm": step,
            "max_distance_to_a_recorded_slice_mm": round(max(nearest), 4),
            "method": "linear between the two neighbouring recorded slices; the others are kept unchanged",
        }
        logger.warning(
            "%s: %d recorded slices with gaps %.3f..%.3f mm read onto a regular grid of %d slices of %.4f mm: "
            "grid slices %s are interpolated linearly between their neighbours (up to %.3f mm from a recorded slice); "
            "every other slice is a recorded one, unchanged",
            folder, len(files), gaps.min(), gaps.max(), n_grid, step, interpolated[:10], max(nearest),
        )
    # RAS affine from the DICOM geometry itself: columns along the row and column directions
    # (PixelSpacing) and the normal (grid step), origin at the first slice's ImagePositionPatient
    sx, sy = img.GetSpacing()[:2]
    lps = np.eye(4)
    lps[:3, 0], lps[:3, 1], lps[:3, 2], lps[:3, 3] = row * sx, col * sy, normal * step, pos[0]
    return array.transpose(2, 1, 0), _LPS_TO_RAS @ lps


def creation_mode(directory: bool = False) -> int:
    """The permissions a plainly created file (0666) or folder (0777) gets under the process's
    umask. ``tempfile.mkstemp``/``mkdtemp`` make them 0600/0700 and a rename keeps that, so an
    atomically written output in a shared study folder would be unreadable to the rest of the
    group: temporaries are given this mode before the rename. The umask is read from
    ``/proc/self/status`` (``os.umask`` can only be read by setting it, which would race with
    other threads creating files); 022 where that is not available."""
    mask = 0o022
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                mask = int(line.split()[1], 8)
    except OSError:
        pass
    return (0o777 if directory else 0o666) & ~mask


def _temporary_beside(out: Path, suffix: str = "") -> tuple[int, str]:
    """A new temporary file in ``out``'s folder, named ``.{name}.partial-*``, with the permissions
    of a plainly created file (:func:`creation_mode`)."""
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.partial-", suffix=suffix, dir=out.parent)
    os.fchmod(fd, creation_mode())
    return fd, tmp


class _BlockWriter(io.RawIOBase):
    """A binary sink that writes ``fd`` in page-aligned 8 MiB blocks, bypassing the page cache
    (``O_DIRECT``) where the file system allows it, and feeds every byte to ``digest``.

    Written here because plain (buffered) writes copy each byte into freshly allocated page-cache
    pages, and on this project's machine (a virtual machine) touching those new pages costs more
    than the copy itself: 0.62 GB/s buffered against 2.5 GB/s direct for 256 MiB in 8 MiB blocks
    (``dd``), and 0.4 s of kernel CPU per 242 MB float32 output in a batch. Direct, the
    device reads the buffer itself, and a batch of thousands of scans does not fill the page
    cache with files it never reads again. Where ``O_DIRECT`` is refused (tmpfs, some network file
    systems) the same blocks are written plainly. The last block is padded to the alignment and
    the file truncated to its true length at ``close``.
    """

    BLOCK = 1 << 23
    ALIGN = 4096  # a multiple of every logical block size in use (512, 4096)

    def __init__(self, fd: int, direct: bool, digest=None) -> None:  # noqa: ANN001 - a hashlib object
        super().__init__()
        self._fd, self._digest = fd, digest
        self._direct = direct and _set_direct(fd, True)
        self._buf = mmap.mmap(-1, self.BLOCK)  # page-aligned, as O_DIRECT needs
        self._view = memoryview(self._buf)
        self._fill = self._size = self._flushed = 0

    def writable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._size

    def seek(self, pos: int, whence: int = os.SEEK_SET) -> int:
        """Forward only, as a stream: the gap is written as zeros (nibabel seeks to the data offset)."""
        target = pos if whence == os.SEEK_SET else self._size + pos if whence == os.SEEK_CUR else None
        if target is None or target < self._size:
            raise io.UnsupportedOperation(f"seek to {pos} (whence {whence}) in a forward-only stream at {self._size}")
        if target > self._size:
            self.write(bytes(target - self._size))
        return self._size

    def write(self, data) -> int:  # noqa: ANN001 - any bytes-like object
        with memoryview(data) as m, (m.cast("B") if m.c_contiguous else memoryview(m.tobytes())) as src:
            if self._digest is not None:
                self._digest.update(src)
            pos, n = 0, len(src)
            while pos < n:
                k = min(n - pos, self.BLOCK - self._fill)
                self._view[self._fill:self._fill + k] = src[pos:pos + k]
                self._fill, pos = self._fill + k, pos + k
                if self._fill == self.BLOCK:
                    self._write_block(self.BLOCK)
            self._size += n
            return n

    def _write_block(self, n: int) -> None:
        done = 0
        while done < n:
            try:
                done += os.write(self._fd, self._view[done:n])
            except OSError as err:
                if err.errno != errno.EINVAL or not self._direct or self._flushed:
                    raise
                self._direct = _set_direct(self._fd, False)  # accepted at open, refused at the first write
        self._flushed += n
        self._fill = 0

    def close(self) -> None:
        if self.closed:
            return
        try:
            if self._fill:
                n = self._fill
                if self._direct:
                    pad = -n % self.ALIGN
                    self._view[n:n + pad] = bytes(pad)
                    n += pad
                self._write_block(n)
                if self._flushed != self._size:  # the padding goes
                    os.ftruncate(self._fd, self._size)
        finally:
            self._view.release()
            self._buf.close()
            super().close()


def _set_direct(fd: int, on: bool) -> bool:
    """Set or clear ``O_DIRECT`` on ``fd``; whether it is now set (never off Linux)."""
    flag = getattr(os, "O_DIRECT", 0)
    if not flag:
        return False
    import fcntl

    try:
        flags = fcntl.fcntl(fd, fcntl.F_GETFL)
        fcntl.fcntl(fd, fcntl.F_SETFL, flags | flag if on else flags & ~flag)
    except OSError:
        return False
    return on


def write_nifti(
    path: str | os.PathLike, array: np.ndarray, affine: np.ndarray, *, dtype: type | None = None,
    direct: bool = False, digest=None,  # noqa: ANN001 - a hashlib object
) -> Path:
    """Write ``array`` with ``affine`` (RAS, mm) as NIfTI, atomically and durably: a temporary
    name, ``fsync``, rename, ``fsync`` of the folder; when this returns the file survives a power
    loss (a manifest record written after it never points at a truncated file).

    ``.nii.gz`` is gzip-compressed at level 1 (nibabel's default), by ISA-L when the isal package
    is there (about 5x faster than zlib, same format).

    Args:
        direct: write around the page cache (``O_DIRECT``, see :class:`_BlockWriter`): for bulk
            outputs that are not read back soon, as in a batch; plain writes where refused.
        digest: a ``hashlib`` object updated with the file's bytes as they are written (its
            checksum without reading the file back).

    Raises:
        VolumeError: the folder cannot be created or written.
    """
    out = Path(path)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise VolumeError(f"{out}: cannot create the output folder ({err})") from err
    arr = np.asarray(array if dtype is None else array.astype(dtype, copy=False))
    img = nib.Nifti1Image(arr, affine)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    suffix = image_suffix(out) if image_suffix(out) in NIFTI_SUFFIXES else ".nii.gz"
    try:
        fd, tmp = _temporary_beside(out, suffix)
    except OSError as err:
        raise VolumeError(f"{out}: cannot write to {out.parent} ({err})") from err
    try:
        with os.fdopen(fd, "wb", buffering=0) as raw:
            with _BlockWriter(raw.fileno(), direct, digest) as sink:
                if suffix == ".nii.gz":
                    import gzip

                    gz = _igzip.IGzipFile if _igzip is not None else gzip.GzipFile
                    with gz(fileobj=sink, mode="wb", compresslevel=1) as f:
                        img.to_file_map({"image": nib.FileHolder(fileobj=f)})
                else:
                    img.to_file_map({"image": nib.FileHolder(fileobj=sink)})
            os.fsync(raw.fileno())  # O_DIRECT skips the page cache, not the device's cache or the metadata
        os.replace(tmp, out)
        fsync_dir(out.parent)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return out


def fsync_dir(folder: str | os.PathLike) -> None:
    """Make a rename or a new entry in ``folder`` durable (POSIX: the folder must be synced too)."""
    fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    except OSError as err:  # some file systems refuse fsync on folders: nothing more can be done there
        if err.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EBADF):
            raise
    finally:
        os.close(fd)


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write a text file atomically and durably: a temporary name in the same folder, synced to
    the device, renamed, and the folder synced, so after a power loss the file is either the old
    one or the complete new one."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = _temporary_beside(out)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, out)
        fsync_dir(out.parent)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return out


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


@dataclass(frozen=True)
class DicomSeries:
    """One series in a DICOM folder."""

    folder: Path
    uid: str
    description: str
    n_files: int


def list_dicom_series(folder: str | os.PathLike) -> list[DicomSeries]:
    """The DICOM series in ``folder`` (SeriesInstanceUID, SeriesDescription, file count)."""
    import SimpleITK as sitk

    p = Path(folder)
    reader = sitk.ImageSeriesReader()
    series = []
    for uid in reader.GetGDCMSeriesIDs(str(p)) or ():
        files = reader.GetGDCMSeriesFileNames(str(p), uid)
        r = sitk.ImageFileReader()
        r.SetFileName(files[0])
        r.ReadImageInformation()
        desc = r.GetMetaData("0008|103e").strip() if r.HasMetaDataKey("0008|103e") else ""
        series.append(DicomSeries(p, uid, desc, len(files)))
    return series


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
