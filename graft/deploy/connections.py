"""The connections of ``graft serve``: slow and idle clients cannot hold the server.

uvicorn waits for a request's headers without a time limit, and its ``limit_concurrency`` counts every open
connection: a few hundred connections that never finish their headers made every other client get 503, key or
not (the key is checked only once the headers are in). :func:`guarded_protocol` gives uvicorn an HTTP/1.1
protocol (its own h11 one) that

- closes a connection that has not sent a complete request line and headers within ``header_timeout`` seconds,
  from its opening or from the end of its previous answer (keep-alive);
- caps the connections of one client address at ``per_client``: a new one beyond the cap closes that client's
  oldest connection still waiting for its headers, or, when none waits, is itself closed at once;
- caps the connections waiting for headers, all clients together, at ``max_waiting`` (the oldest goes first),
  so that many addresses cannot exhaust the process's file descriptors.

A connection waiting for its headers never counts towards the requests in progress, so those cannot be blocked
by waiting ones; the limit on requests in progress is the app's (:mod:`graft.commands.serve`).
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.h11_impl import H11Protocol

#: Connections waiting for their headers, all clients together (a process usually has 1024+ descriptors).
MAX_WAITING = 512


def guarded_protocol(*, header_timeout: float, per_client: int, max_waiting: int = MAX_WAITING) -> type[H11Protocol]:
    """An uvicorn ``http`` protocol class with the limits above; each call has its own bookkeeping (one server)."""
    waiting: dict[GuardedProtocol, None] = {}  # insertion-ordered: the oldest first
    by_client: dict[str, dict[GuardedProtocol, None]] = {}

    class GuardedProtocol(H11Protocol):
        _timer: asyncio.TimerHandle | None = None
        _address = ""

        def connection_made(self, transport: Any) -> None:
            super().connection_made(transport)
            self._address = self.client[0] if self.client else ""
            mine = by_client.setdefault(self._address, {})
            if len(mine) >= per_client:
                oldest = next((c for c in mine if c in waiting), None)
                if oldest is None:  # every connection of this client is busy with a request: refuse the new one
                    transport.close()
                    return
                oldest.drop()
            mine[self] = None
            self._wait()

        def connection_lost(self, exc: Exception | None) -> None:
            self._stop_waiting()
            mine = by_client.get(self._address)
            if mine is not None:
                mine.pop(self, None)
                if not mine:
                    del by_client[self._address]
            super().connection_lost(exc)

        def handle_events(self) -> None:
            cycle = self.cycle
            super().handle_events()
            if self.cycle is not cycle:  # a request's headers are complete: it is served, with no time limit here
                self._stop_waiting()

        def on_response_complete(self) -> None:
            super().on_response_complete()  # may start a pipelined request (handle_events above)
            if not self.transport.is_closing() and (self.cycle is None or self.cycle.response_complete):
                self._wait()

        def drop(self) -> None:
            """Close the connection (a client that has not sent its headers in time, or one too many)."""
            self._stop_waiting()
            by_client.get(self._address, {}).pop(self, None)  # counted no more, even before the close completes
            if not self.transport.is_closing():
                self.transport.close()

        def _wait(self) -> None:
            self._stop_waiting()
            self._timer = self.loop.call_later(header_timeout, self.drop)
            waiting[self] = None
            if len(waiting) > max_waiting:
                next(iter(waiting)).drop()

        def _stop_waiting(self) -> None:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            waiting.pop(self, None)

    return GuardedProtocol
