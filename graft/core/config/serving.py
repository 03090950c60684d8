"""``graft serve``'s config: the address, the request limits, the API key. No heavy imports."""

from __future__ import annotations

import ipaddress
import math
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

POSITIVE_FINITE = Rule("> 0 and finite", lambda v: 0 < v < math.inf)
#: Shortest API key accepted on a --host other than loopback (a short key can be guessed over the network).
MIN_KEY_LENGTH = 16
MAKE_A_KEY = "python -c 'import secrets; print(secrets.token_urlsafe(32))'"


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
    max_decoded_mb: float = opt(
        512.0,
        "most memory in MB that decoding one image may take, from its size and pixel format (float and 16-bit "
        "images cost more per pixel), checked before decoding (answered 413 beyond)",
        check=POSITIVE_FINITE,
    )
    header_timeout: float = opt(
        10.0,
        "seconds a client has to send a request's headers, from connecting or from its previous answer; a slower "
        "or idle connection is closed",
        check=POSITIVE_FINITE,
    )
    max_client_connections: int = opt(
        64,
        "open connections one client address may hold; a new one beyond it closes that client's oldest "
        "connection still waiting for its headers",
        check=AT_LEAST_1,
    )
    allowed_host: tuple[str, ...] = opt(
        (),
        "Host header names accepted besides loopback (localhost, 127.0.0.1, [::1]) and the --host address (with "
        "--host 0.0.0.0 or ::, any IP address); other names are answered 400 (this stops DNS rebinding). Repeat it "
        "or give a comma list",
        metavar="NAME,NAME",
        action="extend",
    )
    max_batch: int = opt(16, "most images the model runs at once (concurrent requests are batched)", check=AT_LEAST_1)
    tta: bool | None = opt(TTA)
    workers: int | None = opt(
        None, "uploads decoded at once, in threads (default: 2, up to 4 with 8+ cores)", check=AT_LEAST_1
    )
    device: Device = opt(DEVICE)
    api_key: str | None = opt(
        None,
        "key that requests must send (Authorization: Bearer KEY or X-API-Key: KEY; GET /health, which then says "
        "only that the server is up, and the page stay open, the page asks for the key); required with a --host "
        "other than loopback, with at least 16 characters. Prefer the "
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
        self.allowed_host = check_access(self.allowed_host, self.api_key, self.auth, self.host)

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1_000_000)

    @property
    def max_decoded_bytes(self) -> int:
        return int(self.max_decoded_mb * 1_000_000)


def check_access(
    allowed_host: str | tuple[str, ...] | None, api_key: str | None, auth: bool, host: str
) -> tuple[str, ...]:
    """The checks of a server's access options (``graft serve``, ``graft app``): ``--allowed-host`` as a tuple of
    lower-case names (a string, or names that are comma lists, are split), a ``--api-key`` fit for ``host``, and not
    both ``--api-key`` and ``--no-auth``; a :class:`ConfigError` otherwise."""
    hosts = [allowed_host] if isinstance(allowed_host, str) else list(allowed_host or ())
    names = tuple(h.strip().lower() for host_ in hosts for h in host_.split(",") if h.strip())
    odd = [h for h in names if any(c in h for c in "/@*?# \t")]
    check_all([(not odd, f"--allowed-host takes host names such as models.example.org, not {odd[:1]}")])
    check_all([(api_key is None or auth, "--api-key and --no-auth contradict each other: keep one of them")])
    if api_key is not None and (problem := api_key_problem(api_key, host)):
        raise ConfigError(f"--api-key {problem}")
    return names


def is_loopback(host: str) -> bool:
    """Whether ``host`` names only this machine (127.0.0.0/8, ::1, localhost)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def api_key_problem(key: str, host: str = "127.0.0.1") -> str | None:
    """Why ``key`` cannot be the API key of a server on ``host`` (it travels in an HTTP header; off loopback it
    must be long enough not to be guessed), or None; the key itself is never quoted."""
    if not key:
        return f"is empty: give a key, e.g. one from {MAKE_A_KEY}"
    if not all("!" <= c <= "~" for c in key):
        return "must be printable ASCII without spaces (it travels in an HTTP header)"
    if len(key) < MIN_KEY_LENGTH and not is_loopback(host):
        return (
            f"is {len(key)} characters long: with --host {host} the key needs at least {MIN_KEY_LENGTH} (a short "
            f"key can be guessed over the network); make one with {MAKE_A_KEY}"
        )
    return None
