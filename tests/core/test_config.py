"""The configs are the one source of each option's default and check: the Python API's functions that mirror a
config take its fields as keyword arguments and restate no default."""

from __future__ import annotations

import dataclasses
import inspect

import pytest

from graft.core.config import (
    DoctorConfig,
    EvaluateConfig,
    ExportConfig,
    LrFindConfig,
    QuantizeConfig,
    ServeConfig,
    ShowBatchConfig,
    TrainConfig,
)
from graft.core.config.fields import defaults
from graft.core.errors import ConfigError


def _api() -> list[tuple[object, type, set[str]]]:
    """(function, its config, the function's own keyword arguments besides the config's fields)."""
    import graft
    from graft.commands.serve import serve
    from graft.commands.train import train
    from graft.deploy.export import export
    from graft.deploy.onnx_int8 import export_int8
    from graft.insight.doctor.run import doctor
    from graft.insight.evaluation import evaluate
    from graft.insight.showbatch import augmented_batch, show_batch
    from graft.int8.ptq import quantize
    from graft.training.pipeline import lr_find

    return [
        (serve, ServeConfig, set()),
        (export, ExportConfig, {"log"}),
        (export_int8, ExportConfig, {"log"}),
        (train, TrainConfig, set()),
        (quantize, QuantizeConfig, {"log"}),
        (evaluate, EvaluateConfig, {"explain_predictions", "grid", "log"}),
        (show_batch, ShowBatchConfig, set()),
        (augmented_batch, ShowBatchConfig, set()),
        (doctor, DoctorConfig, {"log"}),
        (graft.doctor, DoctorConfig, {"log"}),
        (lr_find, LrFindConfig, {"draw"}),
    ]


@pytest.mark.parametrize("index", range(11))
def test_api_takes_exactly_the_config_fields_and_restates_no_default(index: int) -> None:
    func, cls, own = _api()[index]
    params = list(inspect.signature(func).parameters.values())  # type: ignore[arg-type]
    assert all(p.kind is not inspect.Parameter.VAR_KEYWORD for p in params)  # the fields are spelled out
    fields = {f.name: f for f in dataclasses.fields(cls)}
    given = defaults(cls)
    # the run directory (or the data) comes first, by position; evaluate's DATA may follow
    leading = [p for p in params if p.kind is not inspect.Parameter.KEYWORD_ONLY]
    keywords = [p for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY]
    assert leading[0].kind is inspect.Parameter.POSITIONAL_ONLY
    for p in leading[1:]:
        assert p.name in fields and p.default == given[p.name], p.name
    filled = {"run" if "run" in fields else "data"} | {p.name for p in leading[1:]}
    takes = {name for name, f in fields.items() if f.metadata.get("api", True)} - filled
    assert {p.name for p in keywords} - own == takes
    assert {p.name: p.default for p in keywords if p.name not in own} == {k: given[k] for k in takes}
    # the function's own code holds no default of a config field: they come from the dataclass
    assert not (func.__kwdefaults__ or {}).keys() - own  # type: ignore[attr-defined]


def test_api_refuses_unknown_options_and_checks_through_the_config(tmp_path) -> None:
    from graft.commands.serve import serve
    from graft.deploy.export import export

    with pytest.raises(ConfigError, match=r"unknown option\(s\) \['prot'\]"):
        serve(tmp_path, prot=80)
    with pytest.raises(ConfigError, match=r"unknown option\(s\) \['run'\]"):
        serve(tmp_path, run=tmp_path)
    with pytest.raises(ConfigError, match=r"--port must be in 0\.\.65535"):
        serve(tmp_path, port=-1)
    with pytest.raises(ConfigError, match=r"--verify-images must be >= 0 \(got -1\); 0 verifies on all images"):
        export(tmp_path, verify_images=-1)
    with pytest.raises(ConfigError, match="--tolerance must be > 0"):
        export(tmp_path, tolerance=0)


def test_the_other_api_functions_check_through_their_config(tmp_path) -> None:
    import graft
    from graft.insight.evaluation import evaluate
    from graft.insight.showbatch import show_batch
    from graft.int8.ptq import quantize
    from graft.training.pipeline import lr_find

    with pytest.raises(ConfigError, match=r"--calib must be >= 1 \(got 0\)"):
        quantize(tmp_path, calib=0)
    with pytest.raises(ConfigError, match=r"unknown option\(s\) \['report'\]"):  # the command's: write_report
        evaluate(tmp_path, report=True)
    with pytest.raises(ConfigError, match="--top-losses must be >= 0"):
        evaluate(tmp_path, tmp_path, top_losses=-1)
    with pytest.raises(ConfigError, match="--n must be >= 1"):
        show_batch(tmp_path, n=0)
    with pytest.raises(ConfigError, match=r"unknown option\(s\) \['arch_'\]"):
        graft.doctor(tmp_path, arch_="resnet18")
    with pytest.raises(ConfigError, match="no dataset folder given"):
        lr_find(iterations=10)


@pytest.mark.subprocess
def test_import_is_light() -> None:
    import subprocess
    import sys

    code = (
        "import sys, graft.core.config; print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'numpy')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
