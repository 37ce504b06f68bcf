"""Shared fixtures: the shipped phantom, the real data folder, a tiny trained checkpoint."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
PHANTOM = ROOT / "data_samples" / "phantom"
DATA_DIR = Path(os.environ.get("MEDGAN_DATA_DIR", ROOT.parent / "shared" / "data"))

requires_data = pytest.mark.skipif(
    not (DATA_DIR / "abdomen").is_dir(),
    reason=f"real data not found at {DATA_DIR} (set MEDGAN_DATA_DIR to the shared data folder)",
)

TINY = [
    "network.ngf=4", "network.n_res_blocks=1", "network.ndf=4", "network.d_layers=2",
    "network.seg_features=[4,4,4,8,8,4]", "train.patch_size=[32,32,16]", "train.png_every=1000",
    "train.checkpoint_every=1000", "train.log_every=1000", "train.pool_size=4",
    "inference.roi_size=[32,32,16]", "inference.sw_batch_size=4", "optim.seg_pretrain_iters=0",
    # the whole method: segmenters also learn from translated volumes (the demo config leaves that out)
    "loss.lambda_seg_fake=1",
]


def tiny_config(tmp: Path, *overrides: str):
    from medgan.config import load_config
    from medgan.pipelines.cyclegan.config import CycleGANConfig

    os.chdir(ROOT)  # configs use paths relative to the repository root
    return load_config(
        CycleGANConfig, ROOT / "configs/phantom.yaml",
        [*TINY, f"train.output_dir={tmp}", "optim.n_iters=2", "loss.shape_warmup_iters=0", *overrides],
    )


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """A CycleGAN checkpoint trained for 2 iterations on the phantom with tiny networks."""
    from medgan.pipelines.cyclegan.trainer import train

    tmp = tmp_path_factory.mktemp("tiny_run")
    return train(tiny_config(tmp), progress=False)


def write_nifti_file(path: Path, array: np.ndarray, affine: np.ndarray) -> Path:
    import nibabel as nib

    nib.save(nib.Nifti1Image(array, affine), str(path))
    return path


def oblique_affine(spacing=(2.0, 2.5, 3.0), angle_deg: float = 20.0) -> np.ndarray:
    """A rotated (oblique) voxel-to-world affine."""
    t = np.deg2rad(angle_deg)
    rot = np.array([[np.cos(t), -np.sin(t), 0], [np.sin(t), np.cos(t), 0], [0, 0, 1]])
    rot = rot @ np.array([[1, 0, 0], [0, np.cos(t / 2), -np.sin(t / 2)], [0, np.sin(t / 2), np.cos(t / 2)]])
    aff = np.eye(4)
    aff[:3, :3] = rot @ np.diag(spacing)
    aff[:3, 3] = [-30.0, 12.0, 5.0]
    return aff


def axcodes_affine(codes: str, spacing=(2.0, 2.0, 2.0)) -> np.ndarray:
    """An axis-aligned affine with nibabel orientation ``codes`` such as ``"LPS"`` or ``"PIR"``."""
    axis = {"R": (0, 1), "L": (0, -1), "A": (1, 1), "P": (1, -1), "S": (2, 1), "I": (2, -1)}
    aff = np.zeros((4, 4))
    aff[3, 3] = 1
    for col, c in enumerate(codes):
        row, sign = axis[c]
        aff[row, col] = sign * spacing[col]
    aff[:3, 3] = [10.0, -20.0, 30.0]
    return aff


def write_dicom_series(folder: Path, array: np.ndarray, spacing=(1.0, 1.0, 2.0), origin=(0.0, 0.0, 0.0),
                       series_uid: str = "1.2.826.0.1.3680043.2.1125.1.1", description: str = "T1",
                       slice_positions: list[float] | None = None, tilt_mm_per_slice: float = 0.0,
                       first_index: int = 0) -> list[Path]:
    """Write ``array (I, J, K)`` int16 as an axial DICOM series (one file per k), LPS identity
    direction; ``slice_positions`` (mm along z) override the regular ones; ``tilt_mm_per_slice``
    moves slice k by k times that along y (a gantry tilt: positions not along the normal)."""
    import SimpleITK as sitk

    folder.mkdir(parents=True, exist_ok=True)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    files = []
    for k in range(array.shape[2]):
        sl = sitk.GetImageFromArray(array[:, :, k].T.astype(np.int16)[None])  # (1, J, I)
        z = origin[2] + k * spacing[2] if slice_positions is None else slice_positions[k]
        tags = {
            "0008|0060": "MR", "0008|0016": "1.2.840.10008.5.1.4.1.1.4",
            "0020|000d": "1.2.826.0.1.3680043.2.1125.1", "0020|000e": series_uid, "0008|103e": description,
            "0020|0013": str(first_index + k + 1), "0020|0037": "1\\0\\0\\0\\1\\0",
            "0020|0032": f"{origin[0]}\\{origin[1] + k * tilt_mm_per_slice}\\{z}", "0028|0030": f"{spacing[1]}\\{spacing[0]}",
            "0018|0050": str(spacing[2]), "0008|0018": f"{series_uid}.{first_index + k + 1}",
            "0010|0020": "MEDGAN-TEST-01", "0010|0010": "Test^Patient", "0020|0052": "1.2.826.0.1.3680043.2.1125.9",
            "0018|5100": "HFS", "0008|0050": "ACC42",
        }
        for key, value in tags.items():
            sl.SetMetaData(key, value)
        f = folder / f"s{series_uid.replace('.', '_')}_{first_index + k:04d}.dcm"
        writer.SetFileName(str(f))
        writer.Execute(sl)
        files.append(f)
    return files


def assert_resumed_losses_match(full_run: Path, resumed_run: Path, n_iters: int, resumed_from: int) -> None:
    """The resumed run's losses.csv has every iteration once and, after the resume point, the
    same losses as the uninterrupted run."""
    from medgan.utils import read_losses

    full, part = read_losses(full_run), read_losses(resumed_run)
    assert [r["iteration"] for r in part] == list(range(1, n_iters + 1))
    for ra, rb in zip(full[resumed_from:], part[resumed_from:]):
        for k in ra:
            assert rb[k] == pytest.approx(ra[k], rel=1e-4, abs=1e-6), (k, ra[k], rb[k])
