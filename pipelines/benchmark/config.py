"""Config schema of the multi-subject domain-adaptation benchmark (``medgan benchmark``).

The target domain (MR) is split by subject into training and test subjects (a versioned split
file, or k folds over the sorted subjects). Test subjects never enter a training step: not the
networks, not the intensity statistics (the MR scaling is the mean over the training subjects),
not model selection (the last checkpoint of each run is scored). The target's labels are used
only to score, and by the supervised upper bound on the training subjects.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from medgan.config import InputPath
from medgan.data.datalist import datalist_from_folder, datalist_from_msd
from medgan.pipelines.data_config import AugmentConfig, IntensityConfig, LabelConfig, PipelineConfig, SegmentationTTAConfig, _Strict

Row = Literal["no_adaptation", "cyclegan_plain", "cyclegan_shape", "adda", "cycada", "self_training", "self_training_plain",
              "cyclegan_shape_pseudo", "supervised"]
ROWS: tuple[str, ...] = ("no_adaptation", "cyclegan_plain", "cyclegan_shape", "adda", "cycada", "self_training", "self_training_plain",
                         "supervised")
#: the self-training rows' teachers: the CycleGAN row whose S_MR pseudo-labels the training MRs
SELF_TRAINING_TEACHER = {"self_training": "cyclegan_shape", "self_training_plain": "cyclegan_plain"}
#: rows that train a shape-consistent CycleGAN on training MRs pseudo-labelled by a teacher row, so
#: that both shape terms and both segmenters' real-volume terms have labels (opt-in: not in ROWS)
PSEUDO_LABELLED_CYCLEGAN = {"cyclegan_shape_pseudo": "cyclegan_plain"}
ROW_TITLES = {
    "no_adaptation": "no adaptation (S trained on CT)",
    "cyclegan_plain": "plain CycleGAN (S_MR on translated CT)",
    "cyclegan_shape": "shape-consistent CycleGAN (Zhang et al. 2018)",
    "adda": "ADDA (Tzeng et al. 2017)",
    "cycada": "pixel + feature level (CyCADA-style)",
    "self_training": "shape-consistent + pseudo-label self-training",
    "self_training_plain": "plain CycleGAN + pseudo-label self-training",
    "cyclegan_shape_pseudo": "shape-consistent CycleGAN on pseudo-labelled MR",
    "supervised": "supervised upper bound (training MR labels)",
}


class Side(_Strict):
    """One domain: a folder of images with ``<name>_labels`` beside them, or an MSD-style
    ``dataset.json`` (its ``training`` section: any image/label pairing, e.g. a longer scan with
    the label map of a slab of it, :func:`medgan.io.readers.place_label_map`), and its label space."""

    name: str
    folder: InputPath | None = None
    dataset: InputPath | None = Field(None, description="MSD-style dataset.json (training section) instead of folder")
    labels: LabelConfig
    intensity: IntensityConfig = IntensityConfig()
    augment: AugmentConfig = AugmentConfig()

    @model_validator(mode="after")
    def _one_source(self) -> Side:
        if (self.folder is None) == (self.dataset is None):
            raise ValueError(f"side {self.name}: give one of folder and dataset")
        return self

    def datalist(self) -> list[dict]:
        """``{image, label}`` entries of the folder (sorted) or of the dataset.json's training section."""
        return datalist_from_folder(self.folder) if self.folder is not None else datalist_from_msd(self.dataset)

    @property
    def where(self) -> Path:
        """The folder or the dataset.json (labelled real volumes for :func:`evaluate_set`'s ``real_ct``)."""
        return Path(self.folder if self.folder is not None else self.dataset)


class CrossProtocol(_Strict):
    """Labelled scans of another protocol or dataset (a folder with ``<name>_labels`` beside
    the images), scored by every segmentation row as they are: no row trains on them."""

    name: str
    folder: InputPath
    labels: LabelConfig
    subjects: list[str] | None = Field(None, description="score only these scans (image names without suffix); "
                                       "default every labelled scan of the folder")


class Split(_Strict):
    """``file``: a JSON with ``version``, ``train`` and ``test`` subject names (image names without
    suffix); or ``folds`` > 1: fold ``fold`` of k folds over the sorted subjects (test = every
    k-th subject from the ``fold``-th); or ``train_all``: every target subject trains and the rows
    are scored on ``cross_protocol`` alone (trained on one protocol, tested on another)."""

    file: InputPath | None = None
    folds: int | None = Field(None, ge=2)
    fold: int = Field(0, ge=0)
    train_all: bool = False

    @model_validator(mode="after")
    def _one(self) -> Split:
        if (self.file is not None) + (self.folds is not None) + self.train_all != 1:
            raise ValueError("give one of split.file, split.folds and split.train_all")
        if self.folds is not None and self.fold >= self.folds:
            raise ValueError(f"split.fold must be below split.folds ({self.folds})")
        return self

    def subjects(self, available: list[str]) -> tuple[list[str], list[str], str]:
        """``(training subjects, test subjects, a description with the version)``.

        Raises:
            ValueError: a split that names missing subjects, overlaps, or leaves no test subject.
        """
        if self.train_all:
            return sorted(available), [], "every subject trains; no test split"
        if self.file is not None:
            table = json.loads(Path(self.file).read_text(encoding="utf-8"))
            train, test = list(table["train"]), list(table["test"])
            what = f"{Path(self.file).name} version {table.get('version')}"
        else:
            ordered = sorted(available)
            test = ordered[self.fold::self.folds]
            train = [s for s in ordered if s not in test]
            what = f"fold {self.fold} of {self.folds} over {len(ordered)} sorted subjects"
        missing = sorted(set(train + test) - set(available))
        if missing:
            raise ValueError(f"the split names subjects that are not in the data: {missing}")
        if set(train) & set(test):
            raise ValueError(f"subjects in both the training and the test split: {sorted(set(train) & set(test))}")
        if not test or not train:
            raise ValueError("the split needs at least one training and one test subject")
        return train, test, what


class BenchmarkConfig(PipelineConfig):
    """CT (labelled source) -> MR (target) on held-out MR subjects; every row shares the
    segmenter architecture (MONAI BasicUNet with ``seg_features``), spacing and patch size."""

    name: str = "benchmark"
    classes: list[str] = Field(min_length=1)
    source: Side
    target: Side
    split: Split
    rows: list[Row] = Field(default_factory=lambda: list(ROWS),
                            description="rows to train and score; cyclegan_shape_pseudo is opt-in (it adds a whole CycleGAN training)")
    histmatch_baseline: bool = True
    cross_protocol: list[CrossProtocol] = Field(default_factory=list, description="extra test sets of other protocols")
    spacing_mm: tuple[float, float, float] = (3.0, 3.0, 3.0)
    patch_size: tuple[int, int, int] = (80, 80, 32)
    seg_features: tuple[int, int, int, int, int, int] = (16, 16, 32, 64, 128, 16)
    iters: int = Field(600, ge=1, description="joint iterations of each CycleGAN run and ADDA's adaptation iterations")
    seg_iters: int = Field(600, ge=1, description="iterations of every segmenter-only training, the same in each row: "
                           "ADDA's source stage (the no-adaptation and ADDA rows, and CyCADA's on the translated CT), the "
                           "supervised and self-training rows, and the CycleGAN rows' segmenter fine-tuning on translated "
                           "volumes after their joint iterations (optim.seg_finetune_iters)")
    segmenter_patches: Literal["labelled", "any"] = Field(
        "labelled", description="train.segmenter_patches of every run: segmenter-only iterations draw labelled patches "
        "only ('any': from every volume, unlabelled ones giving no update, as medgan <= 0.5)")
    seg_lr: float = Field(1e-3, gt=0, description="Adam learning rate of every row's segmenter (ADDA's lr_source, the "
                          "CycleGAN's optim.seg_lr): the same segmenter trained the same way in each row")
    largest_component: bool = Field(
        False, description="every row's segmentation keeps each class's largest connected component only (nnU-Net's "
        "post-processing; for classes that are one organ each) when scored; the self-training row's pseudo-labels stay "
        "as predicted")
    tta: SegmentationTTAConfig = Field(
        SegmentationTTAConfig(), description="test-time augmentation of every row's segmenter wherever the benchmark "
        "segments (scoring, pseudo-labels): views drawn from the target's training augmentation (off: passes 1)")
    cyclegan: list[str] = Field(default_factory=list, description="extra overrides of every CycleGAN run (key=value)")
    adda: list[str] = Field(default_factory=list, description="extra overrides of every ADDA run (key=value)")
    device: str = "auto"
    seed: int = 0
    output_dir: Path = Path("runs/benchmark")

    @model_validator(mode="after")
    def _scored_somewhere(self) -> BenchmarkConfig:
        if self.split.train_all and not self.cross_protocol:
            raise ValueError("split.train_all leaves no test subject: give cross_protocol sets to score the rows on")
        if self.split.train_all and self.histmatch_baseline:
            raise ValueError("split.train_all: the histogram-matching baseline scores test MRs, and there are none; "
                             "set histmatch_baseline: false")
        if self.target.folder is None:
            raise ValueError("target: give a folder (its subjects are split by image name); dataset is for the source side")
        return self
