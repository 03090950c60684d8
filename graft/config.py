"""One typed config dataclass per command: the single source of truth.

The CLI (``graft.cli``) generates its options from these fields (name, type, default and the ``help`` metadata),
the Python API takes the same names as keyword arguments, and a run saves the resolved config as ``config.json``.
This module must stay free of heavy imports: ``graft --help`` imports it.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from graft.errors import ConfigError


def opt(default: Any, help: str, **meta: Any) -> Any:
    """A config field with its CLI help text (and optional ``positional``/``short``/``metavar`` metadata)."""
    if isinstance(default, list | dict):
        return field(default_factory=lambda: type(default)(default), metadata={"help": help, **meta})
    return field(default=default, metadata={"help": help, **meta})


def default_data_root() -> Path:
    """$GRAFT_DATA, else the shared hymenoptera folder next to the checkout (what `make demo` uses)."""
    env = os.environ.get("GRAFT_DATA")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[2] / "shared" / "data" / "hymenoptera_data"


@dataclass(kw_only=True)
class TrainConfig:
    """Everything ``graft train`` needs; saved verbatim (resolved) as the run's ``config.json``."""

    data: Path = opt(
        None, "dataset folder: DATA/train/<class>/* + DATA/val/<class>/*, or DATA/<class>/*", positional=True
    )
    arch: str = opt("mobilenet_v2", "backbone architecture (see `graft archs`); timm models as timm/<name>")
    mode: Literal["freeze", "finetune"] = opt(
        "freeze", "freeze: train only the new head on a frozen backbone; finetune: train all layers"
    )
    pretrained: str = opt(
        "auto",
        "auto (best weights available here), none (random init), a weights tag such as IMAGENET1K_V1, "
        "or a path to a weights file",
    )
    epochs: int = opt(10, "number of epochs")
    batch_size: int = opt(32, "images per batch")
    optimizer: Literal["adamw", "sgd"] = opt("adamw", "optimizer (sgd uses --momentum, as in the tutorial)")
    lr: float | None = opt(
        None,
        "learning rate (default: 1e-3 for freeze, 2e-4 for finetune; scaled linearly with batch size / 32 for sgd)",
    )
    momentum: float = opt(0.9, "SGD momentum")
    weight_decay: float = opt(1e-4, "weight decay")
    scheduler: Literal["cosine", "step", "none"] = opt(
        "cosine", "learning-rate schedule per epoch: cosine decay, step (StepLR), or none"
    )
    step_size: int = opt(7, "StepLR period in epochs (with --scheduler step)")
    gamma: float = opt(0.1, "StepLR decay factor (with --scheduler step)")
    label_smoothing: float = opt(0.0, "label smoothing of the cross-entropy loss")
    hidden: tuple[int, ...] = opt((), "hidden layer widths of an MLP head, e.g. 1024,512 (default: one Linear)")
    dropout: float = opt(0.0, "dropout before each Linear of the head")
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
    val_split: float = opt(0.2, "val fraction when DATA has no train/val folders (stratified, seeded)")
    seed: int = opt(0, "random seed (CPU runs with the same seed are repeatable)")
    device: Literal["auto", "cpu", "cuda", "mps"] = opt("auto", "auto picks a GPU when present")
    workers: int | None = opt(None, "image-decoding worker processes (default: from the core count)")
    out: Path = opt(Path("runs"), "folder that holds run directories")
    name: str | None = opt(None, "run directory name (default: a fresh numbered name)")
    exist_ok: bool = opt(False, "reuse --name if the run directory exists (its files are replaced)")

    def __post_init__(self) -> None:
        if self.data is None:
            raise ConfigError("no dataset folder given: pass DATA (e.g. graft train path/to/images)")
        self.data = Path(self.data)
        self.out = Path(self.out)
        self.hidden = tuple(int(h) for h in self.hidden)
        checks = [
            (self.epochs >= 1, f"--epochs must be >= 1 (got {self.epochs})"),
            (self.batch_size >= 1, f"--batch-size must be >= 1 (got {self.batch_size})"),
            (self.lr is None or self.lr > 0, f"--lr must be > 0 (got {self.lr})"),
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
            (self.workers is None or self.workers >= 0, f"--workers must be >= 0 (got {self.workers})"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)

    def stages(self) -> list[tuple[str, int, float]]:
        """(stage, epochs, learning rate) in order: ``head`` trains the head on a frozen body, ``all`` every layer."""
        default = {"adamw": {"head": 1e-3, "all": 2e-4}, "sgd": {"head": 1e-2, "all": 1e-3}}[self.optimizer]
        if self.mode == "freeze":
            return [("head", self.epochs, self.lr or default["head"])]
        head = [("head", self.head_epochs, default["head"])] if self.head_epochs else []
        return [*head, ("all", self.epochs, self.lr or default["all"])]

    def to_dict(self) -> dict[str, Any]:
        return to_jsonable(self)


@dataclass(kw_only=True)
class PredictConfig:
    """``graft predict``: classify images with a trained run."""

    run: Path = opt(None, "run directory written by graft train", positional=True)
    paths: list[Path] = opt([], "images or folders of images", positional=True, nargs="+")
    top_k: int = opt(5, "number of classes to report per image")
    category_names: Path | None = opt(None, "JSON file mapping class names to display names")
    json: bool = opt(False, "print JSON instead of a table")
    batch_size: int = opt(32, "images per batch")
    device: Literal["auto", "cpu", "cuda", "mps"] = opt("auto", "auto picks a GPU when present")

    def __post_init__(self) -> None:
        if self.run is None:
            raise ConfigError("no run directory given: pass RUN (e.g. graft predict runs/001-mobilenet_v2-freeze IMG)")
        self.run = Path(self.run)
        self.paths = [Path(p) for p in self.paths]
        self.category_names = Path(self.category_names) if self.category_names else None
        if self.top_k < 1:
            raise ConfigError(f"--top-k must be >= 1 (got {self.top_k})")


@dataclass(kw_only=True)
class CheckConfig:
    """``graft check``: scan a dataset folder and report what would be used and skipped."""

    data: Path = opt(None, "dataset folder", positional=True)
    val_split: float = opt(0.2, "val fraction when DATA has no train/val folders")
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
