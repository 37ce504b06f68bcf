"""QA sheet (issue 16 item 4): training statistics in the checkpoint, out-of-distribution,
intensity and uncertainty warnings, the per-scan PNG and the batch's HTML page."""

from __future__ import annotations

import json

import numpy as np
import pytest

from medgan.qa import (
    RELATIVE_MARGIN,
    UNCERTAIN_STD_HU,
    out_of_distribution,
    scan_qa,
    scan_statistics,
    training_statistics,
)
from tests.conftest import PHANTOM, axcodes_affine, write_nifti_file


def _ball(shape=(20, 20, 20), r=7.0) -> np.ndarray:
    z, y, x = np.indices(shape)
    c = (np.asarray(shape) - 1) / 2
    return ((z - c[0]) ** 2 + (y - c[1]) ** 2 + (x - c[2]) ** 2) <= r * r


def _stats(spacing=2.0, shape=(20, 20, 20), shift=0.0, seed=0):
    rng = np.random.default_rng(seed)
    body = _ball(shape)
    x = np.where(body, rng.normal(0.2 + shift, 0.1, shape), -1.0)
    hu = np.where(body, rng.normal(40, 20, shape), -1000.0)
    labels = (_ball(shape, 3.0)).astype(np.int64)
    return scan_statistics(x, body, (2.0, 2.0, 2.0), np.diag([spacing, spacing, spacing, 1.0]), shape,
                           hu=hu, window=(-1024.0, 2000.0), labels=labels, classes=["liver"])


def test_scan_statistics_measure_grid_body_and_hu():
    s = _stats()
    assert s["spacing_mm"] == [2.0, 2.0, 2.0] and s["fov_mm"] == [40.0, 40.0, 40.0]
    assert s["body_extent_mm"] == [28.0, 28.0, 28.0]  # 14 voxels of 2 mm across the ball
    assert s["body_volume_ml"] == pytest.approx(_ball().sum() * 8 / 1000, abs=0.1)
    assert s["input_percentiles"][1] == pytest.approx(0.2, abs=0.02)
    assert s["hu_percentiles"]["liver"][1] == pytest.approx(40, abs=5)
    assert sum(s["hu_histogram"]["body"]) == _ball().sum() and sum(s["hu_histogram"]["liver"]) > 0


def test_out_of_distribution_flags_what_lies_outside_the_training_range():
    train = training_statistics([_stats(seed=1), _stats(seed=2)])
    assert train["n_volumes"] == 2 and train["hu_range_p5_p95"]["liver"][0] < 40 < train["hu_range_p5_p95"]["liver"][1]
    assert out_of_distribution(_stats(seed=3), train) == []  # another scan of the same kind
    coarse = out_of_distribution(_stats(spacing=2.0 * (1 + RELATIVE_MARGIN) * 1.1, seed=3), train)
    assert any("voxel size (R-L)" in w for w in coarse) and any("field of view" in w for w in coarse)
    bright = out_of_distribution(_stats(shift=0.5, seed=3), train)
    assert any("intensity percentile (p50)" in w for w in bright) and not any("voxel size" in w for w in bright)
    assert "no training statistics" in out_of_distribution(_stats(), None)[0]


def test_scan_qa_warns_on_shifted_organ_hu_and_high_uncertainty():
    shape = (20, 20, 20)
    body, seg = _ball(shape), _ball(shape, 3.0).astype(np.int64)
    train = {"source": training_statistics([_stats(seed=1)]), "target": training_statistics([_stats(seed=1)])}
    x = np.where(body, 0.2, -1.0)
    good = np.where(body, 40.0, -1000.0)
    stats = _stats(seed=4)
    ok = scan_qa("t", x, good, body, (2, 2, 2), stats, train, "HU", (-1024.0, 2000.0), seg=seg, classes=["liver"],
                 std=np.full(shape, 5.0))
    assert ok.warnings == [] and ok.summary["median_hu"]["liver"] == 40.0 and ok.png.startswith(b"\x89PNG")
    air = np.where(seg > 0, -400.0, good)  # the failure of issue 15: organs turned into air
    bad = scan_qa("t", x, air, body, (2, 2, 2), stats, train, "HU", (-1024.0, 2000.0), seg=seg, classes=["liver"],
                  std=np.full(shape, UNCERTAIN_STD_HU + 10))
    assert any("median output HU in liver -400" in w for w in bad.warnings)
    assert any(w.startswith("uncertainty") for w in bad.warnings)


def test_translate_with_qa_writes_sheets_and_one_page(tmp_path, tiny_checkpoint):
    """End to end on the phantom: the checkpoint stores the training statistics, each scan gets
    a PNG and a ``qa`` sidecar entry, a coarse scan is flagged out of distribution, and the page
    lists both scans with links to their sheets."""
    from medgan.checkpoint import read_meta
    from medgan.io import read_volume
    from medgan.pipelines.cyclegan.model import PIPELINE
    from medgan.pipelines.cyclegan.translate import translate

    meta = read_meta(tiny_checkpoint, PIPELINE)
    ts = meta["training_stats"]
    assert set(ts) == {"MR", "CT"} and "hu_histogram" in ts["CT"] and "ranges" in ts["MR"]
    mr = read_volume(PHANTOM / "mr/phantom-mr-01.nii.gz")
    same = write_nifti_file(tmp_path / "same.nii.gz", mr.array, mr.affine)
    coarse_aff = axcodes_affine("RAS", (6.0, 6.0, 6.0))
    coarse = write_nifti_file(tmp_path / "coarse.nii.gz", mr.array[::3, ::3, ::3].copy(), coarse_aff)
    rep = translate(tiny_checkpoint, [same, coarse], tmp_path / "out", "mr2ct", segment=True, qa=True)
    assert rep.ok, rep.failed
    for stem in ("same", "coarse"):
        png = tmp_path / f"out/{stem}_mr2ct_qa.png"
        assert png.read_bytes().startswith(b"\x89PNG")
        side = json.loads((tmp_path / f"out/{stem}_mr2ct.json").read_text())
        assert png.name in side["outputs"] and "median_hu" in side["qa"]
    coarse_w = json.loads((tmp_path / "out/coarse_mr2ct.json").read_text())["qa"]["warnings"]
    assert any("voxel size" in w for w in coarse_w)
    page = rep.qa_page.read_text()
    assert rep.qa_page.name == "qa.html" and 'src="same_mr2ct_qa.png"' in page and 'src="coarse_mr2ct_qa.png"' in page
    # a rerun resumes (nothing to do) and the page still covers both scans
    rep2 = translate(tiny_checkpoint, [same, coarse], tmp_path / "out", "mr2ct", segment=True, qa=True)
    assert len(rep2.skipped) == 2 and 'src="coarse_mr2ct_qa.png"' in rep2.qa_page.read_text()
