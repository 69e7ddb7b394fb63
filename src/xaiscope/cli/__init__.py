"""The ``xaiscope`` command line (``python -m xaiscope.cli`` works too)."""

from __future__ import annotations

from xaiscope.cli.main import build_parser, main

__all__ = ["build_parser", "main"]
