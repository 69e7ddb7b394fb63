"""Display of attribution maps: normalisation, colouring, overlays and figures.

Normalisation for display happens only here; ``Explanation.maps`` stay raw. Figures are
plain :class:`matplotlib.figure.Figure` objects (no pyplot state, safe under Agg).
"""

from __future__ import annotations

from xaiscope.viz.colors import as_image, get_cmap, heatmap, is_signed, normalize, overlay, signed
from xaiscope.viz.figures import close_figure, panel, plot_explanation, save_figure, side_by_side

__all__ = [
    "as_image",
    "close_figure",
    "get_cmap",
    "heatmap",
    "is_signed",
    "normalize",
    "overlay",
    "panel",
    "plot_explanation",
    "save_figure",
    "side_by_side",
    "signed",
]
