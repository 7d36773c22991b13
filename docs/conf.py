"""Sphinx configuration of the lessons' site. `tools/docs.py build` (make docs) copies this folder next to the
processed notebooks and API pages and runs sphinx-build there; do not run sphinx-build on docs/ itself."""
import configparser
import inspect
import re
from pathlib import Path

import medsynth_nb

_ini = configparser.ConfigParser()
_ini.read(Path(medsynth_nb.__file__).resolve().parents[1] / "settings.ini")   # the project's metadata
_cfg = _ini.defaults()

project = _cfg.get("title", "medsynth_nb")
author = _cfg.get("author", "medsynth_nb contributors")
copyright = _cfg.get("copyright", author)
release = version = _cfg.get("version", "")

extensions = ["myst_nb", "sphinx.ext.autodoc", "sphinx.ext.mathjax"]
root_doc = "index"
exclude_patterns = ["_build", "**.ipynb_checkpoints", "_plan.json", "_warnings.txt"]
suppress_warnings = ["myst.header"]   # lessons may go from '#' to '###'; that is a style choice, not a broken page

# Notebooks are rendered as committed: never executed here (their outputs come from `make lessons`).
nb_execution_mode = "off"
nb_merge_streams = True
nb_render_markdown_format = "myst"    # maths in text/markdown outputs (tables of results) is rendered too
nb_ipywidgets_js = {}                 # myst-nb would load require.js and the widget manager from a CDN
myst_enable_extensions = ["dollarmath", "amsmath"]
myst_dmath_double_inline = True       # `$$ ... $$` inside a paragraph is display maths too
myst_heading_anchors = 3

# MathJax 3 from the site's own _static (tools/docs.py installs it from npm and copies it there): no CDN.
mathjax_path = "mathjax/tex-svg.js"
mathjax3_config = {"svg": {"fontCache": "global"}, "options": {"menuOptions": {"settings": {"assistiveMml": False}}}}

smartquotes = False                   # titles and text as the notebooks write them
html_theme = "furo"
html_title = project
html_static_path = ["_static"]
html_copy_source = False
html_show_sourcelink = False
html_last_updated_fmt = None

autodoc_member_order = "bysource"
autodoc_typehints = "signature"
autodoc_default_options = {"exclude-members": "__weakref__, __dict__, __init__"}


_SPECIAL = re.compile(r"([\\*|_\[\]<>])")


def _inline(text: str) -> str:
    "One docstring line as reST text: `code` as inline literals, every other reST markup character escaped."
    parts = re.split(r"(`[^`]+`)", text)
    return "".join(f"\\ ``{p[1:-1]}``\\ " if p.startswith("`") and p.endswith("`") and len(p) > 2 else _SPECIAL.sub(r"\\\1", p)
                   for p in parts)


def _plain_docstring(lines: list) -> list:
    """nbdev docstrings are plain text with `code` spans, not reST: show each line as written (a reST line block),
    so `|x|`, `*args`, indented layouts and the like render as text instead of failing to parse."""
    out = []
    for l in lines:
        out.append(f"| {_inline(l)}" if l.strip() else "")
    return out


def _docstring(app, what, name, obj, options, lines):
    "Docstrings as written, then nbdev's parameter comments (`x: int, # what x is`) as parameter descriptions."
    if what in ("data", "attribute"):
        own = inspect.getdoc(type(obj)) or ""
        if own and "\n".join(lines).strip() == own.strip(): lines[:] = []   # a dict's docstring is not about it
    lines[:] = _plain_docstring(lines)
    if what not in ("function", "method", "class"): return
    try:
        from fastcore.docments import docments
        target = obj.__init__ if what == "class" and inspect.isfunction(getattr(obj, "__init__", None)) else obj
        docs = docments(target, full=True)
    except Exception:
        return
    notes = [(k, v["docment"]) for k, v in docs.items() if k not in ("return", "self") and v.get("docment")]
    ret = (docs.get("return") or {}).get("docment")
    if not notes and not ret: return
    if lines and lines[-1].strip(): lines.append("")
    lines.extend(f":param {k}: {_inline(d)}" for k, d in notes)
    if ret: lines.append(f":returns: {_inline(ret)}")


def setup(app):
    app.connect("autodoc-process-docstring", _docstring)
