"""The README tutorial runs as printed (every block marked ``<!-- tutorial -->``)."""
import os
import re

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def blocks():
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as fh:
        text = fh.read()
    return re.findall(r"<!-- tutorial -->\n```python\n(.*?)```", text, flags=re.S)


def test_tutorial_has_four_short_studies():
    found = blocks()
    assert len(found) == 4
    assert all(len(b.strip().splitlines()) <= 15 for b in found)


@pytest.mark.parametrize("k", range(4))
def test_tutorial_block_runs(k, monkeypatch, capsys):
    monkeypatch.chdir(ROOT)
    code = blocks()[k]
    exec(compile(code, f"README tutorial {k}", "exec"), {"__name__": "__tutorial__"})
    out = capsys.readouterr().out
    assert out.strip() and "nan" not in out.lower()
