"""``graft.gradcam``: the public path of :mod:`graft.insight.gradcam`."""

from graft.insight.gradcam import (
    GradCAMUnavailable,
    grad_cam,
    gradcam,
    target_layer,
)

__all__ = [
    "GradCAMUnavailable",
    "grad_cam",
    "gradcam",
    "target_layer",
]
