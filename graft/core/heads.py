"""The new classifier put on a backbone: one Linear by default, or an MLP."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import nn


@dataclass(frozen=True)
class HeadSpec:
    """Shape of the head. ``hidden=()`` is ``Dropout? -> Linear``; ``hidden=(1024, 512)`` adds
    ``Linear -> ReLU -> Dropout`` blocks of those widths first."""

    hidden: tuple[int, ...] = ()
    dropout: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"hidden": list(self.hidden), "dropout": self.dropout}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> HeadSpec:
        return cls(hidden=tuple(int(h) for h in d.get("hidden", ())), dropout=float(d.get("dropout", 0.0)))


def build_head(in_features: int, num_classes: int, spec: HeadSpec = HeadSpec()) -> nn.Sequential:
    """``(B, in_features) -> (B, num_classes)`` logits."""
    layers: list[nn.Module] = []
    width = in_features
    for h in spec.hidden:
        layers += [nn.Linear(width, h), nn.ReLU(inplace=True)]
        if spec.dropout:
            layers.append(nn.Dropout(spec.dropout))
        width = h
    if spec.dropout and not spec.hidden:
        layers.append(nn.Dropout(spec.dropout))
    layers.append(nn.Linear(width, num_classes))
    return nn.Sequential(*layers)
