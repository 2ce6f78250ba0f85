"""The built book as a reader sees it: every page opened in headless Chromium.

A page fails when an equation is left untypeset (MathJax did not turn a ``.math`` element into an
``mjx-container``, or raw ``$$`` / ``\\(`` is left in the text), an image does not load, a request
leaves the local build (anything but ``file:``/``data:``/``blob:``), or the console shows an error.
A screenshot of each page goes to ``_build/screenshots/``.

Uses the distribution's Chromium (``apt-get install -y chromium``) driven by Playwright; never
``playwright install``. Skipped, with that advice, when Chromium or Playwright is missing.
"""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCREENSHOTS = ROOT / "_build" / "screenshots"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update", "--no-first-run"]
# Known, harmless console messages (anything else fails the test):
# - pydata-sphinx-theme on file: pages, no stored theme mode;
# - jupyter-book 1.0.4 writes sphinx-thebe's inline `<script>const THEBE_JS_URL = ...</script>` twice
#   into every page; the second copy throws on the redeclared const, the first already defined it, and
#   thebe (live code) is not enabled in this book, so nothing is loaded from it.
HARMLESS_CONSOLE = ("Got invalid theme mode", "Identifier 'THEBE_JS_URL' has already been declared")
LOCAL_SCHEMES = ("file:", "data:", "blob:", "about:")

pytestmark = pytest.mark.slow


def chromium_path():
    # the distribution's Chromium first; a Chrome already on the machine (CI runner images ship one) as a fallback
    names = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
    for candidate in (os.environ.get("CHROMIUM"), "/usr/bin/chromium", *(shutil.which(n) for n in names)):
        if candidate and Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return candidate
    return None


@pytest.fixture(scope="module")
def built_book(tmp_path_factory):
    """One HTML build of the book per session, in a temporary folder (the repository's _build is left alone)."""
    out = tmp_path_factory.mktemp("book")
    jb = Path(sys.executable).parent / "jupyter-book"
    proc = subprocess.run(
        [str(jb), "build", str(ROOT), "--path-output", str(out), "--builder", "html", "-W", "-n", "--keep-going"],
        capture_output=True, text=True, timeout=900,
    )
    html = out / "_build" / "html"
    # Warnings (-W, exit 1 with --keep-going) are test_notebooks.py::test_book_builds_offline_without_warnings's
    # business; here the pages must exist to be opened.
    assert (html / "index.html").exists(), f"book build failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    return html


@pytest.fixture(scope="module")
def browser():
    executable = chromium_path()
    if executable is None:
        pytest.skip("Chromium is not installed: install the distribution's package with "
                    "`sudo apt-get install -y chromium` (or set CHROMIUM=/path/to/chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("playwright is not installed: `pip install -e '.[test]'` (never `playwright install`)")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


def pages(html: Path) -> list[Path]:
    """Every HTML page of the build (not files under _static/_sources, nor redirect stubs like index.html)."""
    found = sorted(p for p in html.rglob("*.html") if not any(part.startswith("_") for part in p.relative_to(html).parts))
    return [p for p in found if 'http-equiv="refresh"' not in p.read_text(errors="replace")[:2000].lower()]


CHECK_PAGE = """async () => {
  if (window.MathJax && MathJax.startup && MathJax.startup.promise) { await MathJax.startup.promise; }
  const images = Array.from(document.images);
  for (const img of images) { img.loading = "eager"; }
  const loaded = Promise.all(images.map(img => img.complete ? null : new Promise(r => { img.onload = img.onerror = r; })));
  await Promise.race([loaded, new Promise(r => setTimeout(r, 15000))]);
  const math = Array.from(document.querySelectorAll(".math"));
  const untypeset = math.filter(el => !el.querySelector("mjx-container")).map(el => el.textContent.slice(0, 80));
  const clone = document.body.cloneNode(true);
  clone.querySelectorAll("pre, code, script, style, textarea, mjx-container, .highlight").forEach(el => el.remove());
  const text = clone.textContent;
  const raw = [];
  for (const token of ["$$", "\\\\("]) { const i = text.indexOf(token); if (i >= 0) raw.push(text.slice(Math.max(0, i - 40), i + 40)); }
  return {
    math: math.length,
    containers: document.querySelectorAll("mjx-container").length,
    untypeset: untypeset,
    raw: raw,
    brokenImages: images.filter(img => img.naturalWidth === 0).map(img => img.getAttribute("src")),
    images: images.length,
  };
}"""


def check_page(context, path: Path, name: str, screenshot: Path | None = None) -> tuple[list[str], int]:
    """Open one page; return its problems and the number of typeset equations."""
    page = context.new_page()
    requests, console = [], []
    page.on("request", lambda req: requests.append(req.url))
    page.on("console", lambda msg: console.append(msg.text) if msg.type == "error" else None)
    page.on("pageerror", lambda exc: console.append(f"uncaught: {exc}"))
    page.goto(path.as_uri(), wait_until="load")
    result = page.evaluate(CHECK_PAGE)
    if screenshot is not None:
        page.screenshot(path=str(screenshot), full_page=True)
    page.close()
    problems = []
    if result["untypeset"]:
        problems.append(f"{name}: {len(result['untypeset'])} of {result['math']} equations untypeset, e.g. {result['untypeset'][:2]}")
    if result["math"] and not result["containers"]:
        problems.append(f"{name}: has math but no mjx-container (MathJax did not run)")
    if result["raw"]:
        problems.append(f"{name}: raw TeX delimiters left in the text: {result['raw']}")
    if result["brokenImages"]:
        problems.append(f"{name}: images that do not load: {result['brokenImages']}")
    outside = [u for u in requests if not u.startswith(LOCAL_SCHEMES)]
    if outside:
        problems.append(f"{name}: requests leaving the local build: {outside[:5]}")
    errors = [c for c in console if not any(h in c for h in HARMLESS_CONSOLE)]
    if errors:
        problems.append(f"{name}: console errors: {errors[:5]}")
    return problems, result["containers"]


def test_every_page_renders_in_chromium(built_book, browser):
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    found = pages(built_book)
    assert len(found) >= 5, f"too few pages in {built_book}: {found}"
    problems, typeset = [], 0
    context = browser.new_context(viewport={"width": 1280, "height": 900}, service_workers="block")
    for path in found:
        name = str(path.relative_to(built_book))
        shot = SCREENSHOTS / (name.replace("/", "__").removesuffix(".html") + ".png")
        page_problems, containers = check_page(context, path, name, shot)
        problems += page_problems
        typeset += containers
    context.close()
    assert typeset > 0, "no equation was typeset on any page"
    assert not problems, "\n".join(problems)


def test_the_checks_catch_a_broken_page(browser, tmp_path):
    """A page with raw TeX, a missing image, a request to the network and a script error fails every check."""
    page = tmp_path / "broken.html"
    page.write_text(
        "<html><body><p>Raw $$x^2$$ and \\(y\\) left.</p><span class='math'>\\(z\\)</span>"
        "<img src='missing.png'><img src='http://example.invalid/a.png'>"
        "<script>undefinedFunction()</script></body></html>"
    )
    context = browser.new_context()
    problems, _ = check_page(context, page, "broken.html")
    context.close()
    text = "\n".join(problems)
    for expected in ("untypeset", "raw TeX", "images that do not load", "leaving the local build", "console errors"):
        assert expected in text, (expected, text)
