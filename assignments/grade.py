"""Autograde a folder of submissions: `python assignments/grade.py SUBMISSIONS [--out scores.csv]`.

SUBMISSIONS holds one folder per student, with either nbgrader's layout <student>/<name>/<name>.ipynb or
<student>/<name>.ipynb. Each notebook is graded by nbgrader's autograde (locked and test cells restored from the
gradebook, hidden tests put back, run top to bottom in the `python3` kernel). Writes
  --out      one row per student, assignment and graded cell (autograded tests and written answers; the written
             answers' text is included and their score left empty for grading by hand),
  --totals   one row per student and assignment (default: <out stem>_totals.csv),
and the executed notebooks under <course-dir>/autograded/<student>/<name>/ (feedback for students).
"""
import argparse, sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from course import ASSIGNMENTS, ROOT, SCORE_FIELDS, TOTAL_FIELDS, grade, write_csv  # noqa: E402


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("submissions", help="folder with one sub-folder per student")
    p.add_argument("--out", default="scores.csv", help="per-cell CSV (default: scores.csv)")
    p.add_argument("--totals", default=None, help="per-assignment CSV (default: <out stem>_totals.csv)")
    p.add_argument("--course-dir", default=str(ROOT), help="nbgrader course directory (default: assignments/)")
    p.add_argument("--only", nargs="*", default=list(ASSIGNMENTS), help="grade only these assignments")
    a = p.parse_args(argv)
    bad = [n for n in a.only if n not in ASSIGNMENTS]
    if bad: p.error(f"unknown assignment(s) {bad}; expected some of {list(ASSIGNMENTS)}")
    rows, totals = grade(a.submissions, a.course_dir, tuple(a.only))
    if not totals: p.error(f"no submissions found in {a.submissions} (expected <student>/<name>.ipynb or <student>/<name>/<name>.ipynb)")
    out = Path(a.out)
    tot = Path(a.totals) if a.totals else out.with_name(out.stem + "_totals.csv")
    write_csv(rows, out, SCORE_FIELDS); write_csv(totals, tot, TOTAL_FIELDS)
    for t in totals:
        print(f"{t['student_id']:>20s} {t['assignment']:<12s} {t['autograded_score']:>5} / {t['autograded_max']:<5} "
              f"autograded (+{t['manual_max']} by hand)  {t['status']}")
    print(f"wrote {out} and {tot}")


if __name__ == "__main__":
    main()
