"""The configs are the one source of each option's default and check: the Python API's functions that mirror a
config take its fields as keyword arguments and restate no default."""

from __future__ import annotations

import dataclasses
import inspect

import pytest

from graft.core.config import ExportConfig, ServeConfig
from graft.core.config.fields import defaults
from graft.core.errors import ConfigError


def _api() -> list[tuple[object, type, set[str]]]:
    from graft.commands.serve import serve
    from graft.deploy.export import export
    from graft.deploy.onnx_int8 import export_int8

    return [(serve, ServeConfig, set()), (export, ExportConfig, {"log"}), (export_int8, ExportConfig, {"log"})]


@pytest.mark.parametrize("index", range(3))
def test_api_takes_exactly_the_config_fields_and_restates_no_default(index: int) -> None:
    func, cls, own = _api()[index]
    params = inspect.signature(func).parameters  # type: ignore[arg-type]
    first, *keywords = params.values()
    assert first.kind is inspect.Parameter.POSITIONAL_ONLY
    fields = {f.name for f in dataclasses.fields(cls)} - {"run"}
    assert {p.name for p in keywords} - own == fields
    assert {p.name: p.default for p in keywords if p.name not in own} == {
        k: v for k, v in defaults(cls).items() if k != "run"
    }
    # the function's own code holds no default of a config field: they come from the dataclass
    assert not (func.__kwdefaults__ or {}).keys() - own  # type: ignore[attr-defined]
    assert func.__defaults__ is None  # type: ignore[attr-defined]


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


@pytest.mark.subprocess
def test_import_is_light() -> None:
    import subprocess
    import sys

    code = (
        "import sys, graft.core.config; print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'numpy')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
