"""Int8 quantization: which quantizer for this CPU (:mod:`~graft.int8.backend`), quantizing, compiling, checking
and saving a program (:mod:`~graft.int8.program`), and post-training quantization of a run, ``graft quantize``
(:mod:`~graft.int8.ptq`). Loading and running a saved program is inference's (:mod:`graft.inference.int8_classifier`,
pickle-free archives: :mod:`graft.inference.int8_archive`; their names are :mod:`graft.inference`'s). Int8 training
(``--int8``, ``--mode qat``) is a training pipeline: :mod:`graft.training.int8`."""

from graft.int8.backend import (
    ACTIVATION_BITS,
    CPU_FEATURES,
    QUANT_FILE,
    Backend,
    choose_backend,
    cpu_flags,
    cpu_info,
)
from graft.int8.program import program_bytes, quantize_body
from graft.int8.ptq import QuantizeResult, accuracy, calibration_batches, float_file, measure, quantize

__all__ = [
    "ACTIVATION_BITS",
    "CPU_FEATURES",
    "QUANT_FILE",
    "Backend",
    "QuantizeResult",
    "accuracy",
    "calibration_batches",
    "choose_backend",
    "cpu_flags",
    "cpu_info",
    "float_file",
    "measure",
    "program_bytes",
    "quantize",
    "quantize_body",
]
