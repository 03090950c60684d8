"""``graft predict`` on videos, streams and cameras: which inputs are videos, their rows printed or written to
``--out FILE.csv``, and the ``--plot`` strip of each video.

A video file is a path with a video container's suffix (given as an argument; folders are walked for images);
``--source`` takes a camera index, a stream URL or a video file. Each video is its own rows
(``source, frame, time_s, label, probability``); images in the same call are predicted as without videos.
"""

from __future__ import annotations

import dataclasses
import os
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from graft.core.config import PredictConfig
from graft.core.errors import GraftError
from graft.inference.classifier import Prediction
from graft.inference.video import (
    FRAME_COLUMNS,
    STREAM_SCHEMES,
    FrameResult,
    Keeper,
    Sampling,
    VideoReader,
    interruptible,
    is_video,
    predict_frames,
)

#: the most frames a video's --plot strip shows, spread evenly over it
STRIP_FRAMES = 12


def split_inputs(paths: list[Path], source: str | None) -> tuple[list[str], list[Path]]:
    """``(videos, images)``: the video files and stream URLs among ``paths`` and ``--source``, and the rest.

    A URL given as an argument has lost one slash to the path type (``rtsp:/host``); it is restored."""
    videos: list[str] = []
    images: list[Path] = []
    for p in paths:
        text = str(p)
        url = re.match(r"^([a-z][a-z0-9+.-]*):/(?!/)", text, flags=re.IGNORECASE)
        if url and f"{url.group(1).lower()}://" in STREAM_SCHEMES:
            videos.append(f"{url.group(1)}://{text[url.end() :]}")
        elif is_video(p) and not p.is_dir():
            videos.append(text)
        else:
            images.append(p)
    if source is not None:
        videos.append(source)
    if not videos and not images:
        raise GraftError("nothing to predict: pass images, folders or videos, or --source CAMERA|URL")
    return videos, images


def open_videos(cfg: PredictConfig, videos: list[str]) -> list[VideoReader]:
    """The readers of ``videos``, each checked readable before the model loads; the options checked against
    what was given."""
    if not videos:
        if cfg.every is not None or cfg.stride is not None:
            raise GraftError("--every and --stride pick a video's frames; no video was given (pass VIDEO.mp4)")
        return []
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise GraftError("videos are read by one process: run graft predict on a video without torchrun")
    if cfg.out is not None and cfg.paths:
        raise GraftError(
            "--out writes one CSV, and a video's rows (source, frame, time_s, label, probability) differ from an "
            "image's (path, label, probability, top_k, error): predict the videos and the images in two calls"
        )
    if cfg.out is not None and cfg.json:
        raise GraftError("--out writes a CSV file; leave out --json, or leave out --out")
    if cfg.explain and not cfg.paths:
        raise GraftError("--explain draws Grad-CAM on image figures; a video's --plot strip has none: use --plot")
    return [VideoReader(v) for v in videos]


def sampling(cfg: PredictConfig) -> Sampling:
    return Sampling(every=cfg.every, stride=cfg.stride or 1)


def _rows(
    cfg: PredictConfig, clf: Any, reader: VideoReader, keeper: Keeper | None, names: dict[str, str]
) -> Iterator[FrameResult]:
    """The video's rows, labels shown by their ``--category-names``; frames offered to ``keeper`` for a strip."""
    batch = 1 if reader.live else cfg.batch_size  # a live source's rows come as its frames do
    for r in predict_frames(clf, reader, sampling(cfg), top_k=cfg.top_k, batch_size=batch, keep_images=bool(keeper)):
        shown = [Prediction(names.get(p.label, p.label), p.probability) for p in r.predictions]
        r = dataclasses.replace(r, predictions=shown)
        if keeper is not None:
            keeper.offer(r)
        yield r


def _strip(cfg: PredictConfig, reader: VideoReader, keeper: Keeper | None, used: set[str]) -> Path | None:
    """``PLOT_DIR/STEM-frames.png`` (``STEM-2-frames.png`` for a second video of that name in the call)."""
    from graft.insight.framestrip import frame_strip

    if keeper is None or not keeper.held:
        return None
    stem = "camera" + reader.name if reader.name.isdigit() else Path(reader.name.split("?")[0]).stem or "stream"
    name, k = stem, 1
    while name in used:
        k += 1
        name = f"{stem}-{k}"
    used.add(name)
    title = f"{reader.name}: {sampling(cfg).describe()}"
    return frame_strip(keeper.chosen(), cfg.plot_dir / f"{name}-frames.png", title=title)


def videos_to_csv(cfg: PredictConfig, clf: Any, readers: list[VideoReader], names: dict[str, str]) -> int:
    """``--out FILE.csv``: every video's rows into one CSV (streaming), and with ``--plot`` each one's strip."""
    from graft.core.progress import progress
    from graft.inference.csvout import stream_csv

    keepers = [Keeper(STRIP_FRAMES) if cfg.plot else None for _ in readers]

    def rows() -> Iterator[list[str]]:
        for reader, keeper in zip(readers, keepers, strict=True):
            total = reader.expected(sampling(cfg))
            yield from (r.cells() for r in progress(_rows(cfg, clf, reader, keeper, names), desc="frames", total=total))

    n, interrupted = stream_csv(cfg.out, FRAME_COLUMNS, rows())  # type: ignore[arg-type]
    used: set[str] = set()
    strips = [s for reader, keeper in zip(readers, keepers, strict=True) if (s := _strip(cfg, reader, keeper, used))]
    stop = " (stopped by Ctrl-C)" if interrupted else ""
    print(f"{n} frames{stop}; wrote {cfg.out}", file=sys.stderr)
    if strips:
        print(f"{len(strips)} strip(s) written to {cfg.plot_dir}", file=sys.stderr)
    return 0


def _line(cells: list[str], widths: tuple[int, int]) -> str:
    """A table line: the source padded to its name, the frame and time right-aligned, the label padded to the
    longest class name."""
    source, frame, time_s, label, probability = cells
    return f"{source:<{widths[0]}}  {frame:>6}  {time_s:>9}  {label:<{widths[1]}}  {probability}"


def print_videos(
    cfg: PredictConfig, clf: Any, readers: list[VideoReader], names: dict[str, str]
) -> list[dict[str, Any]]:
    """Each video's rows as a table on stdout as they come (with ``--json``, none: they are returned, each with
    its top-k, for the JSON list), and with ``--plot`` its strip. Ctrl-C ends the reading; the rows so far stand."""
    out: list[dict[str, Any]] = []
    used: set[str] = set()
    for reader in readers:
        keeper = Keeper(STRIP_FRAMES) if cfg.plot or cfg.explain else None
        width = (len(reader.name), 0 if clf.multilabel else max(len(names.get(c, c)) for c in clf.classes))
        if not cfg.json:
            print(f"{reader.name}: {sampling(cfg).describe()}")
            print(_line(list(FRAME_COLUMNS), width))
        with interruptible() as stopped:
            for r in _rows(cfg, clf, reader, keeper, names):
                if cfg.json:
                    preds = [p.to_dict() for p in r.predictions]
                    out.append({"source": r.source, "frame": r.frame, "time_s": r.time_s, "predictions": preds})
                else:
                    print(_line(r.cells(digits=3), width), flush=reader.live)
        strip = _strip(cfg, reader, keeper, used)
        if strip is not None and not cfg.json:
            print(f"strip of {reader.name} written to {strip}")
        if stopped[0]:
            print(f"{reader.name}: stopped by Ctrl-C", file=sys.stderr)
            break
    return out
