"""The ``xaiscope`` command line: ``explain``, ``models``, ``methods``, ``train``, ``report``,
``evaluate``, ``compare``.

Exit codes: 0 success; 2 bad input of any kind (a file, a parameter, a model, a folder
that cannot be written, not enough memory for what was asked), one line on stderr,
``xaiscope: error: ...``; 1 only for a bug in xaiscope, one line asking for a report; 130
on Ctrl-C. Set ``XAISCOPE_DEBUG=1`` (or pass ``--debug``) to see the traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Sequence
from typing import NoReturn

from xaiscope.cli.common import UsageError, one_line, reason

PROG = "xaiscope"
SUBCOMMANDS = (
    "explain",
    "models",
    "methods",
    "train",
    "report",
    "evaluate",
    "compare",
    "app",
)
#: Suffixes that mark a first argument as an image for ``explain`` even when it is missing.
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")
EXIT_USAGE = 2
EXIT_FAILURE = 1
EXIT_INTERRUPTED = 130


class _Parser(argparse.ArgumentParser):
    """argparse that raises instead of printing usage, so every error is one line."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (see `{self.prog} --help`)")


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser (subparsers inherit the one-line error behaviour)."""
    from xaiscope import __version__
    from xaiscope.cli import (
        app_cmd,
        compare_cmd,
        evaluate_cmd,
        explain_cmd,
        listing,
        report_cmd,
        train_cmd,
    )

    parser = _Parser(
        prog=PROG,
        description="Explain image classifiers. With no command, `explain` runs on a sample "
        "photo with the default model.",
    )
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks of unexpected errors")
    sub = parser.add_subparsers(
        dest="command", metavar="{explain,models,methods,train,report,evaluate,compare}"
    )
    explain_cmd.add_parser(sub)
    listing.add_parsers(sub)
    train_cmd.add_parser(sub)
    evaluate_cmd.add_parser(sub)
    compare_cmd.add_parser(sub)
    report_cmd.add_parser(sub)
    app_cmd.add_parser(sub)
    return parser


def _with_default_command(argv: list[str]) -> list[str]:
    """``xaiscope`` and ``xaiscope photo.jpg --method x`` mean ``xaiscope explain ...``.

    ``--debug`` is accepted anywhere on the line (it is moved in front of the command).
    """
    rest = [a for a in argv if a != "--debug"]
    debug = ["--debug"] if len(rest) != len(argv) else []
    if not rest:
        return [*debug, "explain"]
    first = rest[0]
    if first in SUBCOMMANDS or first in ("-h", "--help", "--version"):
        return [*debug, *rest]
    if (
        first.startswith("-")
        or os.path.exists(first)
        or first.startswith("sample:")
        or _looks_like_image_path(first)
    ):
        return [*debug, "explain", *rest]
    return [*debug, *rest]


def _looks_like_image_path(arg: str) -> bool:
    # a mistyped or missing photo should get explain's "cannot load image" line, not
    # argparse's "invalid choice" for the subcommand
    if arg.lower().endswith(IMAGE_SUFFIXES):
        return True
    return any(sep and sep in arg for sep in ("/", os.sep, os.altsep))


def _fail(message: str, code: int) -> int:
    print(f"{PROG}: error: {one_line(message)}", file=sys.stderr)
    return code


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI with ``argv`` (default: ``sys.argv[1:]``); returns the exit code."""
    args_list = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args_list or os.environ.get("XAISCOPE_DEBUG", "") not in ("", "0")
    # Agg before anything imports pyplot: the CLI must never need a display
    if "matplotlib.pyplot" not in sys.modules:
        import matplotlib

        matplotlib.use("Agg")
    from xaiscope.errors import XaiscopeError

    try:
        args = build_parser().parse_args(_with_default_command(args_list))
        return int(args.func(args))
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except XaiscopeError as exc:
        if debug:
            raise
        return _fail(str(exc), EXIT_USAGE)
    except SystemExit as exc:  # --help / --version
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except BrokenPipeError:  # the reader went away (`xaiscope methods | head`): stop quietly
        with contextlib.suppress(OSError, ValueError, AttributeError):
            # Python flushes stdout at exit; point it at devnull so that flush cannot fail
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_FAILURE
    except OSError as exc:  # the machine, not xaiscope: a full disk, a permission
        if debug:
            raise
        where = f" {exc.filename}" if getattr(exc, "filename", None) else ""
        return _fail(f"cannot write{where}: {exc.strerror or reason(exc)}", EXIT_USAGE)
    except MemoryError:
        if debug:
            raise
        return _fail(
            "not enough memory for this job: use fewer or smaller images, a smaller "
            "--batch-size, or fewer samples",
            EXIT_USAGE,
        )
    except Exception as exc:
        if debug:
            raise
        return _fail(
            f"internal error, a bug in xaiscope: {reason(exc)}; please report it with the "
            "traceback that XAISCOPE_DEBUG=1 shows",
            EXIT_FAILURE,
        )


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
