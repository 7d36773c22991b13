"""The lessons' committed outputs: produced by `make lessons` from the code beside them (the freshness guard), free of
errors, small, and showing the demo-size results (issue 19). Also the tool itself, on a small notebook."""
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from tools import lessons as L  # noqa: E402

NBS = ROOT / "nbs"
NOTEBOOKS = L.lesson_paths()
PAPER_LESSONS = ("11_wgan_gp", "12_lowdose_gan", "13_patch_invariance", "20_ddpm", "21_harmonization",
                 "31_unrolled_recon", "40_lip_car")


def _outputs(nb):
    return [o for c in nb["cells"] if c["cell_type"] == "code" for o in c.get("outputs", [])]


def _images(nb):
    return [o["data"]["image/png"] for o in _outputs(nb) if "image/png" in o.get("data", {})]


def test_every_lesson_is_listed():
    names = {p.stem for p in NOTEBOOKS}
    assert len(NOTEBOOKS) >= 23 and set(PAPER_LESSONS) <= names and "index" not in names


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_outputs_match_the_code_beside_them(path):
    "Fails when a code cell changed after `make lessons` produced the outputs: re-run `make lessons NB=<it>`."
    why = L.stale_reason(path)
    assert why is None, f"{path.name}: {why}; run `make lessons NB=nbs/{path.name}` and commit it"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_outputs_hold_no_error_and_label_what_did_not_run(path):
    nb = L.read_json_nb(path)
    assert not [o for o in _outputs(nb) if o["output_type"] == "error"]
    for c in nb["cells"]:
        if c["cell_type"] != "code": continue
        src = "".join(c["source"])
        labelled = any("Not run here" in "".join(o.get("data", {}).get("text/plain", []))
                       for o in c.get("outputs", []))
        assert labelled == (L.not_run_reason(src, cuda=False) is not None), src[:200]


@pytest.mark.parametrize("name", PAPER_LESSONS)
def test_paper_lessons_show_their_demo_results(name):
    "Each paper lesson's demo (`#| slow`) cells ran: they have outputs, and the lesson has figures."
    nb = L.read_json_nb(NBS / f"{name}.ipynb")
    slow = [c for c in nb["cells"] if c["cell_type"] == "code" and "slow" in L.directives("".join(c["source"]))]
    assert slow and any(c["outputs"] for c in slow), f"{name}: its demo cells have no outputs"
    assert len(_images(nb)) >= 3, f"{name}: {len(_images(nb))} figures"


def test_outputs_stay_small():
    "All outputs together at most 15 MB (the issue's budget); no single figure over 400 KB."
    total, biggest = 0, (0, "")
    for p in NOTEBOOKS:
        nb = L.read_json_nb(p)
        size = sum(len(json.dumps(o)) for o in _outputs(nb))
        total += size
        for img in _images(nb):
            n = len("".join(img)) * 3 // 4
            if n > biggest[0]: biggest = (n, p.name)
    assert total <= 15e6, f"outputs take {total / 1e6:.1f} MB"
    assert biggest[0] <= 400e3, f"a figure of {biggest[0] / 1e3:.0f} KB in {biggest[1]}"


# ---- the tool itself -------------------------------------------------------------------------------------------

def _nb(*cells):
    return {"cells": [{"cell_type": t, "id": f"c{i}", "metadata": {}, "source": s, **({"outputs": [], "execution_count": None}
                                                                     if t == "code" else {})} for i, (t, s) in enumerate(cells)],
            "metadata": {"kernelspec": {"display_name": "python3", "language": "python", "name": "python3"}},
            "nbformat": 4, "nbformat_minor": 5}


def test_directives_and_reasons():
    assert L.directives("#| export\n#|  eval : false\nx = 1\n#| hide") == ["export", "eval:false"]
    assert L.not_run_reason("#| eval: false\n1") and L.not_run_reason("#| gpu\n1")
    assert L.not_run_reason("#| gpu\n1", cuda=True) is None
    assert L.not_run_reason("#| slow\n1") is None and L.not_run_reason("x = 1\n#| gpu") is None


def test_code_hash_follows_code_not_prose():
    nb = _nb(("markdown", "# T"), ("code", "x = 1"))
    h = L.code_hash(nb)
    nb["cells"][0]["source"] = "# T, reworded"
    assert L.code_hash(nb) == h
    nb["cells"][1]["source"] = ["x = ", "2"]
    assert L.code_hash(nb) != h
    nb["cells"][1]["source"] = "x = 1"
    assert L.code_hash(nb) == h


def test_execute_keeps_outputs_labels_skipped_cells_and_guards_freshness(tmp_path):
    p = tmp_path / "t.ipynb"
    p.write_text(json.dumps(_nb(("markdown", "# A lesson"), ("code", "print('hello', 6 * 7)"),
                                ("code", "#| slow\nprint('demo')"), ("code", "#| gpu\nraise SystemExit('gpu ran')"),
                                ("code", "#| eval: false\nraise SystemExit('eval ran')"))))
    assert "never executed" in L.stale_reason(p)
    meta = L.execute(p, cuda=False)
    nb = L.read_json_nb(p)
    outs = [c["outputs"] for c in nb["cells"] if c["cell_type"] == "code"]
    assert "".join(outs[0][0]["text"]) == "hello 42\n" and "".join(outs[1][0]["text"]) == "demo\n"
    assert "`#| gpu`" in "".join(outs[2][0]["data"]["text/plain"]) and "eval: false" in "".join(outs[3][0]["data"]["text/plain"])
    assert meta["not_run"] == 2 and nb["metadata"]["medsynth"]["code_sha256"] == L.code_hash(nb)
    assert "".join(nb["cells"][3]["source"]).endswith("raise SystemExit('gpu ran')")   # the code is kept
    assert L.stale_reason(p) is None
    nb["cells"][1]["source"] = "print('changed')"
    p.write_text(json.dumps(nb))
    assert "changed after" in L.stale_reason(p)


def test_a_failing_cell_leaves_the_notebook_unchanged(tmp_path):
    p = tmp_path / "t.ipynb"
    p.write_text(json.dumps(_nb(("code", "print(1)"), ("code", "1 / 0"))))
    before = p.read_bytes()
    with pytest.raises(Exception, match="ZeroDivisionError"): L.execute(p, cuda=False)
    assert p.read_bytes() == before and sorted(x.name for x in tmp_path.iterdir()) == ["t.ipynb"]


def test_check_command_reports_stale_notebooks(tmp_path, capsys):
    p = tmp_path / "t.ipynb"
    p.write_text(json.dumps(_nb(("code", "x = 1"))))
    assert L.main(["check", str(p)]) == 1 and "never executed" in capsys.readouterr().out
    assert L.main(["run", str(tmp_path / "missing.ipynb")]) == 2
