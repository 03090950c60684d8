"""``graft lr-find DATA [train options]``: the range test of :mod:`graft.training.lrfind` for every stage a run of
these options would train: head stages on the stored features, the all-layers stage of ``--mode finetune`` on
images (a copy of the weights: the model is left as it was)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch import nn

from graft.core.runtime import pick_device
from graft.training.lrfind import RangeTest, stage_range_test
from graft.training.pipeline import set_up
from graft.training.stagedata import StageData


def lr_find(
    cfg: Any, *, log: Callable[[str], None] = print, draw: Callable[[RangeTest, Path], Any] | None = None
) -> list[RangeTest]:
    """Run the range test of each stage of ``cfg`` (an :class:`graft.core.config.LrFindConfig`); write
    ``lr_find.csv`` (and, with ``draw``, ``lr_find.png``) into ``cfg.plot_dir``, or ``lr_find-<stage>.*`` when
    there are two stages. Returns the tests, in stage order."""
    device = pick_device(cfg.device)
    s = set_up(cfg)
    model = s.model.to(device)
    key = s.cache_key(s.meta(cfg), device.type)
    data = StageData(cfg, model, s.dataset, s.preprocess, device, s.generator, key, log, check_leakage=False)
    criterion = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
    stages = [stage for stage, _, _ in cfg.stages()]
    cfg.plot_dir.mkdir(parents=True, exist_ok=True)
    tests = []
    for stage in stages:
        on_features = stage == "head" and (cfg.cache_features or cfg.mode == "finetune")
        if stage == "head":
            model.freeze()
        else:
            model.unfreeze()
        target, loader = (model.head, data.features()[0]) if on_features else (model, data.images()[0])
        test = stage_range_test(cfg, target, loader, criterion, device, stage=stage, on_features=on_features,
                                start=cfg.start_lr, end=cfg.end_lr, iterations=cfg.iterations,
                                generator=s.generator)  # fmt: skip
        stem = "lr_find" if len(stages) == 1 else f"lr_find-{stage}"
        test.write_csv(cfg.plot_dir / f"{stem}.csv")
        if draw is not None:
            test.files["png"] = draw(test, cfg.plot_dir / f"{stem}.png")
        tests.append(test)
    return tests
