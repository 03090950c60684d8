"""What a dataset scan does with what it may not read, and with folder links that lead out of the data: an unreadable
folder or entry inside the data is skipped with the reason (listed in the report, like a corrupt image), a data root
that cannot be read at all is one ``error:`` line, and a link to a folder outside the data root is not followed.

Tests run as root, which ignores permission bits: "cannot read" is simulated by EACCES from the calls a user without
permission would see fail (listing a folder without read permission; looking at anything inside a folder without
search permission, as after ``chmod -R 644 data``)."""

from __future__ import annotations

import builtins
import errno
import io
import json
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from graft.commands import cli
from graft.core.errors import DataError
from graft.data import scan


class Denied:
    """Folders whose listing is refused (``unlisted``, mode 000) or inside which nothing can be looked at
    (``unsearchable``, mode 644)."""

    def __init__(self) -> None:
        self.unlisted: set[str] = set()
        self.unsearchable: set[str] = set()

    def check(self, path: object, listing: bool = False) -> None:
        if not isinstance(path, str | os.PathLike):
            return
        p = os.path.abspath(os.fspath(path))
        parents = {str(q) for q in Path(p).parents}
        if (listing and p in self.unlisted) or parents & (self.unsearchable | self.unlisted):
            raise PermissionError(errno.EACCES, "Permission denied", os.fspath(path))


@pytest.fixture
def denied(monkeypatch: pytest.MonkeyPatch) -> Denied:
    d = Denied()

    def guard(real: Callable[..., object], listing: bool = False) -> Callable[..., object]:
        def call(path: object = ".", *args: object, **kwargs: object) -> object:
            d.check(path, listing)
            return real(path, *args, **kwargs)

        return call

    for name in ("stat", "lstat"):
        monkeypatch.setattr(os, name, guard(getattr(os, name)))
    for name in ("listdir", "scandir"):
        monkeypatch.setattr(os, name, guard(getattr(os, name), listing=True))
    monkeypatch.setattr(builtins, "open", guard(builtins.open))
    monkeypatch.setattr(io, "open", guard(io.open))
    return d


def _cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    code = cli.main(list(argv))
    err = capsys.readouterr().err
    return code, err


def _one_error_line(code: int, err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 1 and len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    return lines[0]


def test_unreadable_entries_inside_the_data_are_skipped_with_the_reason(tmp_image_folder, denied) -> None:
    root = tmp_image_folder({"a": 3, "b": 3, "a/locked": 2, "a/nosearch": 2, "b/sub": 2})
    denied.unlisted.add(str(root / "a/locked"))  # chmod 000
    denied.unsearchable.add(str(root / "a/nosearch"))  # chmod 644: listed, but its entries cannot be looked at
    ds = scan(root, val_split=0.5)
    reasons = {s.path: s.reason for s in ds.report.skipped}
    assert reasons["a/locked/"] == "cannot read folder: Permission denied"
    assert reasons["a/nosearch/img000.jpg"] == "cannot read: Permission denied"
    assert len(ds.train) + len(ds.val) == 3 + 3 + 2  # b/sub's images are used


def test_a_data_root_that_cannot_be_read_is_one_error_line(tmp_image_folder, denied, capsys, tmp_path) -> None:
    root = tmp_image_folder({"train/a": 2, "train/b": 2, "val/a": 1, "val/b": 1})
    denied.unsearchable.add(str(root))  # chmod -R 644 data
    with pytest.raises(DataError, match="cannot read"):
        scan(root)
    line = _one_error_line(*_cli(capsys, "check", str(root)))
    assert "chmod" in line and str(root) in line
    out = tmp_path / "runs"
    out.mkdir()
    args = ["--pretrained", "none", "--device", "cpu", "--out", str(out)]
    _one_error_line(*_cli(capsys, "train", str(root), *args))
    assert list(out.iterdir()) == []  # no run directory
    _one_error_line(*_cli(capsys, "doctor", str(root), "--pretrained", "none", "--out", str(tmp_path / "doc")))
    assert not (tmp_path / "doc").exists()

    denied.unsearchable.clear()
    denied.unlisted.add(str(root))  # chmod 000 data
    assert "cannot read the data folder" in _one_error_line(*_cli(capsys, "check", str(root)))
    denied.unlisted.clear()
    denied.unlisted.add(str(root / "val"))  # its val folder
    assert f"cannot read the data folder {root / 'val'}" in _one_error_line(*_cli(capsys, "check", str(root)))
    denied.unlisted.clear()
    denied.unsearchable.add(str(root.parent))  # the folder that holds it
    assert "cannot read the data folder" in _one_error_line(*_cli(capsys, "check", str(root)))


def test_folder_links_out_of_the_data_root_are_not_followed(tmp_image_folder, tmp_path) -> None:
    root = tmp_image_folder({"train/a": 2, "train/b": 2, "val/a": 1, "val/b": 1, "extra": 2})
    elsewhere = tmp_image_folder({"x": 3}, name="elsewhere") / "x"
    (root / "train/a/inside").symlink_to(root / "extra", target_is_directory=True)  # followed
    (root / "train/b/outside").symlink_to(elsewhere, target_is_directory=True)  # not followed
    (root / "train/b/etc").symlink_to("/etc", target_is_directory=True)
    ds = scan(root)
    reasons = {s.path: s.reason for s in ds.report.skipped}
    assert "a folder outside the data root (not followed)" in reasons["train/b/outside/"]
    assert reasons["train/b/etc/"].startswith("symbolic link to /etc,")
    assert ds.report.counts["train"] == {"a": 4, "b": 2}


def test_a_class_folder_linked_to_the_filesystem_root_is_one_error_line(tmp_image_folder, capsys) -> None:
    root = tmp_image_folder({"a": 3, "b": 3})
    (root / "c").symlink_to("/", target_is_directory=True)
    line = _one_error_line(*_cli(capsys, "check", str(root)))
    assert "Class 'c'" in line and "symbolic link to /, a folder that holds the data folder itself" in line
    (root / "c").unlink()
    (root / "c").symlink_to(root.parent, target_is_directory=True)  # any folder above the data
    assert "holds the data folder itself" in _one_error_line(*_cli(capsys, "check", str(root)))


def test_split_and_class_folders_may_be_links_to_elsewhere(tmp_image_folder, capsys) -> None:
    """A dataset assembled from links (DATA/train -> the real train folder, DATA/c -> a class elsewhere) is read;
    the folders inside a linked one stay within it."""
    real = tmp_image_folder({"train/a": 2, "train/b": 2, "val/a": 1, "val/b": 1, "more": 2}, name="real")
    (real / "train/b/away").symlink_to(real / "more", target_is_directory=True)  # out of its class folder
    data = real.parent / "assembled"
    (data / "val").mkdir(parents=True)
    (data / "train").symlink_to(real / "train", target_is_directory=True)
    for c in "ab":
        (data / "val" / c).symlink_to(real / "val" / c, target_is_directory=True)
    ds = scan(data)
    assert ds.report.counts == {"train": {"a": 2, "b": 2}, "val": {"a": 1, "b": 1}}
    assert [s.path for s in ds.report.skipped] == ["train/b/away/"]
    (data / "train").unlink()
    (data / "train").symlink_to("/", target_is_directory=True)
    line = _one_error_line(*_cli(capsys, "check", str(data)))
    assert "is a symbolic link to /, which holds the data folder itself: not followed" in line


def test_evaluate_on_a_folder_that_cannot_be_read_is_a_data_error(tmp_image_folder, denied) -> None:
    from graft.insight.evaluation import folder_items

    root = tmp_image_folder({"a": 2, "b": 2})
    denied.unsearchable.add(str(root))  # chmod -R 644: the class folders cannot be told from files
    with pytest.raises(
        DataError, match=r"no class folder of .* can be read \(a: cannot read: Permission denied\); give"
    ):
        folder_items(root, ["a", "b"])
    denied.unsearchable.clear()
    denied.unlisted.add(str(root))
    with pytest.raises(DataError, match=f"cannot read the folder {root}: Permission denied; give this user"):
        folder_items(root, ["a", "b"])
    denied.unlisted.clear()
    denied.unsearchable.add(str(root.parent))
    with pytest.raises(DataError, match="cannot read: Permission denied; give this user"):
        folder_items(root, ["a", "b"])


def test_a_table_that_cannot_be_read_is_one_error_line(tmp_image_folder, denied, capsys) -> None:
    root = tmp_image_folder({"a": 2, "b": 2, "a/locked": 1})
    rows = [f"{c}/img{i:03d}.jpg,{c}" for c in "ab" for i in range(2)] + ["a/locked/img000.jpg,a"]
    (root / "t.csv").write_text("path,label\n" + "\n".join(rows) + "\n")
    denied.unsearchable.add(str(root))
    assert "cannot read the data table" in _one_error_line(*_cli(capsys, "check", str(root / "t.csv")))
    denied.unsearchable.clear()
    denied.unsearchable.add(str(root / "a/locked"))  # a row's image cannot be looked at: skipped with the reason
    assert cli.main(["check", str(root / "t.csv"), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert {s["path"]: s["reason"] for s in report["skipped"]} == {
        "a/locked/img000.jpg": "cannot read: Permission denied"
    }
