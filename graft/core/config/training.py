"""``graft train``'s config (:class:`TrainConfig`, saved resolved as a run's ``config.json``) and ``graft
lr-find``'s (:class:`LrFindConfig`: the same options plus the range test's). No heavy imports."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from graft.core.config.data import BATCH_SIZE, DATA, SEED, TABLE, VAL_SPLIT, Task, is_frame, jsonable_data
from graft.core.config.fields import (
    AT_LEAST_0,
    AT_LEAST_1,
    BELOW_1,
    DEVICE,
    Device,
    Rule,
    check_all,
    check_fields,
    opt,
    optional_path,
    to_jsonable,
)
from graft.core.config.levers import (
    LEVERS,
    TUNING_HELP,
    Augment,
    Balance,
    SelectBy,
    check_tuning,
    parse_lr,
)
from graft.core.config.model import ACTIVATION_BITS, ARCH, CALIB, IMAGE_SIZE, PRETRAINED, ActivationBits
from graft.core.config.tracking import TRACKING_HELP, tracker_names


@dataclass(kw_only=True)
class TrainConfig:
    """Everything ``graft train`` needs; saved verbatim (resolved) as the run's ``config.json``."""

    data: Path = opt(DATA, example="graft train path/to/images")
    arch: str = opt(ARCH, "backbone architecture (see `graft archs`); timm models as timm/<name>")
    mode: Literal["freeze", "finetune", "qat"] = opt(
        "freeze",
        "freeze: train only the new head on a frozen backbone; finetune: train all layers; qat: fine-tune as "
        "finetune, then --qat-epochs with fake quantization, then convert to int8 (CPU)",
    )
    pretrained: str = opt(
        PRETRAINED,
        "auto (best weights available here), none (random init), a weights tag such as IMAGENET1K_V1, "
        "or a path to a weights file",
    )
    image_size: int | None = opt(IMAGE_SIZE)
    epochs: int = opt(10, "number of epochs", check=AT_LEAST_1)
    batch_size: int = opt(BATCH_SIZE)
    optimizer: Literal["adamw", "sgd"] = opt("adamw", "optimizer (sgd uses --momentum, as in the tutorial)")
    lr: float | Literal["auto"] | None = opt(None, TUNING_HELP["lr"], parse=parse_lr)
    momentum: float = opt(0.9, "SGD momentum", check=BELOW_1)
    weight_decay: float = opt(1e-4, "weight decay", check=AT_LEAST_0)
    auto: bool = opt(False, TUNING_HELP["auto"])
    time_budget: float | None = opt(None, TUNING_HELP["time_budget"])
    ensemble: int | None = opt(None, TUNING_HELP["ensemble"], metavar="K")
    scheduler: Literal["cosine", "step", "none"] = opt(
        "cosine", "learning-rate schedule per epoch: cosine decay, step (StepLR), or none"
    )
    step_size: int = opt(7, "StepLR period in epochs (with --scheduler step)", check=AT_LEAST_1)
    gamma: float = opt(
        0.1, "StepLR decay factor (with --scheduler step)", check=Rule("in (0, 1]", lambda v: 0 < v <= 1)
    )
    label_smoothing: float = opt(0.0, "label smoothing of the cross-entropy loss", check=BELOW_1)
    hidden: tuple[int, ...] = opt((), "hidden layer widths of an MLP head, e.g. 1024,512 (default: one Linear)")
    dropout: float = opt(0.0, "dropout before each Linear of the head", check=BELOW_1)
    balance: Balance = opt(LEVERS["balance"])
    select_by: SelectBy = opt(LEVERS["select_by"])
    augment: Augment = opt(LEVERS["augment"])
    mixup: float = opt(LEVERS["mixup"])
    cutmix: float = opt(LEVERS["cutmix"])
    random_erasing: float = opt(LEVERS["random_erasing"])
    cache_features: bool = opt(
        True, "freeze mode: run the frozen backbone once per image and train the head on the stored features"
    )
    feature_views: int = opt(
        0,
        "stored features: add K augmented views (random crop + flip) of every training image to the clean one",
        check=AT_LEAST_0,
    )
    head_epochs: int = opt(
        3,
        "finetune: epochs of head-only training on the frozen body's stored features before all layers train "
        "(fastai's fine_tune); 0 gives the tutorial's plain fine-tuning",
        check=AT_LEAST_0,
    )
    patience: int | None = opt(
        None,
        "stop after this many epochs without a better val accuracy (default: 5 on stored features, else off)",
        check=AT_LEAST_1,
    )
    precision: Literal["auto", "fp32", "bf16"] = opt(
        "auto",
        "training precision: auto: bf16 where the CPU has AVX512-BF16 or AMX (or a CUDA GPU supports it), fp32 "
        "elsewhere; bf16 where the hardware lacks it is an error. Evaluation and predict stay fp32 on the CPU",
    )
    compile: bool = opt(False, "torch.compile the model for image epochs (pays off for long runs, mostly on GPU)")
    checkpoint_budget: float = opt(
        0.1,
        "share of the training time that checkpoints (best model, resume state) may take: after every epoch, "
        "unless epochs are so fast (GPU) that this would cost more, then spaced out; 1 saves after every epoch",
        check=Rule("in (0, 1]", lambda v: 0 < v <= 1),
    )
    int8: bool = opt(False, "freeze mode: int8 backbone (calibrated on training images) + a float head on its features")
    calib: int = opt(CALIB, "--int8 / --mode qat: training images that calibrate the int8 ranges")
    activation_bits: ActivationBits = opt(
        ACTIVATION_BITS, "--int8 / --mode qat: int8 activation bits (auto: 8 on CPUs with VNNI or AMX, else 7)"
    )
    qat_epochs: int = opt(
        2,
        "--mode qat: epochs of quantization-aware training after the float fine-tuning, at a tenth of its learning "
        "rate (an epoch is kept only if it beats the calibrated start)",
        check=AT_LEAST_1,
    )
    val_split: float = opt(VAL_SPLIT, "val fraction when DATA has no train/val folders (stratified, seeded)")
    path_col: str | None = opt(TABLE["path_col"])
    label_col: str | None = opt(TABLE["label_col"])
    split_col: str | None = opt(TABLE["split_col"])
    root: Path | None = opt(TABLE["root"])
    label_delim: str | None = opt(TABLE["label_delim"])
    task: Task = opt(TABLE["task"])
    pos_weight: Literal["none", "auto"] = opt(TABLE["pos_weight"])
    exclude: Path | None = opt(
        None,
        "file of images to leave out, path<TAB>reason per line (graft doctor --exclude-list writes one); they are "
        "listed in data_report.json with the reason",
    )
    seed: int = opt(SEED, "random seed (CPU runs with the same seed are repeatable)")
    device: Device = opt(DEVICE)
    workers: int | None = opt(None, "image-decoding worker processes (default: from the core count)", check=AT_LEAST_0)
    nproc: int | None = opt(
        None,
        "train with N processes on this machine (DDP through torchrun: one per GPU with nccl, or CPU processes with "
        "gloo); --batch-size stays the global batch. For several machines run torchrun yourself (see the README)",
        check=AT_LEAST_1,
    )
    out: Path = opt(Path("runs"), "folder that holds run directories")
    name: str | None = opt(None, "run directory name (default: a fresh numbered name)")
    exist_ok: bool = opt(False, "reuse --name if the run directory exists (its files are replaced)")
    resume: Path | None = opt(
        None,
        "continue the run in RUN_DIR after a crash or kill, from its last finished epoch (give the same DATA and "
        "options as the first time)",
    )
    log: tuple[str, ...] = opt((), TRACKING_HELP["log"], metavar="NAME,NAME")
    mlflow_uri: str | None = opt(None, TRACKING_HELP["mlflow_uri"])
    mlflow_experiment: str | None = opt(None, TRACKING_HELP["mlflow_experiment"])

    def __post_init__(self) -> None:
        check_fields(self)
        self.data = self.data if is_frame(self.data) else Path(self.data)  # graft.train(DataFrame)
        self.out = Path(self.out)
        self.resume = optional_path(self.resume)
        self.exclude = optional_path(self.exclude)
        self.hidden = tuple(int(h) for h in self.hidden)
        self.log = tracker_names(self.log)
        check_all(
            [
                (all(0 < h <= 65536 for h in self.hidden), f"--hidden widths must be in 1..65536 (got {self.hidden})"),
                (
                    not self.int8 or self.mode == "freeze",
                    "--int8 goes with --mode freeze; for fine-tuning use --mode qat",
                ),
                (
                    self.precision != "bf16" or not (self.int8 or self.mode == "qat"),
                    "--precision bf16 is for float training; --int8 and --mode qat train in fp32: use --precision "
                    "auto or fp32",
                ),
            ]
        )
        check_tuning(self)

    def stages(self) -> list[tuple[str, int, float]]:
        """(stage, epochs, learning rate) in order: ``head`` trains the head on a frozen body, ``all`` every layer."""
        default = {"adamw": {"head": 1e-3, "all": 2e-4}, "sgd": {"head": 1e-2, "all": 1e-3}}[self.optimizer]
        if self.mode == "freeze":
            return [("head", self.epochs, self.lr or default["head"])]
        head = [("head", self.head_epochs, {"auto": "auto"}.get(self.lr, default["head"]))] if self.head_epochs else []
        return [*head, ("all", self.epochs, self.lr or default["all"])]

    def to_dict(self) -> dict[str, Any]:
        return jsonable_data(to_jsonable(self), self.data)


@dataclass(kw_only=True)
class LrFindConfig(TrainConfig):
    """``graft lr-find``: the learning-rate range test (Smith 2015, as fastai's lr_find): the learning rate grows
    exponentially from --start-lr to --end-lr over --iterations steps while the smoothed training loss is recorded;
    the suggestion is fastai's "valley". Writes lr_find.png and lr_find.csv per stage (head stages on the stored
    features; with --mode finetune also the all-layers stage, on a copy of the model)."""

    iterations: int = opt(
        100,
        "steps of the range test per stage (it stops earlier once the loss exceeds 4x its minimum)",
        check=Rule(">= 10", lambda v: v >= 10),
    )
    start_lr: float = opt(1e-7, "first learning rate of the range test")
    end_lr: float = opt(10.0, "last learning rate of the range test")
    plot_dir: Path = opt(Path("lr_find"), "folder for lr_find.png and lr_find.csv (one pair per stage)")

    def __post_init__(self) -> None:
        super().__post_init__()
        self.plot_dir = Path(self.plot_dir)
        check_all(
            [
                (
                    0 < self.start_lr < self.end_lr,
                    f"--start-lr must be > 0 and below --end-lr (got {self.start_lr}, {self.end_lr})",
                )
            ]
        )
