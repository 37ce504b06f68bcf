"""medgan.io: reading every format with its geometry, refusing bad input, atomic writes."""

from __future__ import annotations

import gzip

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from medgan.io import VolumeError, expand_inputs, read_label_map, read_volume, write_nifti
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
        (lambda p: _write(p / "trunc.nii.gz", gzip.compress(b"\x00" * 400)[:50]), "could not be read"),
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


@requires_data
def test_shared_dicom_series_matches_its_nifti():
    """The oblique MEMPRAGE series (one 2 mm gap among 1 mm gaps) reads on the grid of its NIfTI."""
    d = read_volume(DATA_DIR / "head/dicom/adi-t1-memprage")
    n = read_volume(DATA_DIR / "head/mr/adi-t1-memprage.nii.gz")
    assert d.array.shape == n.array.shape
    np.testing.assert_allclose(d.affine, n.affine, atol=1e-3)
    np.testing.assert_array_equal(d.array, n.array)


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

    import medgan.io as mio

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

    from medgan.io import _BlockWriter, sha256_of

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

    import medgan.io as mio

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
    from medgan.io import _BlockWriter

    with open(tmp_path / "f", "wb", buffering=0) as raw, _BlockWriter(raw.fileno(), direct=False) as sink:
        sink.write(b"ab")
        sink.seek(5)  # forward: zeros
        sink.write(b"c")
        with pytest.raises(OSError, match="forward-only"):
            sink.seek(1)
    assert (tmp_path / "f").read_bytes() == b"ab\0\0\0c"
