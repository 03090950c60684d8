"""Dataset folders: find the classes, validate every image by decoding it, split, and report.

Two layouts are accepted: ``ROOT/train/<class>/*`` + ``ROOT/val/<class>/*`` ("train/val"; the val folder
may also be called ``valid`` or ``validation``), or ``ROOT/<class>/*`` ("split"), which is split per class
with a seeded RNG. Files are recognised by their content, never by their extension, and every candidate is
fully decoded once during the scan, so a training run never meets a broken file. Files that cannot be used
are skipped and listed with a reason in the :class:`DataReport`.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from graft.core.errors import ImageError
from graft.data.folders import Sample
from graft.data.images import DecodedImages, load_rgb


class ImageDataset:
    """Map-style dataset of ``(transform(load_rgb(path)), label)``, for ``torch.utils.data.DataLoader``.

    Images were validated by :func:`scan`; one that fails now (changed since) raises :class:`ImageError`
    naming the file rather than being silently replaced.
    """

    def __init__(
        self,
        samples: Sequence[Sample],
        transform: Callable[[Any], Any] | None = None,
        *,
        draft: int | None = None,
        decoded: DecodedImages | None = None,
    ) -> None:
        self.samples = list(samples)
        self.transform = transform
        self.draft = draft
        self.decoded = decoded

    @property
    def targets(self) -> list[int]:
        """Labels in sample order (for samplers and class weights)."""
        return [s.label for s in self.samples]

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> tuple[Any, int]:
        s = self.samples[i]
        try:
            img = self.decoded.take(s.path, self.draft) if self.decoded else None
            img = img or load_rgb(s.path, draft=self.draft)
        except ImageError as e:
            raise ImageError(e.path, f"{e.reason} (it was usable when the dataset was scanned)") from None
        return (self.transform(img) if self.transform else img), s.label


class MemoryImageDataset:
    """Images decoded once and kept in memory as uint8 ``(3, H, W)`` tensors, transformed per access.

    Fine-tuning reads every image once per epoch; decoding once per run instead saves the JPEG decode of every
    epoch after the first. ``prepare`` runs once per image at decode time (e.g. resize + centre crop for val, so
    that only the normalization runs per epoch), ``transform`` at every access.
    """

    def __init__(
        self,
        samples: Sequence[Sample],
        *,
        prepare: Callable[[Any], Any],
        transform: Callable[[Any], Any] | None = None,
        draft: int | None = None,
        workers: int | None = None,
        decoded: DecodedImages | None = None,
    ) -> None:
        self.samples = list(samples)
        self.transform = transform

        def decode(s: Sample) -> Any:
            img = decoded.take(s.path, draft) if decoded else None
            return prepare(img or load_rgb(s.path, draft=draft))

        with ThreadPoolExecutor(max_workers=workers or min(4, os.cpu_count() or 1)) as pool:
            self.images = list(pool.map(decode, self.samples))  # PIL and torchvision release the GIL here

    @property
    def nbytes(self) -> int:
        return sum(int(t.numel() * t.element_size()) for t in self.images)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> tuple[Any, int]:
        img = self.images[i]
        return (self.transform(img) if self.transform else img), self.samples[i].label


def estimated_decoded_bytes(samples: Sequence[Sample], shorter_side: int) -> int:
    """Rough memory of the samples decoded at ``shorter_side`` (4:3 images assumed; headers not read)."""
    return len(samples) * 3 * shorter_side * (shorter_side * 4 // 3)


def available_memory() -> int:
    """Bytes of memory available to this process (``MemAvailable``), or 0 when unknown."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0
