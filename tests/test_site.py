"""make docs: the static site built from the committed notebooks (tools/docs.py), checked in a real headless browser,
Debian's chromium (`make browser` installs it; CHROMIUM=/path/to/chrome picks another one), driven by Playwright.

Every page (notebooks, API, search and index pages) is opened from disk, as a reader opens `_site/index.html`, with
MathJax run to the end. Checks: no JS error and no request that leaves the site (no CDN), every internal link and
anchor resolves, every image loads, maths rendered (no raw `$`), navigation in lesson order with the notebooks' titles,
no nbdev directive and no `#| hide` cell shown, the `#| export` cells shown, an API entry for every exported symbol.
What the site should show is worked out here from the notebooks themselves, not from tools/docs.py.

The site is built into a temporary folder (about a minute on 2 cores); MEDSYNTH_SITE=_site reuses one that
`make docs` has just built from the current notebooks."""
import base64
import io
import json
import os
import re
import shutil
from pathlib import Path
from urllib.parse import unquote, urlparse

import pytest

from tools.docs import build

ROOT = Path(__file__).resolve().parent.parent
NBS = ROOT / "nbs"
CHROMIUM = os.environ.get("CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
# as root in a container chromium needs --no-sandbox; the network flags stop its background calls home
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--disable-quic"]
CDN = re.compile(r"(cdn\.jsdelivr|cdnjs\.|unpkg\.com|googleapis\.com|mathjax\.org|cloudflare\.com)", re.I)


# ------------------------------------------------------------------------------------ what the notebooks say
def notebooks(nbs: Path) -> list[Path]:
    "The notebooks of the site: nbdev leaves out those whose name starts with '_' (scratch notebooks)."
    return sorted(p for p in Path(nbs).glob("*.ipynb") if not p.name.startswith("_"))


def _src(x) -> str:
    return x if isinstance(x, str) else "".join(x)


def _directives(code: str) -> tuple[set, str]:
    "The leading `#|` lines of a code cell (as 'name' or 'name: value' strings) and the code after them."
    lines, dirs = code.splitlines(), set()
    i = 0
    while i < len(lines) and (not lines[i].strip() or lines[i].lstrip().startswith("#|")):
        d = lines[i].strip()[2:].strip()
        if d: dirs.add(re.sub(r"\s*:\s*", ": ", d).lower())
        i += 1
    return dirs, "\n".join(lines[i:])


def _block(code: str) -> str:
    "Code as compared with a page: non-blank lines, stripped."
    return "\n".join(l.strip() for l in code.splitlines() if l.strip())


def expected(nbs: Path) -> dict:
    "What the site must show for each notebook of `nbs`, worked out from the notebook files."
    out = {}
    for path in notebooks(nbs):
        nb = json.loads(path.read_text(encoding="utf-8"))
        md = "\n".join(_src(c["source"]) for c in nb["cells"] if c["cell_type"] == "markdown")
        title = re.search(r"^#\s+(.+?)\s*$", md, re.M).group(1)
        hidden, shown, images = [], [], 0
        for c in nb["cells"]:
            if c["cell_type"] != "code": continue
            dirs, body = _directives(_src(c["source"]))
            if "hide" in dirs or "include: false" in dirs:
                if _block(body): hidden.append(_block(body))
                continue
            body = "\n".join(l for l in body.splitlines() if not re.search(r"#\|\s*hide_line\s*$", l))
            if _block(body) and "echo: false" not in dirs: shown.append(_block(body))
            if "output: false" not in dirs:
                images += sum("image/png" in o.get("data", {}) for o in c.get("outputs", []))
        out[path.stem] = dict(title=re.sub(r"[`*]", "", title).strip(), images=images, hidden=hidden, shown=shown,
                              maths=bool(re.search(r"\$[^$\s]|\\begin\{", md)))
    return out


def lesson_order(nbs: Path) -> list[str]:
    "The lessons in order: by their number prefix (00_utils ... 40_lip_car, then 6x experiments)."
    stems = [p.stem for p in notebooks(nbs) if p.stem != "index"]
    return sorted(stems, key=lambda s: (int(s.split("_")[0]), s))


# ------------------------------------------------------------------------------------------------ the browser
_PAGE_JS = r"""() => {
  const text = (el, drop) => { if (!el) return null; const c = el.cloneNode(true);
    c.querySelectorAll(drop).forEach(e => e.remove()); return c.textContent.replace(/\s+/g, ' ').trim(); };
  const art = document.querySelector('article') || document.body;
  return {
    title: document.title,
    h1: text(art.querySelector('h1'), 'a.headerlink'),
    nav: [...document.querySelectorAll('.sidebar-tree a.reference')].map(a => [a.getAttribute('href'), a.textContent.trim()]),
    links: [...document.querySelectorAll('a[href]')].map(a => a.href),
    imgs: [...document.querySelectorAll('img')].map(i => ({src: i.src, w: i.naturalWidth, output: !!i.closest('.cell_output')})),
    resources: [...document.querySelectorAll('script[src], link[href], iframe[src], source[src]')].map(e => e.src || e.href),
    ids: [...document.querySelectorAll('[id]')].map(e => e.id),
    prose: text(art, 'pre, code, script, style, mjx-container, .math, .highlight'),
    code: [...document.querySelectorAll('.cell_input pre')].map(p => p.innerText),
    pre: [...document.querySelectorAll('pre')].map(p => p.innerText),
    maths: document.querySelectorAll('.math').length,
    rendered: [...document.querySelectorAll('.math')].filter(e => e.querySelector('mjx-container')).length,
    mjx: document.querySelectorAll('mjx-container').length,
    merror: document.querySelectorAll('[data-mml-node="merror"], mjx-merror, [data-mjx-error]').length,
    mathjax: !!document.querySelector('script[src*="mathjax"]'),
    body: document.body.innerText.length,
  };
}"""
_WAIT_MATHJAX = """() => (window.MathJax && MathJax.startup && MathJax.startup.promise)
                          ? MathJax.startup.promise.then(() => 'typeset') : 'none'"""


def crawl(site: Path) -> dict:
    "Open every HTML page of `site` in headless chromium; per page (path relative to site): what the page shows."
    if CHROMIUM is None:
        pytest.fail("no chromium on PATH: `make browser` installs Debian's (apt-get install -y chromium), "
                    "or set CHROMIUM=/path/to/chrome")
    from playwright.sync_api import sync_playwright
    site, pages = Path(site).resolve(), {}
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            ctx = browser.new_context()
            for html in sorted(site.rglob("*.html")):
                if "_static" in html.relative_to(site).parts: continue
                page, errors, outside, failed = ctx.new_page(), [], [], []
                page.on("pageerror", lambda e: errors.append(f"pageerror: {e}"))
                page.on("console", lambda m: errors.append(f"console.{m.type}: {m.text}") if m.type == "error" else None)
                page.on("request", lambda r: None if r.url.startswith(("file:", "data:", "blob:", "about:"))
                        else outside.append(r.url))
                page.on("requestfailed", lambda r: failed.append(f"{r.url} ({r.failure})"))
                page.goto(html.as_uri(), wait_until="load")
                state = page.evaluate(_WAIT_MATHJAX)
                info = page.evaluate(_PAGE_JS)
                info.update(errors=errors, outside=outside, failed=failed, mathjax_state=state)
                pages[html.relative_to(site).as_posix()] = info
                page.close()
        finally:
            browser.close()
    return pages


def _local(url: str, site: Path) -> tuple[Path, str] | None:
    u = urlparse(url)
    if u.scheme != "file": return None
    return Path(unquote(u.path)), unquote(u.fragment)


# ------------------------------------------------------------------------------------------------- the checks
def check_pages_load(pages: dict):
    bad = {k: v["errors"] + v["failed"] for k, v in pages.items() if v["errors"] or v["failed"] or v["body"] < 50}
    assert not bad, f"pages with JS errors, failed requests or nothing shown: {bad}"
    outside = {k: v["outside"] for k, v in pages.items() if v["outside"]}
    assert not outside, f"pages that fetch from outside the site (a CDN?): {outside}"
    external = {k: [r for r in v["resources"] if not r.startswith("file:")] for k, v in pages.items()}
    assert not {k: r for k, r in external.items() if r}, f"scripts/styles/images from outside the site: {external}"


def check_no_cdn_in_files(site: Path):
    hits = {str(f.relative_to(site)): CDN.findall(f.read_text(encoding="utf-8", errors="replace"))
            for f in site.rglob("*.html")}
    hits = {k: v for k, v in hits.items() if v}
    assert not hits, f"CDN addresses left in built pages: {hits}"


def check_links(pages: dict, site: Path):
    site = site.resolve()
    ids = {(site / k).resolve(): set(v["ids"]) for k, v in pages.items()}
    broken = []
    for k, v in pages.items():
        for url in v["links"] + v["resources"] + [i["src"] for i in v["imgs"]]:
            loc = _local(url, site)
            if loc is None: continue
            path, frag = loc
            if not path.is_file(): broken.append(f"{k} -> {url} (no file)")
            elif frag and path.resolve() in ids and frag not in ids[path.resolve()]:
                broken.append(f"{k} -> {url} (no anchor #{frag})")
        broken += [f"{k}: image {i['src']} did not load" for i in v["imgs"] if i["w"] == 0]
    assert not broken, f"{len(broken)} broken internal links/images: {broken[:20]}"


def check_navigation(pages: dict, nbs: Path, api: bool = True):
    exp = expected(nbs)
    index = pages["index.html"]
    nav = [(h.split("#")[0], t) for h, t in index["nav"]]
    lessons = [(f"{s}.html", exp[s]["title"]) for s in lesson_order(nbs)]
    got = [n for n in nav if not n[0].startswith("api/")]
    assert got == lessons, f"navigation is not the lessons in order with their titles:\n{got}\n!=\n{lessons}"
    if api: assert ("api/index.html", "API reference") in nav, f"no API reference in the navigation: {nav}"
    for stem, e in exp.items():
        p = pages[f"{stem}.html"]
        assert p["h1"] == e["title"], f"{stem}: page heading {p['h1']!r} != notebook title {e['title']!r}"
        assert p["title"] == e["title"] or p["title"].startswith(e["title"] + " - "), (stem, p["title"], e["title"])
        if stem != "index":
            assert [t for _, t in p["nav"]] == [t for _, t in index["nav"]], f"{stem}: its sidebar is not the site's"


def check_maths(pages: dict, nbs: Path):
    exp = expected(nbs)
    for stem, e in exp.items():
        p = pages[f"{stem}.html"]
        if e["maths"]:
            assert p["mathjax"] and p["mathjax_state"] == "typeset", f"{stem}: MathJax did not run ({p['mathjax_state']})"
            assert p["maths"] > 0 and p["rendered"] == p["maths"] and p["mjx"] >= p["maths"], \
                f"{stem}: {p['rendered']} of {p['maths']} maths elements rendered ({p['mjx']} mjx-container)"
    for k, p in pages.items():
        assert p["merror"] == 0, f"{k}: {p['merror']} maths expressions MathJax could not parse"
        raw = re.findall(r"\$\$|\$[^$\s][^$]{0,80}?\$|\\\(|\\\[|\\begin\{", p["prose"] or "")
        assert not raw, f"{k}: raw TeX left in the text: {raw[:5]}"


def check_code(pages: dict, nbs: Path):
    exp = expected(nbs)
    for stem, e in exp.items():
        p = pages[f"{stem}.html"]
        lines = [l for c in p["code"] for l in c.splitlines() if l.lstrip().startswith("#|")]
        lines += [l for c in p["pre"] for l in c.splitlines() if l.lstrip().startswith("#|")]
        assert not lines, f"{stem}: nbdev directives shown: {lines[:5]}"
        code = "\n".join(_block(c) for c in p["code"])
        missing = [b for b in e["shown"] if b not in code]
        assert not missing, f"{stem}: {len(missing)} code cells not shown, e.g. {missing[0][:300]!r}"
        leaked = [b for b in e["hidden"] if b in code and all(b not in s for s in e["shown"])]
        assert not leaked, f"{stem}: `#| hide` cells shown: {leaked[:3]}"


def check_images(pages: dict, nbs: Path):
    for stem, e in expected(nbs).items():
        shown = [i for i in pages[f"{stem}.html"]["imgs"] if i["output"] and i["w"] > 0]
        assert len(shown) == e["images"], f"{stem}: {len(shown)} output images shown, the notebook has {e['images']}"


# -------------------------------------------------------------------------------------- the site of nbs/
@pytest.fixture(scope="module")
def nbs(tmp_path_factory):
    "The notebooks the site is built from and checked against: a snapshot of nbs/ (it may change while this runs)."
    snap = tmp_path_factory.mktemp("nbs")
    for p in notebooks(NBS): shutil.copy2(p, snap / p.name)
    return snap


@pytest.fixture(scope="module")
def site(tmp_path_factory, nbs):
    if os.environ.get("MEDSYNTH_SITE"): return Path(os.environ["MEDSYNTH_SITE"]).resolve()
    tmp = tmp_path_factory.mktemp("site")
    return build(out=tmp / "_site", nbs=nbs, work=tmp / "src")


@pytest.fixture(scope="module")
def pages(site):
    return crawl(site)


def test_site_builds_without_warnings(site):
    assert (site / "index.html").is_file()
    warnings = (site / "_build_warnings.txt").read_text()
    assert not warnings.strip(), f"sphinx-build warned:\n{warnings[:3000]}"


def test_every_page_loads_offline(site, pages, nbs):
    want = {f"{p.stem}.html" for p in notebooks(nbs)}
    assert want <= set(pages), f"notebooks without a page: {want - set(pages)}"
    check_pages_load(pages)
    check_no_cdn_in_files(site)


def test_no_broken_internal_links_or_images(site, pages):
    check_links(pages, site)


def test_navigation_in_lesson_order_with_notebook_titles(pages, nbs):
    check_navigation(pages, nbs)


def test_maths_rendered_by_the_local_mathjax(site, pages, nbs):
    assert (site / "_static" / "mathjax" / "tex-svg.js").is_file()
    check_maths(pages, nbs)


def test_code_without_directives_or_hidden_cells(pages, nbs):
    check_code(pages, nbs)


def test_figures_shown(pages, nbs):
    check_images(pages, nbs)


def test_api_reference_lists_every_exported_symbol(pages):
    import importlib
    from medsynth_nb._modidx import d
    missing, modules = [], sorted(d["syms"])
    assert len(modules) >= 19
    for full in modules:
        mod = importlib.import_module(full)
        page = pages.get(f"api/{full.split('.', 1)[1]}.html")
        if page is None: missing.append(f"{full}: no API page"); continue
        ids = set(page["ids"])
        want = {f"{full}.{n}" for n in mod.__all__}
        # functions and methods nbdev indexed (the public ones: private names are not exported)
        want |= {k for k in d["syms"][full] if not any(part.startswith("_") for part in k[len(full) + 1:].split("."))}
        missing += sorted(want - ids)
    assert not missing, f"{len(missing)} exported symbols without an API entry: {missing[:20]}"
    linked = {Path(unquote(urlparse(u).path)).name for u in pages["api/index.html"]["links"] if "/api/" in u}
    unlinked = {m for m in modules if f"{m.split('.', 1)[1]}.html" not in linked}
    assert not unlinked, f"modules the API index does not link to: {unlinked}"


# ----------------------------------------------------------------------- the rules, on a lesson made up here
def _png() -> str:
    from PIL import Image
    buf = io.BytesIO()
    Image.new("RGB", (24, 16), (200, 30, 30)).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def _code(src, outputs=()):
    return {"cell_type": "code", "execution_count": None, "metadata": {}, "outputs": list(outputs), "source": src}


def _md(src):
    return {"cell_type": "markdown", "metadata": {}, "source": src}


def _write(path, cells):
    nb = {"cells": cells, "metadata": {"kernelspec": {"display_name": "Python 3", "language": "python",
                                                      "name": "python3"}}, "nbformat": 4, "nbformat_minor": 4}
    path.write_text(json.dumps(nb, indent=1))


def test_rules_on_a_made_up_lesson(tmp_path):
    """Hidden cells (and their outputs) gone, directives stripped, export cells shown, figures and maths rendered,
    widgets replaced, navigation by number: on a small lesson with all of them, whatever the real notebooks hold."""
    nbs = tmp_path / "nbs"; nbs.mkdir()
    _write(nbs / "index.ipynb", [_md("# Landing page\n\nThe course, $E = mc^2$.")])
    stream = lambda t, name="stdout": {"output_type": "stream", "name": name, "text": t}
    _write(nbs / "20_demo.ipynb", [
        _md("# A `demo` lesson\n\n> What it does.\n\nInline $a^2 + b^2$, display\n\n$$\\sum_{i=1}^n x_i$$\n"),
        _code("#| default_exp demo"),
        _code("#| export\ndef square(x):\n    return x * x"),
        _code("#| hide\nSECRET_HIDDEN_CELL = 1\nprint('hidden-output-marker')", [stream("hidden-output-marker\n")]),
        _md("\\begin{align}\na &= b + c \\\\\nd &= e\n\\end{align}"),
        _code("#| slow\nimport matplotlib.pyplot as plt\nplt.imshow([[0, 1]])",
              [{"output_type": "display_data", "metadata": {},
                "data": {"image/png": _png(), "text/plain": "<Figure size 24x16>"}}]),
        _code("#| eval: false\nrun_on_gpu()", [stream("not run here\n")]),
        _code("for i in progress(3): pass",
              [stream("\x1b[32m 33%|###\r 66%|######\r100%|##########| 3/3\n", "stderr"),
               {"output_type": "display_data", "metadata": {},
                "data": {"application/vnd.jupyter.widget-view+json": {"model_id": "x", "version_major": 2,
                                                                       "version_minor": 0},
                         "text/plain": "interactive(children=(IntSlider(value=0),))"}}]),
    ])
    _write(nbs / "03_first.ipynb", [_md("# First things\n\nText only."), _code("x = 1  #| hide_line\ny = 2")])
    site = build(out=tmp_path / "_site", nbs=nbs, work=tmp_path / "src", api=False)
    pages = crawl(site)
    assert set(pages) >= {"index.html", "03_first.html", "20_demo.html"}
    check_pages_load(pages)
    check_no_cdn_in_files(site)
    check_links(pages, site)
    check_navigation(pages, nbs, api=False)
    check_maths(pages, nbs)
    check_code(pages, nbs)
    check_images(pages, nbs)
    demo = pages["20_demo.html"]
    assert demo["h1"] == "A demo lesson" and demo["mjx"] >= 3, (demo["h1"], demo["mjx"])
    code = "\n".join(demo["code"])
    assert "def square(x):" in code and "run_on_gpu()" in code and "SECRET_HIDDEN_CELL" not in code
    page_text = "\n".join(demo["pre"]) + demo["prose"]
    assert "hidden-output-marker" not in page_text and "not run here" in page_text
    assert "100%|##########| 3/3" in page_text and "33%" not in page_text and "\x1b" not in page_text
    assert "interactive(children" not in page_text and "interactive widget" in demo["prose"]
    first = "\n".join(pages["03_first.html"]["code"])
    assert "y = 2" in first and "x = 1" not in first
