"""The configs of the commands that look at a run or a dataset: ``graft evaluate``, ``graft show-batch``,
``graft doctor`` and ``graft suggest``. No heavy imports."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal, get_args

from graft.core.config.data import BATCH_SIZE, DATA, DATA_AS_TRAIN_HELP, SEED, TABLE, VAL_SPLIT
from graft.core.config.fields import (
    AT_LEAST_0,
    AT_LEAST_1,
    DEVICE,
    RUN,
    Device,
    Rule,
    check_all,
    check_fields,
    opt,
    optional_path,
)
from graft.core.config.levers import LEVERS, TTA, TUNING_HELP, Augment
from graft.core.config.model import ARCH, PRETRAINED


@dataclass(kw_only=True)
class EvaluateConfig:
    """``graft evaluate``: accuracy (95% CI), balanced accuracy, per-class precision/recall/F1, confusion matrix
    and top losses of a run, on its val split (default) or on another folder of class folders."""

    run: Path = opt(RUN, example="graft evaluate runs/001-mobilenet_v2-freeze")
    data: Path | None = opt(
        None,
        "images to evaluate: a folder of class folders, or a dataset with train/ and val/ (its val folder is used), "
        "or a .csv/.tsv table (its val rows when it has a split column); default: the run's own val split",
        positional=True,
        nargs="?",
    )
    out: Path | None = opt(None, "output folder (default: RUN for its val split, else RUN/eval-<DATA name>)")
    explain: bool = opt(False, "add Grad-CAM overlays to the top-loss and prediction figures")
    plots: bool = opt(True, "write confusion_matrix.png, top_losses.png and predictions.png")
    top_losses: int = opt(9, "images in top_losses.png", check=AT_LEAST_0)
    report: bool = opt(False, "also (re)write RUN/report.html (val split only)", api=False)
    batch_size: int | None = opt(None, "images per batch (default: the run's training batch size)", check=AT_LEAST_1)
    device: Device = opt(DEVICE)
    json: bool = opt(False, "print evaluation.json instead of a summary")
    tta: bool | None = opt(TTA, TUNING_HELP["eval_tta"])

    def __post_init__(self) -> None:
        check_fields(self)
        self.run = Path(self.run)
        self.data = optional_path(self.data)
        self.out = optional_path(self.out)
        check_all(
            [
                (
                    not (self.report and self.data is not None),
                    "--report describes the run's own val split: leave out DATA, or leave out --report",
                )
            ]
        )


@dataclass(kw_only=True)
class ShowBatchConfig:
    """``graft show-batch``: a grid of augmented training images (as training sees them), titled with their class."""

    data: Path = opt(DATA, DATA_AS_TRAIN_HELP, example="graft show-batch path/to/images")
    out: Path | None = opt(Path("batch.png"), "output image")
    n: int = opt(16, "number of images", check=AT_LEAST_1)
    arch: str = opt(ARCH, "architecture whose preprocessing (crop size, normalization) is shown")
    seed: int = opt(SEED, "random seed of the images and augmentations drawn")
    val_split: float = opt(
        VAL_SPLIT, "val fraction when DATA has no train/val folders (only training images are shown)"
    )
    path_col: str | None = opt(TABLE["path_col"])
    label_col: str | None = opt(TABLE["label_col"])
    split_col: str | None = opt(TABLE["split_col"])
    root: Path | None = opt(TABLE["root"])
    augment: Augment = opt(LEVERS["augment"])
    mixup: float = opt(LEVERS["mixup"])
    cutmix: float = opt(LEVERS["cutmix"])
    random_erasing: float = opt(LEVERS["random_erasing"])

    def __post_init__(self) -> None:
        check_fields(self)
        self.data = Path(self.data)
        self.out = optional_path(self.out)


@dataclass(kw_only=True)
class DoctorConfig:
    """``graft doctor``: exact and near duplicates, train/val leakage, likely label errors, outliers, image quality
    and class balance of a dataset, from the backbone features that training stores (computed once for both).
    Exit status 0 when nothing serious was found, 3 when val images leak from train or identical images carry
    different labels."""

    data: Path = opt(DATA, DATA_AS_TRAIN_HELP, example="graft doctor path/to/images")
    arch: str = opt(ARCH, "backbone whose features compare the images (the training default)")
    pretrained: str = opt(PRETRAINED, "its weights, as for graft train")
    out: Path | None = opt(None, "output folder (default: doctor/<name of DATA>)")
    exclude_list: Path | None = opt(
        None,
        "also write the files to leave out (one copy per duplicate group, train copies of val images, confident "
        "label errors, unreadable files): path<TAB>reason per line, for graft train --exclude",
    )
    html: bool = opt(True, "write doctor.html (a gallery per kind of finding)")
    fail_on_same_scene: bool = opt(
        False, "exit 3 also when a val image has another shot of the same scene in train (not only a copy)"
    )
    val_split: float = opt(VAL_SPLIT, "val fraction when DATA has no train/val folders (as for graft train)")
    path_col: str | None = opt(TABLE["path_col"])
    label_col: str | None = opt(TABLE["label_col"])
    split_col: str | None = opt(TABLE["split_col"])
    root: Path | None = opt(TABLE["root"])
    seed: int = opt(SEED, "random seed of the split and of the label folds")
    batch_size: int = opt(BATCH_SIZE, "images per batch of the feature pass")
    device: Device = opt(DEVICE)
    json: bool = opt(False, "print doctor.json's summary as JSON instead of text")

    def __post_init__(self) -> None:
        check_fields(self)
        self.data = Path(self.data)
        self.out = Path(self.out) if self.out is not None else Path("doctor") / self.data.resolve().name
        self.exclude_list = optional_path(self.exclude_list)


#: ``graft suggest --strategy``: the orders :func:`graft.insight.suggest.rank` knows
Strategy = Literal["auto", "margin", "entropy", "diverse", "random"]
STRATEGY_NAMES: tuple[str, ...] = get_args(Strategy)


@dataclass(kw_only=True)
class SuggestConfig:
    """``graft suggest``: rank unlabelled images by how much labelling each would help the run (the ones it is
    least sure of, spread out over what it has not seen), so the first --n are the batch to label next. Images the
    run trained on are left out."""

    run: Path = opt(RUN, example="graft suggest runs/001-mobilenet_v2-freeze unlabelled/")
    pool: Path = opt(
        None,
        "unlabelled images: a folder (walked recursively) or a .csv/.tsv table with a path column (paths relative "
        "to the table's folder)",
        positional=True,
        missing="no pool given: pass POOL, a folder of unlabelled images or a CSV of their paths "
        "(e.g. graft suggest RUN unlabelled/)",
    )
    n: int = opt(50, "images in the batch to label next (printed; diverse spreads these out)", check=AT_LEAST_1)
    strategy: Strategy = opt(
        "auto",
        "margin: least sure first; entropy: most spread probabilities first; diverse: the least sure, spread out "
        "in feature space; random: a seeded shuffle; auto: the one benchmarks/bench_active.py found best",
        check=Rule(f"one of {', '.join(STRATEGY_NAMES)}", lambda v: v in STRATEGY_NAMES),
    )
    out: Path | None = opt(
        None, "write every pool image in rank order as a CSV (path, suggested, confidence, rank) instead of printing"
    )
    seed: int = opt(SEED, "random seed of --strategy random")
    batch_size: int = opt(BATCH_SIZE)
    device: Device = opt(DEVICE)

    def __post_init__(self) -> None:
        check_fields(self)
        self.run = Path(self.run)
        self.pool = Path(self.pool)
        self.out = optional_path(self.out)
