"make tour: executes notebooks, skips slow/gpu/eval:false cells, collects report_result rows, fails loudly."
import json

import nbformat
import pytest

from tools.site import build_tour, skip_reason


def write_nb(path, *cells):
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(c) for c in cells]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "python3", "language": "python"}
    nbformat.write(nb, path)


def test_tour_runs_skips_reports_and_fails_loudly(tmp_path):
    nbs = tmp_path / "nbs"; nbs.mkdir()
    write_nb(nbs / "01_a.ipynb",
             "from medsynth_nb.utils import report_result, size_preset\nassert size_preset() == 'smoke'",
             "#| slow\nraise RuntimeError('slow cells must not run in the tour')",
             "#| eval: false\nraise RuntimeError('eval: false cells never run')",
             "report_result('01_a', 'answer', 42, paper=41, note='x')")
    write_nb(nbs / "02_bad.ipynb", "1/0")
    out = tmp_path / "tour"
    with pytest.raises(RuntimeError, match=r"1 notebook\(s\) failed: \['02_bad.ipynb'\]"):
        build_tour(out, nbs=nbs)
    rows = [json.loads(l) for l in (out / "results.jsonl").read_text().splitlines()]
    assert rows == [dict(lesson="01_a", quantity="answer", ours=42, paper=41, note="x")]
    assert (out / "01_a.html").stat().st_size > 1000
    index = (out / "index.html").read_text()
    assert "01_a.html" in index and "ZeroDivisionError" in index
    assert "| 01_a | answer | 42 | 41 | x |" in (out / "results.md").read_text()
    assert "<td>2</td>" in index  # two cells of 01_a were not run


def test_skip_reason_reads_the_directives_at_the_top_of_a_cell():
    assert skip_reason("#| slow\nx = 1", ()) == "flag `slow`"
    assert skip_reason("#| slow\nx = 1", ("slow",)) is None
    assert skip_reason("#| gpu\nx = 1", ("slow",)) == "flag `gpu`"
    assert skip_reason("#| eval: false\nrun()", ()) == "eval: false"
    assert skip_reason("#| export\ndef f(): pass", ()) is None
    assert skip_reason("x = 1\n#| gpu", ()) is None        # directives count only above the code


def test_site_cli_errors_in_one_line(tmp_path, capsys):
    from tools.site import main
    assert main(["readme", "--index", str(tmp_path / "none.ipynb"), "--out", str(tmp_path / "R.md")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("tools/site.py: error: index: no notebook at") and not (tmp_path / "R.md").exists()
