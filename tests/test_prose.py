"""No result typed by hand in a chapter's prose.

Every number of this run that the prose states comes from execution through a glue role; the
prose may cite the papers' own numbers, parameters' defaults named as such, and equation or
section numbers. This test reads the markdown cells of notebooks/NN_*.md (code cells and
their outputs are execution, not prose) and flags result-like numbers:

* decimals (``0.83``, ``.05``, ``1.2e-3``) and numbers in e-notation (``8e-4``);
* percentages (``12 %``, ``12%``, ``12 per cent``);
* p-values (``p = 0.01``, ``p < 1e-3``) and AUCs (``AUC 0.9``, ``an AUC of 1``), integers
  included.

Integers alone are not flagged: counts such as "64 digits" or "1,000 steps" are parameters.

Ignored before the search (masked, offsets kept, so lines stay right):

1. glue roles and directives (``{glue:text}`x:.2f```, ``{glue}`x```, ``{glue:figure}``),
   every other role (``{ref}``, ``{cite:t}``, ``{numref}``, ...), inline code, fenced code
   that is not a directive, URLs, label targets ``(x)=``, directive option lines
   (``:label: x``), HTML comments, and the number at the start of a heading;
   the body of an exercise's ``{solution}`` (a derivation the reader is asked to do by hand:
   its arithmetic on closed forms is not a result of the run);
2. references to numbered things: Eq./Eqs./Equation, Section/Sec./§, Table, Figure/Fig.,
   Appendix/App., Theorem, Lemma, Proposition, Corollary, Definition, Assumption, Algorithm,
   Chapter, Exercise, Step, Line, followed by numbers such as ``4.2``, ``C.2``, ``147-150``.

Math is not masked: ``$\\tfrac12$`` passes (no decimal), ``$0.83$`` does not.

A flagged number is allowed when

A. the paper is cited before it in its sentence: "paper", "seed 00N", "report(s/ed)",
   "author(s)", "et al.", "their" or a ``{cite}`` role comes earlier in the sentence, or
   anywhere in the parentheses that hold the number ("the paper reports 0.96", "Wen et al.
   report 0.9", "($\\lambda = 7.5$, seed 004's setting)"; not "we find 0.1 against the
   paper's 2.2"). Sentences end at ". ", "? ", "! ", ": " before a capital, at ";" and at
   paragraph and list-item breaks;
B. the word "default(s)" lies within 40 characters of it ("the default t0 = 0.05", "0.05
   (the default)");
C. it is a percentage naming a level: "interval", "confidence", "CI", "quantile",
   "percentile" or "level" follows within two words ("a 95 % bootstrap interval", "the 1 %
   quantile").

Run ``python tests/test_prose.py [OUT]`` to list the offenders of every chapter
(chapter:line and snippet), written to OUT when given.
"""

import re
import sys
from pathlib import Path

import jupytext
import pytest

ROOT = Path(__file__).resolve().parent.parent
CHAPTERS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.md"))

# --- what is masked ---
_ROLE = r"\{[A-Za-z][\w:-]*\}`[^`]*`"  # {glue:text}`x:.2f`, {ref}`ch-x`, {cite:t}`key`
_INLINE_CODE = r"(?<!`)``[^`\n]+``(?!`)|(?<!`)`[^`\n]+`(?!`)"
_URL = r"https?://\S+|\]\([^)\s]*\)"
_TARGET = r"^\([\w:.-]+\)=[ \t]*$"
_OPTION = r"^[ \t]*:[\w-]+:.*$"
_HEADING_NUMBER = r"^#{1,6}[ \t]+\d+(?:\.\d+)*\.?(?=[ \t])"
_DIRECTIVE_MARK = (
    r"^[ \t]*(?:`{3,}|:{3,})\{[\w:-]+\}"  # the fence of ```{prf:theorem} Title
)
_REF_ID = r"\(?(?:[A-Z](?![A-Za-z])|\d+)(?:\.\d+)*[a-z]?\)?"
_REFERENCE = (
    r"(?:\b(?:Eqs?|Equations?|Secs?|Sections?|Tables?|Tab|Figs?|Figures?|Apps?|Appendix|"
    r"Appendices|Theorems?|Thm|Lemmas?|Propositions?|Props?|Corollary|Cor|Definitions?|Def|"
    r"Assumptions?|Algorithms?|Alg|Chapters?|Ch|Exercises?|Steps?|Lines?)\.?|§)"
    rf"[ \t\n]*{_REF_ID}(?:[ \t]*(?:[-\u2013,]|and|to|&)[ \t\n]*{_REF_ID})*"
)

# --- what is flagged ---
_NUMBER = r"\d+(?:,\d{3})*(?:\.\d+)?"
_FLAGGED = re.compile(
    "|".join(
        [
            r"(?<![\w.])\d*\.\d+(?:[eE][-+\u2212]?\d+)?(?![\w])",  # 0.83, .05, 1.2e-3
            r"(?<![\w.])\d+[eE][-+\u2212]?\d+\b",  # 8e-4
            rf"(?<![\w.]){_NUMBER}[ \t]?(?:\\?%|per[ \t]?cent\b)",  # 12 %, 12%, 12 per cent
            rf"\bp(?:-value)?[ \t]*(?:=|<|>|\\le|\\leq|\\ge|≤|≥)[ \t]*{_NUMBER}",  # p = 0.01
            rf"\bAUCs?\b[ \t]*(?:of|=|is|was|:|near|around|about|≈|~)?[ \t]*{_NUMBER}",
        ]
    )
)
_CITES_PAPER = re.compile(
    r"\bpapers?\b|\bpaper's\b|\bseeds?[ \t]+0\d\d\b|\breport(?:s|ed)?\b|\bauthors?\b|"
    r"\bet al\.|\btheir\b|\{cite",
    re.I,
)
_DEFAULT = re.compile(r"\bdefaults?\b", re.I)
_LEVEL = re.compile(
    r"[ \t]*(?:[\w-]+[ \t]+){0,2}?(?:intervals?|confidence|CI|quantiles?|percentiles?|levels?)\b"
)
_SENTENCE_END = re.compile(
    r"(?<=[.!?:])\)?\s+(?=[A-Z$({\[*_])|;|\n[ \t]*\n|\n[ \t]*(?:[-*+]|\d+\.)\s"
)


def _blank(text, pattern, flags=re.M):
    """Replace every match by spaces (newlines kept), so offsets and lines do not move."""
    return re.sub(pattern, lambda m: re.sub(r"[^\n]", " ", m.group()), text, flags=flags)


def _blank_code_fences(text):
    """Blank fenced code (```python, ```text, ```) and the bodies of {solution} directives.

    Other directive fences (```{prf:proof}, ````{exercise}) are followed, so that their
    closing fence is not taken for the opening of a code block.
    """
    out, directives, code = [], [], None
    for line in text.splitlines(keepends=True):
        m = re.match(r"[ \t]*(`{3,}|~{3,})[ \t]*(.*?)\s*$", line)
        if code is not None:
            if (
                m
                and not m.group(2)
                and m.group(1)[0] == code[0]
                and len(m.group(1)) >= len(code)
            ):
                code = None
            line = re.sub(r"[^\n]", " ", line)
        elif m and m.group(2).startswith("{"):
            directives.append((m.group(1), m.group(2).startswith("{solution}")))
        elif m and not m.group(2) and directives and directives[-1][0] == m.group(1):
            directives.pop()
        elif m:
            code, line = m.group(1), re.sub(r"[^\n]", " ", line)
        if any(solution for _, solution in directives):
            line = re.sub(r"[^\n]", " ", line)
        out.append(line)
    return "".join(out)


def _mask(text):
    text = _blank(text, r"<!--.*?-->", re.S)
    text = _blank_code_fences(text)
    for pattern in (
        _ROLE,
        _INLINE_CODE,
        _URL,
        _TARGET,
        _OPTION,
        _HEADING_NUMBER,
        _DIRECTIVE_MARK,
    ):
        text = _blank(text, pattern)
    return _blank(text, _REFERENCE, 0)


def _sentences(masked):
    """(start, end) of each sentence of the masked text."""
    bounds, start = [], 0
    for m in _SENTENCE_END.finditer(masked):
        bounds.append((start, m.start()))
        start = m.end()
    return bounds + [(start, len(masked))]


def _parentheses(masked, at, start, end):
    """(open, close) of the innermost parentheses around offset `at` within [start, end)."""
    depth, a = 0, None
    for i in range(at - 1, start - 1, -1):
        depth += {")": 1, "(": -1}.get(masked[i], 0)
        if depth < 0:
            a = i
            break
    if a is None:
        return None, None
    depth = 0
    for i in range(at, end):
        depth += {"(": 1, ")": -1}.get(masked[i], 0)
        if depth < 0:
            return a, i + 1
    return a, end


def offenders(text, first_line=1):
    """[(line, snippet)] of the result-like numbers typed by hand in markdown `text`.

    `first_line` is the line of the file at which `text` starts.
    """
    masked = _mask(text)
    found = []
    for start, end in _sentences(masked):
        cited = _CITES_PAPER.search(text, start, end)
        for m in _FLAGGED.finditer(masked, start, end):
            if cited and cited.start() < m.start():
                continue
            a, b = _parentheses(masked, m.start(), start, end)
            if a is not None and _CITES_PAPER.search(text, a, b):
                continue
            near = text[max(start, m.start() - 40) : min(end, m.end() + 40)]
            if _DEFAULT.search(near):
                continue
            if "%" in m.group() or "cent" in m.group():
                if _LEVEL.match(text, m.end(), end):
                    continue
            line = first_line + text.count("\n", 0, m.start())
            a = text.rfind("\n", 0, m.start()) + 1
            b = text.find("\n", m.end())
            row = text[a : b if b >= 0 else len(text)].strip()
            found.append((line, f"{m.group().strip()!r} in: {row}"))
    return found


def markdown_cells(path):
    """[(first line in the file, source)] of the markdown cells of a Jupytext chapter."""
    raw = path.read_text()
    cells, cursor = [], 0
    for cell in jupytext.read(path).cells:
        if cell.cell_type != "markdown" or not cell.source.strip():
            continue
        at = raw.find(cell.source, cursor)
        if at < 0:  # jupytext changed the text: fall back to its first line
            at = raw.find(cell.source.splitlines()[0], cursor)
        if at < 0:
            at = cursor
        cells.append((raw.count("\n", 0, at) + 1, cell.source))
        cursor = at
    return cells


def chapter_offenders(path):
    return [hit for line, src in markdown_cells(path) for hit in offenders(src, line)]


@pytest.mark.parametrize("chapter", CHAPTERS, ids=lambda p: p.stem)
def test_prose_holds_no_result_typed_by_hand(chapter):
    found = chapter_offenders(chapter)
    listing = "\n".join(
        f"  notebooks/{chapter.name}:{line}: {snip}" for line, snip in found
    )
    assert not found, (
        f"{len(found)} result-like numbers typed by hand; glue them (or cite the paper, or "
        f"name the default):\n{listing}"
    )


def test_the_checker_catches_a_planted_result_and_spares_what_is_allowed():
    planted = (
        "The detector works.\nOn the held-out split the AUC is 0.83, a clear margin.\n"
    )
    assert [line for line, _ in offenders(planted, 10)] == [11]
    assert offenders("The rate is 12 % of the pool.")
    assert offenders("The difference is significant (p < 0.05).")
    assert offenders("It reaches an AUC of 1 on the toy.")
    assert offenders("The residual is $0.83$ at the end.")
    assert offenders("````{exercise}\n:label: e\n\nIt is 0.3.\n````\n\n```python\nx\n```")
    assert offenders("The slope is 1.2e-3 and the error 8e-4.")
    assert offenders("We find 0.1 nats per axis against the paper's 2.2.")
    assert offenders("The paper reports 0.96; our AUC is 0.71.")
    assert len(offenders("Our AUC is 0.71 (the paper reports 0.96).")) == 1
    allowed = [
        "On the held-out split the AUC is {glue:text}`auc:.2f`, a clear margin.",
        "The derivation follows Eq. 4.2 and Section 3.1 (App. C.2, Eqs. 147-150, Table 1).",
        "The paper reports an AUC of 0.96 on CIFAR-10.",
        "Wen et al. report 0.9 at the same threshold.",
        "As {cite:t}`wen2024` show, the norm separates at 0.9.",
        "A strong guidance ($\\lambda = 7.5$, seed 004's setting) dominates.",
        "Seed 004 uses a threshold of 0.1.",
        "We keep the default t0 = 0.05 throughout.",
        "The AUC comes with a 95 % bootstrap interval; the threshold is the 1% quantile.",
        "With `quantile=0.1` the pool shrinks.",
        "$-\\log q_i(x) = \\tfrac d2 \\log(2\\pi\\epsilon) + |x - x_i|^2/(2\\epsilon)$.",
        "We train on 1,797 digits for 1,000 steps with 64 samples.",
        "## 3.1 The setting",
        "```{prf:theorem} Theorem 2.1\n:label: thm-2.1\n\nA statement.\n```",
        "```python\nauc = 0.83\n```",
        "````{exercise}\n:label: e\n````\n\n````{solution} e\n:class: dropdown\n\n"
        "$m(1) = 0.05 + 4.9/4 = 1.275$.\n````",
        "(sec-4.2)=\nSee https://example.org/v1.2 and [the docs](https://x.org/a.5).",
    ]
    for text in allowed:
        assert offenders(text) == [], text


if __name__ == "__main__":
    lines = []
    for chapter in CHAPTERS:
        found = chapter_offenders(chapter)
        lines.append(f"{chapter.name}: {len(found)}")
        lines += [f"  notebooks/{chapter.name}:{line}: {snip}" for line, snip in found]
    report = "\n".join(lines) + "\n"
    if len(sys.argv) > 1:
        Path(sys.argv[1]).write_text(report)
    print(report, end="")
