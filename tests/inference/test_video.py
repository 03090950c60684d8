"""``graft predict`` on videos: frames sampled by time or stride, one row per sampled frame, labelled as the same
pictures are as image files; the unreadable-video error line; the --plot strip; the pieces without a model."""

from __future__ import annotations

import csv
from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import pytest
from PIL import Image

from graft.commands import cli
from graft.commands.predict_video import split_inputs
from graft.core.config import PredictConfig
from graft.core.config.inference import seconds
from graft.core.errors import ConfigError, GraftError
from graft.inference.classifier import Prediction
from graft.inference.csvout import stream_csv
from graft.inference.video import FrameResult, Keeper, Sampling, VideoReader, is_live, is_video

SIZE = (320, 240)  # (width, height) of every frame
FPS = 2.0  # each picture is held 1 s: two frames


@pytest.fixture(autouse=True)
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GRAFT_OFFLINE", "1")


def write_clip(path: Path, fourcc: str, pictures: list[Image.Image]) -> Path:
    """``pictures`` as a video at :data:`FPS`, each held for two frames."""
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), FPS, SIZE)
    if not writer.isOpened():
        pytest.skip(f"this OpenCV build writes no {fourcc}")
    for picture in pictures:
        bgr = cv2.cvtColor(np.asarray(picture), cv2.COLOR_RGB2BGR)
        writer.write(bgr)
        writer.write(bgr)
    writer.release()
    return path


@pytest.fixture(scope="module")
def clip(frozen_run, hymenoptera: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Path]]:
    """``clip.mp4`` (mp4v, 2 fps) of 12 val pictures, ants and bees in turn, each held for two frames, and the
    same 12 pictures (resized to the frame size) as PNG files, in clip order; ``clip.mkv`` beside it, the same
    frames losslessly (FFV1).

    mp4v is lossy: a picture the model finds a near tie (one ant at 0.53) can change sides in the clip, so the
    pictures are those the model gives at least 0.8 (seen to move by up to 0.17 through mp4v)."""
    import graft

    folder = tmp_path_factory.mktemp("video")
    clf = graft.load(frozen_run.run_dir, device="cpu")
    chosen: dict[str, list[Image.Image]] = {}
    for name in ("ants", "bees"):
        pictures = []
        for src in sorted((hymenoptera / "val" / name).glob("*.jpg"))[:24]:
            with Image.open(src) as im:
                pictures.append(im.convert("RGB").resize(SIZE, Image.Resampling.LANCZOS))
        preds = clf.predict(pictures, top_k=1)
        chosen[name] = [pic for pic, p in zip(pictures, preds, strict=True) if p[0].probability >= 0.8][:6]
        assert len(chosen[name]) == 6
    pictures = [pic for pair in zip(chosen["ants"], chosen["bees"], strict=True) for pic in pair]
    pngs = [folder / f"{k:02d}.png" for k in range(len(pictures))]
    for picture, png in zip(pictures, pngs, strict=True):
        picture.save(png)
    write_clip(folder / "clip.mkv", "FFV1", pictures)
    return write_clip(folder / "clip.mp4", "mp4v", pictures), pngs


def read_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def predict(frozen_run, *args: str) -> int:
    return cli.main(["predict", str(frozen_run.run_dir), *args, "--device", "cpu"])


@pytest.fixture(scope="module")
def png_labels(frozen_run, clip) -> list[str]:
    """``graft predict RUN`` on the 12 PNG pictures: their top labels, in clip order."""
    _, pngs = clip
    out = pngs[0].parent / "pngs.csv"
    assert predict(frozen_run, *map(str, pngs), "--out", str(out)) == 0
    rows = read_rows(out)
    assert [r["path"] for r in rows] == [str(p) for p in pngs]
    return [r["label"] for r in rows]


@pytest.mark.slow
def test_every_half_second_gives_every_frame_labelled_as_its_picture(frozen_run, clip, png_labels, tmp_path) -> None:
    video, _ = clip
    out = tmp_path / "rows.csv"
    assert predict(frozen_run, str(video), "--every", "0.5s", "--out", str(out)) == 0
    rows = read_rows(out)
    assert list(rows[0]) == ["source", "frame", "time_s", "label", "probability"]
    assert len(rows) == 24  # 12 pictures x 2 frames, one row per frame at 2 fps
    assert [int(r["frame"]) for r in rows] == list(range(24))
    assert [float(r["time_s"]) for r in rows] == pytest.approx([k * 0.5 for k in range(24)])
    assert {r["source"] for r in rows} == {str(video)}
    assert [r["label"] for r in rows] == [png_labels[k // 2] for k in range(24)]
    assert set(png_labels) == {"ants", "bees"}
    assert all(0.5 <= float(r["probability"]) <= 1 for r in rows)


@pytest.mark.slow
def test_frames_are_preprocessed_as_image_files_are(frozen_run, clip, tmp_path) -> None:
    """A lossless clip: each frame's probability is its PNG picture's."""
    video, pngs = clip
    frames, images = tmp_path / "frames.csv", tmp_path / "images.csv"
    assert predict(frozen_run, str(video.with_suffix(".mkv")), "--stride", "2", "--out", str(frames)) == 0
    assert predict(frozen_run, *map(str, pngs), "--out", str(images)) == 0
    by_frame, by_image = read_rows(frames), read_rows(images)
    assert [r["label"] for r in by_frame] == [r["label"] for r in by_image]
    assert [float(r["probability"]) for r in by_frame] == pytest.approx(
        [float(r["probability"]) for r in by_image], abs=1e-5
    )


@pytest.mark.slow
def test_every_and_stride_pick_the_same_frames(frozen_run, clip, png_labels, tmp_path) -> None:
    video, _ = clip
    by_time, by_stride, every_3rd = tmp_path / "time.csv", tmp_path / "stride.csv", tmp_path / "third.csv"
    assert predict(frozen_run, str(video), "--every", "1", "--out", str(by_time)) == 0
    assert predict(frozen_run, str(video), "--stride", "2", "--out", str(by_stride)) == 0
    assert predict(frozen_run, str(video), "--every", "1.5s", "--out", str(every_3rd)) == 0
    one_per_picture = read_rows(by_time)
    assert [int(r["frame"]) for r in one_per_picture] == list(range(0, 24, 2))
    assert [float(r["time_s"]) for r in one_per_picture] == pytest.approx(list(range(12)))
    assert [r["label"] for r in one_per_picture] == png_labels
    assert read_rows(by_stride) == one_per_picture
    third = read_rows(every_3rd)
    assert [int(r["frame"]) for r in third] == list(range(0, 24, 3))
    assert [float(r["time_s"]) for r in third] == pytest.approx([k * 1.5 for k in range(8)])


@pytest.mark.slow
def test_plot_writes_a_strip_and_the_table_is_printed(frozen_run, clip, png_labels, tmp_path, capsys) -> None:
    video, _ = clip
    assert predict(frozen_run, str(video), "--plot", "--plot-dir", str(tmp_path / "figs")) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[1].split() == ["source", "frame", "time_s", "label", "probability"]
    table = [line.split() for line in lines[2:] if line.startswith(str(video))]
    assert len(table) == 24  # the default: every frame
    assert [row[3] for row in table] == [png_labels[k // 2] for k in range(24)]
    strip = tmp_path / "figs/clip-frames.png"
    assert strip.is_file()
    with Image.open(strip) as im:  # 12 of the 24 frames, 4 to a row: 3 rows of frame and caption under a title
        assert im.size == (4 * 224, 28 + 3 * (224 + 40))


@pytest.mark.slow
def test_a_video_beside_images_is_its_own_rows(frozen_run, clip, png_labels, capsys) -> None:
    import json

    video, pngs = clip
    assert predict(frozen_run, str(pngs[0]), str(video), "--stride", "12", "--json", "--top-k", "1") == 0
    rows = json.loads(capsys.readouterr().out)
    assert rows[0]["path"] == str(pngs[0]) and rows[0]["predictions"][0]["label"] == png_labels[0]
    assert [(r["source"], r["frame"], r["time_s"]) for r in rows[1:]] == [(str(video), 0, 0.0), (str(video), 12, 6.0)]
    assert [r["predictions"][0]["label"] for r in rows[1:]] == [png_labels[0], png_labels[6]]
    assert predict(frozen_run, str(pngs[0]), str(video), "--out", "x.csv") == 1
    assert "two calls" in capsys.readouterr().err


def test_an_unreadable_video_is_one_error_line(tmp_path, capsys) -> None:
    """Before the model loads: the run need not exist for the video to be refused."""
    run = SimpleNamespace(run_dir=tmp_path / "run")
    bad = tmp_path / "broken.mp4"
    bad.write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 8)
    assert predict(run, str(bad), "--out", str(tmp_path / "rows.csv")) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert err[0].startswith(f"error: {bad}: ") and "re-encode it" in err[0]
    assert not (tmp_path / "rows.csv").exists()
    assert predict(run, str(tmp_path / "missing.mp4")) == 1
    assert "missing.mp4 does not exist" in capsys.readouterr().err


def test_options_that_do_not_fit(tmp_path, capsys) -> None:
    run = SimpleNamespace(run_dir=tmp_path / "run")
    video, image = tmp_path / "v.mp4", tmp_path / "i.png"
    assert predict(run, str(image), "--every", "1s") == 1
    assert "no video was given" in capsys.readouterr().err
    assert predict(run, str(video), "--every", "1s", "--stride", "2") == 1
    assert "give one" in capsys.readouterr().err
    assert predict(run) == 1
    assert "nothing to predict" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        predict(run, str(video), "--every", "soon")
    assert "invalid seconds value" in capsys.readouterr().err


def test_seconds_and_sampling() -> None:
    assert [seconds(x) for x in ("0.5s", "2", "500ms", " 1.5S ", 3)] == [0.5, 2.0, 0.5, 1.5, 3.0]
    with pytest.raises(ConfigError):
        seconds("half")
    assert PredictConfig(run=Path("r"), paths=[Path("v.mp4")], every="250ms").every == 0.25
    with pytest.raises(ConfigError, match="--every must be > 0"):
        PredictConfig(run=Path("r"), paths=[Path("v.mp4")], every=0)
    assert Sampling().describe() == "every frame"
    assert Sampling(stride=3).describe() == "one frame in 3"
    assert Sampling(every=0.5).describe() == "one frame per 0.5s"


def test_which_inputs_are_videos(tmp_path) -> None:
    assert is_video("a/CLIP.MP4") and is_video("b.mkv") and not is_video("c.jpg") and not is_video("d")
    assert is_live("0") and is_live("rtsp://cam/stream") and is_live("https://x/live.m3u8")
    assert not is_live("https://x/cat.jpg") and not is_live("clip.mp4")
    folder = tmp_path / "shots.mp4"  # a folder is walked for images, whatever its name
    folder.mkdir()
    videos, images = split_inputs([Path("a.mp4"), Path("b.jpg"), folder, Path("rtsp://cam:554/s")], "0")
    assert videos == ["a.mp4", "rtsp://cam:554/s", "0"]
    assert images == [Path("b.jpg"), folder]
    with pytest.raises(GraftError, match="nothing to predict"):
        split_inputs([], None)


def test_keeper_spreads_a_bounded_number_of_frames_over_any_length() -> None:
    image = Image.new("RGB", (640, 480))
    for total in (5, 12, 13, 100, 1000):
        keeper = Keeper(12)
        for k in range(total):
            keeper.offer(FrameResult("v.mp4", k, k / 2, [Prediction("ants", 0.9)], image))
            assert len(keeper.held) < 24
        chosen = [r.frame for r in keeper.chosen()]
        assert len(chosen) == min(total, 12) and chosen[0] == 0 and chosen == sorted(set(chosen))
        assert chosen[-1] >= total - 1 - keeper.step  # the last one kept is near the end
        assert all(max(r.image.size) <= 224 for r in keeper.held)


def test_reader_times_and_strides(tmp_path) -> None:
    path = tmp_path / "count.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, (64, 48))
    for k in range(25):
        writer.write(np.full((48, 64, 3), k * 10, np.uint8))
    writer.release()
    reader = VideoReader(path)
    assert reader.fps == 10.0 and not reader.live
    frames = list(reader.frames(Sampling(every=0.25)))  # frames at 0, 0.3, 0.5, 0.8...: the first at or after
    assert [f.index for f in frames] == [0, 3, 5, 8, 10, 13, 15, 18, 20, 23]
    assert frames[1].time_s == pytest.approx(0.3)
    assert frames[0].image.mode == "RGB" and frames[0].image.size == (64, 48)
    assert [f.index for f in reader.frames(Sampling(stride=10))] == [0, 10, 20]
    assert reader.frame_count == 25
    assert [reader.expected(Sampling(**k)) for k in ({}, {"stride": 10}, {"every": 0.25})] == [25, 3, 10]
    assert abs(np.asarray(frames[2].image).mean() - 50) < 3  # the frame itself, decoded


def test_a_row_of_each_kind_of_run() -> None:
    single = FrameResult("v.mp4", 4, 2.0, [Prediction("bees", 0.91234567), Prediction("ants", 0.08765433)])
    assert single.cells() == ["v.mp4", "4", "2.000", "bees", "0.912346"]
    assert single.cells({"bees": "Apis"})[3] == "Apis"
    both = FrameResult("v.mp4", 5, 2.5, [Prediction("bees", 0.9), Prediction("ants", 0.7)], multilabel=True)
    assert both.cells()[3:] == ["bees;ants", "0.900000;0.700000"]
    assert FrameResult("v.mp4", 6, 3.0, [], multilabel=True).cells()[3:] == ["", ""]


def test_ctrl_c_keeps_the_rows_written(tmp_path) -> None:
    """A camera is stopped by Ctrl-C: the CSV keeps every row made until then."""

    def rows():
        yield from (["0", str(k)] for k in range(3))
        raise KeyboardInterrupt

    out = tmp_path / "rows.csv"
    assert stream_csv(out, ["source", "frame"], rows()) == (3, True)
    assert out.read_text().splitlines() == ["source,frame", "0,0", "0,1", "0,2"]
    assert not (tmp_path / "rows.csv.partial").exists()


@pytest.fixture
def served(clip):
    """The clip's folder over HTTP on localhost: the URL of its folder."""
    import functools
    import http.server
    import threading

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args) -> None:
            pass

    handler = functools.partial(Quiet, directory=str(clip[0].parent))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.mark.slow
def test_a_stream_url_is_read_as_the_file_is(frozen_run, clip, served, tmp_path, capsys) -> None:
    """A stream URL (here HTTP on this machine; cameras and RTSP are not tested) gives the file's rows."""
    video, _ = clip
    from_url, from_file = tmp_path / "url.csv", tmp_path / "file.csv"
    url = f"{served}/clip.mkv"
    assert predict(frozen_run, "--source", url, "--every", "1s", "--out", str(from_url)) == 0
    assert predict(frozen_run, str(video.with_suffix(".mkv")), "--every", "1s", "--out", str(from_file)) == 0
    by_url, by_file = read_rows(from_url), read_rows(from_file)
    assert len(by_url) == 12 and {r["source"] for r in by_url} == {url}
    assert [(r["frame"], r["time_s"], r["label"]) for r in by_url] == [
        (r["frame"], r["time_s"], r["label"]) for r in by_file
    ]
    assert [float(r["probability"]) for r in by_url] == pytest.approx(  # frames one at a time from a stream
        [float(r["probability"]) for r in by_file], abs=1e-5
    )
    # an mp4 whose index is at its end cannot be read from a server without seeking: one error line, no file
    capsys.readouterr()
    assert predict(frozen_run, "--source", f"{served}/clip.mp4", "--out", str(tmp_path / "no.csv")) == 1
    assert "download it and pass the file" in capsys.readouterr().err
    assert list(tmp_path.glob("no.csv*")) == []
