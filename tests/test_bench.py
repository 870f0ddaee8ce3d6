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


@pytest.mark.slow
def test_gpu_sections_run_small_on_the_cpu(tmp_path):
    from bench import train_gpu

    rows = train_gpu.run(quick=True, device="cpu", experiments=["study_lstm", "study_combined_transfer"],
                         work=tmp_path)
    # the transfer experiment needs the triplet run's CNN, which the section trains first
    assert [r["experiment"] for r in rows] == [train_gpu.TRANSFER_FROM, "study_lstm", "study_combined_transfer"]
    assert all(r["fed_samples_per_s"] > 0 and 0 < r["ratio"] for r in rows)
    assert train_gpu.run(quick=False, device="cpu") == []       # the full section needs CUDA
