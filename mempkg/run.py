"""Execute the book's chapters with papermill: for the book itself and for batch runs.

Chapters are Jupytext MyST notebooks in ``notebooks/``. :func:`execute_chapter` converts one to
``.ipynb`` in memory, runs it with papermill (which injects parameters after the cell tagged
``parameters`` and records the duration) and writes the executed notebook.

* ``python -m mempkg execute [CHAPTER ...]`` re-executes chapters at their defaults into
  ``book/chapters/`` (what ``make execute`` calls); the book renders those files.
* ``python -m mempkg run CHAPTER -p name value ...`` runs one chapter with new parameters into
  ``runs/<chapter>/<name=value,...>/``, where the chapter also writes ``summary.csv`` (its
  closing table) because the runner passes ``output_dir``. The parameters are checked against the
  chapter's ``parameters`` cell first (:func:`validate_parameters`); ``run.json`` records the run's
  provenance, and a run that fails is marked with a ``FAILED`` file (:func:`execute_run`).
* ``python -m mempkg sweep`` runs grids of such runs on Dask (:mod:`mempkg.sweep`).
"""
from __future__ import annotations

import ast
import json
import random
import re
import tempfile
from pathlib import Path

__all__ = [
    "ROOT", "chapters", "find_chapter", "execute_chapter", "run_chapter", "parse_value",
    "chapter_parameters", "validate_parameters", "execute_run", "ParameterError", "RunFailed",
]

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


# --- parameters: checked against the chapter's `parameters` cell before anything runs -----------

RUNNER_PARAMETERS = ("output_dir",)


class ParameterError(ValueError):
    """A parameter name the chapter does not have, or a value of the wrong type."""


class RunFailed(RuntimeError):
    """A chapter failed while executing; its run folder holds the partial notebook and ``FAILED``."""

    def __init__(self, folder: Path, error: str):
        super().__init__(f"{folder}: {error}")
        self.folder, self.error = Path(folder), error


_NO_DEFAULT = object()  # a default that is not a literal (an expression): any value is accepted


def chapter_parameters(source: Path) -> dict:
    """The chapter's parameters and their defaults, read from its cell tagged ``parameters``.

    Defaults that are not Python literals (expressions) map to a sentinel that accepts any value.
    """
    import jupytext

    nb = jupytext.read(Path(source))
    for cell in nb.cells:
        if cell.cell_type == "code" and "parameters" in cell.metadata.get("tags", []):
            tree = ast.parse(cell.source)
            params = {}
            for node in tree.body:
                targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(node, ast.AnnAssign) else []
                for target in targets:
                    if isinstance(target, ast.Name):
                        try:
                            params[target.id] = ast.literal_eval(node.value) if node.value is not None else None
                        except (ValueError, SyntaxError):
                            params[target.id] = _NO_DEFAULT
            return params
    raise ParameterError(f"{Path(source).name} has no code cell tagged 'parameters'")


def _type_ok(default, value) -> bool:
    if default is None or default is _NO_DEFAULT:
        return True
    if isinstance(default, bool):
        return isinstance(value, bool)
    if isinstance(default, int):
        return isinstance(value, int) and not isinstance(value, bool)
    if isinstance(default, float):
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if isinstance(default, (list, tuple)):
        return isinstance(value, (list, tuple))
    return isinstance(value, type(default))


def _type_name(default) -> str:
    if isinstance(default, float):
        return "float (or int)"
    if isinstance(default, (list, tuple)):
        return "list"
    return type(default).__name__


def validate_parameters(source: Path, parameters: dict) -> dict:
    """Check ``parameters`` against the chapter's parameters cell; return the chapter's defaults.

    Raises :class:`ParameterError` naming the parameter (and listing those that exist) when a
    name is unknown or a value's type differs from its default's (an int is fine for a float; a
    default of None accepts anything). ``output_dir`` is set by the runner, not by the user.
    """
    defaults = chapter_parameters(source)
    known = [n for n in defaults if n not in RUNNER_PARAMETERS]
    for name, value in parameters.items():
        if name in RUNNER_PARAMETERS:
            raise ParameterError(f"parameter {name!r} is set by the runner (the run folder); do not pass it")
        if name not in defaults:
            raise ParameterError(
                f"{Path(source).stem} has no parameter {name!r}; its parameters are: {', '.join(known)}"
            )
        if not _type_ok(defaults[name], value):
            raise ParameterError(
                f"parameter {name!r} of {Path(source).stem} takes a value of type {_type_name(defaults[name])} "
                f"(default {defaults[name]!r}); got {value!r} ({type(value).__name__})"
            )
    return defaults


# --- code version, provenance and run-folder markers ---------------------------------------------

def git_commit(root: Path = ROOT) -> str:
    """The repository's HEAD commit (with ``-dirty`` when the work tree differs), or ``unknown``."""
    import subprocess

    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10)
        if commit.returncode != 0:
            return "unknown"
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root, capture_output=True, text=True, timeout=10)
        return commit.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def code_version(source: Path) -> str:
    """A hash of the chapter source, mempkg's sources and its version: runs are reused only when equal."""
    import hashlib
    from importlib.metadata import version as installed_version

    version = installed_version("mempkg")
    h = hashlib.sha256(Path(source).read_bytes())
    for path in sorted(Path(__file__).resolve().parent.glob("*.py")):
        h.update(path.name.encode() + path.read_bytes())
    return f"{version}+{h.hexdigest()[:16]}"


def package_versions() -> dict:
    """Versions of Python and the packages a result depends on."""
    import platform
    from importlib import metadata

    versions = {"python": platform.python_version()}
    for name in ("mempkg", "torch", "numpy", "scipy", "pandas", "papermill"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return versions


def is_complete(folder: Path, parameters: dict, version: str) -> bool:
    """True when ``folder`` holds a finished run of the same parameters and code version."""
    folder = Path(folder)
    record = folder / "run.json"
    if not record.exists() or (folder / "FAILED").exists():
        return False
    try:
        info = json.loads(record.read_text())
    except ValueError:
        return False
    same_params = info.get("parameters") == json.loads(json.dumps(parameters, default=str))
    notebook = folder / info.get("notebook", "")
    return info.get("status") == "complete" and info.get("code_version") == version and same_params and notebook.is_file()


def one_line(exc: BaseException) -> str:
    """An exception as one line (papermill's errors carry the cell's exception name and value)."""
    ename, evalue = getattr(exc, "ename", None), getattr(exc, "evalue", None)
    text = f"{ename}: {evalue}" if ename else f"{type(exc).__name__}: {exc}"
    return " ".join(text.split())


KERNEL_START_ATTEMPTS = 3
_KERNEL_START_ERRORS = ("Kernel didn't respond", "Kernel died before replying", "Address already in use")


def kernel_failed_to_start(exc: BaseException) -> bool:
    """Whether ``exc`` is a kernel that never came up (not a failing cell).

    Kernels started at the same moment by several sweep workers can pick the same free TCP port
    (jupyter_client chooses ports by binding port 0 and releasing it); the loser's kernel dies
    with ``Address already in use`` and its client waits out the start timeout. Such a run is
    retried; a cell's error (``PapermillExecutionError``) never is.
    """
    if type(exc).__name__ == "PapermillExecutionError":
        return False
    return any(text in str(exc) for text in _KERNEL_START_ERRORS)


def execute_run(source: Path, parameters: dict, folder: Path, version: str | None = None, progress: bool = False) -> dict:
    """Execute ``source`` with ``parameters`` in ``folder`` and mark the folder; return its record.

    On success ``run.json`` records the parameters, code version, duration, git commit, package
    versions and device; on failure the partial notebook stays and ``FAILED`` holds the error (and
    ``run.json`` has ``status: failed``), so no resume mistakes the folder for a result. A kernel that
    never started (:func:`kernel_failed_to_start`) is retried up to ``KERNEL_START_ATTEMPTS`` times;
    the record says how many attempts were made. Never raises
    for a failure inside the notebook: the record's ``status`` and ``error`` say what happened.
    """
    import time

    source, folder = Path(source), Path(folder)
    version = version or code_version(source)
    folder.mkdir(parents=True, exist_ok=True)
    for stale in ("FAILED", "run.json", "summary.csv"):
        (folder / stale).unlink(missing_ok=True)
    injected = dict(parameters)
    injected["output_dir"] = str(folder.resolve())
    (folder / "parameters.json").write_text(json.dumps(injected, indent=2, default=str))
    output = folder / f"{source.stem}.ipynb"
    record = {
        "chapter": source.stem,
        "parameters": json.loads(json.dumps(parameters, default=str)),
        "notebook": output.name,
        "code_version": version,
        "git_commit": git_commit(),
        "versions": package_versions(),
        "device": str(parameters.get("device", "cpu")),
        "host": __import__("socket").gethostname(),
    }
    start = time.perf_counter()
    for attempt in range(1, KERNEL_START_ATTEMPTS + 1):
        try:
            execute_chapter(source, output, injected, cwd=folder, progress=progress)
        except Exception as exc:  # a failing cell, a dead kernel: keep the partial notebook, mark the folder
            if kernel_failed_to_start(exc) and attempt < KERNEL_START_ATTEMPTS:
                time.sleep(random.uniform(0.5, 2.0) * attempt)  # de-synchronise kernels starting together
                continue
            record.update(status="failed", error=one_line(exc))
            (folder / "FAILED").write_text(record["error"] + "\n")
        else:
            record.update(status="complete", error=None)
        break
    record.update(attempts=attempt, duration_s=round(time.perf_counter() - start, 3))
    (folder / "run.json").write_text(json.dumps(record, indent=2))
    record["folder"] = str(folder)
    return record


def run_chapter(name: str, parameters: dict | None = None, root: Path | str = "runs", progress: bool = True,
                notebooks: Path | str = NOTEBOOKS) -> Path:
    """Run a chapter with ``parameters`` into its run folder; return the executed notebook's path.

    The parameters are checked against the chapter's parameters cell first (:class:`ParameterError`,
    nothing created). The chapter receives ``output_dir`` (the run folder) and writes its closing
    table there as ``summary.csv``; ``parameters.json`` and ``run.json`` (provenance) sit beside it.
    A failure inside the notebook raises :class:`RunFailed` and leaves the folder marked ``FAILED``.
    """
    source = find_chapter(str(name), Path(notebooks))
    parameters = dict(parameters or {})
    validate_parameters(source, parameters)
    folder = run_folder(source, parameters, Path(root))
    record = execute_run(source, parameters, folder, progress=progress)
    if record["status"] != "complete":
        raise RunFailed(folder, record["error"])
    return folder / record["notebook"]
