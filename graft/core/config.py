"""One typed config dataclass per command: the single source of truth.

The CLI (``graft.commands.cli``) makes its options from these fields (name, type, default and the ``help`` metadata),
the Python API takes the same names as keyword arguments, and a run saves the resolved config as ``config.json``.
This module must stay free of heavy imports: ``graft --help`` imports it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from graft.core.config_tables import TABLE_HELP as _TABLE_HELP
from graft.core.config_tables import is_frame, jsonable_data
from graft.core.config_tables import table_options as table_options  # re-exported: the scan's callers import it here
from graft.core.config_tracking import TRACKING_HELP, tracker_names
from graft.core.errors import ConfigError
from graft.core.options import LEVER_HELP, Augment, Balance, SelectBy, check_augment
from graft.core.tuning import TUNING_HELP, check_tuning, parse_lr


def opt(default: Any, help: str, **meta: Any) -> Any:
    """A config field with its CLI help text (and optional ``positional``/``short``/``metavar`` metadata)."""
    if isinstance(default, list | dict):
        return field(default_factory=lambda: type(default)(default), metadata={"help": help, **meta})
    return field(default=default, metadata={"help": help, **meta})


_DATA_HELP = "dataset folder (DATA/train/<class>/* + DATA/val/<class>/*, or DATA/<class>/*), or a .csv/.tsv table"


@dataclass(kw_only=True)
class TrainConfig:
    """Everything ``graft train`` needs; saved verbatim (resolved) as the run's ``config.json``."""

    data: Path = opt(None, _DATA_HELP, positional=True)
    arch: str = opt("mobilenet_v2", "backbone architecture (see `graft archs`); timm models as timm/<name>")
    mode: Literal["freeze", "finetune", "qat"] = opt(
        "freeze",
        "freeze: train only the new head on a frozen backbone; finetune: train all layers; qat: fine-tune as "
        "finetune, then --qat-epochs with fake quantization, then convert to int8 (CPU)",
    )
    pretrained: str = opt(
        "auto",
        "auto (best weights available here), none (random init), a weights tag such as IMAGENET1K_V1, "
        "or a path to a weights file",
    )
    epochs: int = opt(10, "number of epochs")
    batch_size: int = opt(32, "images per batch")
    optimizer: Literal["adamw", "sgd"] = opt("adamw", "optimizer (sgd uses --momentum, as in the tutorial)")
    lr: float | Literal["auto"] | None = opt(None, TUNING_HELP["lr"], parse=parse_lr)
    momentum: float = opt(0.9, "SGD momentum")
    weight_decay: float = opt(1e-4, "weight decay")
    auto: bool = opt(False, TUNING_HELP["auto"])
    time_budget: float | None = opt(None, TUNING_HELP["time_budget"])
    ensemble: int | None = opt(None, TUNING_HELP["ensemble"], metavar="K")
    scheduler: Literal["cosine", "step", "none"] = opt(
        "cosine", "learning-rate schedule per epoch: cosine decay, step (StepLR), or none"
    )
    step_size: int = opt(7, "StepLR period in epochs (with --scheduler step)")
    gamma: float = opt(0.1, "StepLR decay factor (with --scheduler step)")
    label_smoothing: float = opt(0.0, "label smoothing of the cross-entropy loss")
    hidden: tuple[int, ...] = opt((), "hidden layer widths of an MLP head, e.g. 1024,512 (default: one Linear)")
    dropout: float = opt(0.0, "dropout before each Linear of the head")
    balance: Balance = opt("auto", LEVER_HELP["balance"])
    select_by: SelectBy = opt("auto", LEVER_HELP["select_by"])
    augment: Augment = opt("standard", LEVER_HELP["augment"])
    mixup: float = opt(0.0, LEVER_HELP["mixup"])
    cutmix: float = opt(0.0, LEVER_HELP["cutmix"])
    random_erasing: float = opt(0.0, LEVER_HELP["random_erasing"])
    cache_features: bool = opt(
        True, "freeze mode: run the frozen backbone once per image and train the head on the stored features"
    )
    feature_views: int = opt(
        0, "stored features: add K augmented views (random crop + flip) of every training image to the clean one"
    )
    head_epochs: int = opt(
        3,
        "finetune: epochs of head-only training on the frozen body's stored features before all layers train "
        "(fastai's fine_tune); 0 gives the tutorial's plain fine-tuning",
    )
    patience: int | None = opt(
        None, "stop after this many epochs without a better val accuracy (default: 5 on stored features, else off)"
    )
    compile: bool = opt(False, "torch.compile the model for image epochs (pays off for long runs, mostly on GPU)")
    checkpoint_budget: float = opt(
        0.1,
        "share of the training time that checkpoints (best model, resume state) may take: after every epoch, "
        "unless epochs are so fast (GPU) that this would cost more, then spaced out; 1 saves after every epoch",
    )
    int8: bool = opt(False, "freeze mode: int8 backbone (calibrated on training images) + a float head on its features")
    calib: int = opt(128, "--int8 / --mode qat: training images that calibrate the int8 ranges")
    activation_bits: Literal["auto", "7", "8"] = opt(
        "auto", "--int8 / --mode qat: int8 activation bits (auto: 8 on CPUs with VNNI or AMX, else 7)"
    )
    qat_epochs: int = opt(
        2,
        "--mode qat: epochs of quantization-aware training after the float fine-tuning, at a tenth of its learning "
        "rate (an epoch is kept only if it beats the calibrated start)",
    )
    val_split: float = opt(0.2, "val fraction when DATA has no train/val folders (stratified, seeded)")
    path_col: str | None = opt(None, _TABLE_HELP["path_col"])
    label_col: str | None = opt(None, _TABLE_HELP["label_col"])
    split_col: str | None = opt(None, _TABLE_HELP["split_col"])
    root: Path | None = opt(None, _TABLE_HELP["root"])
    label_delim: str | None = opt(None, _TABLE_HELP["label_delim"])
    task: Literal["auto", "single", "multilabel"] = opt("auto", _TABLE_HELP["task"])
    pos_weight: Literal["none", "auto"] = opt("none", _TABLE_HELP["pos_weight"])
    exclude: Path | None = opt(
        None,
        "file of images to leave out, path<TAB>reason per line (graft doctor --exclude-list writes one); they are "
        "listed in data_report.json with the reason",
    )
    seed: int = opt(0, "random seed (CPU runs with the same seed are repeatable)")
    device: Literal["auto", "cpu", "cuda", "mps"] = opt("auto", "auto picks a GPU when present")
    workers: int | None = opt(None, "image-decoding worker processes (default: from the core count)")
    nproc: int | None = opt(
        None,
        "train with N processes on this machine (DDP through torchrun: one per GPU with nccl, or CPU processes with "
        "gloo); --batch-size stays the global batch. For several machines run torchrun yourself (see the README)",
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
        if self.data is None:
            raise ConfigError("no dataset folder given: pass DATA (e.g. graft train path/to/images)")
        self.data = self.data if is_frame(self.data) else Path(self.data)  # graft.train(DataFrame)
        self.out = Path(self.out)
        self.resume = Path(self.resume) if self.resume is not None else None
        self.exclude = Path(self.exclude) if self.exclude is not None else None
        self.hidden = tuple(int(h) for h in self.hidden)
        self.log = tracker_names(self.log)
        checks = [
            (self.epochs >= 1, f"--epochs must be >= 1 (got {self.epochs})"),
            (self.batch_size >= 1, f"--batch-size must be >= 1 (got {self.batch_size})"),
            (0 <= self.dropout < 1, f"--dropout must be in [0, 1) (got {self.dropout})"),
            (
                0 <= self.label_smoothing < 1,
                f"--label-smoothing must be in [0, 1) (got {self.label_smoothing})",
            ),
            (0 < self.val_split < 1, f"--val-split must be between 0 and 1 (got {self.val_split})"),
            (all(h > 0 for h in self.hidden), f"--hidden widths must be positive (got {self.hidden})"),
            (self.patience is None or self.patience >= 1, f"--patience must be >= 1 (got {self.patience})"),
            (self.step_size >= 1, f"--step-size must be >= 1 (got {self.step_size})"),
            (self.feature_views >= 0, f"--feature-views must be >= 0 (got {self.feature_views})"),
            (self.head_epochs >= 0, f"--head-epochs must be >= 0 (got {self.head_epochs})"),
            (not self.int8 or self.mode == "freeze", "--int8 goes with --mode freeze; for fine-tuning use --mode qat"),
            (0 < self.checkpoint_budget <= 1, f"--checkpoint-budget must be in (0, 1] (got {self.checkpoint_budget})"),
            (self.calib >= 1, f"--calib must be >= 1 (got {self.calib})"),
            (self.qat_epochs >= 1, f"--qat-epochs must be >= 1 (got {self.qat_epochs})"),
            (self.workers is None or self.workers >= 0, f"--workers must be >= 0 (got {self.workers})"),
            (self.nproc is None or self.nproc >= 1, f"--nproc must be >= 1 (got {self.nproc})"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)
        check_augment(self)
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
class PredictConfig:
    """``graft predict``: classify images with a trained run."""

    run: Path = opt(None, "run directory written by graft train", positional=True)
    paths: list[Path] = opt([], "images or folders of images", positional=True, nargs="+")
    top_k: int = opt(5, "number of classes to report per image")
    threshold: float | None = opt(None, _TABLE_HELP["threshold"])
    category_names: Path | None = opt(None, "JSON file mapping class names to display names")
    json: bool = opt(False, "print JSON instead of a table")
    batch_size: int = opt(32, "images per batch")
    device: Literal["auto", "cpu", "cuda", "mps"] = opt("auto", "auto picks a GPU when present")
    plot: bool = opt(False, "write a figure per image (the model's input and its top-k bars) to --plot-dir")
    explain: bool = opt(False, "add a Grad-CAM overlay of the top class to each figure (implies --plot)")
    plot_dir: Path = opt(Path("predictions"), "folder for the --plot figures")
    tta: bool | None = opt(None, TUNING_HELP["tta"])
    out: Path | None = opt(
        None, "write a CSV (path, label, probability, top_k, error) instead of printing; streams any number of images"
    )

    def __post_init__(self) -> None:
        if self.run is None:
            raise ConfigError("no run directory given: pass RUN (e.g. graft predict runs/001-mobilenet_v2-freeze IMG)")
        self.plot_dir = Path(self.plot_dir)
        self.out = Path(self.out) if self.out is not None else None
        self.run = Path(self.run)
        self.paths = [Path(p) for p in self.paths]
        self.category_names = Path(self.category_names) if self.category_names else None
        if self.top_k < 1:
            raise ConfigError(f"--top-k must be >= 1 (got {self.top_k})")


@dataclass(kw_only=True)
class CheckConfig:
    """``graft check``: scan a dataset folder and report what would be used and skipped."""

    data: Path = opt(None, _DATA_HELP, positional=True)
    val_split: float = opt(0.2, "val fraction when DATA has no train/val folders")
    path_col: str | None = opt(None, _TABLE_HELP["path_col"])
    label_col: str | None = opt(None, _TABLE_HELP["label_col"])
    split_col: str | None = opt(None, _TABLE_HELP["split_col"])
    root: Path | None = opt(None, _TABLE_HELP["root"])
    label_delim: str | None = opt(None, _TABLE_HELP["label_delim"])
    task: Literal["auto", "single", "multilabel"] = opt("auto", _TABLE_HELP["task"])
    seed: int = opt(0, "random seed of the split")
    json: bool = opt(False, "print the report as JSON")

    def __post_init__(self) -> None:
        if self.data is None:
            raise ConfigError("no dataset folder given: pass DATA")
        self.data = Path(self.data)


@dataclass(kw_only=True)
class ArchsConfig:
    """``graft archs``: list the registered architectures and whether their weights are here."""

    json: bool = opt(False, "print JSON")
    available: bool = opt(False, "only architectures whose pretrained weights are on this machine")


@dataclass(kw_only=True)
class EvaluateConfig:
    """``graft evaluate``: accuracy (95% CI), balanced accuracy, per-class precision/recall/F1, confusion matrix
    and top losses of a run, on its val split (default) or on another folder of class folders."""

    run: Path = opt(None, "run directory written by graft train", positional=True)
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
    top_losses: int = opt(9, "images in top_losses.png")
    report: bool = opt(False, "also (re)write RUN/report.html (val split only)")
    batch_size: int | None = opt(None, "images per batch (default: the run's training batch size)")
    device: Literal["auto", "cpu", "cuda", "mps"] = opt("auto", "auto picks a GPU when present")
    json: bool = opt(False, "print evaluation.json instead of a summary")
    tta: bool | None = opt(None, TUNING_HELP["eval_tta"])

    def __post_init__(self) -> None:
        if self.run is None:
            raise ConfigError("no run directory given: pass RUN (e.g. graft evaluate runs/001-mobilenet_v2-freeze)")
        self.run = Path(self.run)
        self.data = Path(self.data) if self.data is not None else None
        self.out = Path(self.out) if self.out is not None else None
        if self.top_losses < 0:
            raise ConfigError(f"--top-losses must be >= 0 (got {self.top_losses})")
        if self.batch_size is not None and self.batch_size < 1:
            raise ConfigError(f"--batch-size must be >= 1 (got {self.batch_size})")
        if self.report and self.data is not None:
            raise ConfigError("--report describes the run's own val split: leave out DATA, or leave out --report")


@dataclass(kw_only=True)
class ShowBatchConfig:
    """``graft show-batch``: a grid of augmented training images (as training sees them), titled with their class."""

    data: Path = opt(None, "dataset folder or .csv/.tsv table (as for graft train)", positional=True)
    out: Path = opt(Path("batch.png"), "output image")
    n: int = opt(16, "number of images")
    arch: str = opt("mobilenet_v2", "architecture whose preprocessing (crop size, normalization) is shown")
    seed: int = opt(0, "random seed of the images and augmentations drawn")
    val_split: float = opt(0.2, "val fraction when DATA has no train/val folders (only training images are shown)")
    path_col: str | None = opt(None, _TABLE_HELP["path_col"])
    label_col: str | None = opt(None, _TABLE_HELP["label_col"])
    split_col: str | None = opt(None, _TABLE_HELP["split_col"])
    root: Path | None = opt(None, _TABLE_HELP["root"])
    augment: Augment = opt("standard", LEVER_HELP["augment"])
    mixup: float = opt(0.0, LEVER_HELP["mixup"])
    cutmix: float = opt(0.0, LEVER_HELP["cutmix"])
    random_erasing: float = opt(0.0, LEVER_HELP["random_erasing"])

    def __post_init__(self) -> None:
        if self.data is None:
            raise ConfigError("no dataset folder given: pass DATA (e.g. graft show-batch path/to/images)")
        self.data = Path(self.data)
        self.out = Path(self.out)
        if self.n < 1:
            raise ConfigError(f"--n must be >= 1 (got {self.n})")
        check_augment(self)


@dataclass(kw_only=True)
class QuantizeConfig:
    """``graft quantize``: post-training int8 quantization of a float run into RUN-int8 (torchao PT2E; CPU),
    with quantization.json comparing accuracy, size and speed."""

    run: Path = opt(None, "float run directory written by graft train", positional=True)
    calib: int = opt(128, "training images to calibrate the int8 activation ranges on")
    activation_bits: Literal["auto", "7", "8"] = opt(
        "auto", "int8 activation bits: auto is 8 on CPUs with VNNI (or AMX), else 7 (8 overflows their kernels)"
    )
    name: str | None = opt(None, "folder of the int8 run, next to RUN (default: RUN-int8)")
    exist_ok: bool = opt(False, "replace the files of an existing int8 run folder")
    json: bool = opt(False, "print quantization.json")

    def __post_init__(self) -> None:
        if self.run is None:
            raise ConfigError("no run directory given: pass RUN (e.g. graft quantize runs/001-mobilenet_v2-freeze)")
        self.run = Path(self.run)
        if self.calib < 1:
            raise ConfigError(f"--calib must be >= 1 (got {self.calib})")


@dataclass(kw_only=True)
class ExportConfig:
    """``graft export``: write a run as ONNX or TorchScript plus a JSON sidecar (classes, preprocessing), verified
    against PyTorch on real images."""

    run: Path = opt(None, "run directory written by graft train", positional=True)
    format: Literal["onnx", "torchscript"] = opt("onnx", "file format")
    out: Path | None = opt(
        None, "file to write (default: RUN/model.onnx or RUN/model.torchscript.pt); the sidecar is OUT.json"
    )
    images: Path | None = opt(None, "images to verify with (default: the run's val images)")
    verify_images: int = opt(256, "verify on at most this many images, spread evenly (0: all)")
    tolerance: float = opt(1e-4, "largest allowed absolute difference between exported and PyTorch logits")
    opset: int | None = opt(None, "ONNX opset (default: the exporter's)")
    json: bool = opt(False, "print the sidecar as JSON")
    int8: bool = opt(
        False,
        "ONNX only: quantize with ONNX Runtime (static int8, QDQ) into a folder (--out, default RUN/onnx-int8) "
        "with a torch-free predict.py; refused if val accuracy drops more than 1 point",
    )
    calib: int = opt(128, "--int8: training images to calibrate the activation ranges on")

    def __post_init__(self) -> None:
        if self.run is None:
            raise ConfigError("no run directory given: pass RUN (e.g. graft export runs/001-mobilenet_v2-freeze)")
        self.run = Path(self.run)
        self.out = Path(self.out) if self.out is not None else None
        self.images = Path(self.images) if self.images is not None else None
        if self.verify_images < 0:
            raise ConfigError(f"--verify-images must be >= 0 (got {self.verify_images}); 0 verifies on all images")
        if self.tolerance <= 0:
            raise ConfigError(f"--tolerance must be > 0 (got {self.tolerance})")
        if self.int8 and self.format != "onnx":
            raise ConfigError("--int8 quantizes an ONNX model: use it with --format onnx")
        if self.calib < 1:
            raise ConfigError(f"--calib must be >= 1 (got {self.calib})")


@dataclass(kw_only=True)
class ServeConfig:
    """``graft serve``: an HTTP API (POST /predict, GET /model, GET /health) and a web page (GET /) for a run."""

    run: Path = opt(None, "run directory written by graft train", positional=True)
    host: str = opt(
        "127.0.0.1", "address to listen on (0.0.0.0 exposes the model to the network: it then needs an API key)"
    )
    port: int = opt(8000, "TCP port (0: any free port)")
    top_k: int = opt(5, "classes per answer unless the request asks for ?top_k=N")
    max_upload_mb: float = opt(20.0, "largest request body in MB (answered 413 beyond)")
    max_pixels: int = opt(64_000_000, "largest image in pixels, checked before decoding (answered 413 beyond)")
    timeout: float = opt(30.0, "seconds one request may take, upload included (answered 408 beyond)")
    max_batch: int = opt(16, "most images the model runs at once (concurrent requests are batched)")
    tta: bool | None = opt(None, TUNING_HELP["tta"])
    workers: int | None = opt(None, "threads decoding uploads (default: from the core count)")
    device: Literal["auto", "cpu", "cuda", "mps"] = opt("auto", "auto picks a GPU when present")
    api_key: str | None = field(  # repr=False: the key never shows in a printed config or a traceback
        default=None,
        repr=False,
        metadata={
            "help": "key that requests must send (Authorization: Bearer KEY or X-API-Key: KEY; GET /health and the "
            "page stay open, the page asks for the key); required with a --host other than loopback. Prefer the "
            "GRAFT_API_KEY environment variable: a key on the command line is visible to other users in ps "
            "(default: $GRAFT_API_KEY, else none)"
        },
    )
    auth: bool = opt(
        True,
        "--no-auth: serve a --host other than loopback without an API key (anyone who reaches it can use the model); "
        "GRAFT_API_KEY is then ignored",
    )

    def __post_init__(self) -> None:
        if self.run is None:
            raise ConfigError("no run directory given: pass RUN (e.g. graft serve runs/001-mobilenet_v2-freeze)")
        self.run = Path(self.run)
        if self.api_key is not None and not self.auth:
            raise ConfigError("--api-key and --no-auth contradict each other: keep one of them")
        if self.api_key is not None and (problem := api_key_problem(self.api_key)):
            raise ConfigError(f"--api-key {problem}")
        checks = [
            (0 <= self.port <= 65535, f"--port must be in 0..65535 (got {self.port})"),
            (self.top_k >= 1, f"--top-k must be >= 1 (got {self.top_k})"),
            (self.max_upload_mb > 0, f"--max-upload-mb must be > 0 (got {self.max_upload_mb})"),
            (self.max_pixels >= 1, f"--max-pixels must be >= 1 (got {self.max_pixels})"),
            (self.timeout > 0, f"--timeout must be > 0 (got {self.timeout})"),
            (self.max_batch >= 1, f"--max-batch must be >= 1 (got {self.max_batch})"),
            (self.workers is None or self.workers >= 1, f"--workers must be >= 1 (got {self.workers})"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1_000_000)


def api_key_problem(key: str) -> str | None:
    """Why ``key`` cannot be an API key (it travels in an HTTP header), or None; the key itself is never quoted."""
    if not key:
        return "is empty: give a key, e.g. one from python -c 'import secrets; print(secrets.token_urlsafe(32))'"
    if not all("!" <= c <= "~" for c in key):
        return "must be printable ASCII without spaces (it travels in an HTTP header)"
    return None


def to_jsonable(obj: Any) -> Any:
    """Dataclasses, paths and tuples to plain JSON values."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_jsonable(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, list | tuple):
        return [to_jsonable(x) for x in obj]
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    return obj


_TRAIN_DEFAULTS = {f: TrainConfig.__dataclass_fields__[f].default for f in ("arch", "pretrained", "batch_size")}


@dataclass(kw_only=True)
class DoctorConfig:
    """``graft doctor``: exact and near duplicates, train/val leakage, likely label errors, outliers, image quality
    and class balance of a dataset, from the backbone features that training stores (computed once for both).
    Exit status 0 when nothing serious was found, 3 when val images leak from train or identical images carry
    different labels."""

    data: Path = opt(None, "dataset folder or .csv/.tsv table (as for graft train)", positional=True)
    arch: str = opt(_TRAIN_DEFAULTS["arch"], "backbone whose features compare the images (the training default)")
    pretrained: str = opt(_TRAIN_DEFAULTS["pretrained"], "its weights, as for graft train")
    out: Path | None = opt(None, "output folder (default: doctor/<name of DATA>)")
    exclude_list: Path | None = opt(
        None,
        "also write the files to leave out (one copy per duplicate group, train copies of val images, confident "
        "label errors, unreadable files): path<TAB>reason per line, for graft train --exclude",
    )
    html: bool = opt(True, "write doctor.html (a gallery per kind of finding)")
    val_split: float = opt(0.2, "val fraction when DATA has no train/val folders (as for graft train)")
    path_col: str | None = opt(None, _TABLE_HELP["path_col"])
    label_col: str | None = opt(None, _TABLE_HELP["label_col"])
    split_col: str | None = opt(None, _TABLE_HELP["split_col"])
    root: Path | None = opt(None, _TABLE_HELP["root"])
    seed: int = opt(0, "random seed of the split and of the label folds")
    batch_size: int = opt(_TRAIN_DEFAULTS["batch_size"], "images per batch of the feature pass")
    device: Literal["auto", "cpu", "cuda", "mps"] = opt("auto", "auto picks a GPU when present")
    json: bool = opt(False, "print doctor.json's summary as JSON instead of text")

    def __post_init__(self) -> None:
        if self.data is None:
            raise ConfigError("no dataset folder given: pass DATA (e.g. graft doctor path/to/images)")
        self.data = Path(self.data)
        self.out = Path(self.out) if self.out is not None else Path("doctor") / self.data.resolve().name
        self.exclude_list = Path(self.exclude_list) if self.exclude_list is not None else None
        if not 0 < self.val_split < 1:
            raise ConfigError(f"--val-split must be between 0 and 1 (got {self.val_split})")
        if self.batch_size < 1:
            raise ConfigError(f"--batch-size must be >= 1 (got {self.batch_size})")
