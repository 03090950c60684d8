"""``graft app [PROJECT] [options]`` and ``graft app export-labels PROJECT OUT.csv`` on the command line. Light:
``graft --help`` imports it; the app itself is imported when it runs."""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

from graft.core.config import AppConfig
from graft.core.errors import GraftError

HELP = "label images in the browser, check the labels, train, try and export a model"
EXPORT = "export-labels"


def add_app_parser(sub: Any, add_fields: Callable[[argparse.ArgumentParser, type], None]) -> None:
    """``graft app`` in the subcommands ``sub``, its options made from :class:`AppConfig` by ``add_fields``."""
    p = sub.add_parser("app", help=HELP, description=(AppConfig.__doc__ or HELP).strip())
    p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks for errors")
    add_fields(p, AppConfig)
    p.add_argument("more", nargs="*", help=argparse.SUPPRESS)  # export-labels PROJECT OUT.csv
    p.set_defaults(func=cmd_app)


def cmd_app(args: argparse.Namespace) -> int:
    if args.project is not None and str(args.project) == EXPORT:
        return cmd_export_labels(args.more)
    if args.more:
        raise GraftError(
            f"graft app takes one PROJECT folder, got also {' '.join(args.more)}; to write the labels as a table: "
            f"graft app {EXPORT} PROJECT OUT.csv"
        )
    fields = [f for f in dataclasses.fields(AppConfig) if f.metadata.get("cli", True)]
    cfg = AppConfig(**{f.name: getattr(args, f.name) for f in fields})
    from graft.commands.app.server import run_app  # the server (fastapi, uvicorn): imported only to run it

    run_app(cfg)
    return 0


def export_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=f"graft app {EXPORT}",
        description="Write a graft app project's labels as a CSV table (path,label,split) that graft train reads, "
        "and print the command that trains on it.",
    )
    p.add_argument("project", type=Path, metavar="PROJECT", help="the project folder of graft app")
    p.add_argument("out", type=Path, metavar="OUT.csv", help="the table to write")
    return p


def cmd_export_labels(argv: list[str]) -> int:
    from graft.commands.app.labels import export_labels
    from graft.commands.app.store import AppError, Store

    args = export_parser().parse_args(argv)
    if not (args.project / "project.db").is_file():
        raise AppError(f"{args.project} is not a graft app project (no project.db in it): check the path")
    if args.out.suffix.lower() != ".csv":
        raise AppError(f"{args.out}: the labels are written as CSV; name the file OUT.csv")
    with Store(args.project) as store:
        print(export_labels(store, args.out).format())
    return 0
