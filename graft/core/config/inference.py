"""``graft predict``'s config: what runs a trained model over images. No heavy imports."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from graft.core.config.data import BATCH_SIZE, TABLE_HELP
from graft.core.config.fields import AT_LEAST_1, DEVICE, FRACTION, RUN, Device, Shared, check_fields, opt, optional_path
from graft.core.config.levers import TTA

#: classes shown per image
TOP_K = Shared(5, check=AT_LEAST_1)


@dataclass(kw_only=True)
class PredictConfig:
    """``graft predict``: classify images with a trained run."""

    run: Path = opt(RUN, example="graft predict runs/001-mobilenet_v2-freeze IMG")
    paths: list[Path] = opt([], "images or folders of images", positional=True, nargs="+")
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
        None, "write a CSV (path, label, probability, top_k, error) instead of printing; streams any number of images"
    )

    def __post_init__(self) -> None:
        check_fields(self)
        self.plot_dir = Path(self.plot_dir)
        self.out = optional_path(self.out)
        self.run = Path(self.run)
        self.paths = [Path(p) for p in self.paths]
        self.category_names = Path(self.category_names) if self.category_names else None
