"""``graft predict``'s config: what runs a trained model over images and videos. No heavy imports."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from graft.core.config.data import BATCH_SIZE, TABLE_HELP
from graft.core.config.fields import (
    ABOVE_0,
    AT_LEAST_1,
    DEVICE,
    FRACTION,
    RUN,
    Device,
    Shared,
    check_all,
    check_fields,
    opt,
    optional_path,
)
from graft.core.config.levers import TTA
from graft.core.errors import ConfigError

#: classes shown per image
TOP_K = Shared(5, check=AT_LEAST_1)


def seconds(value: str | float) -> float:
    """A duration in seconds: ``0.5s``, ``2`` (seconds), ``500ms``."""
    if isinstance(value, int | float):
        return float(value)
    text = value.strip().lower()
    scale = 1e-3 if text.endswith("ms") else 1.0
    try:
        return float(text.removesuffix("ms").removesuffix("s")) * scale
    except ValueError:
        raise ConfigError(f"expected seconds such as 0.5s, 2 or 500ms, got {value!r}") from None


@dataclass(kw_only=True)
class PredictConfig:
    """``graft predict``: classify images, videos and streams with a trained run."""

    run: Path = opt(RUN, example="graft predict runs/001-mobilenet_v2-freeze IMG")
    paths: list[Path] = opt([], "images, folders of images, or video files", positional=True, nargs="*")
    top_k: int = opt(TOP_K, "number of classes to report per image")
    threshold: float | None = opt(None, TABLE_HELP["threshold"], check=FRACTION)
    category_names: Path | None = opt(None, "JSON file mapping class names to display names")
    json: bool = opt(False, "print JSON instead of a table")
    batch_size: int = opt(BATCH_SIZE)
    device: Device = opt(DEVICE)
    plot: bool = opt(False, "write a figure per image (the model's input and its top-k bars) to --plot-dir")
    explain: bool = opt(False, "add a Grad-CAM overlay of the top class to each figure (implies --plot)")
    plot_dir: Path = opt(Path("predictions"), "folder for the --plot figures")
    tta: bool | None = opt(TTA)
    follow_links: bool = opt(False, "follow links to folders outside the folders given (default: passed over)")
    out: Path | None = opt(
        None,
        "write a CSV (path, label, probability, top_k, error) instead of printing; streams any number of images; "
        "for videos: source, frame, time_s, label, probability",
    )
    source: str | None = opt(
        None,
        "a camera index (0 is the first) or a stream URL (rtsp://, http(s)://...), read until it ends or Ctrl-C; "
        "or a video file",
    )
    every: float | None = opt(
        None,
        "videos: classify one frame per this many seconds (0.5s, 2 = 2s); default: every frame",
        check=ABOVE_0,
        parse=seconds,
    )
    stride: int | None = opt(None, "videos: classify every Nth frame (1: every frame, the default)", check=AT_LEAST_1)

    def __post_init__(self) -> None:
        self.every = seconds(self.every) if self.every is not None else None
        check_fields(self)
        check_all([(self.every is None or self.stride is None, "--every and --stride both pick frames; give one")])
        self.plot_dir = Path(self.plot_dir)
        self.out = optional_path(self.out)
        self.run = Path(self.run)
        self.paths = [Path(p) for p in self.paths]
        self.category_names = Path(self.category_names) if self.category_names else None
