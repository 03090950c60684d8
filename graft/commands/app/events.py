"""Server-sent events of ``graft app``: what background work (training, the learner, the check) reports to the pages.

:meth:`Events.publish` may be called from any thread; every open ``GET /api/events`` stream receives each event as
``event: KIND`` + ``data: JSON``. A stream that falls too far behind (a stalled client) is ended: the browser's
``EventSource`` reconnects by itself and the page re-reads the state it shows.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import AsyncGenerator
from typing import Any

import anyio
from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

#: Seconds between keep-alive comments on an idle stream (proxies and browsers drop silent connections).
KEEP_ALIVE_S = 15.0
#: Events queued for one stream before it counts as stalled and is ended.
MAX_QUEUED = 1000
_END = object()  # queued to end a stream


class _Subscriber:
    """One open stream: its event loop and queue (filled from any thread through the loop)."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.queue: asyncio.Queue[Any] = asyncio.Queue()
        self.ended = False

    def offer(self, item: Any) -> None:
        """Runs in the subscriber's loop: queue ``item``, or end a stream that fell behind."""
        if self.ended:
            return
        if item is _END or self.queue.qsize() >= MAX_QUEUED:
            self.ended = True
            item = _END
        self.queue.put_nowait(item)


class Events:
    """The publish side and the streams of the app's server-sent events (thread-safe)."""

    def __init__(self, keep_alive_s: float = KEEP_ALIVE_S) -> None:
        self.keep_alive_s = keep_alive_s
        self._subscribers: set[_Subscriber] = set()
        self._lock = threading.Lock()

    def publish(self, kind: str, data: Any = None) -> None:
        """Send event ``kind`` with JSON ``data`` to every open stream; callable from any thread."""
        message = f"event: {kind}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"
        with self._lock:
            subscribers = list(self._subscribers)
        for sub in subscribers:
            try:
                sub.loop.call_soon_threadsafe(sub.offer, message)
            except RuntimeError:  # its loop has closed: the server is stopping
                self._drop(sub)

    @property
    def subscribers(self) -> int:
        with self._lock:
            return len(self._subscribers)

    def close(self) -> None:
        """End every open stream (the server is stopping)."""
        with self._lock:
            subscribers = list(self._subscribers)
        for sub in subscribers:
            try:
                sub.loop.call_soon_threadsafe(sub.offer, _END)
            except RuntimeError:
                self._drop(sub)

    def response(self) -> StreamingResponse:
        """The ``GET /api/events`` answer: :meth:`stream` as ``text/event-stream``, never cached or buffered."""
        return _EventStream(
            self.stream(),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
        )

    async def stream(self) -> AsyncGenerator[str, None]:
        """The text of one ``text/event-stream`` answer: a retry hint, then the events as they come, with a comment
        every ``keep_alive_s`` seconds of silence. Ends when the client goes or the stream falls behind."""
        sub = _Subscriber(asyncio.get_running_loop())
        with self._lock:
            self._subscribers.add(sub)
        try:
            yield "retry: 3000\n\n"
            while True:
                try:
                    item = await asyncio.wait_for(sub.queue.get(), timeout=self.keep_alive_s)
                except asyncio.TimeoutError:
                    yield ": keep-alive\n\n"
                    continue
                if item is _END:
                    return
                yield item
        finally:
            self._drop(sub)

    def _drop(self, sub: _Subscriber) -> None:
        with self._lock:
            self._subscribers.discard(sub)


class _EventStream(StreamingResponse):
    """A streaming answer that closes its generator when it ends, also when the client went away while an event was
    being sent (the generator, then left at a ``yield``, would otherwise unsubscribe only when garbage-collected)."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            body = self.body_iterator
            if isinstance(body, AsyncGenerator):
                with anyio.CancelScope(shield=True):
                    await body.aclose()
