"""The course assignments (assignments/): nbgrader builds clean release versions, the solutions get full marks, an
untouched release gets zero on the code cells, and each subtly wrong solution loses exactly the points of the test
that should catch it. Grading runs nbgrader's real pipeline (generate_assignment, autograde) in a temporary course
directory, executing every notebook in the `python3` kernel.

The default run grades every source notebook and the full matrix (untouched release + wrong solutions) of
`wgan_gp` and `kspace`; MEDSYNTH_ASSIGNMENTS=full grades the full matrix of all five assignments.
"""
import csv
import os
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "assignments"))
import course  # noqa: E402

FULL = os.environ.get("MEDSYNTH_ASSIGNMENTS", "").lower() == "full"
# The default run grades every source notebook, the untouched release of wgan_gp and the two wrong solutions the
# issue names (alpha shared across the batch, FFT without ortho); MEDSYNTH_ASSIGNMENTS=full grades everything.
UNTOUCHED = course.ASSIGNMENTS if FULL else ("wgan_gp",)
DEFAULT_WRONG = ("alpha_shared", "fft_not_ortho")

# (assignment, student id, old text in the solution, wrong text, the test cells that must lose their points)
WRONG = [
    ("wasserstein", "w1_unsorted_target", "    ys = torch.sort(y, dim=-1).values", "    ys = y", {"test_w1_sorted"}),
    ("wasserstein", "patches_not_permuted", ".permute(0, 1, 2, 4, 3, 5)", "", {"test_extract_patches"}),
    ("wgan_gp", "alpha_shared",
     "alpha = torch.rand(B, generator=generator, dtype=real.dtype, device=real.device)",
     "alpha = torch.rand(1, generator=generator, dtype=real.dtype, device=real.device).expand(B)", {"test_gp_per_sample"}),
    ("wgan_gp", "fakes_not_detached", "    real, fake = real.detach(), fake.detach()\n", "", {"test_gp_gradients"}),
    ("ddpm", "ddim_eta_noise",
     "    return (a_prev ** 0.5).to(x_t.dtype) * x0 + ((1 - a_prev) ** 0.5).to(x_t.dtype) * eps",
     "    sigma = ((1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev)) ** 0.5\n"
     "    return (a_prev ** 0.5).to(x_t.dtype) * x0 + ((1 - a_prev - sigma ** 2) ** 0.5).to(x_t.dtype) * eps"
     " + sigma.to(x_t.dtype) * torch.randn_like(x_t)", {"test_ddim_step"}),
    ("ddpm", "ddpm_variance_beta", "    var = (1 - a_prev) / (1 - a_t) * beta_t", "    var = beta_t", {"test_ddpm_step"}),
    ("kspace", "fft_not_ortho", ', norm="ortho")', ")", {"test_fft_pair"}),
    ("kspace", "maps_not_conjugated", "(maps.conj() * z)", "(maps * z)", {"test_hard_dc_coils"}),
    ("lip_car", "gentv_backward_differences",
     "    dx[..., :, :-1] = u[..., :, 1:] - u[..., :, :-1]\n    dy[..., :-1, :] = u[..., 1:, :] - u[..., :-1, :]",
     "    dx[..., :, 1:] = u[..., :, 1:] - u[..., :, :-1]\n    dy[..., 1:, :] = u[..., 1:, :] - u[..., :-1, :]", {"test_gentv"}),
    ("lip_car", "no_projection", "            x.clamp_(min=0)", "            pass", {"test_solve"}),
]
# a student who also deleted the test that catches the mistake: nbgrader restores the test from the gradebook
TAMPER = {"fft_not_ortho": "test_fft_pair", "gentv_backward_differences": "test_gentv"}
WRONG_RUN = [w for w in WRONG if FULL or w[1] in DEFAULT_WRONG]


def mutate(nb, old: str, new: str):
    "A copy of `nb` with `old` replaced by `new` (every occurrence) in the one solution cell that contains it."
    nb = nbformat.from_dict(nb)
    hits = [c for c in nb.cells if c.metadata.get("nbgrader", {}).get("solution") and old in c.source]
    assert len(hits) == 1, f"{old!r} must occur in exactly one solution cell"
    hits[0].source = hits[0].source.replace(old, new)
    return nb


def src_nb(name):
    return nbformat.read(str(course.source_path(name)), 4)


def filled_release(name, root, old, new, tamper=None):
    """What a student hands in: the release notebook with every solution cell filled in (the source's solution, with
    `old` replaced by `new`) and, with `tamper`, that test cell emptied (nbgrader must restore it)."""
    wrong = {c.metadata.nbgrader["grade_id"]: c.source for c in mutate(src_nb(name), old, new).cells
             if c.metadata.get("nbgrader", {}).get("solution") and c.cell_type == "code"}
    nb = nbformat.read(str(course.release_path(name, root)), 4)
    for c in nb.cells:
        gid = c.metadata.get("nbgrader", {}).get("grade_id")
        if gid in wrong: c.source = "\n".join(l for l in wrong[gid].splitlines() if "### " not in l)
        if gid == tamper: c.source = "pass  # the test was deleted"
    return nb


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    "A temporary nbgrader course with every assignment generated (release/ and gradebook.db)."
    root = tmp_path_factory.mktemp("course")
    shutil.copytree(ROOT / "assignments" / "source", root / "source")
    api = course.make_api(root)
    course.build(course.ASSIGNMENTS, root, api)
    return root, api


@pytest.fixture(scope="module")
def graded(built, tmp_path_factory):
    """Autograde the solutions, untouched releases and wrong solutions with `assignments/grade.py`, split over two
    processes (each on a copy of the built course: its own gradebook); {(student, assignment): {grade_id: row}}."""
    root, _ = built
    jobs = [("solution", name, course.source_path(name), 3) for name in course.ASSIGNMENTS]
    jobs += [("untouched", name, course.release_path(name, root), 1) for name in UNTOUCHED]
    jobs += [(student, name, filled_release(name, root, old, new, tamper=TAMPER.get(student)), 2)
             for name, student, old, new, _ in WRONG_RUN]
    jobs += [("broken", "kspace", "{not a notebook", 0)]
    workers = [dict(load=0, dir=tmp_path_factory.mktemp(f"worker{i}")) for i in range(2)]
    for student, name, nb, cost in sorted(jobs, key=lambda j: -j[3]):   # greedy balance by expected cost
        w = min(workers, key=lambda w: w["load"]); w["load"] += cost
        dest = w["dir"] / "subs" / student / name / f"{name}.ipynb"          # nbgrader's layout ...
        if student == "untouched": dest = w["dir"] / "subs" / student / f"{name}.ipynb"   # ... and the flat one
        dest.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(nb, Path): shutil.copyfile(nb, dest)
        elif isinstance(nb, str): dest.write_text(nb)
        else: nbformat.write(nb, str(dest))
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    for w in workers:
        shutil.copytree(root, w["dir"] / "course", ignore=shutil.ignore_patterns("submitted", "autograded"))
        w["proc"] = subprocess.Popen([sys.executable, str(ROOT / "assignments" / "grade.py"), str(w["dir"] / "subs"),
                                      "--course-dir", str(w["dir"] / "course"), "--out", str(w["dir"] / "scores.csv")],
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    rows, totals = [], []
    for w in workers:
        out, _ = w["proc"].communicate(timeout=900)
        assert w["proc"].returncode == 0, out[-5000:]
        with open(w["dir"] / "scores.csv", newline="", encoding="utf-8") as f: rows += list(csv.DictReader(f))
        with open(w["dir"] / "scores_totals.csv", newline="", encoding="utf-8") as f: totals += list(csv.DictReader(f))
    for r in rows:
        r["score"] = float(r["score"]) if r["score"] != "" else None; r["max_score"] = float(r["max_score"])
    for t in totals:
        for k in ("autograded_score", "autograded_max", "manual_max"): t[k] = float(t[k])
    cells = {}
    for r in rows: cells.setdefault((r["student_id"], r["assignment"]), {})[r["grade_id"]] = r
    merged = {}   # a student split over both workers is "missing" in one of them for what the other graded
    for t in sorted(totals, key=lambda t: t["status"] != "missing"): merged[t["student_id"], t["assignment"]] = t
    return cells, merged, rows, totals, [w["dir"] for w in workers]


def auto_cells(cells):
    return {k: r for k, r in cells.items() if r["kind"] == "autograded"}


# ------------------------------------------------------------------------------------------------------ structure
@pytest.mark.parametrize("name", course.ASSIGNMENTS)
def test_source_is_nbgrader_format(name):
    nb = src_nb(name)
    assert nb.metadata.kernelspec.name == "python3"
    meta = [c.metadata.get("nbgrader") for c in nb.cells if "nbgrader" in c.metadata]
    ids = [m["grade_id"] for m in meta]
    assert len(ids) == len(set(ids)), "grade ids must be unique"
    tests = [c for c in nb.cells if c.metadata.get("nbgrader", {}).get("grade") and c.cell_type == "code"]
    answers = [c for c in nb.cells if c.metadata.get("nbgrader", {}).get("grade") and c.cell_type == "markdown"]
    solutions = [c for c in nb.cells if c.metadata.get("nbgrader", {}).get("solution") and c.cell_type == "code"]
    assert len(tests) >= 3 and 2 <= len(answers) <= 3 and solutions
    for c in tests:
        m = c.metadata.nbgrader
        assert m["locked"] and m["points"] > 0 and "### BEGIN HIDDEN TESTS" in c.source
        assert f"({m['points']} point" in c.source.splitlines()[0], "each test cell states its points on its first line"
        assert "medsynth_nb" in c.source.split("### BEGIN HIDDEN TESTS")[1], "hidden tests compare with the library"
        assert "medsynth_nb" not in c.source.split("### BEGIN HIDDEN TESTS")[0], "visible tests must not use the reference"
    for c in solutions: assert "### BEGIN SOLUTION" in c.source and "### END SOLUTION" in c.source
    text = "\n".join(c.source for c in nb.cells)
    for c in answers: assert f"({c.metadata.nbgrader['points']} point" in text, "written questions state their points"
    auto, manual = sum(c.metadata.nbgrader["points"] for c in tests), sum(c.metadata.nbgrader["points"] for c in answers)
    assert f"**Points:** {auto} autograded" in nb.cells[0].source and f"= **{auto + manual}**" in nb.cells[0].source


@pytest.mark.parametrize("name", course.ASSIGNMENTS)
def test_release_contains_no_solution(built, name):
    root, _ = built
    rel = nbformat.read(str(course.release_path(name, root)), 4)
    assert course.check_release(course.source_path(name), course.release_path(name, root)) == []
    text = "\n".join(c.source for c in rel.cells)
    for marker in ("### BEGIN SOLUTION", "### BEGIN HIDDEN TESTS", "import medsynth_nb", "_ref."):
        assert marker not in text
    secrets = course.secret_lines(src_nb(name))
    assert len(secrets) >= 10 and not [l for l in secrets if l in text]
    for c in rel.cells:
        m = c.metadata.get("nbgrader", {})
        if m.get("solution") and c.cell_type == "code": assert "raise NotImplementedError()" in c.source
        if m.get("solution") and c.cell_type == "markdown": assert c.source.strip() == "YOUR ANSWER HERE"
        if m.get("locked"): assert c.metadata.get("editable") is False and c.metadata.get("deletable") is False
    # the student still sees the visible tests and the signatures
    assert sum("assert " in c.source for c in rel.cells if c.metadata.get("nbgrader", {}).get("grade")) >= 3


def test_check_release_catches_a_leak(built, tmp_path):
    root, _ = built
    rel = nbformat.read(str(course.release_path("wgan_gp", root)), 4)
    cell = next(c for c in rel.cells if c.metadata.get("nbgrader", {}).get("grade_id") == "gradient_penalty")
    cell.source = cell.source.replace("raise NotImplementedError()",
                                      "alpha = torch.rand(B, generator=generator, dtype=real.dtype, device=real.device)\n    import medsynth_nb")
    nbformat.write(rel, str(tmp_path / "leak.ipynb"))
    problems = course.check_release(course.source_path("wgan_gp"), tmp_path / "leak.ipynb")
    assert any("secret line" in p for p in problems) and any("medsynth_nb" in p for p in problems)


def test_readme_points_table_matches_notebooks():
    "The instructor's guide states the points of every assignment as the notebooks do."
    readme = (ROOT / "assignments" / "README.md").read_text(encoding="utf-8")
    for name in course.ASSIGNMENTS:
        nb = src_nb(name)
        pts = [(c.cell_type, c.metadata.nbgrader["points"]) for c in nb.cells if c.metadata.get("nbgrader", {}).get("grade")]
        auto, manual = sum(p for t, p in pts if t == "code"), sum(p for t, p in pts if t == "markdown")
        row = next((l for l in readme.splitlines() if l.startswith(f"| `{name}` ")), None)
        assert row is not None, f"no row for {name} in the points table"
        cols = [c.strip() for c in row.strip("|").split("|")]
        assert cols[2:5] == [str(auto), str(manual), str(auto + manual)], (name, cols, auto, manual)


@pytest.mark.parametrize("case", WRONG, ids=[w[1] for w in WRONG])
def test_wrong_solutions_apply(case):
    "Every wrong solution is a real, one-place change to the source solution (also those graded only in the full run)."
    name, _, old, new, lost = case
    nb = mutate(src_nb(name), old, new)
    assert nb != src_nb(name)
    assert lost <= set(course.grade_ids(name))


def test_find_submissions_layouts(tmp_path):
    (tmp_path / "ann" / "ddpm").mkdir(parents=True); (tmp_path / "ann" / "ddpm" / "ddpm.ipynb").write_text("{}")
    (tmp_path / "ben").mkdir(); (tmp_path / "ben" / "kspace.ipynb").write_text("{}")
    (tmp_path / "ben" / "notes.txt").write_text("")
    found = course.find_submissions(tmp_path)
    assert {s: sorted(v) for s, v in found.items()} == {"ann": ["ddpm"], "ben": ["kspace"]}
    with pytest.raises(FileNotFoundError, match="submissions: no such folder"): course.find_submissions(tmp_path / "nope")


# ---------------------------------------------------------------------------------------------------------- grading
@pytest.mark.parametrize("name", course.ASSIGNMENTS)
def test_solution_gets_full_marks(graded, name):
    cells, totals, *_ = graded
    t = totals["solution", name]
    assert t["status"] == "graded" and t["autograded_max"] > 0
    bad = {k: (r["score"], r["max_score"]) for k, r in auto_cells(cells["solution", name]).items() if r["score"] != r["max_score"]}
    assert not bad, f"the solution lost points: {bad}"
    assert t["autograded_score"] == t["autograded_max"]
    manual = [r for r in cells["solution", name].values() if r["kind"] == "manual"]
    assert len(manual) >= 2 and all(r["status"] == "needs_manual_grade" and r["answer"].strip() for r in manual)
    assert t["manual_max"] == sum(r["max_score"] for r in manual)


@pytest.mark.parametrize("name", UNTOUCHED)
def test_untouched_release_scores_zero(graded, name):
    cells, totals, *_ = graded
    assert totals["untouched", name]["status"] == "graded"
    auto = auto_cells(cells["untouched", name])
    assert auto and all(r["score"] == 0 for r in auto.values()), {k: r["score"] for k, r in auto.items()}
    assert totals["untouched", name]["autograded_score"] == 0
    assert all(r["score"] == 0 and r["status"] == "unanswered" for r in cells["untouched", name].values() if r["kind"] == "manual")


@pytest.mark.parametrize("case", WRONG_RUN, ids=[w[1] for w in WRONG_RUN])
def test_wrong_solution_loses_exactly_its_test(graded, case):
    name, student, _, _, lost = case
    cells, totals, *_ = graded
    auto = auto_cells(cells[student, name])
    scores = {k: r["score"] for k, r in auto.items()}
    expected = {k: 0.0 if k in lost else r["max_score"] for k, r in auto.items()}
    assert scores == expected, f"{student}: got {scores}, expected {expected}"
    assert totals[student, name]["autograded_score"] == totals[student, name]["autograded_max"] - sum(auto[k]["max_score"] for k in lost)


def test_unreadable_submission_is_reported(graded):
    _, totals, *_ = graded
    t = totals["broken", "kspace"]
    assert t["status"] == "failed" and t["autograded_score"] == 0 and t["autograded_max"] == 9.0


def test_grade_csv_files(graded):
    "grade.py wrote both CSV files with the documented columns, cells in notebook order, and the executed notebooks."
    cells, totals, rows, _, dirs = graded
    for d in dirs:
        with open(d / "scores.csv", newline="", encoding="utf-8") as f: assert tuple(next(csv.reader(f))) == course.SCORE_FIELDS
        with open(d / "scores_totals.csv", newline="", encoding="utf-8") as f: assert tuple(next(csv.reader(f))) == course.TOTAL_FIELDS
    sol = [r for r in rows if r["student_id"] == "solution" and r["assignment"] == "kspace"]
    assert [r["grade_id"] for r in sol] == course.grade_ids("kspace")   # notebook order
    assert {r["kind"] for r in sol} == {"autograded", "manual"}
    t = totals["solution", "kspace"]
    assert t["autograded_score"] == t["autograded_max"] == 9.0 and t["manual_max"] == 5.0
    assert any(t["status"] == "missing" for t in totals.values()), "a student without an assignment others handed in is listed"
    feedback = [p for d in dirs for p in (d / "course" / "autograded").rglob("*.ipynb")]
    assert len(feedback) == sum(t["status"] == "graded" for t in totals.values())
    for p in (p for p in feedback if p.parent.parent.name == "solution"):
        nb = nbformat.read(str(p), 4)
        errors = [c.metadata.nbgrader.get("grade_id") for c in nb.cells if c.cell_type == "code"
                  for o in c.outputs if o.output_type == "error"]
        assert not errors, f"{p.name}: cells raised {errors}"
