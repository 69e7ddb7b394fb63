"""``xaiscope app``: start the web app (Streamlit) in the browser."""

from __future__ import annotations

import argparse
from typing import Any

from xaiscope.cli.common import UsageError


def add_parser(sub: Any) -> argparse.ArgumentParser:
    """Register the ``app`` subcommand on ``sub`` (an argparse subparsers object)."""
    p: argparse.ArgumentParser = sub.add_parser(
        "app",
        help="the web app: pick a model and images, see the maps in the browser",
        description=(
            "Start the Streamlit web app (http://localhost:8501 by default): the embedded "
            "model, a trained or named model, or an uploaded .pt/.keras/.h5/.onnx file; sample "
            "photos, uploads or a folder; every registered method, with its parameters; maps "
            "as overlays, activations, metrics, downloads. Uploads are checked by content, "
            "models load in safe modes, XSRF protection is on."
        ),
    )
    p.add_argument("--port", type=int, default=8501, help="port to serve on (default 8501)")
    p.add_argument(
        "--host",
        default="localhost",
        help="address to listen on (default localhost; 0.0.0.0 to serve other machines)",
    )
    p.add_argument("--images", metavar="DIR", help="a folder whose images the app offers")
    p.add_argument(
        "--max-upload-mb",
        type=float,
        default=200,
        help="largest file a user may upload, in MB (default 200)",
    )
    p.add_argument("--models-dir", metavar="DIR", help="the trained-model registry to offer")
    p.add_argument(
        "--browser", action="store_true", help="open a browser tab (default: just serve)"
    )
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    from xaiscope.app import launch, require_streamlit

    if not 0 < args.port < 65536:
        raise UsageError(f"--port must be between 1 and 65535, not {args.port}")
    if args.max_upload_mb <= 0:
        raise UsageError(f"--max-upload-mb must be positive, not {args.max_upload_mb:g}")
    require_streamlit()
    print(f"xaiscope app: serving on http://{args.host}:{args.port} (Ctrl-C stops it)")
    return launch(
        port=args.port,
        host=args.host,
        images=args.images,
        max_upload_mb=args.max_upload_mb,
        models_dir=args.models_dir,
        headless=not args.browser,
    )
