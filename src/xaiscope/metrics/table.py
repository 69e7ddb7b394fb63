"""A small dependency-free table: rows of dicts, written as CSV, JSON, text or HTML.

:func:`xaiscope.evaluate` and :func:`xaiscope.compare` return one. ``to_pandas()`` works
where pandas is installed (it is not a dependency).
"""

from __future__ import annotations

import csv
import html
import io
import json
import math
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np


def _plain(value: Any) -> Any:
    """Numpy scalars and arrays as Python values; non-finite floats as None (JSON null)."""
    if isinstance(value, np.ndarray):
        return [_plain(v) for v in value.tolist()]
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, np.bool_):
        return bool(value)
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, (float, np.floating)):
        f = float(value)
        return f if math.isfinite(f) else None
    return value


def _cell(value: Any, digits: int = 4) -> str:
    """Text of one cell: floats to ``digits`` significant digits, lists shortened."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.{digits}g}"
    if isinstance(value, (list, tuple)):
        inner = ", ".join(_cell(v, 3) for v in value[:4])
        return f"[{inner}{', ...' if len(value) > 4 else ''}]"
    return str(value)


class ScoreTable:
    """Rows of dicts sharing a list of columns.

    ``table[i]`` is row ``i`` (a dict), ``table["col"]`` a column (a list); iterate for the
    rows. ``columns`` lists the columns in display order; rows may hold more keys (e.g.
    per-image lists), kept in :meth:`to_dict` / :meth:`to_json` and :meth:`to_csv`.
    """

    def __init__(
        self,
        rows: Sequence[dict[str, Any]],
        columns: Sequence[str] | None = None,
        *,
        title: str = "",
        hidden: Sequence[str] = (),
    ) -> None:
        self.rows: list[dict[str, Any]] = [{k: _plain(v) for k, v in r.items()} for r in rows]
        if columns is None:
            seen: dict[str, None] = {}
            for r in self.rows:
                seen.update(dict.fromkeys(r))
            columns = list(seen)
        self.columns = list(columns)
        self.title = title
        #: columns left out of the text and HTML views (still in CSV/JSON)
        self.hidden = list(hidden)

    # ----------------------------------------------------------------- access
    def __len__(self) -> int:
        return len(self.rows)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return iter(self.rows)

    def __getitem__(self, key: int | str) -> Any:
        if isinstance(key, str):
            return [r.get(key) for r in self.rows]
        return self.rows[key]

    def all_columns(self) -> list[str]:
        """Display columns first, then any other key found in the rows."""
        extra: dict[str, None] = {}
        for r in self.rows:
            extra.update({k: None for k in r if k not in self.columns})
        return self.columns + list(extra)

    def where(self, **match: Any) -> ScoreTable:
        """The rows whose values equal every ``column=value`` given."""
        rows = [r for r in self.rows if all(r.get(k) == v for k, v in match.items())]
        return type(self)._plain_copy(self, rows)

    def get(self, **match: Any) -> dict[str, Any]:
        """The one row matching ``column=value`` pairs (KeyError if none or several)."""
        rows = self.where(**match).rows
        if len(rows) != 1:
            raise KeyError(f"{len(rows)} rows match {match}")
        return rows[0]

    @staticmethod
    def _plain_copy(table: ScoreTable, rows: list[dict[str, Any]]) -> ScoreTable:
        return ScoreTable(rows, table.columns, title=table.title, hidden=table.hidden)

    # ---------------------------------------------------------------- writing
    def to_dict(self) -> dict[str, Any]:
        """``{"columns": [...], "rows": [...]}``, JSON-ready (NaN as None)."""
        return {"columns": self.all_columns(), "rows": [dict(r) for r in self.rows]}

    def to_json(self, path: str | os.PathLike[str] | None = None, **extra: Any) -> str:
        """The table as indented JSON (``extra`` keys added at the top); written to ``path``
        if given."""
        text = json.dumps({**_plain(extra), **self.to_dict()}, indent=2, allow_nan=False) + "\n"
        if path is not None:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            Path(path).write_text(text, encoding="utf-8")
        return text

    def to_csv(self, path: str | os.PathLike[str] | None = None) -> str:
        """The table as CSV (lists as JSON text in one cell); written to ``path`` if given."""
        cols = self.all_columns()
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(cols)
        for r in self.rows:
            writer.writerow(
                [
                    json.dumps(v)
                    if isinstance(v, (list, dict))
                    else ("" if v is None else (str(v).lower() if isinstance(v, bool) else v))
                    for v in (r.get(c) for c in cols)
                ]
            )
        text = buf.getvalue()
        if path is not None:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            Path(path).write_text(text, encoding="utf-8")
        return text

    def to_pandas(self) -> Any:
        """A ``pandas.DataFrame`` of the rows (needs pandas, which xaiscope does not require)."""
        try:
            import pandas as pd
        except ImportError as exc:
            raise ImportError("to_pandas() needs pandas: pip install pandas") from exc
        return pd.DataFrame(self.rows, columns=self.all_columns())

    # ---------------------------------------------------------------- display
    def _visible(self) -> list[str]:
        return [c for c in self.columns if c not in self.hidden]

    def __str__(self) -> str:
        cols = self._visible()
        body = [[_cell(r.get(c)) for c in cols] for r in self.rows]
        widths = [max([len(c)] + [len(row[j]) for row in body]) for j, c in enumerate(cols)]

        def line(cells: list[str]) -> str:
            return "  ".join(
                cell.ljust(w) if j == 0 or not _numeric(cell) else cell.rjust(w)
                for j, (cell, w) in enumerate(zip(cells, widths, strict=True))
            ).rstrip()

        out = [self.title] if self.title else []
        out += [line(cols), line(["-" * w for w in widths])]
        out += [line(row) for row in body]
        return "\n".join(out)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({len(self)} rows: {', '.join(self._visible())})"

    def _repr_html_(self) -> str:
        cols = self._visible()
        head = "".join(f"<th>{html.escape(c)}</th>" for c in cols)
        body = "".join(
            "<tr>" + "".join(f"<td>{html.escape(_cell(r.get(c)))}</td>" for c in cols) + "</tr>"
            for r in self.rows
        )
        cap = f"<caption>{html.escape(self.title)}</caption>" if self.title else ""
        return f"<table>{cap}<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _numeric(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True
