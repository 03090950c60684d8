"""``graft app``'s config: the project folder, what to import, the address and API key (checked as ``graft serve``
checks them), the upload limits. No heavy imports."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from graft.core.config.fields import ABOVE_0, AT_LEAST_1, DEVICE, Device, Rule, check_fields, opt, optional_path
from graft.core.config.model import ARCH
from graft.core.config.serving import check_access

#: the project folder when none is given
DEFAULT_PROJECT = Path("graft-project")


@dataclass(kw_only=True)
class AppConfig:
    """``graft app``: a local web app to label images, check the labels, train, try and export a model. Its state
    lives in PROJECT (created when missing); images stay where they are. ``graft app export-labels PROJECT
    OUT.csv`` writes the labels as a table that ``graft train`` reads."""

    project: Path = opt(
        DEFAULT_PROJECT,
        f"folder holding the app's state: labels, runs, uploads (default: {DEFAULT_PROJECT})",
        positional=True,
        nargs="?",
    )
    data: Path | None = opt(
        None,
        "labelled images to import: a folder of class folders, graft's train/ val/ layout, or a .csv/.tsv table "
        "(importing the same images again adds nothing)",
    )
    pool: Path | None = opt(None, "folder of unlabelled images to import (walked recursively) for labelling")
    host: str = opt(
        "127.0.0.1",
        "address to listen on (an address other than loopback exposes the project to the network: it then needs an "
        "API key)",
    )
    port: int = opt(8765, "TCP port (0: any free port)", check=Rule("in 0..65535", lambda v: 0 <= v <= 65535))
    allowed_host: tuple[str, ...] = opt(
        (),
        "Host header names accepted besides loopback and the --host address (as graft serve: this stops DNS "
        "rebinding). Repeat it or give a comma list",
        metavar="NAME,NAME",
        action="extend",
    )
    api_key: str | None = opt(
        None,
        "key that the page and every /api request must send (the page asks for it); required with a --host other "
        "than loopback, with at least 16 characters. Prefer the GRAFT_API_KEY environment variable: a key on the "
        "command line is visible to other users in ps (default: $GRAFT_API_KEY, else none)",
        repr=False,  # the key never shows in a printed config or a traceback
    )
    auth: bool = opt(
        True,
        "--no-auth: serve a --host other than loopback without an API key (anyone who reaches it can change the "
        "labels); GRAFT_API_KEY is then ignored",
    )
    arch: str = opt(ARCH, "backbone of the suggestions' features and the default of training (see graft archs)")
    retrain_every: int = opt(20, "new labels after which the suggestions' model is refitted", check=AT_LEAST_1)
    max_upload_mb: float = opt(20.0, "largest uploaded file in MB (answered 413 beyond)", check=ABOVE_0)
    max_pixels: int = opt(
        40_000_000, "largest uploaded image in pixels, checked before decoding (answered 413 beyond)", check=AT_LEAST_1
    )
    workers: int | None = opt(None, "threads decoding images (default: up to 4)", check=AT_LEAST_1)
    device: Device = opt(DEVICE)

    def __post_init__(self) -> None:
        check_fields(self)
        self.project = Path(self.project) if self.project is not None else DEFAULT_PROJECT
        self.data, self.pool = optional_path(self.data), optional_path(self.pool)
        self.allowed_host = check_access(self.allowed_host, self.api_key, self.auth, self.host)

    @property
    def no_auth(self) -> bool:
        """``--no-auth`` was given."""
        return not self.auth

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1_000_000)
