"""Generate the student versions: `python assignments/build.py [NAME ...] [--course-dir DIR]`.

Runs nbgrader's generate_assignment on source/<name>/<name>.ipynb and writes release/<name>/<name>.ipynb
(solutions replaced by `raise NotImplementedError()`, hidden tests and model answers removed, cells locked,
checksums stored in gradebook.db), then fails if any solution or hidden-test line leaked into a release.
"""
import argparse, sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from course import ASSIGNMENTS, ROOT, build  # noqa: E402


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("names", nargs="*", default=list(ASSIGNMENTS), help=f"assignments (default: all of {', '.join(ASSIGNMENTS)})")
    p.add_argument("--course-dir", default=str(ROOT), help="nbgrader course directory (default: assignments/)")
    a = p.parse_args(argv)
    bad = [n for n in a.names if n not in ASSIGNMENTS]
    if bad: p.error(f"unknown assignment(s) {bad}; expected some of {list(ASSIGNMENTS)}")
    for name, rel in build(a.names, a.course_dir).items():
        print(f"{name:<12s} -> {rel}  (checked: no solutions, hidden tests or model answers)")


if __name__ == "__main__":
    main()
