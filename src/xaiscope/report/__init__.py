"""Self-contained HTML reports: predictions, maps side by side, metrics, top-k class maps,
activations, attention and provenance, in one file that needs no network to view.

``build_report(model, images, methods=[...])`` computes a :class:`Report`;
``report.save("report.html")`` writes it; ``xaiscope report`` is the command line. Nothing
here needs a browser.
"""

from __future__ import annotations

from xaiscope.report.build import (
    DEFAULT_METHODS,
    ImageSection,
    MetricsUnavailableError,
    Picture,
    Report,
    build_report,
    find_evaluate,
    require_evaluate,
    table_rows,
    write_report,
)

__all__ = [
    "DEFAULT_METHODS",
    "ImageSection",
    "MetricsUnavailableError",
    "Picture",
    "Report",
    "build_report",
    "find_evaluate",
    "require_evaluate",
    "table_rows",
    "write_report",
]
