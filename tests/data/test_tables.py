"""Tests of tables as datasets (graft.data.tables): a CSV/TSV of paths and labels trains exactly as the folder of
the same images does; fastai's layout loads; files are checked as folder files are; a bad table is one error line."""

from __future__ import annotations

import csv
import dataclasses
import json
import random
from pathlib import Path

import pytest
from PIL import Image
from safetensors.torch import load_file

import graft
from graft.commands.cli import main
from graft.core.config import TrainConfig
from graft.core.errors import DataError
from graft.data import scan


def write_table(path: Path, header: list[str], rows: list[list[object]], delimiter: str = ",") -> Path:
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, delimiter=delimiter)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def folder_rows(root: Path) -> list[list[str]]:
    """(path, label, split) of every file of a train/val folder, shuffled: a table's order must not matter."""
    rows = [[p.relative_to(root).as_posix(), p.parent.name, p.relative_to(root).parts[0]] for p in root.rglob("*")]
    rows = [r for r in rows if (root / r[0]).is_file()]
    random.Random(0).shuffle(rows)
    return rows


def check(capsys: pytest.CaptureFixture[str], *args: object) -> tuple[int, str, str]:
    code = main(["check", *map(str, args)])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.slow
def test_table_run_reproduces_the_folder_run(frozen_run, hymenoptera, tmp_path) -> None:
    """A table listing hymenoptera's files (shuffled, with their split) trains the very run the folder trains.

    Exact equality is right here: the same images in the same order (classes sorted, each class in path order, as
    the folder scan gives them), the same seed, so the same batches of the same stored features, on the CPU."""
    table = write_table(tmp_path / "hymenoptera.csv", ["path", "label", "split"], folder_rows(hymenoptera))
    saved = json.loads((frozen_run.run_dir / "config.json").read_text(encoding="utf-8"))
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    options = {k: v for k, v in saved.items() if k in fields} | {"out": tmp_path / "runs", "name": "table"}
    options |= {"data": table, "root": hymenoptera, "hidden": tuple(saved["hidden"])}
    run = graft.train(**options)

    def results(run_dir: Path) -> list[dict[str, str]]:
        with open(run_dir / "results.csv", newline="") as f:
            return [{k: v for k, v in row.items() if k != "seconds"} for row in csv.DictReader(f)]

    assert len(results(run.run_dir)) == saved["epochs"]
    assert results(run.run_dir) == results(frozen_run.run_dir)
    for key in ("best_val_acc", "best_epoch", "best_val_loss", "n_train", "n_val", "classes"):
        assert run.metrics[key] == frozen_run.metrics[key], key
    weights, folder_weights = (
        load_file(run.run_dir / "model.safetensors"),
        load_file(frozen_run.run_dir / "model.safetensors"),
    )
    assert all(weights[k].equal(folder_weights[k]) for k in folder_weights)

    report = json.loads((run.run_dir / "data_report.json").read_text(encoding="utf-8"))
    folder_report = json.loads((frozen_run.run_dir / "data_report.json").read_text(encoding="utf-8"))
    assert report["split"] == folder_report["split"] and report["skipped"] == folder_report["skipped"]
    assert (report["layout"], report["table"]) == ("table", str(table))
    assert report["columns"] == {"path": "path", "label": "label", "split": "split"}
    assert report["split_labels"]["val"][0] == "ants" and report["split_labels"]["val"][-1] == "bees"


def test_fastai_layout_loads(tmp_image_folder, capsys) -> None:
    """fname,labels,is_valid with True/False, paths relative to the table's folder (the default --root)."""
    root = tmp_image_folder({"images": 6})
    labels = ["cat", "dog", "cat", "dog", "cat", "dog"]
    valid = [False, False, False, False, True, True]
    rows = [[f"images/img{i:03d}.jpg", labels[i], valid[i]] for i in range(6)]
    table = write_table(root / "labels.csv", ["fname", "labels", "is_valid"], rows)
    ds = scan(table)
    assert ds.classes == ["cat", "dog"]
    assert [s.path.name for s in ds.train] == ["img000.jpg", "img002.jpg", "img001.jpg", "img003.jpg"]
    assert [(s.path.name, ds.classes[s.label]) for s in ds.val] == [("img004.jpg", "cat"), ("img005.jpg", "dog")]
    assert ds.report.columns == {"path": "fname", "label": "labels", "split": "is_valid"}

    code, out, err = check(capsys, table, "--json")
    assert code == 0, err
    report = json.loads(out)
    assert (report["n_train"], report["n_val"], report["root"]) == (4, 2, str(root))
    assert report["table"] == str(table) and report["columns"]["split"] == "is_valid"


def test_without_a_split_column_rows_split_as_the_folder_split_layout(tmp_image_folder, tmp_path) -> None:
    root = tmp_image_folder({"ants": 7, "bees": 5, "wasps": 4})
    rows = [[p.relative_to(root).as_posix(), p.parent.name] for p in sorted(root.rglob("*.jpg"), reverse=True)]
    table = write_table(tmp_path / "t.tsv", ["File", "Class"], rows, delimiter="\t")  # names match any case
    for seed in (0, 5):
        folder, listed = scan(root, val_split=0.3, seed=seed), scan(table, table_root=root, val_split=0.3, seed=seed)
        assert listed.classes == folder.classes
        assert listed.train == folder.train and listed.val == folder.val
        assert (listed.report.val_split, listed.report.seed, listed.report.columns["split"]) == (0.3, seed, None)


def test_listed_files_are_checked_as_folder_files_are(tmp_image_folder, capsys) -> None:
    """Missing, not an image, repeated: skipped with a reason; a label only val rows carry is reported."""
    root = tmp_image_folder({"a": 3, "b": 3})
    (root / "a/notes.jpg").write_text("not an image")
    rows = [[f"{c}/img{i:03d}.jpg", c, "train" if i < 2 else "valid"] for c in "ab" for i in range(3)]
    rows += [["a/notes.jpg", "a", "train"], ["a/gone.jpg", "a", "train"], ["b/img000.jpg", "b", "train"]]
    Image.new("RGB", (32, 32), (9, 9, 9)).save(root / "c.jpg")
    rows += [["c.jpg", "c", "Validation"], ["a", "a", "train"]]
    table = write_table(root / "t.csv", ["image", "label", "set"], rows)

    ds = scan(table)
    assert ds.classes == ["a", "b"] and ds.report.val_only == ["c"]
    assert (len(ds.train), len(ds.val)) == (4, 2)
    reasons = {s.path: s.reason for s in ds.report.skipped}
    assert set(reasons) == {"a", "a/gone.jpg", "a/notes.jpg", "b/img000.jpg", "c.jpg"}
    assert "no such file" in reasons["a/gone.jpg"] and "not an image" in reasons["a/notes.jpg"]
    assert "listed again on line 10" in reasons["b/img000.jpg"] and "folder" in reasons["a"]
    assert "only in val rows" in reasons["c.jpg"]

    code, out, err = check(capsys, table)
    assert code == 0, err
    assert f"table {table}" in out and "only in val rows" in out and "skipped 5 files:" in out


def outside(root: Path) -> None:
    """An image beside the data root, and a symbolic link to it inside the root."""
    (root.parent / "elsewhere.jpg").write_bytes((root / "a/img000.jpg").read_bytes())
    (root / "a/link.jpg").symlink_to(root.parent / "elsewhere.jpg")
    (root / "linked").symlink_to(root.parent, target_is_directory=True)


#: case -> (extra rows or a header change, fragments of the one error line)
BAD = {
    "no path column": ({"header": ["picture", "label", "split"]}, ["no path column", "--path-col"]),
    "unknown split": ({"rows": [["a/img000.jpg", "a", "test"]]}, ["unknown split value 'test'", "line 6"]),
    "empty label": ({"rows": [["a/img000.jpg", " ", "train"]]}, ["label of a/img000.jpg", "is empty"]),
    "dot-dot": ({"rows": [["a/../../elsewhere.jpg", "a", "train"]]}, ["outside the data root", "refused"]),
    "absolute": ({"rows": [["{parent}/elsewhere.jpg", "a", "train"]]}, ["outside the data root", "--root"]),
    "symlink": ({"rows": [["a/link.jpg", "a", "train"]]}, ["is a symbolic link to", "outside the data root"]),
    "folder symlink": (
        {"rows": [["linked/elsewhere.jpg", "a", "train"]]},
        ["'linked/elsewhere.jpg' resolves to", "its folder linked is a symbolic link to", "outside the data root"],
    ),
    "several labels, --task single": (
        {"rows": [["a/img000.jpg", "a b", "train"]], "args": ["--task", "single"]},
        ["several labels", "--task multilabel"],
    ),
    "several labels ;, --task single": (
        {"rows": [["a/img000.jpg", "a;b", "val"]], "args": ["--task", "single"]},
        ["several labels", "line 6"],
    ),
    "empty label, --task single": (
        {"rows": [["a/img000.jpg", "", "train"]], "args": ["--task", "single"]},
        ["label of a/img000.jpg", "is empty", "--task multilabel"],
    ),
    "unknown column": ({"args": ["--label-col", "kind"]}, ["no column 'kind' (--label-col)"]),
}


@pytest.mark.parametrize("case", list(BAD))
def test_a_bad_table_is_one_error_line(tmp_image_folder, capsys, case) -> None:
    change, fragments = BAD[case]
    root = tmp_image_folder({"a": 2, "b": 2})
    outside(root)
    rows = [[f"{c}/img{i:03d}.jpg", c, "train" if i == 0 else "val"] for c in "ab" for i in range(2)]
    rows += [[str(c).format(parent=root.parent) for c in row] for row in change.get("rows", [])]
    table = write_table(root / "t.csv", change.get("header", ["path", "label", "split"]), rows)
    code, out, err = check(capsys, table, *change.get("args", []))
    assert code == 1 and out == ""
    assert err.startswith("error: ") and len(err.strip().splitlines()) == 1, err
    for fragment in fragments:
        assert fragment in err, (fragment, err)


def test_a_path_outside_the_root_is_refused_not_read(tmp_image_folder, tmp_path) -> None:
    """The same files are fine with a --root that holds them: the refusal is about the root, not the files."""
    root = tmp_image_folder({"a": 2, "b": 2})
    outside(root)
    rows = [[f"{c}/img{i:03d}.jpg", c] for c in "ab" for i in range(2)] + [["a/link.jpg", "a"]]
    table = write_table(tmp_path / "t.csv", ["path", "label"], rows)
    with pytest.raises(DataError, match="outside the data root"):
        scan(table, table_root=root)
    rows = [[f"{root.name}/{p}", c] for p, c in rows]  # the same files, relative to a root that holds them all
    ds = scan(write_table(tmp_path / "u.csv", ["path", "label"], rows), table_root=root.parent, val_split=0.5)
    assert len(ds.train) + len(ds.val) == 5


def test_table_options_need_a_table(tmp_image_folder, capsys) -> None:
    root = tmp_image_folder({"a": 2, "b": 2})
    code, _, err = check(capsys, root, "--label-col", "kind")
    assert code == 1 and "--label-col only apply when DATA is a .csv/.tsv table" in err


def test_multilabel_tables_parse_several_labels_and_none(tmp_image_folder, capsys) -> None:
    """--label-delim (or a cell holding several labels) makes a multi-label table: any number of labels per row,
    an empty cell an image with no class; samples index the distinct label sets; counts are per class."""
    root = tmp_image_folder({"img": 8})
    cells = ["cat;dog", "cat", "dog", "", "cat;dog", "dog;cat", "cat", ""]
    split = ["train"] * 5 + ["val"] * 3
    table = write_table(
        root / "t.csv",
        ["path", "labels", "split"],
        [[f"img/img{i:03d}.jpg", c, s] for i, (c, s) in enumerate(zip(cells, split, strict=True))],
    )
    ds = scan(table, label_delim=";")
    assert ds.task == "multilabel" and ds.classes == ["cat", "dog"]
    assert sorted(ds.label_sets) == [(), (0,), (0, 1), (1,)]
    names = {s.path.name: ds.names_of(s) for s in ds.train + ds.val}
    assert names["img000.jpg"] == names["img005.jpg"] == ["cat", "dog"] and names["img003.jpg"] == []
    assert ds.report.counts == {"train": {"cat": 3, "dog": 3}, "val": {"cat": 2, "dog": 1}}
    assert sorted(map(tuple, ds.split_labels()["val"])) == [(), ("cat",), ("cat", "dog")]
    # without --label-delim, ';' in a cell makes the table multi-label too (--task auto)
    assert scan(table).task == "multilabel"
    code, out, err = check(capsys, table, "--label-delim", ";")
    assert code == 0, err
    assert "multi-label" in out and "cat" in out


def test_a_dataframe_is_read_as_its_csv_is(tmp_image_folder, tmp_path, monkeypatch) -> None:
    """The same rows as a DataFrame (root: the current folder) give the same samples; missing values are empty
    cells, so an all-negative multi-label row is a NaN; a bad row names its row."""
    import pandas as pd

    root = tmp_image_folder({"a": 3, "b": 3})
    rows = [[f"{c}/img{i:03d}.jpg", c, "train" if i < 2 else "val"] for c in "ab" for i in range(3)]
    table = write_table(root / "t.csv", ["path", "label", "split"], rows)
    monkeypatch.chdir(root)
    frame = pd.DataFrame(rows, columns=["path", "label", "split"])
    listed, framed = scan(table), scan(frame)
    assert (framed.classes, framed.train, framed.val) == (listed.classes, listed.train, listed.val)
    assert framed.report.table == "DataFrame" and framed.report.root == str(root)

    multi = pd.DataFrame({"fname": ["a/img000.jpg", "b/img000.jpg", "a/img001.jpg", "b/img001.jpg"],
                          "labels": ["a b", "b", None, "a"], "is_valid": [False, False, True, True]})  # fmt: skip
    ds = scan(multi, label_delim=" ")
    assert ds.task == "multilabel" and [ds.names_of(s) for s in ds.val] == [[], ["a"]]
    bad = frame.copy()
    bad.loc[4, "split"] = "test"
    with pytest.raises(DataError, match="DataFrame row 4: unknown split value 'test'"):
        scan(bad)
    bad = frame.copy()
    bad.loc[2, "label"] = float("nan")
    with pytest.raises(DataError, match=r"DataFrame row 2: the label of a/img002\.jpg"):
        scan(bad, task="single")
