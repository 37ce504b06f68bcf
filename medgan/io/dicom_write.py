"""Writing a synthetic CT as a DICOM CT series that a radiotherapy planning system imports.

The series is written with pydicom (one CT Image Storage instance per slice) into a temporary
folder beside the target, synced, and renamed when every slice is in place
(:func:`write_ct_series`). From a DICOM input it joins the source MR's patient and study, keeps
its FrameOfReferenceUID and PatientPosition, and each sCT slice lies on the MR slice it came from
(its recorded ImagePositionPatient) and references it (SourceImageSequence). From a NIfTI/NRRD/MHA
input the study's identifiers must be given (:class:`StudyIdentifiers`).
"""

from __future__ import annotations

import datetime as _dt
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from medgan.data.intensity import SOFT_TISSUE_WINDOW
from medgan.io.dicom import dicom_slice_tolerance_mm
from medgan.io.volume import _LPS_TO_RAS, VolumeError
from medgan.io.writers import creation_mode, fsync_dir

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
#: the patient and study module attributes copied from the source MR (and no others)
PATIENT_STUDY_TAGS = (
    "PatientID", "PatientName", "PatientBirthDate", "PatientSex", "StudyInstanceUID", "StudyDate", "StudyTime",
    "StudyID", "AccessionNumber", "ReferringPhysicianName", "StudyDescription",
)
#: CID 7203 "Image Derivation" (DICOM PS3.16) has no code for a learned intensity translation;
#: what it codes of this derivation is the resampling: the MR is resampled to the model's spacing,
#: translated, and resampled back onto its own grid. The translation itself is named in
#: DerivationDescription.
DERIVATION_CODE = ("113085", "DCM", "Spatial resampling")


@dataclass
class StudyIdentifiers:
    """What a DICOM sCT of a non-DICOM input needs to join the patient's study in a planning
    system. ``patient_id`` and ``study_instance_uid`` are required; a new FrameOfReferenceUID is
    made when none is given (the sCT then does not share the MR's frame of reference: pass the
    MR's to have it registered by identity)."""

    patient_id: str
    study_instance_uid: str
    patient_name: str = ""
    patient_birth_date: str = ""
    patient_sex: str = ""
    study_date: str = ""
    accession_number: str = ""
    frame_of_reference_uid: str | None = None
    patient_position: str = "HFS"

    @classmethod
    def missing_message(cls, path: str) -> str:
        return (f"{path}: a DICOM output of a non-DICOM input needs the patient's study identifiers: pass "
                "--patient-id and --study-uid (and --frame-of-reference-uid of the MR to share its frame of reference; "
                "optional --patient-name, --patient-birth-date, --patient-sex, --study-date, --accession-number)")

    def check(self, path: str) -> None:
        """Raises VolumeError naming ``path`` when a required identifier is empty or a UID is invalid."""
        from pydicom.uid import UID

        if not self.patient_id or not self.study_instance_uid:
            raise VolumeError(self.missing_message(path))
        for name in ("study_instance_uid", "frame_of_reference_uid"):
            uid = getattr(self, name)
            if uid and not UID(uid).is_valid:
                raise VolumeError(f"{path}: {name} {uid!r} is not a valid DICOM UID (digits and dots, at most 64 characters)")


@dataclass
class SourceSlice:
    sop_class_uid: str
    sop_instance_uid: str
    position: np.ndarray  # ImagePositionPatient (LPS, mm)


@dataclass
class SourceSeries:
    """The headers of the source DICOM series an sCT is written for."""

    folder: Path
    series_uid: str
    first: object  # pydicom Dataset of the first slice (no pixel data)
    slices: list[SourceSlice] = field(default_factory=list)


def read_source_series(folder: str | os.PathLike, series_uid: str | None) -> SourceSeries:
    """The headers (no pixels) of series ``series_uid`` in ``folder`` (the only one when ``None``).

    Raises:
        VolumeError: no such series, or a slice without SOPInstanceUID / ImagePositionPatient.
    """
    import pydicom

    p = Path(folder)
    found: dict[str, list] = {}
    for f in sorted(x for x in p.iterdir() if x.is_file()):
        try:
            ds = pydicom.dcmread(f, stop_before_pixels=True)
        except (pydicom.errors.InvalidDicomError, OSError):
            continue
        if "SeriesInstanceUID" in ds:
            found.setdefault(str(ds.SeriesInstanceUID), []).append((f, ds))
    if series_uid is None:
        if len(found) != 1:
            raise VolumeError(f"{p}: holds {len(found)} DICOM series; choose one with --series-uid")
        series_uid = next(iter(found))
    if series_uid not in found:
        raise VolumeError(f"{p}: no DICOM series {series_uid}")
    items = found[series_uid]
    src = SourceSeries(p, series_uid, items[0][1])
    for f, ds in items:
        missing = [t for t in ("SOPInstanceUID", "SOPClassUID", "ImagePositionPatient") if t not in ds]
        if missing:
            raise VolumeError(f"{f}: a slice of series {series_uid} without {', '.join(missing)}: the sCT cannot reference it")
        src.slices.append(SourceSlice(str(ds.SOPClassUID), str(ds.SOPInstanceUID), np.asarray(ds.ImagePositionPatient, float)))
    for tag in ("StudyInstanceUID", "FrameOfReferenceUID", "PatientID"):
        if not str(getattr(src.first, tag, "") or ""):
            raise VolumeError(f"{items[0][0]}: the source series has no {tag}, which the sCT must carry to join the "
                              "patient's study; give it with the study identifier options")
    return src


def _ds(value: float) -> str:
    """A decimal string (DS, at most 16 characters) for a coordinate in mm."""
    s = f"{value:.6f}".rstrip("0").rstrip(".")
    return s if len(s) <= 16 else f"{value:.10g}"[:16]


def slice_geometry(affine: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, tuple[float, float, float]]:
    """Row and column direction cosines and slice normal (LPS) and the voxel sizes (mm) of
    ``affine`` (RAS); slice ``k`` of the grid is ``array[:, :, k]``, rows along ``j``.

    Raises:
        VolumeError: a sheared affine (DICOM slices need orthogonal axes).
    """
    lps = _LPS_TO_RAS @ affine  # the same diagonal maps RAS to LPS
    cols = lps[:3, :3]
    spacing = np.linalg.norm(cols, axis=0)
    unit = cols / spacing
    if abs(unit[:, 0] @ unit[:, 1]) > 1e-4 or abs(unit[:, 0] @ unit[:, 2]) > 1e-4 or abs(unit[:, 1] @ unit[:, 2]) > 1e-4:
        raise VolumeError("the grid's axes are not orthogonal (sheared affine): it cannot be written as DICOM slices")
    return unit[:, 0], unit[:, 1], unit[:, 2], tuple(float(s) for s in spacing)  # type: ignore[return-value]


def write_ct_series(
    folder: str | os.PathLike, hu: np.ndarray, affine: np.ndarray, *, source: SourceSeries | None = None,
    study: StudyIdentifiers | None = None, description: str = "sCT", derivation: str = "synthetic CT",
    series_number: int = 901,
) -> tuple[Path, dict]:
    """Write ``hu (I, J, K)`` (HU, float) on the grid ``affine`` (RAS, mm) as a CT series in
    ``folder`` (one file per slice), atomically: a temporary folder beside it, renamed when complete
    (an earlier series of that name is replaced only then).

    Pixels are int16 with RescaleSlope 1 and RescaleIntercept 0 (RescaleType HU): the written HU
    are the input rounded to the nearest integer (within 0.5 HU).

    Args:
        source: the source MR series: its patient/study module, FrameOfReferenceUID and
            PatientPosition are copied, and grid slice ``k`` is written at the recorded position of
            the MR slice it was read from, with a SourceImageSequence referencing it. Grid slices
            that the reader interpolated (no recorded MR slice there) are not written; they are
            listed in the returned notes.
        study: identifiers for a non-DICOM input (required then).

    Returns:
        ``(folder, notes, datasets)``: ``notes`` has the series UID, the number of slices and any
        skipped grid slices; ``datasets`` are the written slices (for :func:`write_seg`).

    Raises:
        VolumeError: no identifiers, a sheared grid, HU outside int16, or an unwritable folder.
    """
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.sequence import Sequence
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    import medgan

    out = Path(folder)
    if source is None and study is None:
        raise VolumeError(StudyIdentifiers.missing_message(str(out)))
    if study is not None:
        study.check(str(out))
    hu = np.asarray(hu)
    if hu.ndim != 3:
        raise VolumeError(f"{out}: a CT series needs a 3D volume, got shape {hu.shape}")
    if not np.isfinite(hu).all():
        raise VolumeError(f"{out}: the sCT holds NaN or infinite values; nothing written")
    lo, hi = float(hu.min()), float(hu.max())
    if lo < -32768 or hi > 32767:
        raise VolumeError(f"{out}: HU range {lo:.0f}..{hi:.0f} does not fit int16 pixels; nothing written (no clipping)")
    row, col, normal, (si, sj, sk) = slice_geometry(affine)
    origin = (_LPS_TO_RAS @ affine)[:3, 3]
    positions = [origin + k * sk * normal for k in range(hu.shape[2])]
    references: list[SourceSlice | None] = [None] * hu.shape[2]
    skipped: list[int] = []
    if source is not None:
        tol = dicom_slice_tolerance_mm(sk)
        mr_normal = np.cross(row, col)
        recorded = np.array([s.position for s in source.slices])
        for k, pos in enumerate(positions):
            d = np.linalg.norm(recorded - pos, axis=1)
            i = int(np.argmin(d))
            if d[i] <= tol:
                references[k] = source.slices[i]
                positions[k] = source.slices[i].position  # exactly on its MR slice
            else:
                skipped.append(k)
        if abs(abs(mr_normal @ normal) - 1) > 1e-4:
            raise VolumeError(f"{out}: the sCT grid's slices are not the MR's slices; nothing written")
    series_uid = generate_uid()
    for_uid = (str(source.first.FrameOfReferenceUID) if source is not None
               else study.frame_of_reference_uid or generate_uid())  # type: ignore[union-attr]
    now = _dt.datetime.now()
    base = Dataset()
    if source is not None:
        for tag in PATIENT_STUDY_TAGS:
            if tag in source.first:
                setattr(base, tag, source.first.data_element(tag).value)
        base.PatientPosition = str(getattr(source.first, "PatientPosition", "") or "")
    else:
        s = study  # type: ignore[assignment]
        base.PatientID, base.PatientName, base.StudyInstanceUID = s.patient_id, s.patient_name, s.study_instance_uid
        base.PatientBirthDate, base.PatientSex, base.StudyDate = s.patient_birth_date, s.patient_sex, s.study_date
        base.AccessionNumber, base.PatientPosition = s.accession_number, s.patient_position
    for tag, empty in (("PatientName", ""), ("PatientBirthDate", ""), ("PatientSex", ""), ("StudyDate", ""),
                       ("StudyTime", ""), ("StudyID", ""), ("AccessionNumber", ""), ("ReferringPhysicianName", "")):
        if tag not in base:
            setattr(base, tag, empty)  # type 2: present, may be empty
    base.Modality = "CT"
    base.ImageType = ["DERIVED", "SECONDARY", "AXIAL"]  # the CT Image module requires value 3 (AXIAL or LOCALIZER)
    base.SeriesInstanceUID, base.SeriesNumber = series_uid, series_number
    base.SeriesDescription = description[:64]
    base.SeriesDate = base.ContentDate = now.strftime("%Y%m%d")
    base.SeriesTime = base.ContentTime = now.strftime("%H%M%S")
    base.FrameOfReferenceUID, base.PositionReferenceIndicator = for_uid, ""
    base.Manufacturer, base.ManufacturerModelName = "medgan", "medgan"
    base.SoftwareVersions = medgan.__version__
    base.BurnedInAnnotation = "NO"
    # type 2: present, empty (no acquisition). Laterality (2C) stays present and empty: dciodvfy cannot
    # tell an unpaired body part and reports its absence as an error, an empty value as a warning
    base.KVP = base.AcquisitionNumber = base.Laterality = ""
    base.ImageOrientationPatient = [_ds(v) for v in (*row, *col)]
    base.PixelSpacing = [_ds(sj), _ds(si)]  # between rows (along j), between columns (along i)
    base.SliceThickness = _ds(sk)
    base.SpacingBetweenSlices = _ds(sk)
    base.SamplesPerPixel, base.PhotometricInterpretation = 1, "MONOCHROME2"
    base.Rows, base.Columns = int(hu.shape[1]), int(hu.shape[0])
    base.BitsAllocated, base.BitsStored, base.HighBit, base.PixelRepresentation = 16, 16, 15, 1
    base.RescaleIntercept, base.RescaleSlope, base.RescaleType = "0", "1", "HU"
    base.WindowCenter, base.WindowWidth = _ds(SOFT_TISSUE_WINDOW[0]), _ds(SOFT_TISSUE_WINDOW[1])
    base.DerivationDescription = derivation[:1024]
    code = Dataset()
    code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = DERIVATION_CODE
    base.DerivationCodeSequence = Sequence([code])

    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
        os.chmod(tmp, creation_mode(directory=True))
    except OSError as err:
        raise VolumeError(f"{out}: cannot write to {out.parent} ({err})") from err
    pixels = np.rint(hu).astype(np.int16)
    n, written = 0, []
    try:
        for k in range(hu.shape[2]):
            if k in skipped:
                continue
            n += 1
            ds = Dataset()
            ds.update(base)
            meta = FileMetaDataset()
            meta.MediaStorageSOPClassUID, meta.TransferSyntaxUID = CT_IMAGE_STORAGE, ExplicitVRLittleEndian
            ds.SOPClassUID = CT_IMAGE_STORAGE
            ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID = generate_uid()
            ds.file_meta = meta
            ds.InstanceNumber = n
            ds.ImagePositionPatient = [_ds(v) for v in positions[k]]
            ds.SliceLocation = _ds(float(positions[k] @ normal))
            ref = references[k]
            if ref is not None:
                item = Dataset()
                item.ReferencedSOPClassUID, item.ReferencedSOPInstanceUID = ref.sop_class_uid, ref.sop_instance_uid
                ds.SourceImageSequence = Sequence([item])
            ds.PixelData = np.ascontiguousarray(pixels[:, :, k].T).tobytes()  # rows along j, columns along i
            f = tmp / f"CT{n:05d}.dcm"
            ds.save_as(f, enforce_file_format=True)
            written.append(ds)
            fd = os.open(f, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_dir(tmp)
        trash = None
        if out.exists():  # replaced only now that the new series is complete
            trash = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
            os.replace(out, trash / out.name)
        os.replace(tmp, out)
        fsync_dir(out.parent)
        if trash is not None:
            shutil.rmtree(trash, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    notes = {"series_instance_uid": series_uid, "frame_of_reference_uid": for_uid, "slices_written": n,
             "pixel_encoding": "int16, RescaleSlope 1, RescaleIntercept 0 (HU rounded to the nearest integer)"}
    if skipped:
        notes["grid_slices_not_written"] = {
            "slices": skipped, "why": "interpolated by the reader between recorded MR slices; the sCT series has one "
                                      "slice per recorded MR slice"}
    if source is None and study is not None and not study.frame_of_reference_uid:
        notes["frame_of_reference"] = "new: no --frame-of-reference-uid was given, so the sCT does not share the MR's"
    return out, notes, written


#: SNOMED CT codes (scheme SCT) of the classes medgan's class maps name, for DICOM-SEG segments;
#: a class not listed gets the generic "Tissue" type and keeps its name as the segment label
SNOMED_ANATOMY = {
    "liver": ("10200004", "Liver"), "spleen": ("78961009", "Spleen"), "kidney": ("64033007", "Kidney"),
    "kidney_right": ("9846003", "Right kidney"), "kidney_left": ("18639004", "Left kidney"),
    "pancreas": ("15776009", "Pancreas"), "stomach": ("69695003", "Stomach"), "gallbladder": ("28231008", "Gallbladder"),
    "aorta": ("15825003", "Aorta"), "urinary_bladder": ("89837001", "Urinary bladder"), "heart": ("80891009", "Heart"),
    "lung": ("39607008", "Lung"), "brain": ("12738006", "Brain"), "spinal_cord": ("2748008", "Spinal cord"),
    "vertebrae": ("421060004", "Vertebral column"),
}
TISSUE = ("85756007", "Tissue")
ANATOMICAL_STRUCTURE = ("123037004", "Anatomical Structure")


def write_seg(path: str | os.PathLike, labels: np.ndarray, affine: np.ndarray, classes: list[str],
              cts: list, algorithm: str) -> Path:  # noqa: ANN001 - pydicom Datasets
    """Write class indices ``labels (I, J, K)`` (0 = background, ``c`` = ``classes[c - 1]``) on the
    grid ``affine`` (RAS, mm) as a DICOM Segmentation (highdicom, BINARY, one segment per class
    present or not, SNOMED CT codes from :data:`SNOMED_ANATOMY`) referencing the CT slices
    ``cts`` (the datasets :func:`write_ct_series` wrote from the same grid); atomic.

    Raises:
        VolumeError: a CT slice that is not a slice of this grid.
    """
    import highdicom as hd
    from pydicom.uid import generate_uid

    import medgan

    out = Path(path)
    _, _, normal, (_, _, sk) = slice_geometry(affine)
    inv = np.linalg.inv(_LPS_TO_RAS @ affine)
    frames = []
    for d in cts:
        ijk = inv[:3, :3] @ np.asarray(d.ImagePositionPatient, float) + inv[:3, 3]
        k = int(round(ijk[2]))
        if abs(ijk[2] - k) * sk > dicom_slice_tolerance_mm(sk) or not 0 <= k < labels.shape[2]:
            raise VolumeError(f"{out}: CT slice {d.InstanceNumber} is not a slice of the segmentation's grid")
        frames.append(labels[:, :, k].T)
    pixels = np.stack(frames).astype(np.uint8)  # (frames, rows, columns)
    descriptions = []
    for c, name in enumerate(classes, start=1):
        code, meaning = SNOMED_ANATOMY.get(name.lower(), TISSUE)
        descriptions.append(hd.seg.SegmentDescription(
            segment_number=c, segment_label=name[:64],
            segmented_property_category=hd.sr.CodedConcept(*((ANATOMICAL_STRUCTURE[0], "SCT", ANATOMICAL_STRUCTURE[1])
                                                            if (code, meaning) != TISSUE else (TISSUE[0], "SCT", TISSUE[1]))),
            segmented_property_type=hd.sr.CodedConcept(code, "SCT", meaning),
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=hd.AlgorithmIdentificationSequence(
                name=algorithm[:64], version=medgan.__version__, family=hd.sr.CodedConcept("123109", "DCM", "Segmentation")),
        ))
    seg = hd.seg.Segmentation(
        source_images=cts, pixel_array=pixels, segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions, series_instance_uid=generate_uid(), series_number=902,
        sop_instance_uid=generate_uid(), instance_number=1, manufacturer="medgan", manufacturer_model_name="medgan",
        software_versions=medgan.__version__, device_serial_number="0", series_description=f"{algorithm} labels"[:64],
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.partial-", dir=out.parent)
    os.fchmod(fd, creation_mode())
    try:
        with os.fdopen(fd, "wb") as f:
            seg.save_as(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, out)
        fsync_dir(out.parent)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return out


@dataclass(frozen=True)
class DicomOutput:
    """A batch's DICOM output (see :func:`medgan.batch.run_batch`): the main output becomes a CT
    series ``{stem}_{task}_dicom/`` (:func:`write_ct_series`) and, when ``classes`` are given, the
    ``_seg`` output a DICOM-SEG ``{stem}_{task}_seg.dcm`` referencing it (:func:`write_seg`).
    ``study`` gives the identifiers of non-DICOM inputs; a DICOM input's own are used."""

    description: str
    derivation: str
    study: StudyIdentifiers | None = None
    classes: tuple[str, ...] = ()

    def check(self, sources: list[Path]) -> None:
        """Refuse, before anything is read, what cannot be written: invalid identifiers, or
        non-DICOM ``sources`` without ``study``.

        Raises:
            VolumeError: naming the files and the options to pass.
        """
        if self.study is not None:
            self.study.check("the study identifiers given")
            return
        files = [str(p) for p in sources if not Path(p).is_dir()]
        if files:
            raise VolumeError(StudyIdentifiers.missing_message(", ".join(files[:5]) + (" ..." if len(files) > 5 else "")))

    def provenance(self) -> dict:
        return {"output_format": "dicom", "dicom": {"description": self.description, "study": self.study and vars(self.study)}}

    def read_source(self, source: Path, series_uid: str | None) -> SourceSeries | None:
        """The source series' headers for a DICOM folder input (read with the scan, so a series
        the output cannot be written for fails before the model runs); ``None`` for files."""
        return read_source_series(source, series_uid) if Path(source).is_dir() else None

    def write(self, out: Path, prefix: str, arrays: dict, affine: np.ndarray, source: SourceSeries | None,
              sidecar: dict) -> list[Path]:
        """Write the main output (``arrays[""]``) and, with ``classes``, ``arrays["_seg"]`` (both
        popped from ``arrays``; the rest are left to the caller) as ``{prefix}_dicom/`` and
        ``{prefix}_seg.dcm``; the series' notes go to ``sidecar["dicom_output"]``."""
        hu, _ = arrays.pop("")
        folder, sidecar["dicom_output"], cts = write_ct_series(
            out / f"{prefix}_dicom", hu, affine, source=source, study=self.study, description=self.description,
            derivation=self.derivation)
        del hu
        written = [folder]
        if self.classes and "_seg" in arrays:
            labels, _ = arrays.pop("_seg")
            written.append(write_seg(out / f"{prefix}_seg.dcm", labels, affine, list(self.classes), cts, self.description))
        return written
