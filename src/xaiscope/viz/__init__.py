"""Display of attribution maps and of what a network computes: colouring, overlays, figures.

Normalisation for display happens only here; ``Explanation.maps`` stay raw. Figures are
plain :class:`matplotlib.figure.Figure` objects (no pyplot state, safe under Agg, never a
window); :func:`save_figure` writes them as PNG.

* colours (arrays): :func:`heatmap`, :func:`signed` (positive green, negative red),
  :func:`overlay`, :func:`normalize`;
* maps: :func:`panel`, :func:`side_by_side` (images x methods), :func:`plot_explanation`,
  :func:`topk_grid` (one image, maps of its 1st, 2nd, 5th, 10th classes);
* inside the network: :func:`activation_grid` (every channel of a layer),
  :func:`attention_grid` (a ViT's attention per layer and head);
* statistics: :func:`histograms`, :func:`scatter_matrix`, :func:`training_curves`.
"""

from __future__ import annotations

from xaiscope.viz.colors import as_image, get_cmap, heatmap, is_signed, normalize, overlay, signed
from xaiscope.viz.figures import close_figure, panel, plot_explanation, save_figure, side_by_side
from xaiscope.viz.inside import (
    activation_grid,
    attention_grid,
    scale_each,
    tile_maps,
    topk_grid,
)
from xaiscope.viz.plots import histograms, scatter_matrix, training_curves

__all__ = [
    "activation_grid",
    "as_image",
    "attention_grid",
    "close_figure",
    "get_cmap",
    "heatmap",
    "histograms",
    "is_signed",
    "normalize",
    "overlay",
    "panel",
    "plot_explanation",
    "save_figure",
    "scale_each",
    "scatter_matrix",
    "side_by_side",
    "signed",
    "tile_maps",
    "topk_grid",
    "training_curves",
]
