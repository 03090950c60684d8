"""``graft serve``: a trained run behind an HTTP API and a web page (FastAPI on uvicorn).

    graft serve runs/001-mobilenet_v2-freeze                 # http://127.0.0.1:8000/

| route | answer |
| --- | --- |
| ``POST /predict[?top_k=N]`` | the image as the raw body or as a multipart field ``file`` -> top-k JSON |
| ``GET /`` | a page where a person drops or picks an image and sees it with its top-k bars |
| ``GET /health`` | ``{"status": "ok"}`` once the model is loaded; with the key, the run's name and counters too |
| ``GET /model`` | classes, architecture, preprocessing, training metrics, the server's limits |

Requests are checked before any work: the body size (``--max-upload-mb``, 413), an empty body (400), the file's
content (sniffed, never the declared type or name: 415 when it is not a supported image), the declared pixel count
(``--max-pixels``, read from the header before decoding: 413), broken data (422), and a time limit for the whole
request (``--timeout``, 408). Errors answer ``{"detail": "..."}``. Decoding runs in a thread pool and the model in
its own thread, batching the requests that arrive while it is busy, so the event loop never blocks and concurrent
requests share the model (:mod:`graft.deploy.serving`). The server listens on loopback unless ``--host`` says
otherwise.

Connections cannot hold the server: one that has not sent its headers within ``--header-timeout`` is closed, one
client address holds at most ``--max-client-connections`` (:mod:`graft.deploy.connections`), and at most
:data:`MAX_IN_FLIGHT` requests are served at once (503 beyond). A request whose ``Host`` header is not loopback,
the ``--host`` address or an ``--allowed-host`` (with ``--host 0.0.0.0`` or ``::``: also any IP address) is answered
400, so that a web page cannot reach a local server through a name of its own (DNS rebinding).

With an API key (``--api-key KEY``, better ``$GRAFT_API_KEY``: a command line shows in ``ps``), every request but
``GET /health`` (for load balancers: only ``{"status": "ok"}`` without the key) and the page itself (static, the
same for every server) must carry it, as ``Authorization: Bearer KEY`` or ``X-API-Key: KEY``; otherwise it is
answered 401 with ``WWW-Authenticate: Bearer``.
The page asks for the key when ``/model`` answers 401 and keeps it in the tab's ``sessionStorage``. A ``--host`` other
than loopback needs a key of at least 16 characters, or an explicit ``--no-auth``: without either the server refuses
to start.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import hashlib
import hmac
import ipaddress
import os
import re
import socket
import sys
import time
from collections.abc import AsyncIterator, Callable, Mapping
from importlib import resources
from typing import TYPE_CHECKING, Any, Protocol

from graft.core.config import ServeConfig, api_key_problem, from_options
from graft.core.config.fields import takes_fields
from graft.core.config.serving import is_loopback
from graft.core.errors import GraftError

try:  # at module level: FastAPI reads the endpoints' annotations from this module's globals
    import uvicorn
    from fastapi import FastAPI, Query, Request
    from fastapi.responses import HTMLResponse, JSONResponse, Response
except ImportError:  # pragma: no cover - the serve extra is part of the dev install
    raise GraftError("graft serve needs FastAPI and uvicorn: pip install 'graft[serve]'") from None

# after the check above: the model side imports Starlette too
from graft.deploy.connections import guarded_protocol
from graft.deploy.serving import HTTPError, Service

if TYPE_CHECKING:
    from graft.inference.classifier import Classifier

API_KEY_ENV = "GRAFT_API_KEY"
#: Paths answered without the key: liveness for load balancers, and the static page (it holds no model data and a
#: browser cannot add a header to a navigation; what it fetches, /model and /predict, needs the key).
OPEN_PATHS = frozenset({"/health", "/", "/favicon.ico"})
#: Requests served at once; beyond, 503 (each may hold an upload of up to --max-upload-mb).
MAX_IN_FLIGHT = 256
#: Host names a loopback server answers to (with any port).
LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "[::1]"})
EVERY_ADDRESS = ("0.0.0.0", "::")


class ServeError(GraftError):
    """The server cannot start (address in use, bad host...)."""


class Listening(Protocol):
    """What the Host check reads from a server's config (:class:`ServeConfig`, the app's config)."""

    host: str
    allowed_host: tuple[str, ...]


# ----------------------------------------------------------------------------------------------------------------
# the web app


def page_html() -> str:
    """The page served at ``GET /`` (``graft/static/index.html``)."""
    return resources.files("graft").joinpath("static/index.html").read_text(encoding="utf-8")


def _content_security_policy(html: str) -> str:
    """Allow exactly the page's own inline script and style (by hash), images from blobs, requests to this server."""

    def hashes(tag: str) -> str:
        found = re.findall(rf"<{tag}>(.*?)</{tag}>", html, flags=re.S)
        return " ".join(f"'sha256-{base64.b64encode(hashlib.sha256(s.encode()).digest()).decode()}'" for s in found)

    return (
        f"default-src 'none'; script-src {hashes('script')}; style-src {hashes('style')}; img-src blob: data:; "
        "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    )


def create_app(clf: Classifier, cfg: ServeConfig) -> FastAPI:
    """The FastAPI application serving ``clf`` under the limits of ``cfg``."""
    service = Service(clf, cfg)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await service.start()
        try:
            yield
        finally:
            await service.stop()

    app = FastAPI(
        title=f"graft: {clf.run_dir.name}",
        description="Image classification with a graft run.",
        docs_url=None,  # the Swagger page loads scripts from a CDN; /openapi.json stays
        redoc_url=None,
        lifespan=lifespan,
    )
    app.state.service = service
    key = cfg.api_key.encode("ascii") if cfg.auth and cfg.api_key is not None else None
    add_guard(app, key, host_check(cfg))
    _add_page_routes(app)
    _add_api_routes(app, service, key)
    return app


def allowed_hosts(cfg: Listening) -> frozenset[str]:
    """The ``Host`` names (without port) the server answers: loopback, the ``--host`` address (unless it is every
    address), ``--allowed-host``."""

    def name(host: str) -> str:
        bare = host.strip("[]")
        return f"[{bare}]" if bare.count(":") > 1 else host_name(host)  # an IPv6 address, else NAME[:PORT]

    bound = () if cfg.host.strip("[]") in EVERY_ADDRESS else (cfg.host,)
    return LOOPBACK_NAMES | {name(h) for h in (*bound, *cfg.allowed_host)}


def host_check(cfg: Listening) -> Callable[[str], bool]:
    """Whether a ``Host`` header is answered: one of :func:`allowed_hosts`, or, on a server listening on every
    address (``--host 0.0.0.0`` or ``::``), any IP address but those (an address cannot be rebound to another
    machine by DNS; a name can)."""
    names = allowed_hosts(cfg)
    every_address = cfg.host.strip("[]") in EVERY_ADDRESS

    def allowed(header: str) -> bool:
        name = host_name(header)
        if name in names:
            return True
        try:
            return every_address and not ipaddress.ip_address(name.strip("[]")).is_unspecified
        except ValueError:
            return False

    return allowed


def host_name(header: str) -> str:
    """The name in a ``Host`` header, without its port, lowercase (``[::1]:8000`` -> ``[::1]``)."""
    header = header.strip().lower()
    if header.startswith("["):
        return header[: header.find("]") + 1]
    return header.rpartition(":")[0] if header.count(":") == 1 else header


def add_guard(
    app: FastAPI,
    key: bytes | None,
    host_allowed: Callable[[str], bool],
    is_open: Callable[[str], bool] = OPEN_PATHS.__contains__,
    key_cookie: str | None = None,
) -> None:
    """The Host and API key checks (``key`` None: none; paths for which ``is_open`` is true need no key), the limit
    on requests in progress, the security headers and the answer to an :class:`HTTPError`.

    ``key_cookie``: the name of a cookie that may carry the key too (for what a page loads without a script, such as
    ``<img src>``): set, HttpOnly and SameSite=Strict, on the answer to any request that sent the key in a header."""
    in_flight = 0

    def refused(request: Request) -> str | None:
        if key is None or is_open(request.url.path):
            return None
        cookie = request.cookies.get(key_cookie, "") if key_cookie else ""
        if cookie and hmac.compare_digest(cookie.encode("utf-8"), key):
            return None
        return check_key(request.headers, key)

    def remember_key(request: Request, response: Any) -> None:
        """Set the key's cookie (a session cookie: it ends with the browser) after the key came in a header."""
        if key_cookie is None or key is None or request.cookies.get(key_cookie) == key.decode("ascii"):
            return
        if check_key(request.headers, key) is None:
            response.set_cookie(key_cookie, key.decode("ascii"), httponly=True, samesite="strict")

    @app.middleware("http")
    async def guard(request: Request, call_next: Any) -> Any:
        """The checks (before any of the request is read), then the security headers on every answer."""
        nonlocal in_flight
        host = request.headers.get("host")
        if host is not None and not host_allowed(host):
            response = JSONResponse(
                {"detail": "this server does not answer to that Host name: start it with --allowed-host NAME"},
                status_code=400,
            )
        elif refusal := refused(request):
            response = JSONResponse(
                {"detail": refusal},
                status_code=401,
                headers={"WWW-Authenticate": "Bearer", "Cache-Control": "no-store"},
            )
        elif in_flight >= MAX_IN_FLIGHT:
            response = JSONResponse(
                {"detail": f"the server is busy ({MAX_IN_FLIGHT} requests in progress): retry in a moment"},
                status_code=503,
                headers={"Retry-After": "1"},
            )
        else:
            in_flight += 1
            try:
                response = await call_next(request)
            finally:
                in_flight -= 1
            remember_key(request, response)
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("Referrer-Policy", "no-referrer")
        response.headers.setdefault("X-Frame-Options", "DENY")
        return response

    @app.exception_handler(HTTPError)
    async def http_error(request: Request, exc: HTTPError) -> JSONResponse:
        return JSONResponse({"detail": exc.message}, status_code=exc.status)


def _add_page_routes(app: FastAPI) -> None:
    """``GET /`` (the page, with a policy that allows only its own script and style) and ``GET /favicon.ico``."""
    html = page_html()
    page_headers = {"Content-Security-Policy": _content_security_policy(html), "Cache-Control": "no-cache"}

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def index() -> HTMLResponse:
        return HTMLResponse(html, headers=page_headers)

    @app.get("/favicon.ico", include_in_schema=False)
    async def favicon() -> Response:
        return Response(status_code=204)


def _add_api_routes(app: FastAPI, service: Service, key: bytes | None) -> None:
    """``GET /health``, ``GET /model`` and ``POST /predict``."""
    clf, cfg = service.clf, service.cfg

    @app.get("/health")
    async def health(request: Request) -> dict[str, Any]:
        """Liveness: the model is loaded and the server answers; with the key, which run and how busy."""
        if key is not None and check_key(request.headers, key) is not None:
            return {"status": "ok"}
        return {
            "status": "ok",
            "model": clf.run_dir.name,
            "uptime_s": round(time.time() - service.started, 1),
            "requests": service.requests,
            "model_runs": service.batcher.batches,  # forward passes; requests per run = batching at work
        }

    @app.get("/model")
    async def model() -> dict[str, Any]:
        """The classes, architecture, preprocessing and training metrics of the served run, and the limits."""
        return service.model_info

    @app.post("/predict")
    async def predict(
        request: Request,
        top_k: int | None = Query(None, ge=1, le=1000, description="classes to return (default: the server's)"),
    ) -> JSONResponse:
        """Classify one image, sent as the raw body or as the multipart/form-data field ``file``."""
        try:
            result = await asyncio.wait_for(service.predict(request, top_k), timeout=cfg.timeout)
        except asyncio.TimeoutError:
            raise HTTPError(
                408, f"the request took longer than {cfg.timeout:g} s (--timeout): send a smaller image, or retry"
            ) from None
        return JSONResponse(result, headers={"Cache-Control": "no-store"})


# ----------------------------------------------------------------------------------------------------------------
# the API key


def check_key(headers: Mapping[str, str], key: bytes) -> str | None:
    """None when ``headers`` carry ``key`` (``Authorization: Bearer KEY`` or ``X-API-Key: KEY``), else why not.

    Compared in constant time; the answer never quotes what was sent."""
    sent = []
    scheme, _, token = headers.get("authorization", "").strip().partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        sent.append(token.strip())
    if headers.get("x-api-key", "").strip():
        sent.append(headers["x-api-key"].strip())
    how = "send it as 'Authorization: Bearer KEY' or 'X-API-Key: KEY'"
    if not sent:
        return f"this server needs an API key: {how} (GET /health needs none)"
    # latin-1: the header's own bytes (Starlette decodes headers as latin-1); every candidate is compared
    if any([hmac.compare_digest(s.encode("latin-1"), key) for s in sent]):
        return None
    return f"wrong API key: {how}, with the key the server was started with"


def resolve_api_key(cfg: ServeConfig, environ: Mapping[str, str] = os.environ) -> str | None:
    """The key the server will require: ``--api-key``, else ``$GRAFT_API_KEY``, none with ``--no-auth``.

    Refuses (:class:`ServeError`) a ``--host`` other than loopback with no key and no ``--no-auth``; checked before
    the model loads or a socket is bound."""
    return required_key(cfg.host, cfg.api_key, auth=cfg.auth, environ=environ)


def required_key(host: str, api_key: str | None, *, auth: bool, environ: Mapping[str, str] = os.environ) -> str | None:
    """:func:`resolve_api_key` for any server: the key from ``api_key`` or ``$GRAFT_API_KEY`` (none unless
    ``auth``), or a :class:`ServeError` when ``host`` is not loopback and no key is set."""
    if not auth:
        return None
    key = api_key
    if key is None and environ.get(API_KEY_ENV):
        key = environ[API_KEY_ENV]
        if problem := api_key_problem(key, host):
            raise ServeError(f"${API_KEY_ENV} {problem}")
    if key is None and not is_loopback(host):
        raise ServeError(
            f"--host {host} lets other machines reach the server, and no API key is set: export "
            f"{API_KEY_ENV}=<a long random key> (or --api-key KEY, visible in ps), or pass --no-auth to serve "
            "without authentication, or use --host 127.0.0.1"
        )
    return key


def warn_no_auth(host: str, auth: bool, what: str = "the model") -> None:
    """Say on stderr that a server off loopback runs without a key (``--no-auth``): anyone can use ``what``."""
    if not auth and not is_loopback(host):
        print(
            f"warning: --no-auth on {host}: anyone who can reach this machine can use {what}; "
            f"set {API_KEY_ENV} instead, or use --host 127.0.0.1 to keep it local",
            file=sys.stderr,
            flush=True,
        )


# ----------------------------------------------------------------------------------------------------------------
# running it


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on ``host:port`` (port 0: any free port), or a :class:`ServeError` saying what to do."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host.strip("[]"), port))
        sock.listen(128)
    except OSError as e:
        sock.close()
        hint = "choose another --port (or --port 0 for any free one)" if e.errno == 98 else "check --host and --port"
        raise ServeError(f"cannot listen on {host}:{port}: {e.strerror or e}; {hint}") from None
    sock.set_inheritable(True)
    return sock


@takes_fields(ServeConfig, "run")
def serve(run_dir: str | os.PathLike[str], /, **options: Any) -> None:
    """Serve a run until interrupted (Ctrl-C or SIGTERM). Prints the address it listens on to stderr.

    ``options`` are the fields of :class:`graft.core.config.ServeConfig` (``graft serve --help``), with its
    defaults; ``api_key=None`` takes ``$GRAFT_API_KEY``, and ``auth=False`` is ``--no-auth``."""
    run_config(from_options(ServeConfig, options, run=run_dir))


def run_config(cfg: ServeConfig) -> None:
    """:func:`serve` with a :class:`ServeConfig`."""
    from graft.inference.loading import load

    cfg = dataclasses.replace(cfg, api_key=resolve_api_key(cfg))  # a refusal comes before any slow work
    warn_no_auth(cfg.host, cfg.auth)
    clf = load(cfg.run, device=cfg.device, tta=cfg.tta)
    app = create_app(clf, cfg)
    sock = bind(cfg.host, cfg.port)
    access = "API key required" if cfg.api_key is not None else "no API key"
    print(
        f"graft serve: {clf.run_dir.name} ({clf.meta.arch}, {len(clf.classes)} classes) "
        f"on {url(cfg.host, sock)} ({access}; Ctrl-C stops)",
        file=sys.stderr,
        flush=True,
    )
    run_server(app, sock, header_timeout=cfg.header_timeout, max_client_connections=cfg.max_client_connections)


def url(host: str, sock: socket.socket) -> str:
    """``http://HOST:PORT/`` of a server bound to ``sock`` (an IPv6 address in brackets)."""
    shown_host = f"[{host.strip('[]')}]" if ":" in host else host
    return f"http://{shown_host}:{sock.getsockname()[1]}/"


def run_server(app: FastAPI, sock: socket.socket, *, header_timeout: float, max_client_connections: int) -> None:
    """Serve ``app`` on ``sock`` with uvicorn until interrupted, under the connection limits of
    :func:`graft.deploy.connections.guarded_protocol`."""
    config = uvicorn.Config(
        app,
        http=guarded_protocol(header_timeout=header_timeout, per_client=max_client_connections),
        ws="none",  # no WebSocket routes: an upgrade request is plain HTTP, under the same limits
        log_level="info",
        timeout_keep_alive=5,
        server_header=False,
        timeout_graceful_shutdown=5,
    )
    uvicorn.Server(config).run(sockets=[sock])
