"""graft app's labels export: a graft table that graft's own reader reads back to the project's labels."""

from __future__ import annotations

import csv
from collections.abc import Callable
from pathlib import Path

import pytest

from graft.commands.app.labels import export_labels
from graft.commands.app.store import AppError, Store
from graft.commands.cli import main
from graft.data.folders import scan


def read_back(table: Path, root: Path) -> set[tuple[str, str, str]]:
    """(path under ``root``, label, split) of every sample graft's table scanner reads from ``table``."""
    dataset = scan(table, table_root=root)
    return {
        (s.path.relative_to(root).as_posix(), dataset.classes[s.label], split)
        for split, samples in (("train", dataset.train), ("val", dataset.val))
        for s in samples
    }


def test_graft_reads_the_export_back_to_the_same_rows(hymenoptera: Path, tmp_path: Path) -> None:
    store = Store(tmp_path / "project")
    store.import_data(hymenoptera / "train")
    store.import_pool(hymenoptera / "val")
    pool = store.pool()
    for row, label in zip(pool[:3], ["ants", "bees", "bees"], strict=True):
        store.set_label(row.id, label, source="keyboard")
    store.set_excluded(store.labelled()[0].id, True, source="doctor")
    out = tmp_path / "out" / "labels.csv"
    export = export_labels(store, out)
    assert export.root == hymenoptera.resolve() and export.rows == len(store.labelled())
    assert export.classes == ["ants", "bees"]
    with open(out, encoding="utf-8", newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["path", "label", "split"] and rows[1:] == sorted(rows[1:], key=lambda r: r[0])
    expected = {(r.path.relative_to(export.root).as_posix(), r.label, r.split) for r in store.labelled()}
    assert {tuple(r) for r in rows[1:]} == expected
    assert read_back(out, export.root) == expected
    assert export.train_args() == ["train", str(out), "--root", str(export.root)]


def test_the_command_leaves_out_the_root_when_it_is_the_tables_folder(
    tmp_path: Path, tmp_image_folder: Callable[..., Path], capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_image_folder({"train/a": 3, "train/b": 3, "val/a": 1, "val/b": 1})
    store = Store(tmp_path / "project")
    store.import_data(data)
    store.close()
    out = data / "labels.csv"
    assert main(["app", "export-labels", str(tmp_path / "project"), str(out)]) == 0
    assert capsys.readouterr().out == f"wrote 8 labels of 2 classes to {out}; train on them with: graft train {out}\n"
    assert len(read_back(out, data)) == 8


def test_export_refuses_what_it_cannot_write(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    store = Store(tmp_path / "project")
    with pytest.raises(AppError, match="no labelled image"):
        export_labels(store, tmp_path / "labels.csv")
    assert main(["app", "export-labels", str(tmp_path / "nowhere"), str(tmp_path / "l.csv")]) == 1
    assert "not a graft app project" in capsys.readouterr().err
    assert main(["app", "export-labels", str(tmp_path / "project"), str(tmp_path / "l.txt")]) == 1
    assert "CSV" in capsys.readouterr().err
    assert main(["app", str(tmp_path / "project"), "extra"]) == 1
    assert "one PROJECT folder" in capsys.readouterr().err


def test_graft_app_options_make_its_config() -> None:
    from graft.commands.cli import build_parser
    from graft.core.config import AppConfig
    from graft.core.errors import ConfigError

    args = build_parser().parse_args(["app", "--port", "0", "--allowed-host", "a.example,B.example", "--no-auth"])
    cfg = AppConfig(**{k: getattr(args, k) for k in AppConfig.__dataclass_fields__})
    assert (cfg.project, cfg.port, cfg.allowed_host, cfg.no_auth) == (
        Path("graft-project"),
        0,
        ("a.example", "b.example"),
        True,
    )
    assert (cfg.arch, cfg.retrain_every, cfg.max_upload_bytes, cfg.max_pixels) == (
        "mobilenet_v2",
        20,
        20_000_000,
        40_000_000,
    )
    with pytest.raises(ConfigError, match="at least 16"):
        AppConfig(host="0.0.0.0", api_key="short")
    with pytest.raises(ConfigError, match="retrain-every"):
        AppConfig(retrain_every=0)


def test_an_exported_table_imports_into_a_new_project_as_it_was(
    tmp_path: Path, tmp_image_folder: Callable[..., Path]
) -> None:
    data = tmp_image_folder({"train/a": 3, "train/b": 3, "val/a": 1, "val/b": 1})  # a split that every class trains on
    first = Store(tmp_path / "first")
    first.import_data(data)
    first.add_class("c")
    for label in ("a", "b"):
        first.set_label(first.images(label=label)[1][0].id, "c", source="keyboard")
    out = data / "labels.csv"
    export_labels(first, out)
    second = Store(tmp_path / "second")
    report = second.import_data(out)
    assert report.added == 8 and sorted(report.classes) == ["a", "b", "c"]
    rows = {(r.path, r.label, r.split) for r in first.labelled()}
    assert {(r.path, r.label, r.split) for r in second.labelled()} == rows  # the table's split column kept
