"""medgan.io: reading every format with its geometry, refusing bad input, atomic writes."""

from __future__ import annotations

import gzip

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from medgan.io import VolumeError, atomic_write_text, expand_inputs, read_label_map, read_volume, write_nifti
from medgan.io.readers import place_label_map
from tests.conftest import DATA_DIR, axcodes_affine, oblique_affine, requires_data, write_nifti_file

RNG = np.random.default_rng(0)


def _write(path, data: bytes):
    path.write_bytes(data)
    return path


def _vol(shape=(12, 10, 8)) -> np.ndarray:
    return RNG.normal(size=shape).astype(np.float32)


@pytest.mark.parametrize("codes", ["RAS", "LPS", "PIR", "LAS"])
def test_nifti_affine_and_orientation(tmp_path, codes):
    aff = axcodes_affine(codes)
    arr = _vol()
    v = read_volume(write_nifti_file(tmp_path / "x.nii.gz", arr, aff))
    assert v.orientation == codes
    np.testing.assert_allclose(v.affine, aff)
    np.testing.assert_array_equal(v.array, arr)


@pytest.mark.parametrize("suffix", [".nrrd", ".mha"])
def test_itk_formats_match_nifti_geometry(tmp_path, suffix):
    """An image written by SimpleITK (LPS) reads with the same RAS affine nibabel gives its NIfTI."""
    arr = _vol()
    img = sitk.GetImageFromArray(arr.transpose(2, 1, 0))
    img.SetSpacing((1.5, 2.0, 2.5))
    img.SetOrigin((3.0, -4.0, 5.0))
    d = sitk.VersorRigid3DTransform((0.1, 0.2, 0.05, 0.97)).GetMatrix()
    img.SetDirection(d)
    sitk.WriteImage(img, str(tmp_path / f"x{suffix}"))
    sitk.WriteImage(img, str(tmp_path / "x.nii.gz"))
    a, b = read_volume(tmp_path / f"x{suffix}"), read_volume(tmp_path / "x.nii.gz")
    np.testing.assert_allclose(a.affine, b.affine, atol=1e-4)
    np.testing.assert_array_equal(a.array, b.array)
    np.testing.assert_array_equal(a.array, arr)


def test_nan_scale_slope_reads_raw_values(tmp_path):
    arr = np.arange(8 * 9 * 10, dtype=np.int16).reshape(8, 9, 10)
    img = nib.Nifti1Image(arr, np.eye(4))
    img.header["scl_slope"] = np.nan
    img.header["scl_inter"] = np.nan
    nib.save(img, str(tmp_path / "x.nii"))
    np.testing.assert_array_equal(read_volume(tmp_path / "x.nii").array, arr)


def test_scale_slope_is_applied(tmp_path):
    arr = (np.arange(8 * 9 * 10) % 300).astype(np.int16).reshape(8, 9, 10)
    img = nib.Nifti1Image(arr, np.eye(4))
    img.header.set_slope_inter(4385.0, 0.0)
    nib.save(img, str(tmp_path / "x.nii.gz"))
    assert read_volume(tmp_path / "x.nii.gz").array.max() == pytest.approx(299 * 4385.0)


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda p: p / "missing.nii.gz", "no such file"),
        (lambda p: _write(p / "text.nii.gz", b"hello"), "could not be read"),
        (lambda p: _write(p / "trunc.nii.gz", gzip.compress(b"\x00" * 400)[:50]), "not a NIfTI file"),
        (lambda p: write_nifti_file(p / "two_d.nii.gz", _vol((12, 10)), np.eye(4)), "expected a 3D volume"),
        (lambda p: write_nifti_file(p / "four_d.nii.gz", _vol((6, 6, 6, 3)), np.eye(4)), "expected a 3D volume"),
        (lambda p: write_nifti_file(p / "nan.nii.gz", np.where(_vol() > 1, np.nan, 1).astype(np.float32), np.eye(4)), "NaN or Inf"),
        (lambda p: write_nifti_file(p / "zero.nii.gz", np.zeros((6, 6, 6), np.float32), np.eye(4)), "every voxel has the value 0"),
        (lambda p: _write(p / "x.png", b"png"), "unsupported file type"),
    ],
)
def test_bad_input_names_file_and_problem(tmp_path, make, message):
    path = make(tmp_path)
    with pytest.raises((VolumeError, FileNotFoundError)) as info:
        read_volume(path)
    assert str(path) in str(info.value) and message in str(info.value)


def test_label_map_must_share_grid(tmp_path):
    img = read_volume(write_nifti_file(tmp_path / "img.nii.gz", _vol(), np.eye(4)))
    write_nifti_file(tmp_path / "bad_shape.nii.gz", np.zeros((12, 10, 7), np.uint8), np.eye(4))
    write_nifti_file(tmp_path / "bad_affine.nii.gz", np.zeros((12, 10, 8), np.uint8), np.diag([2, 1, 1, 1.0]))
    write_nifti_file(tmp_path / "frac.nii.gz", np.full((12, 10, 8), 0.5, np.float32), np.eye(4))
    with pytest.raises(VolumeError, match="bad_shape.*shape"):
        read_label_map(tmp_path / "bad_shape.nii.gz", img)
    with pytest.raises(VolumeError, match="bad_affine.*affine differs"):
        read_label_map(tmp_path / "bad_affine.nii.gz", img)
    with pytest.raises(VolumeError, match="frac.*whole numbers"):
        read_label_map(tmp_path / "frac.nii.gz", img)


def test_a_label_map_of_a_slab_is_placed_exactly_and_anything_needing_resampling_is_refused(tmp_path):
    aff = axcodes_affine("LPS", spacing=(2.0, 2.0, 3.0))
    img = read_volume(write_nifti_file(tmp_path / "img.nii.gz", _vol((12, 10, 8)), aff))
    slab = np.arange(12 * 10 * 3, dtype=np.uint8).reshape(12, 10, 3) % 5
    at = aff.copy()
    at[:3, 3] = aff[:3, :3] @ [0, 0, 4] + aff[:3, 3]  # voxels k = 4..6 of the image
    lab = read_label_map(write_nifti_file(tmp_path / "slab.nii.gz", slab, at))
    placed = place_label_map(lab, img, -1)
    assert placed.shape == (12, 10, 8)
    np.testing.assert_array_equal(placed[:, :, 4:7], slab)
    assert (placed[:, :, :4] == -1).all() and (placed[:, :, 7:] == -1).all()
    half = at.copy()
    half[:3, 3] += aff[:3, :3] @ [0, 0, 0.5]
    outside = at.copy()
    outside[:3, 3] = aff[:3, :3] @ [0, 0, 6] + aff[:3, 3]
    finer = at.copy()
    finer[:3, :3] /= 2
    for name, affine, message in [("half.nii.gz", half, "between voxels"), ("outside.nii.gz", outside, "outside its image"),
                                  ("finer.nii.gz", finer, "spacing differ")]:
        other = read_label_map(write_nifti_file(tmp_path / name, slab, affine))
        with pytest.raises(VolumeError, match=message) as info:
            place_label_map(other, img, -1)
        assert name in str(info.value) and "img.nii.gz" in str(info.value)


def test_write_is_atomic_and_keeps_affine(tmp_path):
    aff = oblique_affine()
    out = write_nifti(tmp_path / "sub" / "y.nii.gz", _vol(), aff)
    assert [p.name for p in out.parent.iterdir()] == ["y.nii.gz"]  # no temporary left behind
    np.testing.assert_allclose(read_volume(out).affine, aff, atol=1e-5)


def test_unwritable_output_folder_is_reported(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(VolumeError, match="cannot create the output folder"):
        write_nifti(blocker / "y.nii.gz", _vol(), np.eye(4))


def test_expand_inputs(tmp_path):
    for n in ("a.nii.gz", "b.nrrd", "notes.txt"):
        (tmp_path / n).write_text("x")
    (tmp_path / "dicom").mkdir()
    got = expand_inputs([str(tmp_path), str(tmp_path / "*.nii.gz"), str(tmp_path / "dicom"), "missing.nii"])
    assert [p.name for p in got] == ["a.nii.gz", "b.nrrd", "dicom", "missing.nii"]


def _recorded_positions_ras(folder: Path) -> np.ndarray:
    """ImagePositionPatient of every file of a series, in RAS, sorted along the slice normal."""
    pos, iop = [], None
    for f in sitk.ImageSeriesReader().GetGDCMSeriesFileNames(str(folder)):
        r = sitk.ImageFileReader()
        r.SetFileName(f)
        r.ReadImageInformation()
        pos.append([float(v) for v in r.GetMetaData("0020|0032").split("\\")])
        iop = [float(v) for v in r.GetMetaData("0020|0037").split("\\")]
    pos = np.asarray(pos)
    pos = pos[np.argsort(pos @ np.cross(iop[:3], iop[3:]))]
    return pos * [-1, -1, 1]


@requires_data
def test_shared_dicom_series_keeps_every_slice_where_it_was_recorded():
    """The oblique MEMPRAGE series has one 2 mm gap among 1 mm gaps (a missing slice). Each of its
    175 slices is read unchanged at its recorded position; the missing one is interpolated and
    reported. (Its NIfTI beside it is on the mean-gap grid: slices up to 0.5 mm off.)"""
    folder = DATA_DIR / "head/dicom/adi-t1-memprage"
    d = read_volume(folder)
    n = read_volume(DATA_DIR / "head/mr/adi-t1-memprage.nii.gz")
    assert d.array.shape == (192, 192, 176) and n.array.shape == (192, 192, 175)
    note = d.notes["dicom_interpolated_slices"]
    assert note["grid_slices"] == [114] and note["recorded_slices"] == 175
    recorded = [k for k in range(176) if k != 114]
    world = (d.affine @ np.array([[0, 0, k, 1] for k in recorded], float).T)[:3].T
    np.testing.assert_allclose(world, _recorded_positions_ras(folder), atol=1e-3)
    # same voxels as the NIfTI conversion, slice for slice, and the missing slice between its neighbours
    np.testing.assert_array_equal(d.array[:, :, recorded], n.array)
    np.testing.assert_allclose(d.array[:, :, 114], (n.array[:, :, 113] + n.array[:, :, 114]) / 2, atol=1e-3)
    np.testing.assert_allclose(d.affine[:3, :2], n.affine[:3, :2], atol=1e-4)


def test_dicom_missing_slice_is_interpolated_and_no_slice_moves(tmp_path):
    from tests.conftest import write_dicom_series

    vol = (np.random.default_rng(0).random((12, 10, 8)) * 1000).astype(np.int16)
    positions = [3.0 * k for k in range(8)]
    keep = [0, 1, 2, 4, 5, 6, 7]  # slice 3 (9 mm) missing
    write_dicom_series(tmp_path / "s", vol[:, :, keep], spacing=(1.0, 1.0, 3.0), slice_positions=[positions[k] for k in keep])
    v = read_volume(tmp_path / "s")
    assert v.array.shape == (12, 10, 8) and v.notes["dicom_interpolated_slices"]["grid_slices"] == [3]
    np.testing.assert_array_equal(v.array[:, :, keep], vol[:, :, keep])
    np.testing.assert_allclose(v.array[:, :, 3], (vol[:, :, 2].astype(float) + vol[:, :, 4]) / 2, atol=1e-3)
    np.testing.assert_allclose(np.linalg.norm(v.affine[:3, 2]), 3.0, atol=1e-6)


def test_dicom_uneven_slices_are_interpolated_onto_a_regular_grid(tmp_path):
    from tests.conftest import write_dicom_series

    vol = np.stack([np.full((6, 5), 100 * k, np.int16) for k in range(5)], axis=2)
    positions = [0.0, 2.0, 4.6, 6.0, 8.0]  # the third slice 0.6 mm off the 2 mm grid
    write_dicom_series(tmp_path / "s", vol, spacing=(1.0, 1.0, 2.0), slice_positions=positions)
    v = read_volume(tmp_path / "s")
    assert v.notes["dicom_interpolated_slices"]["grid_slices"] == [2]
    # grid 4 mm lies between the slices at 2 mm (100) and 4.6 mm (200): 2.0 / 2.6 of the way
    np.testing.assert_allclose(v.array[0, 0, :], [0, 100, 100 + 100 * 2.0 / 2.6, 300, 400], atol=1e-3)


def test_gantry_tilted_dicom_series_is_refused(tmp_path):
    from tests.conftest import write_dicom_series

    vol = (np.arange(12 * 10 * 6) % 300).astype(np.int16).reshape(12, 10, 6)
    write_dicom_series(tmp_path / "s", vol, spacing=(1.0, 1.0, 3.0), tilt_mm_per_slice=0.5)
    with pytest.raises(VolumeError, match="gantry-tilted or sheared"):
        read_volume(tmp_path / "s")


def test_dicom_slice_of_another_size_is_named(tmp_path):
    from tests.conftest import write_dicom_series

    vol = (np.arange(12 * 10 * 6) % 300).astype(np.int16).reshape(12, 10, 6)
    write_dicom_series(tmp_path / "s", vol[:, :, :5], spacing=(1.0, 1.0, 2.0))
    odd = write_dicom_series(tmp_path / "s", vol[:8, :, 5:], spacing=(1.0, 1.0, 2.0), origin=(0.0, 0.0, 10.0), first_index=5)
    with pytest.raises(VolumeError, match=rf"{odd[0].name}.*one series must have one slice geometry"):
        read_volume(tmp_path / "s")


@requires_data
def test_dicom_series_with_missing_slices_is_refused(tmp_path):
    import shutil

    src = sorted((DATA_DIR / "head/dicom/adi-t1-memprage").iterdir())
    files = [f for f in src]
    reader = sitk.ImageSeriesReader()
    ordered = reader.GetGDCMSeriesFileNames(str(DATA_DIR / "head/dicom/adi-t1-memprage"))
    drop = set(ordered[40:46])  # six consecutive slices
    for f in files:
        if str(f) not in drop:
            shutil.copy(f, tmp_path / f.name)
    with pytest.raises(VolumeError, match="missing or duplicated"):
        read_volume(tmp_path)


@pytest.mark.parametrize("kind", ["nii.gz", "nrrd", "dicom"])
def test_volumes_over_max_voxels_are_refused_from_the_header(tmp_path, kind):
    from tests.conftest import write_dicom_series

    arr = (np.arange(20 * 18 * 10) % 300).astype(np.int16).reshape(20, 18, 10)
    if kind == "dicom":
        path = tmp_path / "series"
        write_dicom_series(path, arr)
    elif kind == "nrrd":
        path = tmp_path / "v.nrrd"
        sitk.WriteImage(sitk.GetImageFromArray(arr.transpose(2, 1, 0)), str(path))
    else:
        path = write_nifti_file(tmp_path / "v.nii.gz", arr, np.eye(4))
    with pytest.raises(VolumeError, match="20 x 18 x 10 = 3,600 voxels, more than the limit of 3,599"):
        read_volume(path, max_voxels=3599)
    assert read_volume(path, max_voxels=3600).array.shape == (20, 18, 10)


def test_integer_voxels_kept_on_request(tmp_path):
    arr = (np.arange(20 * 18 * 10) % 300 - 100).astype(np.int16).reshape(20, 18, 10)
    path = write_nifti_file(tmp_path / "v.nii.gz", arr, np.eye(4))
    kept, as_float = read_volume(path, as_float=False), read_volume(path)
    assert kept.array.dtype == np.int16 and as_float.array.dtype == np.float32
    np.testing.assert_array_equal(kept.array, arr)
    np.testing.assert_array_equal(as_float.array, arr.astype(np.float32))
    # scaled integers come back as floats either way: the scaling is applied
    img = nib.Nifti1Image(arr, np.eye(4))
    img.header.set_slope_inter(0.5, -10)
    nib.save(img, str(tmp_path / "scaled.nii.gz"))
    scaled = read_volume(tmp_path / "scaled.nii.gz", as_float=False).array
    assert scaled.dtype == np.float32
    np.testing.assert_allclose(scaled, arr * 0.5 - 10)


def test_atomic_outputs_get_the_permissions_of_a_plain_file(tmp_path):
    """Temporaries are made 0600 by mkstemp; the renamed output must get 0666 & ~umask like any
    other file, and a checkpoint folder 0777 & ~umask, or a shared study folder is unreadable."""
    import os
    import stat

    from medgan.checkpoint import save_checkpoint
    from medgan.io import atomic_write_text

    old = os.umask(0o027)
    try:
        img = write_nifti(tmp_path / "y.nii.gz", _vol(), np.eye(4))
        txt = atomic_write_text(tmp_path / "y.json", "{}")
        ckpt = save_checkpoint(tmp_path / "ckpt", {}, {}, "a: 1\n")
        plain = tmp_path / "plain.txt"
        plain.write_text("x")
    finally:
        os.umask(old)
    assert stat.S_IMODE(plain.stat().st_mode) == 0o640
    assert stat.S_IMODE(img.stat().st_mode) == 0o640
    assert stat.S_IMODE(txt.stat().st_mode) == 0o640
    assert stat.S_IMODE(ckpt.stat().st_mode) == 0o750


def test_gzip_nifti_is_decompressed_once(tmp_path, monkeypatch):
    """The compressed file is read once: nibabel's default memory-mapping attempt would seek to
    the end of the gzip stream first, decompressing the whole volume twice."""
    import builtins

    import medgan.io.readers as mio

    if mio._igzip is None:
        pytest.skip("isal is not installed: nibabel's own gzip reader is used")
    arr = RNG.integers(-1000, 1000, size=(40, 30, 20), dtype=np.int16)
    path = write_nifti(tmp_path / "x.nii.gz", arr, np.eye(4))
    read_bytes = []
    real_open = builtins.open

    class Counting:
        def __init__(self, f):
            self._f = f

        def read(self, n=-1):
            data = self._f.read(n)
            read_bytes.append(len(data))
            return data

        def readinto(self, b):
            n = self._f.readinto(b)
            read_bytes.append(n)
            return n

        def __getattr__(self, name):
            return getattr(self._f, name)

    monkeypatch.setattr(mio._igzip, "open", lambda p, mode="rb": mio._igzip.IGzipFile(fileobj=Counting(real_open(p, mode))))
    v = read_volume(path, as_float=False)
    np.testing.assert_array_equal(v.array, arr)
    assert sum(read_bytes) <= path.stat().st_size


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii"])
def test_direct_write_gives_the_same_file_and_its_checksum(tmp_path, suffix):
    """The batch's page-cache-bypassing writer: same volume and header as a plain write, over
    several 8 MiB blocks with an unaligned tail, and the digest fed while writing is the file's."""
    import hashlib

    from medgan.io import sha256_of
    from medgan.io.writers import _BlockWriter

    arr = RNG.normal(size=(160, 130, 110)).astype(np.float32)  # 9.2 MB raw: more than one block
    aff = oblique_affine()
    plain = write_nifti(tmp_path / f"plain{suffix}", arr, aff)
    digest = hashlib.sha256()
    direct = write_nifti(tmp_path / f"direct{suffix}", arr, aff, direct=True, digest=digest)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([plain.name, direct.name])  # no temporary left
    assert digest.hexdigest() == sha256_of(direct)
    a, b = nib.load(plain), nib.load(direct)
    np.testing.assert_array_equal(np.asarray(b.dataobj), arr)
    assert a.header.binaryblock == b.header.binaryblock
    if suffix == ".nii":
        assert plain.read_bytes() == direct.read_bytes()
        assert direct.stat().st_size % _BlockWriter.ALIGN != 0  # the padding of the last block was cut off


def test_direct_write_falls_back_when_the_file_system_refuses(tmp_path, monkeypatch):
    """A file system that accepts O_DIRECT at fcntl but refuses the first aligned write (EINVAL)
    gets the same bytes written plainly."""
    import errno
    import fcntl
    import os

    import medgan.io.writers as mio

    real_write, calls = os.write, []

    def refusing_write(fd, data):
        direct = bool(fcntl.fcntl(fd, fcntl.F_GETFL) & getattr(os, "O_DIRECT", 0))
        calls.append(direct)
        if direct:
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_write(fd, data)

    probe = tmp_path / "probe"
    with open(probe, "wb") as f:
        if not mio._set_direct(f.fileno(), True):
            pytest.skip(f"{tmp_path}: this file system refuses O_DIRECT at fcntl already")
    monkeypatch.setattr(mio.os, "write", refusing_write)
    arr = _vol((40, 30, 20))
    out = write_nifti(tmp_path / "x.nii", arr, np.eye(4), direct=True)
    monkeypatch.undo()
    assert calls[0] is True and not any(calls[1:])
    np.testing.assert_array_equal(np.asarray(nib.load(out).dataobj), arr)


def test_block_writer_is_forward_only(tmp_path):
    from medgan.io.writers import _BlockWriter

    with open(tmp_path / "f", "wb", buffering=0) as raw, _BlockWriter(raw.fileno(), direct=False) as sink:
        sink.write(b"ab")
        sink.seek(5)  # forward: zeros
        sink.write(b"c")
        with pytest.raises(OSError, match="forward-only"):
            sink.seek(1)
    assert (tmp_path / "f").read_bytes() == b"ab\0\0\0c"


def _nifti_with(path: Path, array: np.ndarray, edit=None) -> Path:
    """``array`` as NIfTI with an sform and qform of a 2 mm grid, then ``edit(header)`` applied
    to the stored header."""
    img = nib.Nifti1Image(array, np.diag([2.0, 2.0, 2.0, 1.0]))
    img.set_qform(img.affine, code=1)
    img.set_sform(img.affine, code=1)
    raw = img.to_bytes()  # nibabel would rewrite the forms and scaling from the image on saving
    hdr = nib.Nifti1Header(binaryblock=raw[:348], check=False)
    if edit is not None:
        edit(hdr)
    raw = hdr.binaryblock + raw[348:]
    path.write_bytes(gzip.compress(raw) if path.name.endswith(".gz") else raw)
    return path


def _raw_nifti(path: Path, dims, dtype, data: bytes) -> Path:
    hdr = nib.Nifti1Header()
    hdr["dim"] = [3, *dims, 1, 1, 1, 1]
    hdr.set_data_dtype(dtype)
    hdr.set_sform(np.eye(4), code=1)
    hdr["vox_offset"] = 352
    raw = hdr.binaryblock + b"\0" * 4 + data
    path.write_bytes(gzip.compress(raw) if path.name.endswith(".gz") else raw)
    return path


def _itk_file(path: Path, array: np.ndarray) -> Path:
    sitk.WriteImage(sitk.GetImageFromArray(array), str(path))
    return path


def _no_forms(h):
    h["qform_code"] = 0
    h["sform_code"] = 0


def _pixdim_zero(h):
    h["sform_code"] = 0
    h["pixdim"][2] = 0


def _disagree(h):
    q = np.diag([-2.0, 2.0, 2.0, 1.0])
    q[:3, 3] = [50.0, 0, 0]
    h.set_qform(q, code=1)


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda p: _nifti_with(p / "noforms.nii.gz", _vol(), _no_forms), "neither a qform nor an sform"),
        (lambda p: _nifti_with(p / "pixdim0.nii.gz", _vol(), _pixdim_zero), "pixdim"),
        (lambda p: _nifti_with(p / "disagree.nii.gz", _vol(), _disagree), "qform and sform disagree"),
        (lambda p: _nifti_with(p / "complex.nii.gz", _vol().astype(np.complex64)), "complex voxels"),
        (lambda p: _nifti_with(p / "infslope.nii", _vol().astype(np.int16),
                               lambda h: h.__setitem__("scl_slope", np.inf)), "scaling is infinite"),
        (lambda p: _nifti_with(p / "overflow.nii", (_vol() * 100).astype(np.int16),
                               lambda h: h.__setitem__("scl_slope", 3e38)), "overflowed float32"),
        (lambda p: _raw_nifti(p / "rgb.nii", (4, 4, 4), np.dtype([("R", "u1"), ("G", "u1"), ("B", "u1")]), b"\0" * 192),
         "RGB or vector"),
        (lambda p: _raw_nifti(p / "negdim.nii", (4, -3, 4), np.int16, b"\0" * 96), "dimensions"),
        (lambda p: _raw_nifti(p / "big.nii.gz", (1000, 1000, 1000), np.int16, b"\0" * 4096), "truncated or corrupt"),
        (lambda p: _raw_nifti(p / "short.nii", (40, 40, 40), np.int16, b"\0" * 4096), "truncated"),
        (lambda p: _itk_file(p / "complex.mha", (_vol() + 1j * _vol()).astype(np.complex64)), "2 components per voxel (complex"),
    ],
)
def test_made_up_or_impossible_headers_are_refused(tmp_path, make, message):
    path = make(tmp_path)
    with pytest.raises(VolumeError) as info:
        read_volume(path)
    assert str(path) in str(info.value) and message in str(info.value), str(info.value)


def test_header_checks_refuse_before_allocating(tmp_path, monkeypatch):
    """A header of just under 2^30 voxels over 4 KB of data fails without reading any voxel."""
    path = _raw_nifti(tmp_path / "big.nii.gz", (1023, 1024, 1024), np.int16, b"\0" * 4096)
    called = []
    monkeypatch.setattr(nib.Nifti1Image, "from_file_map", classmethod(lambda *a, **k: called.append(1)))
    with pytest.raises(VolumeError, match="truncated or corrupt"):
        read_volume(path)
    assert not called


@pytest.mark.parametrize("suffix", [".nii", ".nii.gz"])
def test_nifti2_is_read(tmp_path, suffix):
    arr = _vol().astype(np.float32)
    aff = oblique_affine()
    nib.save(nib.Nifti2Image(arr, aff), str(tmp_path / f"x{suffix}"))
    v = read_volume(tmp_path / f"x{suffix}")
    np.testing.assert_array_equal(v.array, arr)
    np.testing.assert_allclose(v.affine, aff, atol=1e-5)


def test_fifo_and_link_loop_are_refused_without_hanging(tmp_path):
    import os

    fifo = tmp_path / "pipe.nii.gz"
    os.mkfifo(fifo)
    with pytest.raises(VolumeError, match="FIFO"):
        read_volume(fifo)
    a, b = tmp_path / "a.nii.gz", tmp_path / "b.nii.gz"
    a.symlink_to(b)
    b.symlink_to(a)
    with pytest.raises(VolumeError, match="loop of symbolic links"):
        read_volume(a)
    dangling = tmp_path / "dangling.nii.gz"
    dangling.symlink_to(tmp_path / "gone.nii.gz")
    with pytest.raises(FileNotFoundError, match="symbolic link to .*gone.nii.gz"):
        read_volume(dangling)


def test_outputs_are_synced_before_and_after_their_rename(tmp_path, monkeypatch):
    """write_nifti and atomic_write_text: data fsynced under the temporary name, then renamed,
    then the folder fsynced; only then does the caller (e.g. the manifest) go on."""
    import os

    events = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        return real_fsync(fd)

    def replace(a, b):
        events.append(("replace", str(b)))
        return real_replace(a, b)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    for direct in (False, True):
        events.clear()
        out = write_nifti(tmp_path / f"y{direct}.nii.gz", _vol(), np.eye(4), direct=direct)
        assert [e[0] for e in events] == ["fsync", "replace", "fsync"]
        assert ".partial-" in events[0][1] and events[1][1] == str(out) and events[2][1] == str(tmp_path)
    events.clear()
    atomic_write_text(tmp_path / "s.json", "{}")
    assert [e[0] for e in events] == ["fsync", "replace", "fsync"] and events[2][1] == str(tmp_path)
