"""Every option is checked where it is parsed: a number must be finite and in its range, or the command stops with
one ``error:`` line before it makes anything (no run directory, no output file)."""

from __future__ import annotations

import math
import os
import subprocess
import sys
import typing
from pathlib import Path

import pytest

from graft.commands import cli
from graft.core.errors import ConfigError

# what each command needs by position, so that only the option under test is wrong
POSITIONAL = {
    "train": ["DATA"],
    "lr-find": ["DATA"],
    "check": ["DATA"],
    "show-batch": ["DATA"],
    "doctor": ["DATA"],
    "suggest": ["RUN", "POOL"],
    "predict": ["RUN", "IMG"],
    "evaluate": ["RUN"],
    "export": ["RUN"],
    "serve": ["RUN"],
    "quantize": ["RUN"],
}


def _number_options() -> list[tuple[str, str, type]]:
    """(command, --option, float or int) for every numeric option of every command."""
    out = []
    for command, (cls, _, _) in cli.COMMANDS.items():
        hints = typing.get_type_hints(cls)
        for f in cli._cli_fields(cls):
            kinds = set(typing.get_args(hints[f.name])) or {hints[f.name]}
            number = next((k for k in (float, int) if k in kinds), None)
            if number is not None and not f.metadata.get("positional"):
                out.append((command, "--" + f.name.replace("_", "-"), number))
    return out


NUMBER_OPTIONS = _number_options()
FLOAT_OPTIONS = [(c, o) for c, o, t in NUMBER_OPTIONS if t is float]


def _config_error(argv: list[str]) -> str:
    args = cli.build_parser().parse_args(argv)
    cls = cli.COMMANDS[argv[0]][0]
    with pytest.raises(ConfigError) as e:
        cli._config(cls, args)
    return str(e.value)


def test_every_command_with_float_options_is_covered() -> None:
    assert {c for c, _ in FLOAT_OPTIONS} >= {"train", "lr-find", "serve", "export", "predict", "check", "doctor"}
    assert ("train", "--lr") in FLOAT_OPTIONS and ("serve", "--max-upload-mb") in FLOAT_OPTIONS


@pytest.mark.parametrize(("command", "option"), FLOAT_OPTIONS)
@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
def test_every_float_option_refuses_nan_and_inf(command: str, option: str, value: str) -> None:
    extra = ["--auto"] if option == "--time-budget" else []
    message = _config_error([command, *POSITIONAL[command], *extra, f"{option}={value}"])
    assert message.startswith(f"{option} must be") and value in message


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        (["train", "DATA", "--weight-decay", "-1"], "--weight-decay must be >= 0"),
        (["train", "DATA", "--momentum", "1.5"], "--momentum must be in [0, 1)"),
        (["train", "DATA", "--gamma", "0"], "--gamma must be in (0, 1]"),
        (["train", "DATA", "--lr", "-0.1"], "--lr must be > 0"),
        (["train", "DATA", "--auto", "--time-budget", "0"], "--time-budget must be > 0"),
        (["train", "DATA", "--seed", "-1"], "--seed must be in 0..2**64-1"),
        (["check", "DATA", "--seed", str(2**64)], "--seed must be in 0..2**64-1"),
        (["serve", "RUN", "--max-upload-mb", "0"], "--max-upload-mb must be > 0"),
        (["serve", "RUN", "--timeout", "-1"], "--timeout must be > 0"),
        (["export", "RUN", "--opset", "0"], "--opset must be >= 1"),
        (["train", "DATA", "--hidden", "512,0"], "--hidden widths must be in 1..65536"),
        (["train", "DATA", "--hidden", "1000000000"], "--hidden widths must be in 1..65536"),
        (["lr-find", "DATA", "--start-lr", "1", "--end-lr", "0.5"], "--start-lr must be > 0 and below --end-lr"),
    ],
)
def test_numbers_out_of_range_are_refused(argv: list[str], words: str) -> None:
    assert words in _config_error(argv)


def test_the_defaults_pass_their_own_checks() -> None:
    for command, positional in POSITIONAL.items():
        cli._config(cli.COMMANDS[command][0], cli.build_parser().parse_args([command, *positional]))


def test_python_api_refuses_nan_too(tmp_path: Path) -> None:
    import graft

    with pytest.raises(ConfigError, match="--lr must be a finite number"):
        graft.train(tmp_path, lr=math.nan, out=tmp_path / "runs")
    assert not (tmp_path / "runs").exists()


@pytest.mark.subprocess
@pytest.mark.parametrize(
    "argv",
    [
        ["train", "{data}", "--lr", "nan"],
        ["train", "{data}", "--weight-decay", "nan"],
        ["train", "{data}", "--weight-decay", "-1"],
        ["train", "{data}", "--auto", "--time-budget", "nan"],
        ["lr-find", "{data}", "--end-lr", "inf"],
        ["serve", "{run}", "--max-upload-mb", "inf"],
    ],
    ids=lambda a: " ".join(a),
)
def test_a_bad_option_is_one_error_line_and_makes_nothing(argv: list[str], tmp_path: Path) -> None:
    data, run, out = tmp_path / "data", tmp_path / "run", tmp_path / "out"
    for folder in (data / "a", data / "b", run, out):
        folder.mkdir(parents=True)
    args = [a.format(data=data, run=run) for a in argv] + (["--out", str(out)] if argv[0] == "train" else [])
    before = sorted(tmp_path.rglob("*"))
    p = subprocess.run(
        [sys.executable, "-m", "graft", *args],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={**os.environ, "GRAFT_OFFLINE": "1"},
        timeout=120,
    )
    assert p.returncode == 1, p.stderr
    errors = [line for line in p.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in p.stderr + p.stdout, p.stderr
    assert argv[-2] in errors[0]
    assert sorted(tmp_path.rglob("*")) == before  # no run directory, no lr_find folder, nothing
