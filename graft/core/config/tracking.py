"""The options of ``graft train --log`` (experiment trackers): names, help texts and the check of the names. No
heavy imports: ``graft --help`` reads them; the trackers themselves are :mod:`graft.insight.tracking`."""

from __future__ import annotations

from graft.core.errors import ConfigError

#: what ``--log`` accepts
TRACKERS = ("tensorboard", "mlflow")

TRACKING_HELP = {
    "log": "experiment trackers to log to, comma-separated: tensorboard (event files in RUN/tensorboard), mlflow "
    "(a run with the config, per-epoch metrics and the run directory as artifacts)",
    "mlflow_uri": "--log mlflow: tracking URI (http://host:5000, sqlite:///mlflow.db, ...) or a folder, which gets a "
    "SQLite store (mlflow.db) and the artifacts (default: $MLFLOW_TRACKING_URI, else MLflow's default: "
    "sqlite:///mlflow.db in the current folder, artifacts in ./mlruns)",
    "mlflow_experiment": "--log mlflow: experiment name (default: the name of DATA)",
}


def tracker_names(names: str | list[str] | tuple[str, ...] | None) -> tuple[str, ...]:
    """``--log`` as a tuple of known tracker names, each once: ``"tensorboard,mlflow"`` and lists alike."""
    if names is None:
        return ()
    items = names.split(",") if isinstance(names, str) else [n for x in names for n in str(x).split(",")]
    out: list[str] = []
    for name in (n.strip().lower() for n in items):
        if name and name not in TRACKERS:
            raise ConfigError(f"--log: unknown tracker {name!r}; choose from {', '.join(TRACKERS)} (comma-separated)")
        if name and name not in out:
            out.append(name)
    return tuple(out)
