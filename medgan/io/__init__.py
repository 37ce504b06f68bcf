"""Reading and writing volumes with their geometry.

Every volume read here comes back as a :class:`Volume`: a float32 array (stored integers on
request) in the file's own voxel order (``i, j, k``) and the 4x4 voxel-to-world affine in **RAS+
millimetres** (nibabel's and MONAI's convention). NIfTI goes through nibabel (which applies
``scl_slope``/``scl_inter`` and treats a NaN or zero slope as "no scaling"); NRRD, MHA/MHD and
DICOM series go through SimpleITK, whose LPS direction/origin are converted to RAS here. Writing
is NIfTI with the given affine, to a temporary name in the target folder and then renamed, so a
killed run never leaves a half-written file under the final name.

One module per concern:

- :mod:`medgan.io.volume`: :class:`Volume`, :class:`Grid`, :class:`VolumeError`, file-name rules,
  input expansion, checksums, and the checks every reader shares;
- :mod:`medgan.io.readers`: :func:`read_volume`, :func:`read_label_map` (NIfTI raw-header checks,
  SimpleITK formats);
- :mod:`medgan.io.dicom`: DICOM series listing and reading onto a regular grid;
- :mod:`medgan.io.writers`: :func:`write_nifti`, :func:`atomic_write_text`, :func:`fsync_dir`.
"""

from medgan.io.dicom import DICOM_MAX_INTERPOLATED_RUN, DicomSeries, dicom_slice_tolerance_mm, list_dicom_series
from medgan.io.readers import QFORM_SFORM_TOLERANCE_MM, check_same_grid, check_whole_numbers, read_label_map, read_volume
from medgan.io.volume import (
    ITK_SUFFIXES,
    MAX_VOXELS,
    NIFTI_SUFFIXES,
    Grid,
    Volume,
    VolumeError,
    expand_inputs,
    image_suffix,
    is_image_path,
    sha256_of,
    strip_image_suffix,
)
from medgan.io.writers import atomic_write_text, creation_mode, fsync_dir, write_nifti

__all__ = [
    "DICOM_MAX_INTERPOLATED_RUN", "ITK_SUFFIXES", "MAX_VOXELS", "NIFTI_SUFFIXES", "QFORM_SFORM_TOLERANCE_MM", "DicomSeries",
    "Grid", "Volume", "VolumeError", "atomic_write_text", "check_whole_numbers", "creation_mode", "dicom_slice_tolerance_mm",
    "check_same_grid", "expand_inputs", "fsync_dir", "image_suffix", "is_image_path", "list_dicom_series", "read_label_map", "read_volume",
    "sha256_of", "strip_image_suffix", "write_nifti",
]
