"""Project tooling that is not part of the library: the tour (every lesson executed at smoke size and rendered to
HTML, with a results page) and the README generated from `nbs/index.ipynb`.

    python tools/site.py tour [--out tour] [--flags slow]
    python tools/site.py readme

`make tour` and `make readme` call it; `tests/test_tour.py` and `tests/test_project.py` import it."""
from __future__ import annotations

import argparse
import html
import json
import os
import re
import sys
import time
from pathlib import Path
from typing import Iterable, Sequence

from medsynth_nb.utils import atomic_write, markdown_table

SKIP_FLAGS = ("slow", "gpu")   # nbdev test flags whose cells the tour leaves out unless asked (settings.ini tst_flags)
RESULT_KEYS = ("lesson", "quantity", "ours", "paper", "note")


def skip_reason(src: str, flags: Iterable[str]) -> str | None:
    "Why a cell is not executed in the tour, from its nbdev directives (None when it runs)."
    for line in src.splitlines():
        s = line.strip()
        if not s.startswith("#|"):
            if s: break
            continue
        d = s[2:].strip()
        if d.replace(" ", "") == "eval:false": return "eval: false"
        if d in SKIP_FLAGS and d not in flags: return f"flag `{d}`"
    return None


def build_tour(out: str | os.PathLike = "tour", # output folder
               nbs: str | os.PathLike = "nbs", # folder of lesson notebooks
               flags: Sequence[str] = (), # flags to run anyway (e.g. ('slow',))
               timeout: int = 900, # seconds per cell
               pattern: str = "*.ipynb") -> list[dict]:
    "Execute every notebook at smoke size, write HTML and a results page to `out`; raise if any failed."
    import nbformat
    from nbconvert import HTMLExporter
    from nbconvert.preprocessors import ExecutePreprocessor
    out, nbs = Path(out).resolve(), Path(nbs).resolve()
    if not nbs.is_dir(): raise FileNotFoundError(f"nbs: no folder of notebooks at {nbs}")
    out.mkdir(parents=True, exist_ok=True)
    results = out / "results.jsonl"
    if results.exists(): results.unlink()
    env_before = {k: os.environ.get(k) for k in ("MEDSYNTH_RESULTS", "MEDSYNTH_SIZE")}
    os.environ.update(MEDSYNTH_RESULTS=str(results), MEDSYNTH_SIZE="smoke")
    runs = []
    try:
        for path in sorted(nbs.glob(pattern)):
            if path.name.startswith("_"): continue
            nb = nbformat.read(path, as_version=4)
            skipped = []
            for c in nb.cells:
                if c.cell_type != "code": continue
                why = skip_reason(c.source, flags)
                if why:
                    skipped.append(why)
                    c.source = f"# not run in the tour ({why}):\n" + "\n".join("# " + l for l in c.source.splitlines())
            t0, error = time.time(), None
            try: ExecutePreprocessor(timeout=timeout, kernel_name="python3").preprocess(nb, {"metadata": {"path": str(path.parent)}})
            except Exception as e: error = f"{type(e).__name__}: {str(e).strip().splitlines()[-1] if str(e).strip() else ''}"
            body, _ = HTMLExporter().from_notebook_node(nb)
            (out / f"{path.stem}.html").write_text(body, encoding="utf-8")
            runs.append(dict(notebook=path.name, seconds=round(time.time() - t0, 1), skipped=len(skipped), error=error))
            print(f"{path.name:40s} {runs[-1]['seconds']:7.1f}s  skipped {len(skipped)} cells  {'FAILED: ' + error if error else 'ok'}", flush=True)
    finally:
        for k, v in env_before.items():
            if v is None: os.environ.pop(k, None)
            else: os.environ[k] = v
    rows = [json.loads(l) for l in results.read_text().splitlines()] if results.exists() else []
    write_tour_index(out, runs, rows)
    failed = [r["notebook"] for r in runs if r["error"]]
    if failed: raise RuntimeError(f"tour: {len(failed)} notebook(s) failed: {failed}; see {out}")
    return runs


def _fmt(v) -> str:
    if v is None: return "—"
    if isinstance(v, float): return f"{v:.4g}"
    return str(v)


def write_tour_index(out: Path, runs: list[dict], rows: list[dict]):
    "results.md (the key results as a markdown table) and index.html (lessons, times, failures, results)."
    md = markdown_table(RESULT_KEYS, ([_fmt(r[k]) for k in RESULT_KEYS] for r in rows))
    (out / "results.md").write_text("# medsynth_nb tour: key results (smoke size)\n\n" + md + "\n", encoding="utf-8")
    e = html.escape
    lines = ["<!doctype html><html><head><meta charset='utf-8'><title>medsynth_nb tour</title>",
             "<style>body{font-family:sans-serif;max-width:1100px;margin:2em auto}td,th{border:1px solid #ccc;padding:4px 8px}"
             "table{border-collapse:collapse}.bad{color:#b00}</style></head><body>",
             "<h1>medsynth_nb: the tour</h1><p>Every lesson executed at smoke size on this machine.</p>",
             "<h2>Lessons</h2><table><tr><th>notebook</th><th>seconds</th><th>cells not run</th><th>status</th></tr>"]
    for r in runs:
        st = f"<span class='bad'>{e(r['error'])}</span>" if r["error"] else "ok"
        lines.append(f"<tr><td><a href='{e(Path(r['notebook']).stem)}.html'>{e(r['notebook'])}</a></td>"
                     f"<td>{r['seconds']}</td><td>{r['skipped']}</td><td>{st}</td></tr>")
    lines.append("</table><h2>Key results</h2><table><tr>" + "".join(f"<th>{k}</th>" for k in RESULT_KEYS) + "</tr>")
    for r in rows:
        lines.append("<tr>" + "".join(f"<td>{e(_fmt(r[k]))}</td>" for k in RESULT_KEYS) + "</tr>")
    lines.append("</table></body></html>")
    (out / "index.html").write_text("\n".join(lines), encoding="utf-8")


_LESSON_LINK = re.compile(r"\]\((?=[0-9]{2}_[A-Za-z0-9_]+\.ipynb)")


def index_markdown(index: str | os.PathLike = "nbs/index.ipynb") -> str:
    """The markdown of the landing-page notebook, as README.md holds it: links to a lesson (`](12_x.ipynb#a-section)`,
    relative to `nbs/` in the notebook and on the site) gain the `nbs/` prefix, so they work from the repository root."""
    import nbformat
    if not Path(index).is_file(): raise FileNotFoundError(f"index: no notebook at {index}")
    nb = nbformat.read(index, as_version=4)
    parts = [c.source.strip() for c in nb.cells if c.cell_type == "markdown" and c.source.strip()]
    return _LESSON_LINK.sub("](nbs/", "\n\n".join(parts)) + "\n"


def write_readme(index: str | os.PathLike = "nbs/index.ipynb", out: str | os.PathLike = "README.md") -> Path:
    "Write README.md from the landing-page notebook, atomically."
    text = index_markdown(index)
    with atomic_write(out) as tmp: Path(tmp).write_text(text, encoding="utf-8")
    return Path(out)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="tools/site.py", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("tour", help="execute every lesson at smoke size and render tour/")
    t.add_argument("--out", default="tour"); t.add_argument("--nbs", default="nbs")
    t.add_argument("--flags", default="", help="space-separated flags to run anyway, e.g. 'slow'")
    r = sub.add_parser("readme", help="write README.md from nbs/index.ipynb")
    r.add_argument("--index", default="nbs/index.ipynb"); r.add_argument("--out", default="README.md")
    a = p.parse_args(argv)
    try:
        if a.cmd == "tour": build_tour(a.out, a.nbs, flags=a.flags.split())
        else: print(f"wrote {write_readme(a.index, a.out)}")
    except (FileNotFoundError, RuntimeError) as e:
        print(f"{p.prog}: error: {e}", file=sys.stderr); return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
