"The house: one version, README generated from index, settings.ini the single configuration."
import configparser, re
from pathlib import Path

import medsynth_nb
from tools.site import index_markdown

ROOT = Path(__file__).resolve().parent.parent

def settings():
    c = configparser.ConfigParser(delimiters=["="]); c.read(ROOT / "settings.ini"); return c["DEFAULT"]

def test_one_version():
    assert medsynth_nb.__version__ == settings()["version"]

def test_readme_is_generated_from_index():
    assert (ROOT / "README.md").read_text(encoding="utf-8") == index_markdown(ROOT / "nbs" / "index.ipynb"), \
        "README.md is stale: run `make readme`"

def test_nbdev2_pins_and_flags():
    s = settings()
    deps = s["requirements"] + " " + s["dev_requirements"]
    for pin in ("nbdev>=2.4.14,<3", "fastcore>=1.5.29,<2", "execnb<0.2"):
        assert pin in deps
    assert {"slow", "gpu"} <= set(s["tst_flags"].split())
    assert "cell_number" not in s

def test_setup_py_has_no_pkg_resources():
    assert not re.search(r"^\s*(import|from)\s+pkg_resources", (ROOT / "setup.py").read_text(), re.M)

def test_every_module_has_a_notebook():
    nbs = {p.stem.split("_", 1)[1] if p.stem[:2].isdigit() else p.stem for p in (ROOT / "nbs").glob("*.ipynb")}
    text = "\n".join(p.read_text() for p in (ROOT / "nbs").glob("*.ipynb"))
    for mod in (ROOT / "medsynth_nb").glob("*.py"):
        if mod.name.startswith("_"): continue
        assert f"default_exp {mod.stem}" in text, f"{mod.name} has no notebook with default_exp {mod.stem}"

def test_import_is_light():
    import subprocess, sys
    code = ("import sys, medsynth_nb, medsynth_nb.utils, importlib, pkgutil\n"
            "for m in pkgutil.iter_modules(medsynth_nb.__path__):\n"
            "    if m.name not in ('cli',) and not m.name.startswith('_'): importlib.import_module('medsynth_nb.' + m.name)\n"
            "heavy = [m for m in ('ot', 'diffusers', 'sigpy', 'skimage', 'nbconvert') if m in sys.modules]\n"
            "print(heavy); sys.exit(1 if heavy else 0)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, f"importing medsynth_nb pulled in heavy libraries: {r.stdout}{r.stderr}"


def test_make_lab_serves_the_lessons():
    "`make lab` starts JupyterLab on nbs/ (adding --allow-root for root): launched for real, asked for a lesson, stopped."
    import json as _json, os, signal, socket, subprocess, time, urllib.error, urllib.request
    dev = next(l for l in (ROOT / "settings.ini").read_text().splitlines() if l.startswith("dev_requirements"))
    assert "jupyterlab>=" in dev                                   # declared, not only pulled in by nbgrader
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0)); port = s.getsockname()[1]
    flags = f"--no-browser --ip=127.0.0.1 --port={port} --ServerApp.token=medsynth-test --ServerApp.port_retries=0"
    proc = subprocess.Popen(["make", "-s", "lab", f"LAB_FLAGS={flags}"], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    url = f"http://127.0.0.1:{port}/api/contents/05_config.ipynb?content=0&token=medsynth-test"
    try:
        deadline, reply = time.time() + 120, None
        while time.time() < deadline and proc.poll() is None:
            try:
                with urllib.request.urlopen(url, timeout=5) as r: reply = _json.loads(r.read()); break
            except urllib.error.HTTPError as e: reply = {"http_error": e.code}; break   # serving, but not the lessons
            except OSError: time.sleep(1)
        if reply is None:
            if proc.poll() is None: os.killpg(proc.pid, signal.SIGTERM)
            raise AssertionError(f"JupyterLab did not serve nbs/ within 120 s:\n{proc.communicate(timeout=30)[0][-3000:]}")
        assert reply["type"] == "notebook" and reply["name"] == "05_config.ipynb", reply
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/lab?token=medsynth-test", timeout=10) as r:
            assert r.status == 200 and b"JupyterLab" in r.read()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try: proc.wait(timeout=30)
            except subprocess.TimeoutExpired: os.killpg(proc.pid, signal.SIGKILL)
