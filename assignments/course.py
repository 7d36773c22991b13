"""Build and grade the medsynth_nb course assignments with nbgrader's own pipeline, offline.

`build` runs nbgrader's `generate_assignment` (LockCells, ClearSolutions, ClearOutput, ComputeChecksums, SaveCells,
ClearHiddenTests, ...) on `source/<name>/<name>.ipynb`, writing `release/<name>/<name>.ipynb` and the gradebook,
then checks that no solution, hidden test or model answer leaked into the release. `grade` copies a folder of
submissions into nbgrader's `submitted/` layout, runs nbgrader's `autograde` (ClearOutput, OverwriteKernelspec,
OverwriteCells (restores the locked and test cells, hidden tests included), Execute, SaveAutoGrades, ...) in this
process, reads the scores from the gradebook and writes CSV files. No Jupyter server, no exchange, no network.
Used by `build.py`, `grade.py` and tests/test_assignments.py.
"""
from __future__ import annotations

import csv
import logging
import os
import re
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent
ASSIGNMENTS = ("wasserstein", "wgan_gp", "ddpm", "kspace", "lip_car")
COURSE_ID = "medsynth_nb"
KERNEL = "python3"
LEAK_MARKERS = ("BEGIN SOLUTION", "END SOLUTION", "BEGIN HIDDEN TESTS", "END HIDDEN TESTS")
REFERENCE = "medsynth_nb"  # the reference library: code in a release must not import or name it
SCORE_FIELDS = ("student_id", "assignment", "grade_id", "kind", "score", "max_score", "status", "answer")
TOTAL_FIELDS = ("student_id", "assignment", "autograded_score", "autograded_max", "manual_max", "status")


def _prepare_env(threads: int = 1):
    "nbgrader runs `alembic` from PATH (next to this Python); kernels inherit one BLAS/OpenMP thread each."
    bin_dir = str(Path(sys.executable).parent)
    if bin_dir not in os.environ.get("PATH", "").split(os.pathsep):
        os.environ["PATH"] = bin_dir + os.pathsep + os.environ.get("PATH", "")
    for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ.setdefault(k, str(threads))
    os.environ.setdefault("PYDEVD_DISABLE_FILE_VALIDATION", "1")


def _kernel_name() -> str:
    "The `python3` kernelspec (this environment's ipykernel); checked so that a missing one fails early and clearly."
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel
    try: KernelSpecManager().get_kernel_spec(KERNEL)
    except NoSuchKernel as e:
        raise RuntimeError(f"kernelspec {KERNEL!r} not found: run `{sys.executable} -m ipykernel install --sys-prefix`") from e
    return KERNEL


def make_api(course_dir: Path | str = ROOT, timeout: int = 300):
    "An `NbGraderAPI` on `course_dir` (nbgrader's layout: source/, release/, submitted/, autograded/, gradebook.db)."
    _prepare_env()
    from traitlets.config import Config
    from nbgrader.apps import NbGraderAPI
    from nbgrader.coursedir import CourseDirectory
    course_dir = Path(course_dir).resolve()
    c = Config()
    c.CourseDirectory.root = str(course_dir)
    c.CourseDirectory.course_id = COURSE_ID
    c.CourseDirectory.db_url = f"sqlite:///{course_dir / 'gradebook.db'}"
    c.Execute.timeout = timeout            # seconds per cell
    c.Execute.kernel_name = _kernel_name()
    c.ClearSolutions.enforce_metadata = True
    coursedir = CourseDirectory(config=c)
    logging.disable(logging.CRITICAL)  # the API probes for an exchange directory (hand-out by file copy here): no alarm
    try: return NbGraderAPI(coursedir=coursedir, config=c)
    finally: logging.disable(logging.NOTSET)


def source_path(name: str, course_dir: Path | str = ROOT) -> Path:
    return Path(course_dir) / "source" / name / f"{name}.ipynb"


def release_path(name: str, course_dir: Path | str = ROOT) -> Path:
    return Path(course_dir) / "release" / name / f"{name}.ipynb"


# ---------------------------------------------------------------------------------------------------- release checks
def _regions(text: str, begin: str, end: str) -> list[str]:
    "Lines strictly inside `### BEGIN X` / `### END X` regions."
    out, inside = [], False
    for line in text.splitlines():
        if re.search(rf"###\s*{begin}", line): inside = True; continue
        if re.search(rf"###\s*{end}", line): inside = False; continue
        if inside: out.append(line)
    return out


def secret_lines(source_nb) -> list[str]:
    "Substantial lines of the source that must not reach students: solutions, hidden tests, model answers."
    lines = []
    for cell in source_nb.cells:
        meta = cell.metadata.get("nbgrader", {})
        src = cell.source
        lines += _regions(src, "BEGIN SOLUTION", "END SOLUTION") + _regions(src, "BEGIN HIDDEN TESTS", "END HIDDEN TESTS")
        if cell.cell_type == "markdown" and meta.get("solution"): lines += src.splitlines()
    visible = []
    for cell in source_nb.cells:
        if cell.cell_type == "markdown" and cell.metadata.get("nbgrader", {}).get("solution"): continue
        inside = False
        for line in cell.source.splitlines():
            if re.search(r"###\s*BEGIN (SOLUTION|HIDDEN TESTS)", line): inside = True
            elif re.search(r"###\s*END (SOLUTION|HIDDEN TESTS)", line): inside = False
            elif not inside: visible.append(line.strip())
    # short or generic lines (`return w`, `else:`) and lines the students see anyway are not secrets
    shown = "\n".join(visible)
    return sorted({l.strip() for l in lines if len(l.strip()) >= 24 and l.strip() not in shown})


def check_release(source: Path | str, release: Path | str) -> list[str]:
    "Problems in a release notebook: markers, solution/hidden/model-answer lines, reference imports, outputs; [] = clean."
    import nbformat
    src_nb, rel_nb = nbformat.read(str(source), 4), nbformat.read(str(release), 4)
    text = "\n".join(c.source for c in rel_nb.cells)
    problems = [f"marker {m!r} present" for m in LEAK_MARKERS if m in text]
    problems += [f"code cell {c.metadata.get('nbgrader', {}).get('grade_id', i)} names {REFERENCE}"
                 for i, c in enumerate(rel_nb.cells) if c.cell_type == "code" and REFERENCE in c.source]
    problems += [f"secret line present: {l!r}" for l in secret_lines(src_nb) if l in text]
    problems += [f"cell {c.metadata.get('nbgrader', {}).get('grade_id', i)} has outputs"
                 for i, c in enumerate(rel_nb.cells) if c.cell_type == "code" and c.outputs]
    return problems


# ---------------------------------------------------------------------------------------------------------- build
def build(names=ASSIGNMENTS, course_dir: Path | str = ROOT, api=None) -> dict[str, Path]:
    "Generate the release notebooks (and gradebook entries) with nbgrader; raise if anything secret leaked."
    api = api or make_api(course_dir)
    out = {}
    for name in names:
        if not source_path(name, course_dir).exists(): raise FileNotFoundError(source_path(name, course_dir))
        res = api.generate_assignment(name, force=True, create=True)
        if not res["success"]: raise RuntimeError(f"nbgrader generate_assignment {name} failed:\n{res.get('error', '')}\n{res.get('log', '')}")
        rel = release_path(name, course_dir)
        problems = check_release(source_path(name, course_dir), rel)
        if problems: raise RuntimeError(f"{rel}: the release leaks the answers:\n  " + "\n  ".join(problems))
        out[name] = rel
    return out


# ---------------------------------------------------------------------------------------------------------- grade
def find_submissions(submissions: Path | str, names=ASSIGNMENTS) -> dict[str, dict[str, Path]]:
    """{student: {assignment: notebook}} from SUB/<student>/<assignment>/<assignment>.ipynb (nbgrader's layout)
    or SUB/<student>/<assignment>.ipynb."""
    found: dict[str, dict[str, Path]] = {}
    root = Path(submissions)
    if not root.is_dir(): raise FileNotFoundError(f"submissions: no such folder {root}")
    for sdir in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        for name in names:
            for cand in (sdir / name / f"{name}.ipynb", sdir / f"{name}.ipynb"):
                if cand.is_file(): found.setdefault(sdir.name, {})[name] = cand; break
    return found


def _in_gradebook(api, name: str) -> bool:
    from nbgrader.api import Gradebook, MissingEntry
    with Gradebook(api.coursedir.db_url, api.coursedir.course_id) as gb:
        try: gb.find_assignment(name); return True
        except MissingEntry: return False


def grade(submissions: Path | str, course_dir: Path | str = ROOT, names=ASSIGNMENTS, api=None,
          log=print) -> tuple[list[dict], list[dict]]:
    "Autograde every submission found; returns (per-cell rows, per-assignment totals) for the CSV files."
    import warnings
    import nbformat
    from nbgrader.api import Gradebook, MissingEntry
    from sqlalchemy.exc import SAWarning
    warnings.filterwarnings("ignore", category=SAWarning)  # nbgrader 0.9's gradebook triggers SQLAlchemy autoflush warnings
    api = api or make_api(course_dir)
    subs = find_submissions(submissions, names)
    graded = sorted({a for per in subs.values() for a in per})
    for name in graded:
        if not _in_gradebook(api, name): build([name], course_dir, api)
    status: dict[tuple[str, str], str] = {}
    for student, per in subs.items():
        for name, nb_path in per.items():
            dest = Path(course_dir) / "submitted" / student / name / f"{name}.ipynb"
            dest.parent.mkdir(parents=True, exist_ok=True)
            if nb_path.resolve() != dest.resolve(): shutil.copyfile(nb_path, dest)
            res = api.autograde(name, student, force=True, create=True)
            status[student, name] = "graded" if res["success"] else "failed"
            log(f"{student:>20s} {name:<12s} {status[student, name]}")
            if not res["success"]: log(res.get("error") or res.get("log", ""))
    rows, totals = [], []
    with Gradebook(api.coursedir.db_url, api.coursedir.course_id) as gb:
        for student in subs:
            for name in names:
                if name not in subs[student]:
                    if name in graded:
                        totals.append(dict(student_id=student, assignment=name, autograded_score=0,
                                           autograded_max=_auto_max(gb, name), manual_max=_manual_max(gb, name), status="missing"))
                    continue
                answers = _answers(Path(course_dir) / "autograded" / student / name / f"{name}.ipynb", nbformat)
                auto = auto_max = manual_max = 0.0
                try: sub = gb.find_submission_notebook(name, name, student)
                except MissingEntry: sub = None
                if sub is None or status[student, name] == "failed":
                    totals.append(dict(student_id=student, assignment=name, autograded_score=0,
                                       autograded_max=_auto_max(gb, name), manual_max=_manual_max(gb, name), status="failed"))
                    continue
                order = grade_ids(name, course_dir)
                for g in sorted(sub.grades, key=lambda g: order.index(g.name) if g.name in order else len(order)):
                    kind = "autograded" if g.cell_type == "code" else "manual"
                    if kind == "autograded":
                        score, st = float(g.score), "graded"
                        auto += score; auto_max += float(g.max_score)
                    else:
                        manual_max += float(g.max_score)
                        if g.needs_manual_grade: score, st = "", "needs_manual_grade"
                        else: score, st = float(g.score), "graded" if g.manual_score is not None else "unanswered"
                    rows.append(dict(student_id=student, assignment=name, grade_id=g.name, kind=kind, score=score,
                                     max_score=float(g.max_score), status=st,
                                     answer=answers.get(g.name, "") if kind == "manual" else ""))
                totals.append(dict(student_id=student, assignment=name, autograded_score=auto, autograded_max=auto_max,
                                   manual_max=manual_max, status="graded"))
    return rows, totals


def grade_ids(name: str, course_dir: Path | str = ROOT) -> list[str]:
    "Graded cells of an assignment in notebook order (from the source notebook)."
    import nbformat
    nb = nbformat.read(str(source_path(name, course_dir)), 4)
    return [c.metadata["nbgrader"]["grade_id"] for c in nb.cells if c.metadata.get("nbgrader", {}).get("grade")]


def _auto_max(gb, name: str) -> float:
    return float(sum(c.max_score for c in gb.find_notebook(name, name).grade_cells if c.cell_type == "code"))


def _manual_max(gb, name: str) -> float:
    return float(sum(c.max_score for c in gb.find_notebook(name, name).grade_cells if c.cell_type != "code"))


def _answers(path: Path, nbformat) -> dict[str, str]:
    "The text of each manually graded answer cell of an autograded notebook (for grading by hand)."
    if not path.exists(): return {}
    nb = nbformat.read(str(path), 4)
    return {c.metadata["nbgrader"]["grade_id"]: c.source for c in nb.cells
            if c.metadata.get("nbgrader", {}).get("grade") and c.cell_type == "markdown"}


def write_csv(rows: list[dict], path: Path | str, fields) -> Path:
    "Write `rows` as CSV (atomically: a temporary file renamed over `path`)."
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=list(fields))
        w.writeheader()
        for r in rows: w.writerow({k: r.get(k, "") for k in fields})
    os.replace(tmp, path)
    return path
