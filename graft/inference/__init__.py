"""Loaded runs: the :class:`Classifier` contract, float and int8 runs behind :func:`load`, the files a command is
given, and CSV output. Internal modules import the submodules; this package re-exports the public names."""

from graft.inference.classifier import Classifier, PathResult, Prediction, decode_threads
from graft.inference.csvout import CsvSummary, predict_to_csv, read_category_names
from graft.inference.float_classifier import FloatClassifier
from graft.inference.loading import is_int8, load, read_meta
from graft.inference.paths import expand_paths, iter_paths

__all__ = [
    "Classifier",
    "CsvSummary",
    "FloatClassifier",
    "PathResult",
    "Prediction",
    "decode_threads",
    "expand_paths",
    "is_int8",
    "iter_paths",
    "load",
    "predict_to_csv",
    "read_category_names",
    "read_meta",
]
