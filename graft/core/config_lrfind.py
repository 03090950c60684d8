"""``graft lr-find``'s config: the options of ``graft train`` (what the range test trains) and the test's own."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from graft.core.config import TrainConfig, opt
from graft.core.errors import ConfigError


@dataclass(kw_only=True)
class LrFindConfig(TrainConfig):
    """``graft lr-find``: the learning-rate range test (Smith 2015, as fastai's lr_find): the learning rate grows
    exponentially from --start-lr to --end-lr over --iterations steps while the smoothed training loss is recorded;
    the suggestion is fastai's "valley". Writes lr_find.png and lr_find.csv per stage (head stages on the stored
    features; with --mode finetune also the all-layers stage, on a copy of the model)."""

    iterations: int = opt(
        100, "steps of the range test per stage (it stops earlier once the loss exceeds 4x its minimum)"
    )
    start_lr: float = opt(1e-7, "first learning rate of the range test")
    end_lr: float = opt(10.0, "last learning rate of the range test")
    plot_dir: Path = opt(Path("lr_find"), "folder for lr_find.png and lr_find.csv (one pair per stage)")

    def __post_init__(self) -> None:
        super().__post_init__()
        self.plot_dir = Path(self.plot_dir)
        if self.iterations < 10:
            raise ConfigError(f"--iterations must be >= 10 (got {self.iterations})")
        if not 0 < self.start_lr < self.end_lr:
            raise ConfigError(f"--start-lr must be > 0 and below --end-lr (got {self.start_lr}, {self.end_lr})")
