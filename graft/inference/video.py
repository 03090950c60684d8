"""Videos, streams and cameras in ``graft predict``: frames read with OpenCV, sampled (``--every``/``--stride``),
and classified through the run's own eval preprocessing, one row per sampled frame.

A frame becomes an RGB PIL image and goes to :meth:`graft.inference.classifier.Classifier.predict` in batches, so
it is preprocessed exactly as an image file is (the classifier's eval transform). Any container and codec that
this OpenCV build reads works (its FFmpeg backend: mp4, avi, mov, mkv, webm...); the same reader takes a stream
URL (``rtsp://``, ``http(s)://``...) or a camera index, read until the stream ends or Ctrl-C.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from graft.core.errors import GraftError
from graft.inference.classifier import Classifier, Prediction

#: file suffixes read as videos (lower case)
VIDEO_SUFFIXES = frozenset(
    [
        ".mp4",
        ".m4v",
        ".mov",
        ".avi",
        ".mkv",
        ".webm",
        ".mpg",
        ".mpeg",
        ".wmv",
        ".flv",
        ".3gp",
        ".ts",
        ".mts",
        ".m2ts",
        ".ogv",
        ".asf",
    ]
)
#: URL schemes OpenCV's FFmpeg backend reads as streams
STREAM_SCHEMES = ("rtsp://", "rtsps://", "rtmp://", "rtmps://", "http://", "https://", "udp://", "tcp://", "srt://")
#: a URL ending in one of these is an image, not a stream
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")
#: the columns of a video's rows
FRAME_COLUMNS = ("source", "frame", "time_s", "label", "probability")
#: a file's frame rate above this (or none) is not believed: times then come from the decoder's timestamps
MAX_FPS = 1000.0


class VideoError(GraftError):
    """A video, stream or camera cannot be read."""


def is_video(path: str | os.PathLike[str]) -> bool:
    """Whether a file is read as a video: its suffix is a video container's."""
    return Path(path).suffix.lower() in VIDEO_SUFFIXES


def is_live(source: str) -> bool:
    """Whether ``source`` is a camera index (``0``) or a stream URL (not one ending in an image suffix)."""
    if source.isdigit():
        return True
    lower = source.lower()
    return lower.startswith(STREAM_SCHEMES) and not lower.split("?")[0].endswith(IMAGE_SUFFIXES)


@dataclass(frozen=True)
class Sampling:
    """Which frames are classified: one per ``every`` seconds (the first frame at or after each multiple of it),
    else every ``stride``-th frame from the first (1: every frame)."""

    every: float | None = None
    stride: int = 1

    def describe(self) -> str:
        if self.every is not None:
            return f"one frame per {self.every:g}s"
        return "every frame" if self.stride == 1 else f"one frame in {self.stride}"


class _Sampler:
    def __init__(self, sampling: Sampling) -> None:
        self.sampling = sampling
        self.due = 0.0

    def takes(self, index: int, time_s: float) -> bool:
        every = self.sampling.every
        if every is None:
            return index % self.sampling.stride == 0
        t = time_s + 1e-6  # 1/fps sums are not exact in binary
        if t < self.due:
            return False
        self.due = (math.floor(t / every) + 1) * every
        return True


@dataclass(frozen=True)
class Frame:
    """One sampled frame: its index in the video (0-based), its time in seconds, and the RGB image."""

    index: int
    time_s: float
    image: Any  # PIL.Image.Image


@dataclass(frozen=True)
class FrameResult:
    """The predictions for one sampled frame (and, with ``keep_images``, the frame itself)."""

    source: str
    frame: int
    time_s: float
    predictions: list[Prediction]
    image: Any = None
    multilabel: bool = False

    def cells(self, names: dict[str, str] | None = None, *, digits: int = 6) -> list[str]:
        """The row's cells (:data:`FRAME_COLUMNS`): the top label and its probability; a multi-label run's labels
        over their thresholds and their probabilities, ``;``-separated (empty when none is); probabilities to
        ``digits`` decimals."""
        names = names or {}
        preds = self.predictions
        top = preds if self.multilabel else preds[:1]
        labels = ";".join(names.get(p.label, p.label) for p in top)
        probs = ";".join(f"{p.probability:.{digits}f}" for p in top)
        return [self.source, str(self.frame), f"{self.time_s:.3f}", labels, probs]


def _quiet_open(source: str | int) -> Any:
    """An OpenCV capture, opened with FFmpeg's and OpenCV's own console messages silenced (a damaged file or a
    missing camera is reported once, by graft)."""
    import cv2

    os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")  # read when FFmpeg is first used
    level = cv2.utils.logging.getLogLevel()
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)
    try:
        return cv2.VideoCapture(source)
    finally:
        cv2.utils.logging.setLogLevel(level)


class _Clock:
    """Seconds since the first frame from the decoder's timestamps; from the wall clock instead when they do not
    advance from the first frame to the second (a source that stamps nothing)."""

    def __init__(self) -> None:
        self.first: tuple[float, float] | None = None  # (timestamp, wall clock) of the first frame
        self.wall: bool | None = None

    def seconds(self, stamp: float) -> float:
        now = time.monotonic()
        if self.first is None:
            self.first = (stamp, now)
            return 0.0
        if self.wall is None:
            self.wall = stamp <= self.first[0]
        return now - self.first[1] if self.wall else stamp - self.first[0]


class VideoReader:
    """Frames of a video file, stream URL or camera index, sampled by a :class:`Sampling`.

    Frame times are ``index / fps`` where the source states a frame rate (files, most streams); a camera's (its
    rate changes with the light), or a source's without a rate, come from :class:`_Clock`. Opening checks that
    the source can be read (a file: that its first frame decodes) and raises :class:`VideoError` naming it and
    what to do."""

    def __init__(self, source: str | os.PathLike[str]) -> None:
        self.name = str(source)
        self.live = isinstance(source, str) and is_live(source)
        self.frame_count = 0  # as the container states it; 0 when unknown (a stream, a camera)
        self.fps = self._check()

    def _open(self) -> Any:
        return _quiet_open(int(self.name) if self.name.isdigit() and self.live else self.name)

    def _check(self) -> float:
        import cv2

        if not self.live and not Path(self.name).is_file():
            raise VideoError(f"{self.name} does not exist; pass a video file, --source URL or --source CAMERA")
        cap = self._open()
        try:
            if not cap.isOpened():
                raise VideoError(self._cannot_read())
            if not self.live and not cap.grab():
                raise VideoError(self._cannot_read("no frame decodes"))
            fps = float(cap.get(cv2.CAP_PROP_FPS) or 0.0)
            self.frame_count = 0 if self.live else max(0, int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0))
        finally:
            cap.release()
        return fps if 0 < fps <= MAX_FPS else 0.0

    def expected(self, sampling: Sampling) -> int | None:
        """About how many frames ``sampling`` takes (for a progress bar); None for a source of unknown length."""
        if not self.frame_count or (sampling.every is not None and not self.fps):
            return None
        if sampling.every is None:
            return -(-self.frame_count // sampling.stride)
        return math.ceil(self.frame_count / self.fps / sampling.every)

    def _cannot_read(self, why: str = "OpenCV cannot open it") -> str:
        if self.live and self.name.isdigit():
            return f"camera {self.name}: {why}; check that it is connected and free (cameras count from 0)"
        if self.live:
            return f"{self.name}: {why}; check the URL and that the stream is reachable from this machine"
        return (
            f"{self.name}: {why} (a damaged file, not a video, or a codec this OpenCV build lacks); re-encode it, "
            f"e.g. ffmpeg -i {self.name} -c:v libx264 fixed.mp4, and pass that"
        )

    def frames(self, sampling: Sampling) -> Iterator[Frame]:
        """The sampled frames, read until the source ends (a file's last frame, a stream closing). A source that
        gives no frame at all raises :class:`VideoError`."""
        import cv2
        from PIL import Image

        cap = self._open()
        if not cap.isOpened():
            raise VideoError(self._cannot_read())
        sampler, index = _Sampler(sampling), -1
        camera = self.live and self.name.isdigit()
        clock = None if self.fps and not camera else _Clock()
        try:
            while cap.grab():  # decodes; the colour conversion waits for a frame that is sampled
                index += 1
                t = index / self.fps if clock is None else clock.seconds(cap.get(cv2.CAP_PROP_POS_MSEC) / 1000)
                if not sampler.takes(index, t):
                    continue
                ok, bgr = cap.retrieve()
                if not ok:
                    break
                yield Frame(index, t, Image.fromarray(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)))
        finally:
            cap.release()
        if index < 0:  # opened, yet nothing came (an mp4 over HTTP whose index is at its end needs seeking)
            raise VideoError(
                f"{self.name}: no frame was read (the source ended at once or sent nothing OpenCV decodes); "
                "for a video file over http(s), download it and pass the file"
            )


def predict_frames(
    clf: Classifier,
    reader: VideoReader,
    sampling: Sampling,
    *,
    top_k: int = 1,
    batch_size: int = 32,
    keep_images: bool = False,
) -> Iterator[FrameResult]:
    """Classify the sampled frames of ``reader`` in batches of ``batch_size`` (a live source: the rows of a batch
    come when it is full), through the classifier's eval preprocessing. ``keep_images`` keeps each frame's image
    on its result (for a figure)."""
    batch: list[Frame] = []

    def flush() -> Iterator[FrameResult]:
        preds = clf.predict([f.image for f in batch], top_k=top_k, batch_size=batch_size)
        for f, p in zip(batch, preds, strict=True):
            yield FrameResult(reader.name, f.index, f.time_s, p, f.image if keep_images else None, clf.multilabel)
        batch.clear()

    for frame in reader.frames(sampling):
        batch.append(frame)
        if len(batch) == batch_size:
            yield from flush()
    if batch:
        yield from flush()


class Keeper:
    """Up to ``n`` frames spread evenly over a video of unknown length, in bounded memory: every ``step``-th
    offered frame is kept as a thumbnail; when ``2 n`` are held, every other one is dropped and ``step`` doubles."""

    def __init__(self, n: int = 12, size: int = 224) -> None:
        self.n, self.size = n, size
        self.step, self.seen = 1, 0
        self.held: list[FrameResult] = []

    def offer(self, result: FrameResult) -> None:
        if self.seen % self.step == 0 and result.image is not None:
            thumb = result.image.copy()
            thumb.thumbnail((self.size, self.size))
            self.held.append(dataclasses.replace(result, image=thumb))
            if len(self.held) >= 2 * self.n:
                self.held = self.held[::2]
                self.step *= 2
        self.seen += 1

    def chosen(self) -> list[FrameResult]:
        """At most ``n`` of the held frames, evenly spread, first one included."""
        if len(self.held) <= self.n:
            return list(self.held)
        k = len(self.held)
        return [self.held[round(i * (k - 1) / (self.n - 1))] for i in range(self.n)]


@contextlib.contextmanager
def interruptible() -> Iterator[list[bool]]:
    """Ctrl-C ends the reading (a camera or stream is stopped that way) instead of the command: the flag is set
    and the rows already made are kept."""
    stopped = [False]
    try:
        yield stopped
    except KeyboardInterrupt:
        stopped[0] = True
