"""Execute the book's chapters with papermill: for the book itself and for batch runs.

Chapters are Jupytext MyST notebooks in ``notebooks/``. :func:`execute_chapter` converts one to
``.ipynb`` in memory, runs it with papermill (which injects parameters after the cell tagged
``parameters`` and records the duration) and writes the executed notebook.

* ``python -m mempkg execute [CHAPTER ...]`` re-executes chapters at their defaults into
  ``book/chapters/`` (what ``make execute`` calls); the book renders those files.
* ``python -m mempkg run CHAPTER -p name value ...`` runs one chapter with new parameters into
  ``runs/<chapter>/<name=value,...>/``, where the chapter also writes ``summary.csv`` (its
  closing table) because the runner passes ``output_dir``.
"""
from __future__ import annotations

import ast
import json
import re
import tempfile
from pathlib import Path

__all__ = ["ROOT", "chapters", "find_chapter", "execute_chapter", "run_chapter", "parse_value"]

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = ROOT / "notebooks"
EXECUTED = ROOT / "book" / "chapters"


def chapters(notebooks: Path = NOTEBOOKS) -> list[Path]:
    """The chapter sources, in reading order (their file names start with the chapter number)."""
    if not notebooks.is_dir():
        raise FileNotFoundError(
            f"no notebooks folder at {notebooks}: the chapters ship with the repository, not with an "
            "installed wheel; clone the repository and install it with `pip install -e .`"
        )
    return sorted(p for p in notebooks.glob("[0-9][0-9]_*.md"))


def find_chapter(name: str, notebooks: Path = NOTEBOOKS) -> Path:
    """A chapter by number (``"2"``, ``"02"``), file stem (``"02_exact_scores"``) or path."""
    path = Path(name)
    if path.suffix == ".md" and path.exists():
        return path
    found = chapters(notebooks)
    for p in found:
        number = p.stem.split("_", 1)[0]
        if name in (p.stem, p.name) or (name.isdigit() and int(name) == int(number)):
            return p
    known = ", ".join(p.stem for p in found)
    raise ValueError(f"chapter must be a chapter number or one of: {known}; got {name!r}")


def parse_value(text: str):
    """A command-line parameter value: a Python literal when it parses as one, else the string."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def execute_chapter(source: Path, output: Path, parameters: dict | None = None, cwd: Path | None = None, progress: bool = True):
    """Execute the Jupytext notebook ``source`` with papermill into ``output`` (an ``.ipynb``).

    Returns the executed notebook (an ``nbformat.NotebookNode``); raises papermill's
    ``PapermillExecutionError`` if a cell fails (the partial notebook is still written).
    """
    import jupytext
    import papermill as pm

    source, output = Path(source), Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    nb = jupytext.read(source)
    with tempfile.TemporaryDirectory() as tmp:
        converted = Path(tmp) / f"{source.stem}.ipynb"
        jupytext.write(nb, converted)
        return pm.execute_notebook(
            str(converted),
            str(output),
            parameters=parameters or {},
            cwd=str(cwd or output.parent),
            progress_bar=progress,
        )


def run_folder(chapter: Path, parameters: dict, root: Path) -> Path:
    """``root/<chapter>/<name=value,...>``: one folder per chapter and parameter set."""
    if not parameters:
        slug = "defaults"
    else:
        slug = ",".join(f"{k}={v}" for k, v in sorted(parameters.items()))
        slug = re.sub(r"[^A-Za-z0-9_.,=+-]", "_", slug)[:150]
    return Path(root) / chapter.stem / slug


def run_chapter(name: str, parameters: dict | None = None, root: Path | str = "runs", progress: bool = True) -> Path:
    """Run a chapter with ``parameters`` into its run folder; return the executed notebook's path.

    The chapter receives ``output_dir`` (the run folder) and writes its closing table there as
    ``summary.csv``; the parameters are recorded in ``parameters.json`` beside it.
    """
    source = find_chapter(name)
    parameters = dict(parameters or {})
    folder = run_folder(source, parameters, Path(root))
    parameters.setdefault("output_dir", str(folder.resolve()))
    output = folder / f"{source.stem}.ipynb"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "parameters.json").write_text(json.dumps(parameters, indent=2, default=str))
    execute_chapter(source, output, parameters, cwd=folder, progress=progress)
    return output
