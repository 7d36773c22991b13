"""A non-editable install (a wheel, `pip install .`, `pip install git+...`) carries the sample data and trains."""
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SOURCES = ("setup.py", "settings.ini", "README.md", "MANIFEST.in", "pyproject.toml", "medsynth_nb", "data_samples")


def run(*argv, **kw):
    r = subprocess.run([str(a) for a in argv], capture_output=True, text=True, timeout=900, **kw)
    assert r.returncode == 0, f"{argv}\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return r


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    "sdist, then a wheel built from the sdist (what `python -m build` does), from a copy of the sources."
    tmp = tmp_path_factory.mktemp("build")
    src = tmp / "src"; src.mkdir()
    for name in SOURCES:
        p = ROOT / name
        if not p.exists(): continue
        if p.is_dir(): shutil.copytree(p, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else: shutil.copy2(p, src / name)
    run(sys.executable, "-m", "build", "--no-isolation", "--outdir", tmp / "dist", src)
    wheels = list((tmp / "dist").glob("*.whl"))
    assert len(wheels) == 1, wheels
    return wheels[0]


def test_wheel_ships_every_sample_the_manifest_lists(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    manifest = json.loads((ROOT / "data_samples" / "manifest.json").read_text())
    expected = {f"medsynth_nb/data_samples/{e['path']}" for e in manifest["files"]} | {"medsynth_nb/data_samples/manifest.json"}
    assert expected <= names, sorted(expected - names)
    assert not any(n.startswith("data_samples/") for n in names)          # inside the package, not at the top level


def test_installed_wheel_finds_its_samples_and_trains(wheel, tmp_path):
    "Installed away from the repository (no data_samples/ beside it, no MEDSYNTH_DATA), a smoke run trains."
    target = tmp_path / "site"
    run(sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "--target", target, wheel)
    env = {k: v for k, v in os.environ.items() if k != "MEDSYNTH_DATA"} | {"PYTHONPATH": str(target),
                                                                            "OMP_NUM_THREADS": "1"}
    code = ("import medsynth_nb, medsynth_nb.data as d, medsynth_nb.cli as c, sys; print(medsynth_nb.__file__); "
            "print(d.samples_root()); print(d.verify_manifest()); "
            "sys.exit(c.main(['train', 'lowdose-gan', '--preset', 'smoke', '--steps', '1', '--out', 'run', '--no-progress']))")
    r = run(sys.executable, "-c", code, cwd=tmp_path, env=env)
    module, root, problems = r.stdout.splitlines()[:3]
    assert Path(module).is_relative_to(target), module                     # the installed copy, not the repository
    assert Path(root) == target / "medsynth_nb" / "data_samples"
    assert problems == "[]", problems                                       # every file matches its manifest hash
    assert (tmp_path / "run" / "checkpoint.pt").is_file()
