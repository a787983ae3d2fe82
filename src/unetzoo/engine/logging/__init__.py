"""Run logs: metrics.csv, TensorBoard scalars, PNG plots and overlays."""

from unetzoo.engine.logging.display import (
    slice_orientation,
    slice_panels,
)
from unetzoo.engine.logging.plots import (
    MetricsLog,
    class_colors,
    overlay_png,
    pick_slices,
    plot_history,
)

__all__ = [
    "MetricsLog",
    "class_colors",
    "overlay_png",
    "pick_slices",
    "plot_history",
    "slice_orientation",
    "slice_panels",
]
