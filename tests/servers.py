"""A real HTTP server for tests: an ASGI app served by uvicorn in a thread on a loopback socket.

from servers import uvicorn_thread  # tests/ is on sys.path (pytest's rootdir conftest)

with uvicorn_thread(app) as url:
    httpx.get(url + "/health")
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from typing import Any


@contextlib.contextmanager
def uvicorn_thread(app: Any, *, graceful_s: float = 5) -> Iterator[str]:
    """``app`` on a free loopback port until the block ends; yields its base URL (no trailing slash)."""
    import uvicorn

    from graft.commands.serve import bind

    sock = bind("127.0.0.1", 0)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=graceful_s))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while not server.started:
            assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start in a thread"
            time.sleep(0.05)
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()
    assert not thread.is_alive()
