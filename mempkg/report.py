"""The closing table of every chapter: the paper's claim beside what this run measured.

Each chapter ends with :func:`claims_table`, and when papermill passes an ``output_dir`` it
writes the table with :func:`save_results`, so batch runs (``python -m mempkg run``) leave a
tidy CSV next to the executed notebook.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

__all__ = ["claims_table", "save_results", "fmt", "verdict", "glue_values", "glue_interval",
           "interval_text"]

VERDICTS = ("agrees", "differs", "not comparable")


def fmt(value, digits: int = 3) -> str:
    """A number with ``digits`` significant digits, as text (stable under tiny float noise)."""
    if isinstance(value, str):
        return value
    return f"{float(value):.{digits}g}"


def glue_values(**values) -> None:
    """Glue each keyword for the prose (MyST-NB ``glue``, not displayed): numbers as Python floats,
    text as text, so that ``{glue:text}`name:.2f``` formats them whatever tensor or numpy scalar
    they came from."""
    from myst_nb import glue

    for name, value in values.items():
        glue(name, value if isinstance(value, str) else float(value), display=False)


def _triple(triple) -> tuple[float, float, float]:
    values = [float(v) for v in triple]
    if len(values) != 3:
        raise ValueError(f"triple must be (value, low, high), got {len(values)} values")
    return values[0], values[1], values[2]


def glue_interval(name: str, triple) -> None:
    """Glue a ``(value, low, high)`` triple (tuple or Series) as ``name``, ``name_lo``, ``name_hi``."""
    value, low, high = _triple(triple)
    glue_values(**{name: value, f"{name}_lo": low, f"{name}_hi": high})


def interval_text(triple, digits: int = 2) -> str:
    """``"value [low, high]"`` of a ``(value, low, high)`` triple, with ``digits`` decimals."""
    value, low, high = _triple(triple)
    return f"{value:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}]"


def verdict(ok) -> str:
    """The verdict of a closing-table row from its stated rule: "agrees" when ``ok`` holds.

    ``ok`` is the rule evaluated on this run's numbers (a bool, or a numpy bool), so a run with
    other parameters can print "differs"; a verdict is never typed by hand.
    """
    if not isinstance(ok, (bool, np.bool_)):
        raise TypeError(f"ok must be a bool (the rule evaluated on the numbers), got {type(ok).__name__}")
    return VERDICTS[0] if ok else VERDICTS[1]


def claims_table(rows) -> pd.DataFrame:
    """Build the closing table from rows ``(claim, source, paper, this_run, verdict, why)``.

    ``verdict`` must be one of "agrees", "differs", "not comparable"; ``why`` says what differs
    (scale, data, an ambiguity of the paper) or what the agreement rests on.
    """
    columns = ["claim", "source", "paper", "this run", "verdict", "why"]
    rows = [tuple(r) for r in rows]
    for r in rows:
        if len(r) != len(columns):
            raise ValueError(f"each row must have {len(columns)} fields {columns}, got {len(r)}")
        if r[4] not in VERDICTS:
            raise ValueError(f"verdict must be one of {VERDICTS}, got {r[4]!r}")
    return pd.DataFrame(rows, columns=columns)


def save_results(table: pd.DataFrame, output_dir) -> Path | None:
    """Write ``table`` to ``output_dir/summary.csv``; do nothing when ``output_dir`` is None.

    The runner (:func:`mempkg.run.run_chapter`) records the parameters next to it.
    """
    if output_dir is None:
        return None
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    table.to_csv(out / "summary.csv", index=False)
    return out / "summary.csv"
