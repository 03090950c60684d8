"""``graft serve``'s config: the address, the request limits, the API key. No heavy imports."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from graft.core.config.fields import (
    ABOVE_0,
    AT_LEAST_1,
    DEVICE,
    RUN,
    Device,
    Rule,
    check_all,
    check_fields,
    opt,
)
from graft.core.config.inference import TOP_K
from graft.core.config.levers import TTA
from graft.core.errors import ConfigError


@dataclass(kw_only=True)
class ServeConfig:
    """``graft serve``: an HTTP API (POST /predict, GET /model, GET /health) and a web page (GET /) for a run."""

    run: Path = opt(RUN, example="graft serve runs/001-mobilenet_v2-freeze")
    host: str = opt(
        "127.0.0.1", "address to listen on (0.0.0.0 exposes the model to the network: it then needs an API key)"
    )
    port: int = opt(8000, "TCP port (0: any free port)", check=Rule("in 0..65535", lambda v: 0 <= v <= 65535))
    top_k: int = opt(TOP_K, "classes per answer unless the request asks for ?top_k=N")
    max_upload_mb: float = opt(20.0, "largest request body in MB (answered 413 beyond)", check=ABOVE_0)
    max_pixels: int = opt(
        64_000_000, "largest image in pixels, checked before decoding (answered 413 beyond)", check=AT_LEAST_1
    )
    timeout: float = opt(30.0, "seconds one request may take, upload included (answered 408 beyond)", check=ABOVE_0)
    max_batch: int = opt(16, "most images the model runs at once (concurrent requests are batched)", check=AT_LEAST_1)
    tta: bool | None = opt(TTA)
    workers: int | None = opt(None, "threads decoding uploads (default: from the core count)", check=AT_LEAST_1)
    device: Device = opt(DEVICE)
    api_key: str | None = opt(
        None,
        "key that requests must send (Authorization: Bearer KEY or X-API-Key: KEY; GET /health and the "
        "page stay open, the page asks for the key); required with a --host other than loopback. Prefer the "
        "GRAFT_API_KEY environment variable: a key on the command line is visible to other users in ps "
        "(default: $GRAFT_API_KEY, else none)",
        repr=False,  # the key never shows in a printed config or a traceback
    )
    auth: bool = opt(
        True,
        "--no-auth: serve a --host other than loopback without an API key (anyone who reaches it can use the model); "
        "GRAFT_API_KEY is then ignored",
    )

    def __post_init__(self) -> None:
        check_fields(self)
        self.run = Path(self.run)
        check_all(
            [(self.api_key is None or self.auth, "--api-key and --no-auth contradict each other: keep one of them")]
        )
        if self.api_key is not None and (problem := api_key_problem(self.api_key)):
            raise ConfigError(f"--api-key {problem}")

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1_000_000)


def api_key_problem(key: str) -> str | None:
    """Why ``key`` cannot be an API key (it travels in an HTTP header), or None; the key itself is never quoted."""
    if not key:
        return "is empty: give a key, e.g. one from python -c 'import secrets; print(secrets.token_urlsafe(32))'"
    if not all("!" <= c <= "~" for c in key):
        return "must be printable ASCII without spaces (it travels in an HTTP header)"
    return None
