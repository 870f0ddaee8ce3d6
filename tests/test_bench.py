"""`make bench` must start: its argument handling, and one quick section end to end."""

import json

import pytest

from bench.__main__ import main


def test_unknown_section_is_refused(capsys):
    with pytest.raises(SystemExit) as e:
        main(["rastr"])
    assert e.value.code == 2
    assert "unknown section rastr" in capsys.readouterr().err


def test_quick_prepare_section_writes_figures(tmp_path):
    out = tmp_path / "results.json"
    assert main(["prepare", "--quick", "--json", str(out)]) == 0
    figures = json.loads(out.read_text())["prepare"]
    assert figures[0]["drawings"] == 20000 and figures[0]["drawings_per_s"] > 0
