"""Loaded runs: the :class:`Classifier` contract, float and int8 runs behind :func:`load` (an int8 run's saved
program, loaded without pickle and compiled: :class:`Int8Classifier`), the files a command is given, and CSV output.
Internal modules import the submodules; this package re-exports the public names."""

from graft.inference.classifier import Classifier, PathResult, Prediction, decode_threads
from graft.inference.csvout import CsvSummary, predict_to_csv, read_category_names
from graft.inference.float_classifier import FloatClassifier
from graft.inference.int8_archive import INT8_FORMAT, PROGRAM_FILE, QuantizationError, check_archive
from graft.inference.int8_classifier import Int8Classifier, Int8Program, load_int8, load_program
from graft.inference.loading import is_int8, load, read_meta
from graft.inference.paths import expand_paths, iter_paths

__all__ = [
    "INT8_FORMAT",
    "PROGRAM_FILE",
    "Classifier",
    "CsvSummary",
    "FloatClassifier",
    "Int8Classifier",
    "Int8Program",
    "PathResult",
    "Prediction",
    "QuantizationError",
    "check_archive",
    "decode_threads",
    "expand_paths",
    "is_int8",
    "iter_paths",
    "load",
    "load_int8",
    "load_program",
    "predict_to_csv",
    "read_category_names",
    "read_meta",
]
