"""xaiscope starts no process (issue 18): not even the ``/sbin/ldconfig -p`` that
``ctypes.util.find_library`` runs when torch's CUDA library finder or trio (through timm's
HTTP client) look up glibc's libraries at import."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = """
import os, subprocess, sys
started = []
real = subprocess.Popen.__init__
def record(self, args, *a, **k):
    started.append(args)
    return real(self, args, *a, **k)
subprocess.Popen.__init__ = record
for name in ("posix_spawn", "posix_spawnp", "execv", "execve"):
    if hasattr(os, name):
        original = getattr(os, name)
        setattr(os, name, lambda *a, _o=original, _n=name, **k: started.append(_n) or _o(*a, **k))

from xaiscope.cli.main import main
code = main(["explain", "--method", "gradcam", "--model", "timm:resnet18",
             "-q", "-o", sys.argv[1]])
print("CODE", code, "STARTED", started)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="ldconfig is Linux's")
def test_explain_starts_no_process(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(tmp_path / "out")],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert "CODE 0 STARTED []" in done.stdout, (done.stdout[-2000:], done.stderr[-2000:])


def test_the_shim_answers_only_glibc_names() -> None:
    import ctypes.util
    import platform

    from xaiscope import _native

    if not (sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"):
        pytest.skip("the shim is for glibc only")
    assert _native.no_ldconfig_lookups()
    assert ctypes.util.find_library("dl") == "libdl.so.2"
    assert ctypes.util.find_library("pthread") == "libpthread.so.0"
    assert ctypes.util.find_library("definitely-not-a-library-xyz") is None  # standard path
    assert _native.no_ldconfig_lookups()  # idempotent: not wrapped twice
    assert not hasattr(getattr(ctypes.util.find_library, "__wrapped__", None), "_xaiscope_libdl")
