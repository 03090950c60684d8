"""model.json and metrics.json read as checked records (:class:`RunMeta`, :class:`RunMetrics`).

Each kind of run's model.json round-trips to the same JSON; each kind of bad field is one RunError line naming the
file and the field; a run directory written by an earlier graft (tests/fixtures, weights made here) still loads,
predicts and evaluates.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import graft
from graft.core import checkpoint as ckpt
from graft.core.errors import RunError
from graft.core.runmeta import ARCH_KWARGS, RunMeta
from graft.core.runmetrics import RunMetrics
from graft.inference.ensemble import ensemble_meta

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
OLD_RUN = FIXTURES / "run-mobilenet_v2-freeze"  # json/csv files of a frozen run; conftest.py makes its weights
INT8_META = FIXTURES / "model-int8.json"  # graft quantize's model.json of that run
REPO = Path(__file__).resolve().parents[2]


def float_meta() -> dict[str, Any]:
    return json.loads((OLD_RUN / "model.json").read_text())


def text_of(d: dict[str, Any]) -> str:
    return json.dumps(d, indent=2, ensure_ascii=False) + "\n"  # as graft writes its JSON files


def multilabel_meta() -> dict[str, Any]:
    """What a multi-label run writes: the float keys, then ``task`` and ``thresholds``, then the weights."""
    meta = {k: v for k, v in float_meta().items() if not k.startswith("weights_")}
    meta |= {"task": "multilabel", "thresholds": [0.41, 0.625]}
    return meta | {"weights_file": "model.safetensors", "weights_sha256": "0" * 64}


def ensemble_dict() -> dict[str, Any]:
    member = RunMeta.from_dict(float_meta())
    return json.loads(text_of(ensemble_meta([member, member], ["members/1-mobilenet_v2", "members/2-mobilenet_v2"])))


KINDS = {
    "float": float_meta,
    "int8": lambda: json.loads(INT8_META.read_text()),
    "multilabel": multilabel_meta,
    "ensemble": ensemble_dict,
    "tta": lambda: float_meta() | {"tta": True},
    "newer graft key": lambda: float_meta() | {"calibrated_by": {"x": 1}},
}


@pytest.mark.parametrize("kind", KINDS)
def test_each_kind_of_run_round_trips(kind: str, tmp_path: Path) -> None:
    d = KINDS[kind]()
    path = tmp_path / "model.json"
    path.write_text(text_of(d))
    meta = RunMeta.from_json(path)
    assert text_of(meta.to_dict()) == path.read_text()
    assert meta.is_int8 == (kind == "int8") and meta.is_ensemble == (kind == "ensemble")
    assert meta.multilabel == (kind == "multilabel") and meta.classes == ("ants", "bees")
    if kind == "ensemble":
        assert meta.head is None and meta.members == ("members/1-mobilenet_v2", "members/2-mobilenet_v2")
    else:
        assert meta.head is not None and meta.preprocess.input_size == 224 and meta.arch == "mobilenet_v2"


def test_a_changed_field_is_written_where_the_writers_put_it() -> None:
    """``graft evaluate --tta`` adds ``tta`` after the keys read (as ``meta | {"tta": ...}`` did)."""
    meta = RunMeta.from_dict(float_meta())
    assert meta.replace(tta=True).to_dict() == float_meta() | {"tta": True}
    assert list(meta.replace(tta=True).to_dict())[-1] == "tta"


def test_the_writers_output_is_what_runmeta_reads_back() -> None:
    """A record built from the writer's dict (tuples and all) gives the same JSON text."""
    d = float_meta() | {"preprocess": float_meta()["preprocess"] | {"mean": (0.485, 0.456, 0.406)}}
    assert text_of(RunMeta.from_dict(d).to_dict()) == text_of(float_meta())


def test_arch_kwargs_are_those_the_backbone_registry_writes() -> None:
    """Every builder kwarg a registered torchvision weights file records passes the check, and the check knows
    no key the registry does not write."""
    from graft.core.runmeta import FieldProblem
    from graft.models.backbones import get_backbone, list_backbones

    written: set[str] = set()
    for name in list_backbones():
        if name.startswith("timm/"):
            continue
        spec = get_backbone(name)
        for w in spec.weights:
            kwargs = json.loads(json.dumps(spec.arch_kwargs(w)))
            written |= set(kwargs)
            for key, value in kwargs.items():
                try:
                    ARCH_KWARGS[key](value)
                except FieldProblem as e:  # pragma: no cover - the failure message
                    pytest.fail(f"{name} {w.tag}: {key}={value!r}: {e}")
    assert written == set(ARCH_KWARGS)


def _set(path: str, value: Any) -> Any:
    def change(d: dict[str, Any]) -> None:
        *parents, leaf = path.split(".")
        for p in parents:
            d = d[p]
        d[leaf] = value

    return change


def _drop(key: str) -> Any:
    return lambda d: d.pop(key)


BAD: list[tuple[str, Any, str, str]] = [
    ("missing classes", _drop("classes"), "classes", "is missing"),
    ("missing arch", _drop("arch"), "arch", "is missing"),
    ("missing head", _drop("head"), "head", "is missing"),
    ("classes not a list", _set("classes", 3), "classes", "must be a list of class names, got int"),
    ("no classes", _set("classes", []), "classes", "non-empty list"),
    ("a class twice", _set("classes", ["ants", "ants"]), "classes", "'ants' twice"),
    ("a class not a string", _set("classes", ["ants", 7]), "classes", "non-empty strings"),
    ("input size 0", _set("preprocess.input_size", 0), "preprocess", "input_size must be greater than 0"),
    ("input size text", _set("preprocess.input_size", "224"), "preprocess", "input_size must be a whole number"),
    ("missing preprocess", _drop("preprocess"), "preprocess", "is missing"),
    ("input size 100000", _set("preprocess.input_size", 100000), "preprocess", "between 16 and 2048 pixels"),
    ("input size 8", _set("preprocess.input_size", 8), "preprocess", "between 16 and 2048 pixels, got 8"),
    ("resize size huge", _set("preprocess.resize_size", 50000), "preprocess", "resize_size must be between 16"),
    ("mean of 2", _set("preprocess.mean", [0.5, 0.5]), "preprocess", "mean must be a list of 3 finite numbers"),
    ("mean nan", _set("preprocess.mean", [float("nan"), 0.5, 0.5]), "preprocess", "3 finite numbers"),
    ("std inf", _set("preprocess.std", [float("inf"), 0.2, 0.2]), "preprocess", "3 finite numbers"),
    ("std 0", _set("preprocess.std", [0.2, 0.0, 0.2]), "preprocess", "std must be greater than 0"),
    ("preprocess key", _set("preprocess.crop", 1), "preprocess", "has 'crop', which graft does not write"),
    ("head key", _set("head.act", "gelu"), "head", "has 'act', which graft does not write"),
    ("interpolation", _set("preprocess.interpolation", "nearest"), "preprocess", "interpolation must be one of"),
    ("head text", _set("head", "linear"), "head", "must be an object"),
    ("dropout 2", _set("head.dropout", 2), "head", "dropout must be a number in [0, 1)"),
    ("hidden widths", _set("head.hidden", [0]), "head", "hidden must be a list of layer widths"),
    ("foreign arch_kwargs", _set("arch_kwargs", {"pretrained": True}), "arch_kwargs", "'pretrained', which no"),
    ("weights kwarg", _set("arch_kwargs", {"weights": "IMAGENET1K_V1"}), "arch_kwargs", "'weights', which no"),
    ("timm checkpoint", _set("arch_kwargs", {"checkpoint_path": "/x.pth"}), "arch_kwargs", "'checkpoint_path'"),
    ("image_size huge", _set("arch_kwargs", {"image_size": 100000}), "arch_kwargs", "from 16 to 2048"),
    ("arch_kwargs type", _set("arch_kwargs", {"image_size": "big"}), "arch_kwargs", "image_size must be a whole"),
    ("arch_kwargs list", _set("arch_kwargs", []), "arch_kwargs", "got list"),
    ("in_features", _set("in_features", -1), "in_features", "greater than 0"),
    ("thresholds count", _set("thresholds", [0.5]), "thresholds", "1 values for 2 classes"),
    ("threshold range", _set("thresholds", [0.5, 3]), "thresholds", "probabilities in [0, 1]"),
    ("task", _set("task", "detection"), "task", "must be 'multilabel'"),
    ("tta", _set("tta", "yes"), "tta", "must be true or false, got str"),
    ("weights sha256", _set("weights_sha256", "abc"), "weights_sha256", "must be a sha256"),
    ("weights absolute", _set("weights_file", "/etc/passwd"), "weights_file", "inside the run directory"),
    ("weights up", _set("weights_file", "../other/model.safetensors"), "weights_file", "inside the run directory"),
    ("weights home", _set("weights_file", "~/model.safetensors"), "weights_file", "inside the run directory"),
    ("program up", _set("program_file", "a/../../model.pt2"), "program_file", "inside the run directory"),
    ("format", _set("format", 1), "format", "must be a non-empty string, got int"),
    ("versions", _set("versions", {"torch": 2}), "versions", "torch must be a version string"),
    ("quantization", _set("quantization", "int8"), "quantization", "must be an object"),
]


@pytest.mark.parametrize(("change", "field", "problem"), [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_a_bad_field_is_one_line_naming_the_file_and_the_field(
    change: Any, field: str, problem: str, tmp_path: Path
) -> None:
    d = float_meta()
    change(d)
    path = tmp_path / "model.json"
    path.write_text(json.dumps(d))
    with pytest.raises(RunError) as e:
        RunMeta.from_json(path)
    message = str(e.value)
    assert "\n" not in message
    assert message.startswith(f"{path}: field {field!r} ") and problem in message, message
    assert "re-run graft train or restore it" in message


@pytest.mark.parametrize(
    ("text", "problem"),
    [("[1, 2]", "must hold a JSON object, got list"), ('{"arch": ', "is not valid JSON"), ("null", "got null")],
)
def test_a_file_that_is_no_json_object_is_one_line(text: str, problem: str, tmp_path: Path) -> None:
    path = tmp_path / "model.json"
    path.write_text(text)
    with pytest.raises(RunError, match=problem) as e:
        RunMeta.from_json(path)
    assert str(e.value).startswith(str(path)) and "\n" not in str(e.value)
    with pytest.raises(RunError, match="is missing"):
        RunMeta.from_json(tmp_path / "nothing.json")


def test_an_ensemble_names_its_members(tmp_path: Path) -> None:
    d = ensemble_dict()
    d.pop("members")
    with pytest.raises(RunError, match="field 'members' is missing"):
        RunMeta.from_dict(d, source=tmp_path / "model.json")
    with pytest.raises(RunError, match=r"field 'members' must name folders inside the run directory, got '\.\./x'"):
        RunMeta.from_dict(ensemble_dict() | {"members": ["members/a", "../x"]}, source=tmp_path / "model.json")


def test_metrics_of_each_kind_round_trip_and_bad_fields_are_named(tmp_path: Path) -> None:
    written = json.loads((OLD_RUN / "metrics.json").read_text())
    test_set = written | {"test_acc": 0.9, "test_acc_ci95": [0.8, 0.95], "n_test": 20, "test_dir": "/d/test"}
    int8 = {"best_val_acc": 0.9, "fp32_val_acc": 0.91, "device": "cpu", "n_val": 153, "classes": ["a"], "int8": True}
    multilabel = {"best_val_map": 0.8, "val_ap": {"a": None}, "thresholds": {"a": 0.4}, "val_macro_f1": None}
    ensemble = {"best_val_acc": 0.95, "members": [{"run": "members/1-x", "best_val_acc": 0.9}], "auto": {"k": 1}}
    for d in (written, test_set, int8, multilabel, ensemble, written | {"newer": [1]}):
        m = RunMetrics.from_dict(d)
        assert text_of(m.to_dict()) == text_of(d)
    m = RunMetrics.from_dict(test_set)
    assert m.best_val_acc == written["best_val_acc"] and m.test_acc_ci95 == (0.8, 0.95) and m.n_val == 153
    assert m.get("newer", "?") == "?" and RunMetrics.from_dict(written | {"newer": 1}).get("newer") == 1
    path = tmp_path / "metrics.json"
    for key, value, problem in [
        ("best_val_acc", 1.5, "in [0, 1]"),
        ("best_val_acc", float("nan"), "in [0, 1]"),
        ("n_val", "153", "whole number >= 0"),
        ("train_seconds", float("inf"), "finite number of seconds"),
    ]:
        path.write_text(json.dumps(written | {key: value}))
        with pytest.raises(RunError) as e:
            RunMetrics.read(tmp_path)
        assert str(e.value).startswith(f"{path}: field {key!r} ") and problem in str(e.value)
    path.write_text("{")
    assert RunMetrics.read(tmp_path) == RunMetrics()  # an unreadable metrics.json only leaves figures out
    assert RunMetrics.read(tmp_path / "no-run") == RunMetrics()


# ----------------------------------------------------------------------------------------------------------------
# a run directory written by an earlier graft


@pytest.mark.slow
def test_an_fixture_run_directory_loads_predicts_and_evaluates(fixture_run: Path, hymenoptera: Path) -> None:
    from graft.insight.evaluation import evaluate

    saved, before = json.loads((fixture_run / ckpt.META_FILE).read_text()), float_meta()
    assert list(saved) == list(before) and saved["weights_sha256"] != before["weights_sha256"]
    assert {k: v for k, v in saved.items() if k != "weights_sha256"} == {
        k: v for k, v in before.items() if k != "weights_sha256"
    }
    clf = graft.load(fixture_run, device="cpu")
    assert clf.classes == ["ants", "bees"] and clf.meta.arch == "mobilenet_v2" and clf.preprocess.input_size == 224
    images = sorted((hymenoptera / "val" / "bees").glob("*.jpg"))[:3]
    predictions = clf.predict(images, top_k=2)
    assert len(predictions) == 3 and all(p[0].label in clf.classes for p in predictions)
    result = evaluate(fixture_run, device="cpu", plots=False)
    assert result.n == 153 and result.classes == ["ants", "bees"] and 0 <= result.accuracy <= 1
    assert result.best_val_acc == json.loads((OLD_RUN / "metrics.json").read_text())["best_val_acc"]


@pytest.mark.subprocess
def test_a_corrupted_model_json_is_one_error_line(fixture_run: Path, hymenoptera: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(fixture_run, run)
    (run / ckpt.META_FILE).write_text(json.dumps(float_meta() | {"classes": 2}))
    with pytest.raises(RunError, match="field 'classes' must be a list of class names, got int"):
        graft.load(run, device="cpu")
    image = sorted((hymenoptera / "val" / "ants").glob("*.jpg"))[0]
    proc = subprocess.run(
        [sys.executable, "-m", "graft", "predict", str(run), str(image)],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=180,
    )
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr and proc.stderr.count("\n") == 1, proc.stderr
    assert proc.stderr.startswith(f"error: {run / ckpt.META_FILE}: field 'classes' must be a list of class names")
