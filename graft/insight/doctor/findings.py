"""What ``graft doctor`` found, and the files it writes: ``doctor.json``, ``doctor.csv`` and the exclude list."""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: Kinds of finding, in the order the summary and the page show them; the serious ones set exit status 3.
KINDS: dict[str, str] = {
    "leakage": "val image with a copy in train (the val accuracy is optimistic)",
    "label_conflict": "identical images filed under different classes",
    "exact_duplicate": "identical files or identical decoded pixels",
    "near_duplicate": "copies of one photo: mirrored, cropped, resized, re-encoded, colour-shifted or turned a little",
    "same_scene": "another shot of the same scene or object (not a copy); across train and val, the val accuracy "
    "is somewhat optimistic",
    "label_error": "likely wrong label (out-of-fold prediction and neighbours disagree with it)",
    "outlier": "far from every other image (off-topic?)",
    "blurry": "much less sharp than the dataset's typical image",
    "dark": "too dark",
    "bright": "too bright (washed out)",
    "tiny": "smaller than half the backbone's input: upscaled more than 2x",
    "aspect": "extreme aspect ratio: the centre crop keeps a small part",
    "grayscale": "grayscale image in a colour dataset",
    "unreadable": "not used: cannot be read as an image",
    "imbalance": "classes with very different numbers of images",
}
SERIOUS = ("leakage", "label_conflict")
EXIT_SERIOUS = 3


@dataclass
class Finding:
    """One problem: its kind, the files involved (relative to the data root, posix), a score (higher = more
    certain or more severe; similarity for pairs) and the evidence behind it."""

    kind: str
    files: list[str]
    score: float
    evidence: dict[str, Any] = field(default_factory=dict)


@dataclass
class DoctorResult:
    """What :func:`graft.insight.doctor.doctor` returns: the findings, per-file facts (split, label), a summary, the
    files written and the exit status (:data:`EXIT_SERIOUS` when a serious kind was found)."""

    data: str
    findings: list[Finding]
    files: dict[str, dict[str, Any]]
    summary: dict[str, Any]
    timings: dict[str, float] = field(default_factory=dict)
    written: dict[str, str] = field(default_factory=dict)
    #: ``--fail-on-same-scene``: a same_scene pair across train and val is serious too.
    fail_on_same_scene: bool = False

    @property
    def exit_code(self) -> int:
        serious = any(self.count(k) for k in SERIOUS)
        if self.fail_on_same_scene:
            serious = serious or any(f.evidence.get("splits") == ["train", "val"] for f in self.of("same_scene"))
        return EXIT_SERIOUS if serious else 0

    def count(self, kind: str) -> int:
        return sum(f.kind == kind for f in self.findings)

    def of(self, kind: str) -> list[Finding]:
        return sorted((f for f in self.findings if f.kind == kind), key=lambda f: -f.score)

    def to_dict(self) -> dict[str, Any]:
        return {
            "data": self.data,
            "summary": self.summary,
            "exit_status": self.exit_code,
            "kinds": KINDS,
            "findings": [_as_dict(f) for f in sorted(self.findings, key=_order)],
            "timings": self.timings,
        }

    def json_text(self) -> str:
        """doctor.json: :meth:`to_dict` indented, but one finding a line (tens of thousands of findings: an indented
        dump goes through the json module's pure-Python encoder, a one-line one through its C encoder)."""
        d = self.to_dict()
        findings = d.pop("findings")
        head = json.dumps(d, indent=2, ensure_ascii=False)[:-2]  # without the closing "\n}"
        rows = ",\n    ".join(json.dumps(f, ensure_ascii=False) for f in findings)
        return f'{head},\n  "findings": [\n    {rows}\n  ]\n}}\n' if rows else f'{head},\n  "findings": []\n}}\n'

    def format(self) -> str:
        """The text ``graft doctor`` prints."""
        lines = [f"data: {self.data}: {self.summary['images']} images, {len(self.summary['classes'])} classes"]
        for kind, what in KINDS.items():
            n = self.count(kind)
            if n:
                lines.append(f"  {kind:<16}{n:>6}  {what}")
        if not self.findings:
            lines.append("  nothing found")
        lines += [f"  {line}" for line in self.summary.get("advice", [])]
        return "\n".join(lines)


def _as_dict(f: Finding) -> dict[str, Any]:
    """A finding as plain data (``dataclasses.asdict`` deep-copies every value: seconds for tens of thousands)."""
    return {"kind": f.kind, "files": f.files, "score": f.score, "evidence": f.evidence}


def _order(f: Finding) -> tuple[int, float]:
    return list(KINDS).index(f.kind), -f.score


def csv_text(result: DoctorResult) -> str:
    """One row per file and finding: kind, file, split, label, score, the other files of the finding, details."""
    out = io.StringIO()
    w = csv.writer(out)
    w.writerow(["kind", "file", "split", "label", "score", "other_files", "detail"])
    for f in sorted(result.findings, key=_order):
        detail = "; ".join(f"{k}={v}" for k, v in f.evidence.items() if not isinstance(v, list | dict))
        for file in f.files or [""]:
            facts = result.files.get(file, {})
            others = " ".join(x for x in f.files if x != file)
            w.writerow([f.kind, file, facts.get("split", ""), facts.get("label", ""), f"{f.score:.4f}", others, detail])
    return out.getvalue()


def exclude_entries(result: DoctorResult) -> dict[str, str]:
    """Files a user would leave out, with the reason: all but one copy of each duplicate group (the train copies
    of a group that reaches into val), confident label errors, unreadable files."""
    out: dict[str, str] = {}
    for f in sorted(result.findings, key=_order):  # leakage first: the most telling reason
        if f.kind in ("exact_duplicate", "near_duplicate", "leakage"):
            for file in f.evidence.get("drop", []):
                out.setdefault(file, f"{f.kind} of {f.evidence.get('keep', '?')}")
        elif f.kind == "label_conflict":
            for file in f.files:  # no copy can be trusted: each says another class
                out.setdefault(file, "label_conflict: the same image under classes " + ", ".join(f.evidence["classes"]))
        elif f.kind == "label_error" and f.evidence.get("confident"):
            out.setdefault(f.files[0], f"label_error: labelled {f.evidence['given']}, looks {f.evidence['suggested']}")
        elif f.kind == "unreadable":
            out.setdefault(f.files[0], f"unreadable: {f.evidence.get('reason', '')}")
    return dict(sorted(out.items()))


def write_exclude_list(path: Path, entries: dict[str, str]) -> None:
    from graft.core.atomic import atomic_write_text

    body = "".join(f"{file}\t{reason}\n" for file, reason in entries.items())
    atomic_write_text(path, "# graft doctor: files to leave out (graft train --exclude THIS_FILE)\n" + body)
