"""The spellings of the classic ``train.py`` / ``predict.py`` course project, accepted by ``graft train`` and
``graft predict`` as hidden aliases of graft's own options.

Many copies of that project teach ``python train.py DATA --arch vgg13 --hidden_units 1024 512 --learning_rate
0.003 --epochs 7 --gpu`` and ``python predict.py IMAGE CHECKPOINT --top_k 5 --category_names cat_to_name.json``.
The aliases write into the same config fields as graft's options (``dest``), stay out of ``--help``
(``argparse.SUPPRESS``) and are listed in the README. Their default is SUPPRESS too, so an alias that is not given
leaves the field's own default in place.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from graft.core import checkpoint as ckpt

#: command -> (classic spelling, graft option it stands for, argparse keywords)
ALIASES: dict[str, list[tuple[str, str, dict[str, Any]]]] = {
    "train": [
        ("--hidden_units", "--hidden", {"dest": "hidden", "nargs": "+", "type": int}),
        ("--learning_rate", "--lr", {"dest": "lr", "type": float}),
        ("--gpu", "--device cuda", {"dest": "device", "action": "store_const", "const": "cuda"}),
        ("--save_dir", "--out", {"dest": "out", "type": Path}),
        ("--batch_size", "--batch-size", {"dest": "batch_size", "type": int}),
    ],
    "predict": [
        ("--top_k", "--top-k", {"dest": "top_k", "type": int}),
        ("--category_names", "--category-names", {"dest": "category_names", "type": Path}),
        ("--gpu", "--device cuda", {"dest": "device", "action": "store_const", "const": "cuda"}),
        ("--batch_size", "--batch-size", {"dest": "batch_size", "type": int}),
    ],
}

#: the files of a run directory that stand for the run (the classic CHECKPOINT argument is a file)
RUN_FILES = (ckpt.MODEL_FILE, ckpt.META_FILE, "model.pt2")


def add_aliases(command: str, parser: argparse.ArgumentParser) -> None:
    """The classic spellings of ``command``'s options, hidden from ``--help``."""
    for flag, _, kwargs in ALIASES.get(command, []):
        parser.add_argument(flag, help=argparse.SUPPRESS, default=argparse.SUPPRESS, **kwargs)


def run_dir_of(path: Path) -> Path | None:
    """The run directory ``path`` names: the folder itself, or the folder of one of its model files (the classic
    CHECKPOINT); None when ``path`` is neither."""
    if path.is_dir() and (path / ckpt.META_FILE).is_file():
        return path
    if path.is_file() and path.name in RUN_FILES and (path.parent / ckpt.META_FILE).is_file():
        return path.parent
    return None


def classic_order(run: Path, paths: list[Path]) -> tuple[Path, list[Path]]:
    """``(run, images)`` of ``graft predict``, given graft's order (RUN IMAGES...) or the classic one (IMAGE
    CHECKPOINT): the run is taken from the end only when the first argument is not a run and the last one is."""
    if run_dir_of(run) is None and paths and (last := run_dir_of(paths[-1])) is not None:
        return last, [run, *paths[:-1]]
    return run_dir_of(run) or run, paths
