"""Dataset folders and images: :func:`scan` finds the classes, validates every image and splits; :func:`load_rgb`
decodes one file safely; the datasets feed training. Internal modules import the submodules; this package
re-exports the public names."""

from graft.data.datasets import ImageDataset, MemoryImageDataset, available_memory, estimated_decoded_bytes
from graft.data.folders import DataReport, Dataset, Sample, Skipped, scan
from graft.data.images import (
    IMAGE_FORMATS,
    KNOWN_PLACEHOLDERS,
    MAX_ASPECT,
    MAX_PIXELS,
    DecodedImages,
    check_image,
    load_rgb,
)

__all__ = [
    "IMAGE_FORMATS",
    "KNOWN_PLACEHOLDERS",
    "MAX_ASPECT",
    "MAX_PIXELS",
    "DataReport",
    "Dataset",
    "DecodedImages",
    "ImageDataset",
    "MemoryImageDataset",
    "Sample",
    "Skipped",
    "available_memory",
    "check_image",
    "estimated_decoded_bytes",
    "load_rgb",
    "scan",
]
