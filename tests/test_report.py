"""The closing table: verdicts come from a rule evaluated on the numbers, never from a literal."""
import numpy as np
import pytest

from mempkg.report import claims_table, verdict


def test_verdict_follows_the_rule():
    assert verdict(True) == "agrees"
    assert verdict(False) == "differs"
    assert verdict(np.float64(0.3) < 0.5) == "agrees"
    assert verdict(np.array([0.7]).max() < 0.5) == "differs"


@pytest.mark.parametrize("bad", [0.3, 1, "agrees", None])
def test_verdict_refuses_anything_but_a_bool(bad):
    with pytest.raises(TypeError, match="ok must be a bool"):
        verdict(bad)


def test_claims_table_refuses_an_unknown_verdict():
    row = ("claim", "source", "paper", "run", "agrees", "why")
    assert list(claims_table([row])["verdict"]) == ["agrees"]
    with pytest.raises(ValueError, match="verdict must be one of"):
        claims_table([row[:4] + ("maybe",) + row[5:]])
    with pytest.raises(ValueError, match="each row must have 6 fields"):
        claims_table([row[:5]])


def test_interval_text_and_glued_intervals(monkeypatch):
    import myst_nb
    import pandas as pd

    from mempkg.report import glue_interval, glue_values, interval_text

    assert interval_text((0.8312, np.float64(0.79), 0.87)) == "0.83 [0.79, 0.87]"
    assert interval_text(pd.Series([1.0, 0.5, 2.0]), digits=1) == "1.0 [0.5, 2.0]"
    glued = {}
    monkeypatch.setattr(myst_nb, "glue", lambda name, value, display: glued.update({name: value}))
    glue_values(n=np.int64(3), label="rare")
    glue_interval("auc", (np.float32(0.5), 0.25, 0.75))
    assert glued == {"n": 3.0, "label": "rare", "auc": 0.5, "auc_lo": 0.25, "auc_hi": 0.75}
    assert all(type(v) in (float, str) for v in glued.values())


def test_intervals_refuse_anything_but_a_triple():
    from mempkg.report import glue_interval, interval_text

    with pytest.raises(ValueError, match="triple must be"):
        interval_text((0.5, 0.4))
    with pytest.raises(ValueError, match="triple must be"):
        glue_interval("auc", [0.5, 0.4, 0.6, 0.7])
