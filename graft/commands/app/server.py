"""The server of ``graft app``: the FastAPI application, its project context and ``run_app``.

Imported only to run the app (or by its tests): ``graft train`` and the other commands never load FastAPI.
"""

from __future__ import annotations

import contextlib
import dataclasses
import sys
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

from graft.commands.serve import (
    add_guard,
    bind,
    host_check,
    required_key,
    run_server,
    url,
    warn_no_auth,
)

try:  # at module level: FastAPI reads the endpoints' annotations from the modules' globals
    from fastapi import FastAPI
except ImportError:  # pragma: no cover - the serve extra is part of the dev install
    from graft.core.errors import GraftError

    raise GraftError("graft app needs FastAPI and uvicorn: pip install 'graft[serve]'") from None

from graft.commands.app.context import AppContext
from graft.commands.app.events import Events
from graft.commands.app.routes import (
    add_class_routes,
    add_data_routes,
    add_error_handlers,
    add_import_routes,
    add_label_routes,
    add_page_routes,
    is_open,
)
from graft.commands.app.routes_model import add_model_routes
from graft.commands.app.routes_upload import add_upload_routes

if TYPE_CHECKING:
    from graft.core.config import AppConfig

#: The cookie that carries the API key for what the page loads without a script (thumbnails in ``<img>``).
KEY_COOKIE = "graft_app_key"
#: graft serve's defaults for the connection limits (the app's config leaves them out).
HEADER_TIMEOUT = 10.0
MAX_CLIENT_CONNECTIONS = 64


def open_context(cfg: AppConfig, *, workers: bool = True) -> AppContext:
    """The store of ``cfg.project`` (created when missing), the event streams and, with ``workers``, the learner,
    the training job and the check (:func:`add_workers`)."""
    from graft.commands.app.store import Store

    cfg.project.mkdir(parents=True, exist_ok=True)
    ctx = AppContext(cfg=cfg, store=Store(cfg.project), events=Events())
    if workers:
        add_workers(ctx)
    return ctx


def add_workers(ctx: AppContext) -> None:
    """The learner, the training job and the check of ``ctx``'s project, reporting to its event streams (the
    learner's thread starts with the server)."""
    from graft.commands.app.jobs import Checker, Trainer
    from graft.commands.app.learner import Learner

    cfg, publish = ctx.cfg, ctx.events.publish
    ctx.learner = Learner(
        ctx.store,
        arch=cfg.arch,
        retrain_every=cfg.retrain_every,
        on_event=publish,
        device=cfg.device,
    )
    ctx.trainer = Trainer(ctx.store, cfg.project, on_event=publish, device=cfg.device)
    ctx.checker = Checker(ctx.store, cfg.project, on_event=publish, arch=cfg.arch, device=cfg.device)


def create_app(cfg: AppConfig, ctx: AppContext | None = None) -> FastAPI:
    """The FastAPI application of ``graft app`` for ``cfg`` (``ctx``: an opened project; default
    :func:`open_context`). ``cfg.api_key`` is the key every ``/api/*`` request must carry (None: none)."""
    if ctx is None:
        ctx = open_context(cfg)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if ctx.learner is not None:
            ctx.learner.start()
        try:
            yield
        finally:
            close_context(ctx)

    app = FastAPI(title=f"graft app: {cfg.project.name}", docs_url=None, redoc_url=None, lifespan=lifespan)
    app.state.ctx = ctx
    key = cfg.api_key.encode("ascii") if cfg.auth and cfg.api_key is not None else None
    add_guard(app, key, host_check(cfg), is_open=is_open, key_cookie=KEY_COOKIE)
    add_error_handlers(app)
    add_page_routes(app)
    add_data_routes(app, ctx)
    add_class_routes(app, ctx)
    add_import_routes(app, ctx)
    add_label_routes(app, ctx)
    add_upload_routes(app, ctx)
    add_model_routes(app, ctx)
    return app


def close_context(ctx: AppContext) -> None:
    """Cancel a training run, stop the learner, end the event streams and close the store (the server stops)."""
    if ctx.trainer is not None:
        ctx.trainer.cancel()
    if ctx.learner is not None:
        ctx.learner.stop()
    ctx.events.close()
    ctx.store.close()


def run_app(cfg: AppConfig) -> int:
    """Open the project, import ``--data`` and ``--pool``, and serve the app until interrupted (Ctrl-C)."""
    auth = cfg.auth
    cfg = dataclasses.replace(cfg, api_key=required_key(cfg.host, cfg.api_key, auth=auth))  # refuse before work
    warn_no_auth(cfg.host, auth, "the project's images and labels")
    sock = bind(cfg.host, cfg.port)
    ctx = open_context(cfg)
    for folder, pool in ((cfg.data, False), (cfg.pool, True)):
        if folder is not None:
            report = ctx.store.import_pool(folder) if pool else ctx.store.import_data(folder)
            print(f"graft app: {report.format()}", file=sys.stderr, flush=True)
    app = create_app(cfg, ctx)
    print(f"graft app: {url(cfg.host, sock)}", flush=True)
    run_server(
        app,
        sock,
        header_timeout=getattr(cfg, "header_timeout", HEADER_TIMEOUT),
        max_client_connections=getattr(cfg, "max_client_connections", MAX_CLIENT_CONNECTIONS),
    )
    return 0
