"""One typed config dataclass per command: the single source of truth of every option's default, help text and
check.

The CLI (``graft.commands.cli``) makes its options from these fields (name, type, default and the ``help``
metadata), the Python API takes the same names as keyword arguments (:func:`fields.from_options`), and a run saves
the resolved config as ``config.json``. The modules are grouped by what the options are about:

- :mod:`.fields`: the ``opt`` field, shared checks, ``--device`` and ``RUN``, building a config from keywords;
- :mod:`.data`: DATA, a table's columns, the split; ``graft check``;
- :mod:`.model`: backbone, weights, int8 calibration; ``graft archs``, ``graft weights``;
- :mod:`.levers`: balance, best-epoch selection, augmentation, ``--lr auto``, ``--auto``, ``--tta``;
- :mod:`.tracking`: ``--log`` and its trackers;
- :mod:`.training`: ``graft train``, ``graft lr-find``;
- :mod:`.inference`, :mod:`.insight`: ``graft predict``; ``graft evaluate``, ``show-batch``, ``doctor``, ``suggest``;
- :mod:`.serving`, :mod:`.export`: ``graft serve``; ``graft quantize``, ``graft export``;
- :mod:`.app`: ``graft app``.

This package must stay free of heavy imports: ``graft --help`` imports it.
"""

from __future__ import annotations

from graft.core.config.app import AppConfig
from graft.core.config.data import CheckConfig, is_frame, table_options
from graft.core.config.export import ExportConfig, QuantizeConfig
from graft.core.config.fields import from_options, opt, to_jsonable
from graft.core.config.inference import PredictConfig
from graft.core.config.insight import DoctorConfig, EvaluateConfig, ShowBatchConfig, SuggestConfig
from graft.core.config.levers import augment_options
from graft.core.config.model import ArchsConfig, WeightsConfig
from graft.core.config.serving import ServeConfig, api_key_problem
from graft.core.config.training import LrFindConfig, TrainConfig

__all__ = [
    "AppConfig",
    "ArchsConfig",
    "CheckConfig",
    "DoctorConfig",
    "EvaluateConfig",
    "ExportConfig",
    "LrFindConfig",
    "PredictConfig",
    "QuantizeConfig",
    "ServeConfig",
    "ShowBatchConfig",
    "SuggestConfig",
    "TrainConfig",
    "WeightsConfig",
    "api_key_problem",
    "augment_options",
    "from_options",
    "is_frame",
    "opt",
    "table_options",
    "to_jsonable",
]
