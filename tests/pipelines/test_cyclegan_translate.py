"""Translation: outputs on the input's exact grid, in HU; bad files reported, batch goes on."""

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from medgan.io import read_volume
from medgan.pipelines.cyclegan.evaluate import evaluate
from medgan.pipelines.cyclegan.translate import AIR_HU, CycleGANTask, Translator, translate
from tests.conftest import PHANTOM, ROOT, axcodes_affine, oblique_affine, write_nifti_file


def _mr_like(shape=(30, 26, 18)) -> np.ndarray:
    rng = np.random.default_rng(0)
    return (rng.gamma(2, 100, size=shape)).astype(np.float32)


@pytest.mark.parametrize("affine", [axcodes_affine("RAS", (3, 3, 3)), axcodes_affine("LPS", (2, 2.5, 4)),
                                    axcodes_affine("PIR", (1.5, 1.5, 1.5)), oblique_affine((3, 3, 3))],
                         ids=["RAS", "LPS", "PIR", "oblique"])
def test_output_has_the_input_grid(tmp_path, tiny_checkpoint, affine):
    src = write_nifti_file(tmp_path / "in.nii.gz", _mr_like(), affine)
    rep = translate(tiny_checkpoint, [src], tmp_path / "out", "mr2ct", segment=True)
    assert rep.ok, rep.failed
    for f in ("in_mr2ct.nii.gz", "in_mr2ct_seg.nii.gz"):
        out = nib.load(str(tmp_path / "out" / f))
        assert out.shape == (30, 26, 18)
        np.testing.assert_allclose(out.affine, affine, atol=1e-5)
    side = json.loads((tmp_path / "out/in_mr2ct.json").read_text())
    assert side["units"] == "HU" and side["direction"] == "MR->CT"


@pytest.mark.parametrize("affine", [axcodes_affine("LPS", (2, 2.5, 4)), axcodes_affine("PIR", (1.5, 3, 2.5)),
                                    oblique_affine((3, 2.5, 3.5))], ids=["LPS", "PIR", "oblique"])
def test_identity_generator_returns_each_value_at_its_world_position(tmp_path, tiny_checkpoint, affine, monkeypatch):
    """With the generator replaced by the identity and the target scaling by the source's, the
    whole path (reorientation, resampling to the training grid, windows, back to the input grid)
    must give back the input. The input is a linear function of world position, which trilinear
    interpolation reproduces exactly, so any flipped axis, shifted origin or lost affine fails."""
    shape = (30, 26, 18)
    ijk = np.indices(shape).reshape(3, -1)
    world = (affine[:3, :3] @ ijk + affine[:3, 3:4])
    values = (200 + 3.0 * world[0] - 2.0 * world[1] + 1.5 * world[2]).reshape(shape).astype(np.float32)
    tr = Translator(tiny_checkpoint, "cpu")
    vol = read_volume(write_nifti_file(tmp_path / "ramp.nii.gz", values, affine))
    monkeypatch.setattr(tr, "translate_tensor", lambda x, direction: x)
    monkeypatch.setattr(CycleGANTask, "air_outside_body", property(lambda self: False))  # a ramp has no body
    tr.scaling["CT"] = tr.preprocessor("MR").scaling_for(vol)  # target units = this input's units
    out = tr.translate_volume(vol, "mr2ct")
    assert out.image.shape == shape and np.allclose(out.affine, affine)
    lo, hi = tr.scaling["CT"].lower, tr.scaling["CT"].upper
    # voxels away from the border of the canonical grid (there it pads) and inside the
    # percentile window (clipped to [-1, 1] there)
    margin = np.zeros(shape, bool)
    margin[3:-3, 3:-3, 3:-3] = True
    keep = margin & (values > lo + 1) & (values < hi - 1)
    assert keep.sum() > 1000
    np.testing.assert_allclose(out.image[keep], values[keep], atol=0.05)
    # a flipped first axis would be far off: the check has teeth
    assert np.abs(out.image[::-1][keep] - values[keep]).max() > 10


def test_synthetic_ct_is_air_outside_the_mr_body(tiny_checkpoint):
    tr = Translator(tiny_checkpoint, "cpu")
    assert not tr.config.inference.air_outside_body  # opt-in
    on = tr.config.model_copy(update={"inference": tr.config.inference.model_copy(update={"air_outside_body": True})})
    tr.config = on
    vol = read_volume(PHANTOM / "mr/phantom-mr-01.nii.gz")
    body = read_volume(PHANTOM / "mr/phantom-mr-01_labels.nii.gz").array > 0  # organs: inside the body
    sct = tr.translate_volume(vol, "mr2ct").image
    assert np.all(sct[:2, :2, :] == AIR_HU) and np.all(sct[-2:, -2:, :] == AIR_HU)  # the corners are outside
    assert np.mean(sct[body] == AIR_HU) < 0.01
    off = tr.config.model_copy(update={"inference": tr.config.inference.model_copy(update={"air_outside_body": False})})
    tr.config = off
    assert not np.all(tr.translate_volume(vol, "mr2ct").image[:2, :2, :] == AIR_HU)
    assert not CycleGANTask(tr, "ct2mr").air_outside_body  # a synthetic MR is left as it is


def test_bad_files_are_reported_and_the_batch_goes_on(tmp_path, tiny_checkpoint):
    good = write_nifti_file(tmp_path / "good.nii.gz", _mr_like(), np.eye(4) * 3 + np.diag([0, 0, 0, -2]))
    nan = write_nifti_file(tmp_path / "nan.nii.gz", np.full((8, 8, 8), np.nan, np.float32), np.eye(4))
    flat = write_nifti_file(tmp_path / "flat.nii.gz", np.zeros((8, 8, 8), np.float32), np.eye(4))
    seen = []
    rep = translate(tiny_checkpoint, [nan, tmp_path / "missing.nii.gz", good, flat], tmp_path / "out", "mr2ct",
                    on_result=lambda job, w, e: seen.append(job.source.name))
    assert sorted(seen) == ["flat.nii.gz", "good.nii.gz", "missing.nii.gz", "nan.nii.gz"]  # every scan reported
    assert list(rep.written) == [str(good)]
    assert set(rep.failed) == {str(nan), str(tmp_path / "missing.nii.gz"), str(flat)}
    assert "NaN" in rep.failed[str(nan)] and "no such file" in rep.failed[str(tmp_path / "missing.nii.gz")]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["good_mr2ct.json", "good_mr2ct.nii.gz", "manifest.jsonl"]


def test_translate_tensor_and_direction_names(tiny_checkpoint):
    tr = Translator(tiny_checkpoint, device="cpu")
    x = torch.rand(1, 1, 40, 35, 20) * 2 - 1
    y = tr.translate_tensor(x, "ct2mr")
    assert y.shape == (1, 1, 40, 35, 20)
    # each direction runs its own generator
    from medgan.inference import sliding_window

    inf = tr.config.inference
    for name, direction in (("G_CT2MR", "ct2mr"), ("G_MR2CT", "mr2ct")):
        direct = sliding_window(tr.nets[name], x, tr.config.roi_size, inf.overlap, inf.sw_batch_size, inf.blend)
        torch.testing.assert_close(tr.translate_tensor(x, direction), direct)
    assert (tr.translate_tensor(x, "mr2ct") - y).abs().max() > 1e-3
    with pytest.raises(ValueError, match="mr2ct or ct2mr|ct2mr or mr2ct"):
        tr.parse_direction("ct2pet")


def _reoriented(path: Path, out: Path, flips=(0, 2), perm=(2, 0, 1)) -> Path:
    """The same image on another voxel grid: axes flipped and permuted, the affine changed to
    match, so every voxel keeps its world position."""
    import nibabel as nib

    v = read_volume(path)
    arr, aff = v.array, v.affine.copy()
    for a in flips:
        arr = np.flip(arr, a)
        f = np.eye(4)
        f[a, a], f[a, 3] = -1, v.array.shape[a] - 1
        aff = aff @ f
    arr = np.transpose(arr, perm)
    p = np.zeros((4, 4))
    p[3, 3] = 1
    for new, old in enumerate(perm):
        p[old, new] = 1
    nib.save(nib.Nifti1Image(np.ascontiguousarray(arr), aff @ p), str(out))
    return out


def test_evaluate_matches_labels_and_references_by_world_position(tmp_path, tiny_checkpoint):
    """A label map or paired reference on another voxel grid (flipped and permuted axes, same
    world positions) gives exactly the numbers of the original; a misaligned reference is refused."""
    from medgan.io import VolumeError
    from medgan.metrics import dice_per_class

    rep = translate(tiny_checkpoint, [PHANTOM / "mr/phantom-mr-01.nii.gz"], tmp_path, "mr2ct")
    assert rep.ok
    sct = tmp_path / "phantom-mr-01_mr2ct.nii.gz"
    labels, paired = PHANTOM / "mr/phantom-mr-01_labels.nii.gz", PHANTOM / "paired/phantom-mr-01_ct.nii.gz"
    kw = dict(reference=PHANTOM / "ct/phantom-ct-01.nii.gz", reference_labels=PHANTOM / "ct/phantom-ct-01_labels.nii.gz")
    plain = evaluate(tiny_checkpoint, sct, "mr2ct", source_labels=labels, paired_reference=paired,
                     output_dir=tmp_path / "ev", **kw)
    moved = evaluate(tiny_checkpoint, sct, "mr2ct", source_labels=_reoriented(labels, tmp_path / "lab_pir.nii.gz"),
                     paired_reference=_reoriented(paired, tmp_path / "ct_pir.nii.gz"), **kw)
    np.testing.assert_equal(moved["dice"], plain["dice"])
    assert moved["paired"] == pytest.approx(plain["paired"], rel=1e-9)  # same voxels, other summation order
    assert "source_labels" in moved["resampled"] and "resampled" not in plain
    # the Dice is S_CT's on the sCT against the MR's labels, computed independently here
    tr = Translator(tiny_checkpoint)
    pred = tr.segment_volume(read_volume(sct), "CT")
    lab = tr.preprocessor("MR").label_mapper(read_volume(labels).array.astype(int))
    np.testing.assert_equal(dice_per_class(pred, lab, tr.classes), plain["dice"])
    assert plain["intensity"]["liver"]["reference_mean"] == pytest.approx(100, abs=15)  # phantom liver HU
    assert (tmp_path / "ev/evaluation.csv").read_text().startswith("metric,class,value")
    shifted = read_volume(paired)
    aff = shifted.affine.copy()
    aff[:3, 3] += 0.5 * aff[:3, 0]  # half a voxel off
    import nibabel as nib

    nib.save(nib.Nifti1Image(shifted.array, aff), str(tmp_path / "half.nii.gz"))
    with pytest.raises(VolumeError, match="does not share its voxel centres"):
        evaluate(tiny_checkpoint, sct, "mr2ct", paired_reference=tmp_path / "half.nii.gz")


def test_checkpoint_is_self_contained(tmp_path, tiny_checkpoint, monkeypatch):
    """A checkpoint copied elsewhere translates and evaluates from any folder: its config holds
    the label tables inline and absolute input paths, not the class-map file it was trained with."""
    import shutil

    import yaml

    ckpt = Path(shutil.copytree(tiny_checkpoint, tmp_path / "moved" / "iter_000002"))
    cfg = yaml.safe_load((ckpt / "config.yaml").read_text())
    labels = cfg["domain_b"]["labels"]
    assert labels["classmap"] is None and labels["ids"]["liver"] and labels["known_ids"]
    assert Path(cfg["domain_a"]["data"]["folder"]).is_absolute()
    monkeypatch.chdir(tmp_path)
    rep = translate(ckpt, [PHANTOM / "mr/phantom-mr-01.nii.gz"], tmp_path / "out", "mr2ct", segment=True)
    assert rep.ok, rep.failed
    ev = evaluate(ckpt, tmp_path / "out/phantom-mr-01_mr2ct.nii.gz", "mr2ct",
                  source_labels=PHANTOM / "mr/phantom-mr-01_labels.nii.gz")
    assert set(ev["dice"]) == set(cfg["classes"])


def test_damaged_newest_checkpoint_names_the_intact_one(tmp_path, tiny_checkpoint):
    import shutil

    from medgan.checkpoint import CheckpointError

    run = tmp_path / "run" / "checkpoints"
    shutil.copytree(tiny_checkpoint, run / "iter_000001")
    shutil.copytree(tiny_checkpoint, run / "iter_000002")
    w = run / "iter_000002" / "weights.safetensors"
    w.write_bytes(w.read_bytes()[: w.stat().st_size // 2])
    with pytest.raises(CheckpointError, match=r"iter_000002: damaged checkpoint .*iter_000001: pass that one"):
        Translator(tmp_path / "run")
    assert Translator(run / "iter_000001").classes


def test_evaluate_set_goes_past_a_broken_case_and_writes_every_table(tmp_path, tiny_checkpoint):
    import csv

    from scipy.stats import wasserstein_distance

    from medgan.metrics import paired_metrics
    from medgan.pipelines.cyclegan.evaluate import evaluate_set, read_cases

    mr = PHANTOM / "mr/phantom-mr-01.nii.gz"
    assert translate(tiny_checkpoint, [mr], tmp_path / "out", "mr2ct").ok
    sct = tmp_path / "out/phantom-mr-01_mr2ct.nii.gz"
    paired, labels = PHANTOM / "paired/phantom-mr-01_ct.nii.gz", PHANTOM / "mr/phantom-mr-01_labels.nii.gz"
    with open(tmp_path / "cases.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["case", "sct", "reference", "source", "source_labels"])
        w.writerow(["good", sct, paired, mr, labels])
        w.writerow(["broken", tmp_path / "missing_sct.nii.gz", paired, mr, labels])
        w.writerow(["unpaired", "out/phantom-mr-01_mr2ct.nii.gz", "", "", labels])  # relative to the CSV
    cases = read_cases(tmp_path / "cases.csv")
    rep = evaluate_set(cases, tmp_path / "ev", tiny_checkpoint, "mr2ct", real_ct=PHANTOM / "ct", device="cpu")
    assert [r["case"] for r in rep["results"]] == ["good", "unpaired"]
    assert rep["failed"][0]["case"] == "broken" and "missing_sct.nii.gz" in rep["failed"][0]["error"]
    good = rep["results"][0]
    want = paired_metrics(read_volume(sct).array, read_volume(paired).array)
    assert good["mae_hu"] == pytest.approx(want["mae_hu"]) and good["ms_ssim"] == pytest.approx(want["ms_ssim"])
    assert set(good["hd95_mm"]) == set(Translator(tiny_checkpoint).classes) and "seg_dice" in good
    agg = rep["aggregates"]
    assert agg["mae_hu"]["count"] == 1 and agg["dice_mean"]["count"] == 2
    assert agg["dice_mean"]["min"] <= agg["dice_mean"]["median"] <= agg["dice_mean"]["max"]
    # organ HU realism against the labelled phantom CTs, recomputed here for the liver
    tr = Translator(tiny_checkpoint)
    lab = tr.preprocessor("MR").label_mapper(read_volume(labels).array.astype(int))
    liver = tr.classes.index("liver") + 1
    s = read_volume(sct).array[lab == liver]
    real = np.concatenate([read_volume(PHANTOM / f"ct/{n}.nii.gz").array[
        tr.preprocessor("CT").label_mapper(read_volume(PHANTOM / f"ct/{n}_labels.nii.gz").array.astype(int)) == liver]
        for n in ("phantom-ct-01",)])  # the labelled one
    o = rep["organ_hu"]["liver"]
    assert o["wasserstein1_hu"] == pytest.approx(wasserstein_distance(np.concatenate([s, s]), real), rel=1e-4)
    assert o["abs_median_diff"] == pytest.approx(abs(np.median(s) - np.median(real)), abs=1e-3)
    saved = json.loads((tmp_path / "ev/metrics.json").read_text())
    assert set(saved) >= {"results", "aggregates", "failed", "organ_hu"}
    md = (tmp_path / "ev/metrics.md").read_text()
    assert "| good |" in md and "figures/good_slices.png" in md and "broken" in md
    assert (tmp_path / "ev/figures/good_slices.png").is_file() and (tmp_path / "ev/figures/good_organ_hu.png").is_file()
    assert len((tmp_path / "ev/metrics.csv").read_text().splitlines()) == 3
    # a folder of translate outputs reads as a case list too (source and labels from the sidecar)
    folder = read_cases(tmp_path / "out", reference_dir=PHANTOM / "paired")
    assert [c.source for c in folder] == [mr] and folder[0].source_labels == labels


def test_tta_undoes_each_flip_and_reports_the_spread(tmp_path, tiny_checkpoint, monkeypatch):
    """An identity generator is flip-equivariant: every TTA pass must give back the same volume
    (std 0), which fails if a flip is not undone. A generator that adds a ramp along D is not:
    flipped passes differ and the std is the ramp's spread."""
    tr = Translator(tiny_checkpoint, "cpu")
    vol = read_volume(write_nifti_file(tmp_path / "in.nii.gz", _mr_like(), axcodes_affine("LPS", (2, 2.5, 4))))
    task = CycleGANTask(tr, "mr2ct", segment=False, tta=4)
    prepared = task.prepare(vol)
    monkeypatch.setattr(tr, "translate_tensor", lambda x, direction: x)
    _, _, std = task.run(prepared)
    assert std.shape == prepared.image.shape and float(std.abs().max()) < 1e-6

    def ramp(x, direction):
        return x + torch.linspace(0, 0.2, x.shape[2]).view(1, 1, -1, 1, 1)

    monkeypatch.setattr(tr, "translate_tensor", ramp)
    y, _, std = task.run(prepared)
    assert float(std.max()) > 0.05  # the D flip reverses the ramp
    assert CycleGANTask(tr, "mr2ct", tta=0).run(prepared)[2] is None
    with pytest.raises(ValueError, match="--tta 9"):
        CycleGANTask(tr, "mr2ct", tta=9)


def test_tta_writes_a_std_map_in_hu_and_per_class_means(tmp_path, tiny_checkpoint):
    affine = oblique_affine((3, 3, 3))
    src = write_nifti_file(tmp_path / "in.nii.gz", _mr_like(), affine)
    rep = translate(tiny_checkpoint, [src], tmp_path / "out", "mr2ct", segment=True, tta=4)
    assert rep.ok, rep.failed
    std = nib.load(str(tmp_path / "out/in_mr2ct_std.nii.gz"))
    assert std.shape == (30, 26, 18) and np.allclose(std.affine, affine, atol=1e-5)
    assert float(np.asarray(std.dataobj).min()) >= 0 and float(np.asarray(std.dataobj).max()) > 0
    side = json.loads((tmp_path / "out/in_mr2ct.json").read_text())
    assert side["tta"] == 4 and side["tta_std"]["passes"] == 4 and side["tta_std"]["mean_std_per_class"]


def test_largest_component_keeps_one_component_per_class(tmp_path, tiny_checkpoint):
    from scipy import ndimage

    src = write_nifti_file(tmp_path / "in.nii.gz", _mr_like(), axcodes_affine("LPS", (3, 3, 3)))
    n_parts = {}
    for name, on in (("raw", False), ("lcc", True)):
        rep = translate(tiny_checkpoint, [src], tmp_path / name, "mr2ct", segment=True, largest_component=on)
        assert rep.ok, rep.failed
        seg = np.asarray(nib.load(str(tmp_path / name / "in_mr2ct_seg.nii.gz")).dataobj)
        n_parts[name] = [ndimage.label(seg == c, np.ones((3, 3, 3)))[1] for c in range(1, 10)]
        side = json.loads((tmp_path / name / "in_mr2ct.json").read_text())
        assert side.get("largest_component", False) is on  # recorded: a rerun with the other setting redoes the scan
    assert max(n_parts["raw"]) > 1  # the untrained segmenter's speckle: something to remove
    assert all(n <= 1 for n in n_parts["lcc"])
    with pytest.raises(ValueError, match="needs --segment"):
        Translator(tiny_checkpoint, "cpu").task("mr2ct", segment=False, largest_component=True)


def test_demo_evaluates_the_held_out_phantom_subject(tiny_checkpoint, tmp_path):
    from medgan.pipelines.cyclegan.demo import HELDOUT, evaluate_demo

    reports = evaluate_demo(tiny_checkpoint, tmp_path)
    assert reports["mr2ct"]["translated"].endswith("phantom-mr-03_mr2ct.nii.gz")
    assert set(reports["mr2ct"]["dice"]) == set(reports["ct2mr"]["dice"]) and "liver" in reports["mr2ct"]["intensity"]
    assert [r["case"] for r in reports["testset"]["results"]] == ["phantom-mr-03"]
    assert (tmp_path / "demo.png").stat().st_size > 0 and (tmp_path / "evaluation/testset/metrics.md").exists()
    # the subject is read by no training config: neither its MR nor its CT is in the demo's training folders
    cfg_text = (ROOT / "configs/phantom.yaml").read_text(encoding="utf-8")
    assert HELDOUT.name not in cfg_text and not any(p.name.startswith("phantom-mr-03") for p in (ROOT / "data_samples/phantom").glob("[cm][tr]/*"))
