"""The shape of the package: layering of its imports, a fast `import mempkg`, short lines in the book."""
import ast
import subprocess
import sys
from pathlib import Path

import jupytext
import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "mempkg"

# Each module may import only modules of lower layers (one home per idea, no cycles): the dynamics
# (sde < score < ode), then what is built on them, then the registry and the book's helpers.
LAYERS = [
    {"_checks", "_random"},
    {"sde"},
    {"score", "nets", "data", "report", "pointwise"},
    {"ode", "train", "plotting"},
    {"sampling"},
    {"metrics", "volume"},
    {"side"},
    {"lid", "checkpoints"},
    {"guidance", "retrieval", "adapters"},
    {"audit"},
    {"run"},
    {"sweep"},
    {"__main__", "__init__"},
]


def internal_imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            if node.module:
                names.add(node.module.split(".")[0])
            else:
                names.update(a.name for a in node.names)
    return names


def layer_of(module: str) -> int:
    for i, layer in enumerate(LAYERS):
        if module in layer:
            return i
    raise AssertionError(f"mempkg/{module}.py has no layer in tests/test_package.py: add it to LAYERS")


@pytest.mark.parametrize("path", sorted(PACKAGE.glob("*.py")), ids=lambda p: p.stem)
def test_modules_import_only_lower_layers(path):
    if path.stem in ("__init__", "__main__"):
        return
    mine = layer_of(path.stem)
    for other in internal_imports(path):
        assert layer_of(other) < mine, f"mempkg.{path.stem} imports mempkg.{other}, which is not below it"


def test_lid_does_not_need_volume_growth():
    assert "volume" not in internal_imports(PACKAGE / "lid.py")


def test_import_mempkg_does_not_load_the_plotting_stack():
    code = ("import sys, mempkg; from mempkg import VPSDE; "
            "print(sorted(m for m in ('seaborn', 'matplotlib', 'pandas', 'papermill') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
    code = "import mempkg; mempkg.plotting.set_style; print(mempkg.report.fmt(3.14159))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "3.14", "the book's helpers still load on first use"


MAX_CODE_LINE = 92    # characters: what the book's text column shows without a scroll bar


@pytest.mark.parametrize("source", sorted((ROOT / "notebooks").glob("*.md")), ids=lambda p: p.stem)
def test_code_lines_fit_the_page(source):
    nb = jupytext.read(source)
    long = [line for cell in nb.cells if cell.cell_type == "code" for line in cell.source.splitlines()
            if len(line) > MAX_CODE_LINE]
    assert not long, f"{len(long)} code lines longer than {MAX_CODE_LINE} characters, e.g. {long[0]!r}"
