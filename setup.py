"""Ship ``xaiscope_native.pth`` into site-packages, for wheels and for PEP 660 editable installs.

Everything else is configured in pyproject.toml. The .pth runs ``_xaiscope_native.install()`` at
every interpreter start-up, so that ``import tensorflow`` followed by ``import torchvision`` (or
timm) does not crash even when xaiscope itself is imported later or never; see
src/_xaiscope_native.py. A .pth only runs from a site directory, and neither setuptools' wheel
nor its editable wheel has a declarative way to put a file at the wheel root, hence the two
command overrides below.
"""

from __future__ import annotations

import base64
import csv
import hashlib
import io
import zipfile
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

PTH_NAME = "xaiscope_native.pth"
# site.py executes a .pth line that starts with "import"; an exception there would print a
# traceback at every start-up (for example after the checkout of an editable install moved), so
# the whole line is guarded and fails silently.
PTH_TEXT = (
    'import sys; exec("try:\\n import _xaiscope_native\\n _xaiscope_native.install()\\n'
    'except Exception:\\n pass")\n'
)


class build_py_with_pth(build_py):
    """Put the .pth at the root of build_lib, which becomes the root of the wheel."""

    def run(self) -> None:
        super().run()
        if not getattr(self, "editable_mode", False):
            target = Path(self.build_lib, PTH_NAME)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(PTH_TEXT, encoding="utf-8")

    def get_outputs(self, include_bytecode: bool = True) -> list[str]:
        outputs = list(super().get_outputs(include_bytecode))
        if not getattr(self, "editable_mode", False):
            outputs.append(str(Path(self.build_lib, PTH_NAME)))
        return outputs


def _add_to_wheel(wheel: Path, name: str, data: bytes) -> None:
    """Rewrite ``wheel`` with one more root file, listed in RECORD with its hash."""
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    tmp = wheel.with_suffix(".tmp")
    with zipfile.ZipFile(wheel) as src, zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as dst:
        record_name = next(n for n in src.namelist() if n.endswith(".dist-info/RECORD"))
        for info in src.infolist():
            if info.filename not in (record_name, name):
                dst.writestr(info, src.read(info))
        rows = [
            row
            for row in csv.reader(io.StringIO(src.read(record_name).decode("utf-8")))
            if row and row[0] not in (record_name, name)
        ]
        dst.writestr(name, data)
        rows += [[name, f"sha256={digest}", str(len(data))], [record_name, "", ""]]
        out = io.StringIO()
        csv.writer(out, lineterminator="\n").writerows(rows)
        dst.writestr(record_name, out.getvalue())
    tmp.replace(wheel)


cmdclass: dict[str, type] = {"build_py": build_py_with_pth}

try:  # setuptools >= 64 (PEP 660); pyproject.toml requires >= 68
    from setuptools.command.editable_wheel import editable_wheel
except ImportError:  # pragma: no cover
    pass
else:

    class editable_wheel_with_pth(editable_wheel):
        """An editable wheel holds only a path .pth and metadata: add ours next to them."""

        def run(self) -> None:
            super().run()
            # build_meta gives this command a fresh directory that receives the one wheel.
            for wheel in Path(self.dist_dir).glob("*.whl"):
                _add_to_wheel(wheel, PTH_NAME, PTH_TEXT.encode("utf-8"))

    cmdclass["editable_wheel"] = editable_wheel_with_pth


setup(py_modules=["_xaiscope_native"], cmdclass=cmdclass)
