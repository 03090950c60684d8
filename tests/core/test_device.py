"""Tests of graft.core.device's precision: which precision a run trains in (from given CPU flag sets, no timing)
and what autocast does with it."""

from __future__ import annotations

import pytest
import torch

from graft.core.config import TrainConfig
from graft.core.cpu import bf16_features
from graft.core.device import autocast, autocast_dtype, resolve_precision
from graft.core.errors import ConfigError

CPU = torch.device("cpu")
ZEN4 = {"avx2", "avx512f", "avx512bw", "avx512_vnni", "avx512_bf16"}
SAPPHIRE_RAPIDS = {"avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_int8", "amx_bf16"}
SKYLAKE = {"avx2", "avx512f", "avx512bw"}


@pytest.mark.parametrize(
    ("flags", "found"),
    [(ZEN4, ["avx512_bf16"]), (SAPPHIRE_RAPIDS, ["amx_bf16", "avx512_bf16"]), ({"amx_bf16"}, ["amx_bf16"])],
)
def test_auto_is_bf16_on_cpus_with_bf16_instructions(flags: set[str], found: list[str]) -> None:
    assert bf16_features(flags) == found
    for asked in ("auto", "bf16"):
        precision = resolve_precision(asked, CPU, flags)
        assert precision.name == "bf16"
        assert precision.to_dict()["cpu_bf16"] == found


@pytest.mark.parametrize("flags", [SKYLAKE, set(), {"asimd", "asimddp"}])
def test_auto_is_fp32_on_cpus_without(flags: set[str]) -> None:
    precision = resolve_precision("auto", CPU, flags)
    assert precision.to_dict() == {"precision": "fp32", "cpu_bf16": [], "reason": precision.reason}
    assert "avx512_bf16" in precision.reason


def test_fp32_is_fp32_everywhere() -> None:
    assert resolve_precision("fp32", CPU, SAPPHIRE_RAPIDS).name == "fp32"


@pytest.mark.parametrize("flags", [SKYLAKE, set()])
def test_bf16_asked_on_a_cpu_without_it_is_an_error(flags: set[str]) -> None:
    with pytest.raises(ConfigError, match=r"no bf16 instructions.*--precision fp32 or auto"):
        resolve_precision("bf16", CPU, flags)


def test_bf16_asked_on_mps_is_an_error_and_auto_is_fp32() -> None:
    mps = torch.device("mps")
    assert resolve_precision("auto", mps, ZEN4).name == "fp32"
    with pytest.raises(ConfigError, match="fp32 or auto"):
        resolve_precision("bf16", mps, ZEN4)


def test_autocast_runs_bf16_on_the_cpu_only_when_asked() -> None:
    layer, x = torch.nn.Linear(8, 4), torch.randn(2, 8)
    with autocast(CPU, "bf16"):
        assert layer(x).dtype == torch.bfloat16
    for precision in ("auto", "fp32"):  # inference's default stays fp32 on the CPU
        assert autocast_dtype(CPU, precision) is None
        with autocast(CPU, precision):
            assert layer(x).dtype == torch.float32


def test_precision_option_is_checked(tmp_path) -> None:
    assert TrainConfig(data=tmp_path).precision == "auto"
    with pytest.raises(ConfigError, match="--precision must be one of auto, fp32, bf16"):
        resolve_precision("fp16", CPU, ZEN4)
    for int8 in ({"int8": True}, {"mode": "qat"}):
        with pytest.raises(ConfigError, match="--precision bf16 is for float training"):
            TrainConfig(data=tmp_path, precision="bf16", **int8)
        assert TrainConfig(data=tmp_path, precision="auto", **int8).precision == "auto"
