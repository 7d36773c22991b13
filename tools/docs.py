"""The browsable site of the lessons (`make docs`): Sphinx + myst-nb render the COMMITTED notebooks, without executing
them, into a static site (default `_site/`; open `_site/index.html`, no server or internet needed).

    python tools/docs.py build [--out _site] [--nbs nbs] [--work build/docs-src] [--jobs 1]

What it does, in order:
1. MathJax 3 (the maths renderer) is installed once from the npm registry into `build/docs-cache/` and copied into the
   site's `_static/mathjax/`, so no page loads anything from the internet (SVG output: no web fonts to fetch).
2. Each notebook is copied into the Sphinx source folder (`--work`) the way nbdev's doc processor would show it: cells
   marked `#| hide` (or `#| include: false`) removed with their outputs, every leading `#|` directive line removed from
   the code shown (`#| export` cells stay, without the line), `#| echo: false` hides a cell's code, `#| output: false`
   its outputs, `#| hide_line` lines dropped, ANSI codes and carriage-return progress redraws cleaned from streams,
   interactive widget outputs replaced by their text or a note (the static figure before them carries the result).
   `nbs/` is never modified.
3. Navigation in lesson order (the landing page `index.ipynb` first, then 00-09, 10-59, 60-99 by file name), page
   titles from each notebook's `# Title`, and an API page per module with every name of its `__all__` (autodoc; the
   `name, # comment` parameter notes of nbdev appear as parameter descriptions).
4. `sphinx-build` (html) into `--out`; its warnings are written to `<out>/_build_warnings.txt`.

`tests/test_site.py` builds the site and checks it in Debian's chromium (`make browser` installs it)."""
from __future__ import annotations

import argparse
import importlib
import inspect
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"   # conf.py and the static files of the site
CACHE = ROOT / "build" / "docs-cache"
MATHJAX = "mathjax@3.2.2"
MATHJAX_ENTRY = "tex-svg.js"
# combined MathJax components the site does not load (it loads tex-svg.js; latest.js would fetch from a CDN)
_MATHJAX_SKIP = {"latest.js", "node-main.js", "mml-chtml.js", "mml-svg.js", "tex-chtml.js", "tex-chtml-full.js",
                 "tex-chtml-full-speech.js", "tex-mml-chtml.js", "tex-mml-svg.js", "tex-svg-full.js", "adaptors"}
SECTIONS = (("Foundations", 0, 10), ("Papers", 10, 60), ("Experiments at full size", 60, 100))
WIDGET_MIME = "application/vnd.jupyter.widget-view+json"
WIDGET_NOTE = "*(An interactive widget: open the notebook in JupyterLab, `make lab`, and run it to use it.)*"
_ANSI = re.compile(r"\x1B(?:[@-Z\\-_]|\[[0-?]*[ -/]*[@-~])")
_H1 = re.compile(r"^#\s+(.+?)\s*#*\s*$", re.M)
_DEFAULT_EXP = re.compile(r"^\s*#\|\s*default_exp\s+(\S+)", re.M)


def _src(cell) -> str:
    s = cell.get("source", "")
    return s if isinstance(s, str) else "".join(s)


def nb_title(nb: dict) -> str:
    "The notebook's title: the text of its first `# Title` heading (in a markdown cell)."
    for c in nb["cells"]:
        if c["cell_type"] != "markdown": continue
        m = _H1.search(_src(c))
        if m: return m.group(1)
    raise ValueError("notebook has no '# Title' heading in a markdown cell")


def plain_title(title: str) -> str:
    "A markdown title as a browser shows it: inline code/emphasis marks dropped."
    return re.sub(r"[`*]", "", title).strip()


def nb_module(nb: dict) -> str | None:
    "The module a notebook exports to (`#| default_exp NAME`), or None."
    for c in nb["cells"]:
        if c["cell_type"] == "code":
            m = _DEFAULT_EXP.search(_src(c))
            if m: return m.group(1)
    return None


def _number(path: Path) -> int | None:
    m = re.match(r"(\d+)_", path.name)
    return int(m.group(1)) if m else None


def page_order(nbs: str | os.PathLike) -> list[Path]:
    "The lesson pages in navigation order (index.ipynb excluded: it is the landing page): by number, then name."
    pages = [p for p in Path(nbs).glob("*.ipynb") if p.name != "index.ipynb" and not p.name.startswith("_")]
    unnumbered = [p.name for p in pages if _number(p) is None]
    if unnumbered: raise ValueError(f"notebooks without a number prefix have no place in the lesson order: {unnumbered}")
    return sorted(pages, key=lambda p: (_number(p), p.name))


def section_of(path: Path) -> str:
    n = _number(path)
    for name, lo, hi in SECTIONS:
        if lo <= n < hi: return name
    raise ValueError(f"{path.name}: number {n} is in no section of the navigation {SECTIONS}")


# ---------------------------------------------------------------------------------------------------- notebooks
def cell_directives(cell) -> tuple[dict, str]:
    "nbdev's directives of a code cell (nbdev.process.extract_directives) and its code without the directive lines."
    from fastcore.basics import AttrDict
    from nbdev.process import extract_directives, first_code_ln
    src = _src(cell)
    dirs = extract_directives(AttrDict(source=src), remove=False)
    lines = src.splitlines(True)
    first = first_code_ln(lines)
    code = "" if first is None else "".join(lines[first:])
    return dirs, code


def _is_false(dirs: dict, key: str) -> bool:
    v = dirs.get(key + ":", dirs.get(key))
    return bool(v) and str(v[0]).lower() == "false"


def _stream_text(text: str) -> str:
    "A stream as a terminal shows it: ANSI codes dropped, each line's carriage-return redraws collapsed to the last."
    text = _ANSI.sub("", text)
    return "\n".join(l.rstrip("\r").split("\r")[-1] for l in text.split("\n"))


def _clean_output(o: dict) -> dict | None:
    if o.get("output_type") == "stream":
        o = dict(o, text=_stream_text(_src({"source": o.get("text", "")})))
        return o if o["text"].strip() else None
    data = o.get("data")
    if data and WIDGET_MIME in data:
        text = _src({"source": data.get("text/plain", "")})
        # a progress bar's text (tqdm) says what it did; a widget's repr ("interactive(children=(...") says nothing
        keep = text.strip() and not re.match(r"^\w+\((children|value|layout)=", text.strip())
        data = {"text/plain": text} if keep else {"text/markdown": WIDGET_NOTE}
        o = dict(o, data=data)
    if o.get("output_type") == "error":
        o = dict(o, traceback=[_ANSI.sub("", t) for t in o.get("traceback", [])])
    return o


def process_notebook(nb: dict, extra_md: str | None = None) -> dict:
    "A copy of `nb` as the site shows it (see the module docstring); `extra_md` goes after the title cell."
    from fastcore.basics import AttrDict
    from nbdev.processors import rm_header_dash
    cells = []
    for c in nb["cells"]:
        c = dict(c, metadata=dict(c.get("metadata", {})))
        if c["cell_type"] == "markdown":
            probe = AttrDict(cell_type="markdown", source=_src(c))
            rm_header_dash(probe)   # nbdev hides a markdown cell that is a heading ending in ' -'
            if "source" not in probe: continue
        if c["cell_type"] == "code":
            dirs, code = cell_directives(c)
            if "hide" in dirs or _is_false(dirs, "include"): continue
            code = "".join(l for l in code.splitlines(True) if not re.search(r"#\|\s*hide_line\s*$", l))
            outputs = [] if _is_false(dirs, "output") else [x for x in map(_clean_output, c.get("outputs", [])) if x]
            if not code.strip() and not outputs: continue
            c["source"], c["outputs"] = code.rstrip("\n"), outputs
            if _is_false(dirs, "echo"):
                c["metadata"]["tags"] = sorted(set(c["metadata"].get("tags", [])) | {"remove-input"})
        cells.append(c)
    if extra_md is not None:
        first = next(i for i, c in enumerate(cells) if c["cell_type"] == "markdown" and _H1.search(_src(c)))
        cells.insert(first + 1, _md_cell(nb, extra_md, "site-module-link"))
    meta = {k: v for k, v in nb.get("metadata", {}).items() if k in ("kernelspec", "language_info")}
    return dict(nb, cells=cells, metadata=meta)


def _md_cell(nb: dict, source: str, cell_id: str) -> dict:
    "A markdown cell; with an id where the notebook's format (4.5+) has cell ids."
    c = {"cell_type": "markdown", "metadata": {}, "source": source}
    if (nb.get("nbformat"), nb.get("nbformat_minor", 0)) >= (4, 5): c["id"] = cell_id
    return c


def image_outputs(nb: dict) -> int:
    "How many image outputs of `nb` the site shows (cells it removes do not count)."
    return sum(1 for c in process_notebook(nb)["cells"] if c["cell_type"] == "code"
               for o in c.get("outputs", []) if any(k.startswith("image/") for k in o.get("data", {})))


def _write_if_changed(path: Path, text: str):
    "Rewrite only what changed, so that a second `make docs` rebuilds only the changed pages."
    if path.exists() and path.read_text(encoding="utf-8") == text: return
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


def _toctree(caption: str, entries: list[str], hidden=True) -> str:
    opts = f":caption: {caption}\n" + (":hidden:\n" if hidden else "") + ":maxdepth: 1\n"
    return "```{toctree}\n" + opts + "\n" + "\n".join(entries) + "\n```\n"


# ---------------------------------------------------------------------------------------------------------- API
def exported_names(module: str) -> list[str]:
    "Every name a module exports (its `__all__`), in order."
    mod = importlib.import_module(f"medsynth_nb.{module}")
    names = getattr(mod, "__all__", None)
    if names is None: raise ValueError(f"medsynth_nb.{module} has no __all__")
    return list(names)


def internal_names(module: str) -> list[str]:
    "Public names nbdev indexed (`_modidx`) that `__all__` leaves out: functions and classes exported with `exporti`."
    from medsynth_nb._modidx import d
    full = f"medsynth_nb.{module}"
    top = [k[len(full) + 1:] for k in d["syms"].get(full, {})]
    top = [n for n in top if "." not in n and not n.startswith("_")]
    return [n for n in dict.fromkeys(top) if n not in set(exported_names(module))]


def api_page(module: str, lesson: str | None, title: str | None) -> str:
    """reStructuredText of one module's API page: the module docstring, every name of `__all__` (autodoc), then the
    public names exported with `#| exporti` (in nbdev's index, not in `__all__`)."""
    full = f"medsynth_nb.{module}"
    mod = importlib.import_module(full)
    lines = [full, "=" * len(full), ""]
    if lesson: lines += [f"Exported by the lesson :doc:`{title} <../{lesson}>`. Every name in ``__all__``, in order.", ""]
    lines += [f".. automodule:: {full}", ""]
    internal = internal_names(module)
    for name in exported_names(module) + internal:
        if internal and name == internal[0]:
            head = "Internal helpers"
            lines += [head, "-" * len(head), "", "Exported with ``#| exporti``: importable by name, not in ``__all__``.", ""]
        obj = getattr(mod, name)
        if inspect.isclass(obj):
            lines += [f".. autoclass:: {full}.{name}", "   :members:", "   :undoc-members:", ""]
        elif inspect.isroutine(obj):
            lines += [f".. autofunction:: {full}.{name}", ""]
        else:
            lines += [f".. autodata:: {full}.{name}"]
            r = repr(obj)
            if len(r) > 100 or "\n" in r:
                n = f", {len(obj)} entries" if hasattr(obj, "__len__") else ""
                lines += ["   :no-value:", "", f"   A ``{type(obj).__name__}``{n}; see the lesson for its contents."]
            lines += [""]
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------------ MathJax
def ensure_mathjax(cache: Path = CACHE) -> Path:
    "MathJax 3's es5 folder, installed from the npm registry into `cache` the first time (needs node's npm)."
    es5 = cache / "node_modules" / "mathjax" / "es5"
    if not (es5 / MATHJAX_ENTRY).is_file():
        npm = shutil.which("npm")
        if npm is None:
            raise RuntimeError("npm is needed once to install MathJax (the maths renderer) into build/docs-cache: "
                               "install Node.js/npm (Debian: apt-get install -y npm)")
        cache.mkdir(parents=True, exist_ok=True)
        subprocess.run([npm, "install", "--no-audit", "--no-fund", "--no-save", "--prefix", str(cache), MATHJAX],
                       check=True)
    if not (es5 / MATHJAX_ENTRY).is_file(): raise RuntimeError(f"npm install {MATHJAX} gave no {es5 / MATHJAX_ENTRY}")
    return es5


def _copy_mathjax(es5: Path, dest: Path):
    if dest.exists(): shutil.rmtree(dest)
    shutil.copytree(es5, dest, ignore=lambda d, names: [n for n in names if Path(d) == es5 and n in _MATHJAX_SKIP])


# -------------------------------------------------------------------------------------------------------- build
def stage(nbs: Path, work: Path, api: bool = True) -> dict:
    """Write the Sphinx sources into `work`: conf.py, processed notebooks, API pages (unless `api=False`), MathJax.
    Returns the page plan (also written to `_plan.json`)."""
    nbs, work = Path(nbs), Path(work)
    index = nbs / "index.ipynb"
    if not index.is_file(): raise FileNotFoundError(f"no landing page {index}")
    work.mkdir(parents=True, exist_ok=True)
    for f in DOCS.rglob("*"):
        if f.is_file() and "__pycache__" not in f.parts:
            dst = work / f.relative_to(DOCS)
            dst.parent.mkdir(parents=True, exist_ok=True)
            if not dst.exists() or dst.read_bytes() != f.read_bytes(): shutil.copy2(f, dst)
    pages, modules = [], []
    for path in page_order(nbs):
        nb = json.loads(path.read_text(encoding="utf-8"))
        title, module = nb_title(nb), nb_module(nb)
        extra = None
        if module and api:
            extra = f"The code of this lesson is the module {{doc}}`medsynth_nb.{module} <api/{module}>` (API reference)."
            modules.append(dict(module=module, lesson=path.stem, title=plain_title(title)))
        _write_if_changed(work / path.name, json.dumps(process_notebook(nb, extra), indent=1, ensure_ascii=False))
        pages.append(dict(page=path.stem, title=plain_title(title), section=section_of(path), module=module,
                          images=image_outputs(nb)))
    # modules exported by no notebook still get a page (every exported symbol is documented)
    known = {m["module"] for m in modules}
    for py in sorted((ROOT / "medsynth_nb").glob("*.py")) if api else ():
        if py.stem.startswith("_") or py.stem in known: continue
        modules.append(dict(module=py.stem, lesson=None, title=None))
    (work / "api").mkdir(parents=True, exist_ok=True)
    for m in modules: _write_if_changed(work / "api" / f"{m['module']}.rst", api_page(m["module"], m["lesson"], m["title"]))
    api_index = ["API reference", "=" * 13, "",
                 "One page per module of ``medsynth_nb``, in lesson order; each lists every name the module exports.",
                 "", ".. toctree::", "   :maxdepth: 1", ""] + [f"   {m['module']}" for m in modules]
    if api: _write_if_changed(work / "api" / "index.rst", "\n".join(api_index) + "\n")
    elif (work / "api" / "index.rst").exists(): (work / "api" / "index.rst").unlink()
    for stale in (work / "api").glob("*.rst"):
        if stale.stem != "index" and stale.stem not in {m["module"] for m in modules}: stale.unlink()
    for stale in work.glob("*.ipynb"):
        if stale.name != "index.ipynb" and stale.stem not in {p["page"] for p in pages}: stale.unlink()
    # the landing page: index.ipynb with the navigation (hidden toctrees: the sidebar shows them)
    nb = json.loads(index.read_text(encoding="utf-8"))
    toc = [_toctree(name, [p["page"] for p in pages if p["section"] == name]) for name, _, _ in SECTIONS]
    if api: toc.append(_toctree("Reference", ["api/index"]))
    proc = process_notebook(nb)
    proc["cells"].append(_md_cell(nb, "\n".join(toc), "site-navigation"))
    _write_if_changed(work / "index.ipynb", json.dumps(proc, indent=1, ensure_ascii=False))
    _copy_mathjax(ensure_mathjax(), work / "_static" / "mathjax")
    plan = dict(index=dict(page="index", title=plain_title(nb_title(nb)), images=image_outputs(nb)),
                pages=pages, modules=modules)
    _write_if_changed(work / "_plan.json", json.dumps(plan, indent=1))
    return plan


def build(out: str | os.PathLike = "_site", nbs: str | os.PathLike = ROOT / "nbs",
          work: str | os.PathLike = ROOT / "build" / "docs-src", jobs: int = 1, quiet: bool = True,
          api: bool = True) -> Path:
    "Stage the sources and run sphinx-build into `out`; returns `out` (with `_plan.json` and `_build_warnings.txt`)."
    out, work = Path(out).resolve(), Path(work).resolve()
    t0 = time.time()
    plan = stage(Path(nbs), work, api=api)
    warnings = work / "_warnings.txt"
    env = dict(os.environ, MPLBACKEND="Agg", OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"),
               PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    # sphinx builds inside `work` (myst-nb writes a jupyter_execute/ folder beside its output folder), then the site
    # replaces `out`
    html = work / "_build" / "html"
    cmd = [sys.executable, "-m", "sphinx", "-b", "html", "-j", str(jobs), "--keep-going", "-w", str(warnings),
           "-d", str(work / "_build" / "doctrees"), str(work), str(html)]
    if quiet: cmd.insert(3, "-q")
    cmd[3:3] = ["-D", f"html_title={plan['index']['title']}"]   # the site is named by its landing page's title
    r = subprocess.run(cmd, env=env)
    if r.returncode not in (0, 1) or not (html / "index.html").is_file():
        raise RuntimeError(f"sphinx-build failed (exit {r.returncode}); sources in {work}")
    shutil.copy2(work / "_plan.json", html / "_plan.json")
    if out.exists():
        if not (out / "_plan.json").is_file() and any(out.iterdir()):
            raise RuntimeError(f"{out} exists and is not a site this tool built: not replacing it")
        shutil.rmtree(out)
    shutil.copytree(html, out, ignore=shutil.ignore_patterns(".buildinfo", "_sources"))
    text = warnings.read_text(encoding="utf-8") if warnings.exists() else ""
    (out / "_build_warnings.txt").write_text(text, encoding="utf-8")
    n = len(plan["pages"]) + 1
    print(f"site: {n} notebook pages and {len(plan['modules'])} API pages in {out} ({time.time() - t0:.0f} s); "
          f"{len(text.splitlines())} warning line(s)" + (f" in {out / '_build_warnings.txt'}" if text else ""))
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="tools/docs.py", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="build the static site")
    b.add_argument("--out", default="_site"); b.add_argument("--nbs", default=str(ROOT / "nbs"))
    b.add_argument("--work", default=str(ROOT / "build" / "docs-src")); b.add_argument("--jobs", type=int, default=1)
    b.add_argument("-v", "--verbose", action="store_true")
    a = p.parse_args(argv)
    try: out = build(a.out, a.nbs, a.work, a.jobs, quiet=not a.verbose)
    except (FileNotFoundError, RuntimeError, ValueError) as e:
        print(f"{p.prog}: error: {e}", file=sys.stderr); return 2
    print(f"open {out / 'index.html'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
