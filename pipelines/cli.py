"""The ``medgan`` command. Each command parses its arguments and calls one public function;
heavy imports happen inside the commands so ``medgan --help`` is instant."""

from __future__ import annotations

import logging
import math
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

from medgan.io import MAX_VOXELS

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Medical-image domain translation (CT <-> MR) on MONAI.")
console = Console(stderr=True, soft_wrap=True)  # soft_wrap: paths in messages stay whole
out = Console(soft_wrap=True, width=None if sys.stdout.isatty() else 140)  # pipes and logs get whole tables


@app.callback()
def _main(verbose: bool = typer.Option(False, "--verbose", "-v", help="Debug logging.")) -> None:
    from rich.logging import RichHandler

    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format="%(message)s",
                        handlers=[RichHandler(console=console, show_path=False)], force=True)
    for noisy in ("PIL", "matplotlib"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def _fail(err: Exception) -> None:
    console.print(f"[bold red]error:[/] {err}", markup=True, highlight=False)
    raise typer.Exit(2)


USER_ERRORS = (FileNotFoundError, ValueError, PermissionError)


def _show_result(job, written, error) -> None:  # noqa: ANN001 - medgan.batch on_result callback
    if error:
        console.print(f"[red]FAILED[/] {error}", highlight=False)
    else:
        out.print(f"ok  {job.source} -> {written[0]}", highlight=False)


def _finish_batch(report, verb: str) -> None:  # noqa: ANN001 - medgan.batch.BatchReport
    """Print a batch's totals; exit code 1 if any scan failed."""
    out.print(f"{len(report.written)} {verb}, {len(report.failed)} failed, {len(report.skipped)} already done")
    if report.failed:
        raise typer.Exit(1)


@app.command()
def train(
    config: Path = typer.Argument(..., help="YAML config (see configs/); its 'pipeline' key picks cyclegan, adda or cvae."),
    overrides: Optional[list[str]] = typer.Argument(None, help="key.subkey=value overrides, e.g. optim.n_iters=100"),
    resume: Optional[Path] = typer.Option(None, help="Checkpoint or run folder to continue exactly."),
) -> None:
    """Train the config's pipeline (shape-consistent CycleGAN by default). On several GPUs or
    nodes: `torchrun --nproc-per-node N -m medgan train CONFIG` (gloo on CPU)."""
    _train(config, overrides, resume)


def _train(config: Path, overrides: list[str] | None, resume: Path | None, pipeline: str | None = None) -> None:
    """Build the trainer of ``pipeline`` (default: the config's), fit, print the checkpoint."""
    try:
        from medgan.pipelines.registry import build_trainer

        trainer = build_trainer(config, overrides, resume=resume, progress=sys.stderr.isatty(), pipeline=pipeline)
        ckpt = trainer.fit()
    except USER_ERRORS as err:
        _fail(err)
    if trainer.dist.is_main:
        out.print(f"checkpoint: {ckpt}")
    trainer.close()


@app.command()
def translate(
    inputs: list[str] = typer.Argument(..., help="Files, folders, globs or DICOM series folders."),
    checkpoint: Path = typer.Option(..., "--checkpoint", "-c", help="Checkpoint or run folder."),
    direction: str = typer.Option(..., "--direction", "-d", help="e.g. mr2ct or ct2mr."),
    output: Path = typer.Option(..., "--output", "-o", help="Output folder."),
    segment: bool = typer.Option(False, help="Also write the target-domain segmenter's labels."),
    device: str = typer.Option("auto", help="auto, cpu or cuda:N (under torchrun: one GPU per rank)."),
    prefetch: int = typer.Option(2, help="Scans read and preprocessed ahead in the background."),
    workers: Optional[int] = typer.Option(None, help="Scans on the model at once (default: one per CPU core, one on CUDA)."),
    max_voxels: int = typer.Option(MAX_VOXELS, help="Refuse scans whose header gives more voxels (memory bound)."),
    series_uid: Optional[str] = typer.Option(None, help="DICOM folders: only this SeriesInstanceUID."),
    series_description: Optional[str] = typer.Option(None, help="DICOM folders: only series whose description matches this glob."),
    output_format: str = typer.Option("nifti", help="nifti, or dicom: the sCT as a DICOM CT series in the MR's study."),
    patient_id: Optional[str] = typer.Option(None, help="DICOM output of a non-DICOM input: PatientID."),
    study_uid: Optional[str] = typer.Option(None, help="DICOM output of a non-DICOM input: StudyInstanceUID."),
    frame_of_reference_uid: Optional[str] = typer.Option(None, help="DICOM output of a non-DICOM input: the MR's FrameOfReferenceUID."),
    patient_name: str = typer.Option("", help="DICOM output of a non-DICOM input: PatientName."),
    patient_birth_date: str = typer.Option("", help="DICOM output of a non-DICOM input: PatientBirthDate (YYYYMMDD)."),
    patient_sex: str = typer.Option("", help="DICOM output of a non-DICOM input: PatientSex (M, F, O)."),
    study_date: str = typer.Option("", help="DICOM output of a non-DICOM input: StudyDate (YYYYMMDD)."),
    accession_number: str = typer.Option("", help="DICOM output of a non-DICOM input: AccessionNumber."),
    tta: int = typer.Option(0, help="Test-time augmentation over N flips (2..8): mean output and a _std map (HU)."),
    qa: bool = typer.Option(False, help="A QA sheet per scan (_qa.png, warnings in the sidecar) and qa.html for the batch."),
    largest_component: bool = typer.Option(False, help="With --segment: keep each class's largest connected component "
                                           "only (for classes that are one organ each)."),
) -> None:
    """Translate whole volumes; outputs sit on each input's grid. A manifest in the output folder
    makes a rerun skip finished scans. Under `torchrun --nproc-per-node N -m medgan translate ...`
    each rank takes its share. Exit code 1 if any scan failed. With `--output-format dicom` each
    sCT is a DICOM CT series: from a DICOM MR it joins the MR's study and frame of reference,
    one slice on each MR slice; from NIfTI/NRRD/MHA pass --patient-id and --study-uid. With
    `--qa` each scan gets a QA sheet (slices with outlines, HU histograms against the training
    CTs, out-of-distribution and uncertainty warnings) and the folder a qa.html page."""
    try:
        from medgan.io.dicom_write import StudyIdentifiers
        from medgan.pipelines.cyclegan.translate import translate as run

        study = None
        if patient_id or study_uid:
            study = StudyIdentifiers(
                patient_id or "", study_uid or "", patient_name, patient_birth_date, patient_sex, study_date,
                accession_number, frame_of_reference_uid)
        report = run(checkpoint, inputs, output, direction, segment=segment, device=device, on_result=_show_result,
                     prefetch=prefetch, workers=workers, max_voxels=max_voxels, series_uid=series_uid,
                     series_description=series_description, output_format=output_format, study=study, tta=tta, qa=qa,
                     largest_component=largest_component)
    except USER_ERRORS as err:
        _fail(err)
    if report.qa_page is not None:
        out.print(f"QA page: {report.qa_page}")
    _finish_batch(report, "translated")


def _print_report(report: dict) -> None:
    """One row per class: Dice, translated and reference means, absolute differences."""
    from rich.table import Table

    def f(v: float | None, fmt: str = ".1f") -> str:
        return "" if v is None else ("n/a" if isinstance(v, float) and math.isnan(v) else format(v, fmt))

    dice, inten = report.get("dice", {}), report.get("intensity", {})
    table = Table(title=f"{report['direction']}: {report['translated']}")
    table.add_column("class", no_wrap=True)
    for col in ("Dice", "mean", "ref mean", "|d mean|", "|d median|"):
        table.add_column(col, justify="right", no_wrap=True)
    for c in dict.fromkeys([*dice, *inten]):
        i = inten.get(c, {})
        table.add_row(c, f(dice.get(c), ".3f"), f(i.get("translated_mean")), f(i.get("reference_mean")),
                      f(i.get("abs_diff_mean")), f(i.get("abs_diff_median")))
    if "dice_mean" in report:
        table.add_row("mean", f(report["dice_mean"], ".3f"), "", "", "", "")
    out.print(table)
    if "paired" in report:
        p = report["paired"]
        out.print(f"paired (SynthRAD2025): MAE {p['mae_hu']:.2f} HU, PSNR {p['psnr_db']:.2f} dB, MS-SSIM {p['ms_ssim']:.4f} "
                  f"in {p['mask_voxels']} mask voxels")


@app.command()
def evaluate(
    translated: Optional[Path] = typer.Argument(None, help="A translated volume (output of medgan translate); or use --cases."),
    checkpoint: Optional[Path] = typer.Option(None, "--checkpoint", "-c", help="The model that translated (segmenters, label tables)."),
    direction: Optional[str] = typer.Option(None, "--direction", "-d"),
    cases: Optional[Path] = typer.Option(None, help="A test set: CSV (case, sct, reference, mask, source, source_labels), "
                                         "MSD dataset.json, or a folder of medgan translate outputs."),
    reference_dir: Optional[Path] = typer.Option(None, help="With a folder of outputs: registered real volumes named as the sources."),
    mask_dir: Optional[Path] = typer.Option(None, help="With a folder of outputs: masks named as the sources."),
    real_ct: Optional[Path] = typer.Option(None, help="Labelled real target volumes (folder or dataset.json): per-organ HU realism."),
    source_labels: Optional[Path] = typer.Option(None, help="Labels of the source volume -> Dice and per-organ stats."),
    reference: Optional[Path] = typer.Option(None, help="A real labelled volume of the target domain."),
    reference_labels: Optional[Path] = typer.Option(None, help="Its labels."),
    paired_reference: Optional[Path] = typer.Option(None, help="Registered real target volume on the same voxels."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Folder for the reports."),
    device: str = typer.Option("auto"),
) -> None:
    """One volume: shape preservation (Dice), per-organ HU differences, SynthRAD2025 MAE/PSNR/MS-SSIM.
    A test set (--cases): the same per case plus HD95, SynthRAD2025's metrics.json, a CSV, a
    Markdown table and figures; a broken case is listed and the rest go on."""
    try:
        if cases is not None:
            from medgan.pipelines.cyclegan.evaluate import evaluate_set, read_cases

            if output is None:
                raise ValueError("--cases needs --output for metrics.json, metrics.csv, metrics.md and figures/")
            rep = evaluate_set(read_cases(cases, reference_dir, mask_dir), output, checkpoint, direction, real_ct, device)
            out.print((output / "metrics.md").read_text(encoding="utf-8"), highlight=False, markup=False)
            if rep["failed"]:
                raise typer.Exit(1)
            return
        if translated is None or checkpoint is None or direction is None:
            raise ValueError("give a TRANSLATED volume with -c and -d, or a test set with --cases")
        from medgan.pipelines.cyclegan.evaluate import evaluate as run

        report = run(checkpoint, translated, direction, source_labels, reference, reference_labels,
                     paired_reference, output, device)
    except USER_ERRORS as err:
        _fail(err)
    _print_report(report)


@app.command()
def benchmark(
    config: Path = typer.Argument(..., help="Benchmark YAML (see configs/benchmarks/)."),
    overrides: Optional[list[str]] = typer.Argument(None, help="key.subkey=value overrides, e.g. iters=100"),
    rescore: bool = typer.Option(False, help="No training: score the rows already trained in output_dir on the "
                                 "config's cross_protocol sets and rewrite the tables (refused if trained with another config)."),
) -> None:
    """Train every domain-adaptation method on the same data and score each on held-out subjects
    (Dice/HD95 per organ, synthetic-CT organ HU, other protocols); writes table.md, table.csv and results.json."""
    try:
        from medgan.config import load_config
        from medgan.pipelines.benchmark.config import BenchmarkConfig
        from medgan.pipelines.benchmark.run import rescore_cross_protocol, run_benchmark

        cfg = load_config(BenchmarkConfig, config, overrides)
        (rescore_cross_protocol if rescore else run_benchmark)(cfg)
    except USER_ERRORS as err:
        _fail(err)
    out.print((Path(cfg.output_dir) / "table.md").read_text(encoding="utf-8"), highlight=False, markup=False)


@app.command("benchmark-combine")
def benchmark_combine(
    runs: list[Path] = typer.Argument(..., help="Output folders of finished benchmark runs of one config."),
    output: Path = typer.Option(..., "--output", "-o", help="Folder for the combined table.md, table.csv, combined.json."),
) -> None:
    """Combine benchmark runs that differ only in seed (repeats: the seed spread of every row) or in
    split.fold (k folds: every fold's test subjects pooled) into one table."""
    try:
        from medgan.pipelines.benchmark.run import combine_runs

        combine_runs(runs, output)
    except USER_ERRORS as err:
        _fail(err)
    out.print((output / "table.md").read_text(encoding="utf-8"), highlight=False, markup=False)


@app.command("baseline-histmatch")
def baseline_histmatch(
    source: Path = typer.Argument(..., help="Volume to map, e.g. an MR."),
    reference: Path = typer.Option(..., help="Volume whose histogram to match, e.g. a real CT in HU."),
    output: Path = typer.Option(..., "--output", "-o", help="Output NIfTI file."),
) -> None:
    """Baseline without learning: histogram matching of SOURCE onto REFERENCE."""
    try:
        from medgan.pipelines.cyclegan.baselines import histogram_match

        path = histogram_match(source, reference, output)
    except USER_ERRORS as err:
        _fail(err)
    out.print(f"wrote {path}")


@app.command()
def phantom(output: Path = typer.Argument(Path("data_samples/phantom"), help="Folder to write to.")) -> None:
    """Write the digital abdominal phantom (CT in HU, T1-like MR, organ labels)."""
    from medgan.data.phantom import write_phantom_dataset

    for p in write_phantom_dataset(output):
        out.print(str(p))


@app.command()
def demo(
    output: Path = typer.Option(Path("runs/demo"), "--output", "-o"),
    config: Path = typer.Option(Path("configs/phantom.yaml")),
    overrides: Optional[list[str]] = typer.Argument(None, help="key=value overrides of the phantom config"),
) -> None:
    """The main job on the shipped phantom: train, then translate both ways a held-out phantom subject
    (data_samples/phantom/heldout, read by no training step), evaluate, draw a PNG."""
    try:
        from medgan.pipelines.cyclegan.demo import HELDOUT_SUBJECT, run_demo

        reports = run_demo(config, output, overrides, progress=sys.stderr.isatty())
    except USER_ERRORS as err:
        _fail(err)
    out.print(f"Held-out subject {HELDOUT_SUBJECT} (its MR and its paired CT; no training step saw them):")
    for name in ("mr2ct", "ct2mr"):
        _print_report(reports[name])
    out.print((output / "evaluation/testset/metrics.md").read_text(encoding="utf-8"), highlight=False, markup=False)
    out.print(f"outputs in {output}; figure {output / 'demo.png'}")


@app.command("slices-demo")
def slices_demo(
    data: Path = typer.Option(Path("../shared/data"), help="The shared data folder."),
    output: Path = typer.Option(Path("runs/slices"), "--output", "-o"),
    gan_iters: int = typer.Option(1500), vae_iters: int = typer.Option(1500), size: int = typer.Option(64),
) -> None:
    """Train a 2D WGAN-GP DCGAN and a VAE on axial slices of real T1 head MRs; write sample grids."""
    try:
        from medgan.pipelines.slices_demo import run_slices_demo

        summary = run_slices_demo(data, output, gan_iters, vae_iters, size)
    except USER_ERRORS as err:
        _fail(err)
    out.print(f"{summary['slices']} slices; grids in {output}")


adda_app = typer.Typer(no_args_is_help=True, help="ADDA: adapt a source-trained 3D segmenter to a target modality (Tzeng et al. 2017).")
app.add_typer(adda_app, name="adda")


@adda_app.command("train")
def adda_train(
    config: Path = typer.Argument(..., help="YAML config (see configs/adda_abdomen.yaml)."),
    overrides: Optional[list[str]] = typer.Argument(None, help="key.subkey=value overrides"),
    resume: Optional[Path] = typer.Option(None, help="Checkpoint or run folder to continue exactly."),
) -> None:
    """Source stage, adaptation stage and (optionally) the supervised upper bound."""
    _train(config, overrides, resume, "adda")


@adda_app.command("segment")
def adda_segment(
    inputs: list[str] = typer.Argument(..., help="Files, folders, globs or DICOM series folders."),
    checkpoint: Path = typer.Option(..., "--checkpoint", "-c"),
    output: Path = typer.Option(..., "--output", "-o"),
    encoder: str = typer.Option("adapted", help="adapted (target scans), source or oracle."),
    device: str = typer.Option("auto"),
    workers: Optional[int] = typer.Option(None, help="Scans on the model at once (default: one per CPU core, one on CUDA)."),
    max_voxels: int = typer.Option(MAX_VOXELS, help="Refuse scans whose header gives more voxels (memory bound)."),
    largest_component: bool = typer.Option(False, help="Keep each class's largest connected component only (for "
                                           "classes that are one organ each)."),
    tta: int = typer.Option(1, help="Test-time augmentation: mean probabilities over N views (the scan, then rotations "
                            "and scalings drawn from the training augmentation); N times slower."),
) -> None:
    """Segment scans (outputs on each input's grid; manifest; bad files reported). Exit 1 if any failed."""
    try:
        from medgan.pipelines.adda.segment import segment

        report = segment(checkpoint, inputs, output, encoder, device=device,  # type: ignore[arg-type]
                         on_result=_show_result, workers=workers, max_voxels=max_voxels, largest_component=largest_component,
                         tta=tta)
    except USER_ERRORS as err:
        _fail(err)
    _finish_batch(report, "segmented")


@adda_app.command("evaluate")
def adda_evaluate(
    checkpoint: Path = typer.Option(..., "--checkpoint", "-c"),
    images: list[Path] = typer.Option(..., "--image", help="Labelled target scans (repeat)."),
    labels: list[Path] = typer.Option(..., "--labels", help="Their label maps, in the same order (repeat)."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Write adda_evaluation.json here."),
    device: str = typer.Option("auto"),
) -> None:
    """The domain-adaptation table: Dice per class for no adaptation, ADDA, supervised upper bound."""
    import json

    from rich.table import Table

    try:
        from medgan.pipelines.adda.segment import evaluate_adda

        report = evaluate_adda(checkpoint, images, labels, device)
    except USER_ERRORS as err:
        _fail(err)
    rows = report["dice"]
    table = Table(title="Dice on labelled target scans")
    table.add_column("class")
    for r in rows:
        table.add_column(r)
    classes = next(iter(rows.values())).keys() if rows else []
    for c in [*classes]:
        table.add_row(c, *("n/a" if math.isnan(rows[r][c]) else f"{rows[r][c]:.3f}" for r in rows))
    table.add_row("mean", *(f"{report['mean'][r]:.3f}" for r in rows))
    out.print(table)
    if output is not None:
        output.mkdir(parents=True, exist_ok=True)
        (output / "adda_evaluation.json").write_text(json.dumps(report, indent=2), encoding="utf-8")


cvae_app = typer.Typer(no_args_is_help=True, help="Conditional VAE augmentation: label-conditioned synthesis of 3D volumes (Sohn et al. 2015).")
app.add_typer(cvae_app, name="cvae")


@cvae_app.command("train")
def cvae_train(
    config: Path = typer.Argument(..., help="YAML config (see configs/cvae_abdomen.yaml)."),
    overrides: Optional[list[str]] = typer.Argument(None),
    resume: Optional[Path] = typer.Option(None),
) -> None:
    """Train the 3D conditional VAE (the held-out slab, if configured, is never seen)."""
    _train(config, overrides, resume, "cvae")


@cvae_app.command("sample")
def cvae_sample(
    checkpoint: Path = typer.Option(..., "--checkpoint", "-c"),
    labels: list[Path] = typer.Option(..., "--labels", help="Label maps to condition on (repeat)."),
    n: int = typer.Option(4, "--n", help="Samples per label map."),
    output: Path = typer.Option(..., "--output", "-o"),
    seed: int = typer.Option(0),
    deform: Optional[bool] = typer.Option(None, help="Deform the label maps (default: as configured)."),
    device: str = typer.Option("auto"),
) -> None:
    """Write image/label pairs (NIfTI, on each label map's grid) and a dataset.json datalist, as a
    batch: a manifest makes a rerun skip finished label maps; a bad one is reported, the others go on."""
    try:
        from medgan.pipelines.cvae.sample import sample

        path = sample(checkpoint, labels, n, output, seed, deform, device, on_result=_show_result)
    except USER_ERRORS as err:
        _fail(err)
    out.print(f"datalist: {path}")


@cvae_app.command("evaluate")
def cvae_evaluate(
    config: Path = typer.Argument(..., help="YAML config with train.holdout_fraction > 0."),
    overrides: Optional[list[str]] = typer.Argument(None),
    checkpoint: Optional[Path] = typer.Option(None, "--checkpoint", "-c", help="A trained CVAE (else trains one)."),
) -> None:
    """The augmentation comparison (held-out-slab Dice, real only vs real + synthetic) and sample quality."""
    import json

    try:
        from medgan.config import load_config
        from medgan.pipelines.cvae.augment import run_augmentation
        from medgan.pipelines.cvae.config import CVAEConfig

        report = run_augmentation(load_config(CVAEConfig, config, overrides), checkpoint)
    except USER_ERRORS as err:
        _fail(err)
    out.print(json.dumps({k: report[k] for k in ("heldout_dice_mean", "heldout_dice")}, indent=2))
    out.print(json.dumps(report["sample_quality"], indent=2))


@cvae_app.command("interpolate")
def cvae_interpolate(
    checkpoint: Path = typer.Option(..., "--checkpoint", "-c"),
    labels: Path = typer.Option(..., "--labels", help="The label map to condition on (not deformed)."),
    seeds: tuple[int, int] = typer.Option((0, 1), help="The two seeds whose latent noises are the ends of the path."),
    steps: int = typer.Option(8, help="Points on the path, both ends included."),
    mode: str = typer.Option("slerp", help="slerp (spherical) or lerp (linear)."),
    truncation: Optional[float] = typer.Option(None, help="Truncate the two noises at this threshold (BigGAN)."),
    output: Path = typer.Option(..., "--output", "-o", help="PNG strip of mid-slices, one column per step."),
    device: str = typer.Option("auto"),
) -> None:
    """Walk the CVAE's latent space between two seeded samples of one label map; writes a strip of
    axial, coronal and sagittal mid-slices (remade exactly from the same seeds)."""
    import numpy as np

    try:
        from medgan.data.transforms import to_canonical
        from medgan.io import read_label_map
        from medgan.pipelines.cvae.sample import CVAESampler, interpolate
        from medgan.viz import save_strip

        s = CVAESampler(checkpoint, device)
        lab = read_label_map(labels)
        lab.array = s.pre.label_mapper(lab.array, lab.path).astype(np.float32)
        can = to_canonical(lab, s.config.train.spacing_mm, "nearest").as_tensor()
        images = interpolate(s, can, seeds, steps, mode, truncation)
        png = save_strip(output, [s.scaling.inverse(i[0].numpy()) for i in images],
                         [f"t={t:.2f}" for t in np.linspace(0, 1, len(images))], s.config.train.spacing_mm,
                         f"CVAE {mode} seeds {seeds[0]} -> {seeds[1]}" + (f", truncation {truncation}" if truncation is not None else ""))
    except USER_ERRORS as err:
        _fail(err)
    out.print(f"strip: {png}")


@cvae_app.command("truncation")
def cvae_truncation(
    checkpoint: Path = typer.Option(..., "--checkpoint", "-c"),
    thresholds: list[float] = typer.Option([0.0, 0.5, 1.0, 1.5, 2.0], "--threshold", help="Truncation thresholds (repeat)."),
    n: int = typer.Option(3, help="Samples per label map at each threshold."),
    max_volumes: int = typer.Option(4),
    output: Path = typer.Option(..., "--output", "-o", help="Folder for truncation.json and truncation.png."),
    device: str = typer.Option("auto"),
) -> None:
    """The diversity / fidelity trade-off of the truncation trick over thresholds (and untruncated),
    on the CVAE's training label maps: diversity between samples of one label map, and the mean
    per-class intensity difference to the real volumes."""
    import json

    try:
        from medgan.pipelines.cvae.sample import CVAESampler, truncation_curve
        from medgan.pipelines.cvae.trainer import labelled_volumes
        from medgan.viz import save_tradeoff

        s = CVAESampler(checkpoint, device)
        vols, _ = labelled_volumes(s.config)
        rows = truncation_curve(s, vols[:max_volumes], [*thresholds, None], n)
        output.mkdir(parents=True, exist_ok=True)
        (output / "truncation.json").write_text(json.dumps(rows, indent=2), encoding="utf-8")
        save_tradeoff(output / "truncation.png", rows)
    except USER_ERRORS as err:
        _fail(err)
    for r in rows:
        out.print(f"truncation {r['truncation']}: diversity {r['diversity_mean_abs_diff']:.2f}, "
                  f"|intensity mean - real| {r['intensity_abs_diff_mean']:.2f}")


inspect_app = typer.Typer(no_args_is_help=True, help="Look inside trained models: feature/latent projections and Fréchet distances.")
app.add_typer(inspect_app, name="inspect")


@inspect_app.command("features")
def inspect_features(
    checkpoint: Path = typer.Argument(..., help="An ADDA, CycleGAN or CVAE checkpoint (or run folder)."),
    output: Path = typer.Option(..., "--output", "-o"),
    levels: Optional[list[int]] = typer.Option(None, "--level", help="ADDA: U-Net levels (repeat; default 2 3 4). CycleGAN: one level (default 4)."),
    max_volumes: int = typer.Option(4, help="Volumes per domain (from the checkpoint's training data)."),
    method: Optional[list[str]] = typer.Option(None, help="pca, tsne, umap (repeat; default all three)."),
    device: str = typer.Option("auto"),
    seed: int = typer.Option(0),
) -> None:
    """PCA / t-SNE / UMAP of pooled features (ADDA encoders before and after adaptation; S_CT/S_MR
    of real and translated volumes) or CVAE latent means, coloured by domain and organ (PNG + CSV),
    with a domain-classifier accuracy (0.5 = aligned)."""
    import json

    try:
        from medgan.pipelines.inspect import inspect

        kw = {"max_volumes": max_volumes, "device": device, "seed": seed, "methods": tuple(method) if method else None}
        if levels:
            kw.update(levels=tuple(levels), level=levels[0])
        report = inspect(checkpoint, output, **kw)
    except USER_ERRORS as err:
        _fail(err)
    out.print(json.dumps(report, indent=2))


@inspect_app.command("fid")
def inspect_fid(
    checkpoint: Path = typer.Argument(..., help="A CycleGAN checkpoint (its translations are scored) or a CVAE one (its samples)."),
    output: Path = typer.Option(..., "--output", "-o"),
    features: Optional[Path] = typer.Option(None, help="CVAE: the CycleGAN checkpoint whose S_<domain> encoder gives the features."),
    level: int = typer.Option(4, help="U-Net level of the features (4 = bottleneck)."),
    max_volumes: int = typer.Option(8),
    n_per_label: int = typer.Option(2, help="CVAE: samples per label map."),
    truncation: Optional[float] = typer.Option(None, help="CVAE: sample with this truncation threshold."),
    device: str = typer.Option("auto"),
) -> None:
    """Fréchet distance (FID's formula, MONAI FIDMetric) and MMD (MONAI MMDMetric) on features of
    medgan's own segmenter encoder, per-organ intensity distances, and the sanity check (two halves
    of the real set, then with added noise). The numbers depend on that encoder."""
    import json

    try:
        from medgan.checkpoint import checkpoint_pipeline
        from medgan.pipelines.inspect import fid_cvae, fid_cyclegan

        folder, pipeline = checkpoint_pipeline(checkpoint)
        if pipeline == "cvae":
            if features is None:
                raise ValueError("a CVAE has no segmenter: pass --features <CycleGAN checkpoint> for the feature extractor")
            report = fid_cvae(folder, features, output, n_per_label, level, max_volumes, truncation, device)
        elif pipeline == "cyclegan":
            report = fid_cyclegan(folder, output, level, max_volumes, device)
        else:
            raise ValueError(f"{folder}: medgan inspect fid scores cyclegan or cvae checkpoints, not {pipeline!r}")
    except USER_ERRORS as err:
        _fail(err)
    out.print(json.dumps(report, indent=2))


if __name__ == "__main__":
    app()
