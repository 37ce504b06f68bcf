"""DICOM series: listing, and reading onto a regular grid without moving a slice."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medgan.io.volume import _LPS_TO_RAS, VolumeError, _check_size

logger = logging.getLogger(__name__)


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
