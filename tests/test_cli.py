"""`medsynth` as a user runs it: a separate process, experiments from outside the package, apply on a folder."""
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from nibabel.testing import data_path

from medsynth_nb.data import load_nifti, save_nifti

MEDSYNTH = Path(sys.executable).parent / "medsynth"          # the console script of this environment
LAB = '''from medsynth_nb.config import register_experiment
from medsynth_nb.toy import ToyRegressionConfig, build_toy_regression
register_experiment("lab-sine", ToyRegressionConfig, {"smoke": {"steps": 2, "hidden": 8}},
                    "a lab's experiment")(build_toy_regression)
'''


def medsynth(*argv, pythonpath=None, cwd=None):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    if pythonpath: env["PYTHONPATH"] = os.pathsep.join([str(pythonpath), env.get("PYTHONPATH", "")])
    return subprocess.run([str(MEDSYNTH), *map(str, argv)], capture_output=True, text=True, env=env, cwd=cwd,
                          timeout=600)


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    "A lab's package 'installed' on PYTHONPATH: its module and a dist-info with the entry point."
    d = tmp_path_factory.mktemp("lab")
    (d / "lab_experiments.py").write_text(LAB)
    info = d / "lab_experiments-0.1.dist-info"; info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: lab-experiments\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[medsynth_nb.experiments]\nlab = lab_experiments\n")
    return d


def test_entry_point_experiment_is_listed_shown_and_trained(lab, tmp_path):
    r = medsynth("list", pythonpath=lab)
    assert r.returncode == 0, r.stderr
    assert any(line.startswith("lab-sine ") for line in r.stdout.splitlines()), r.stdout
    r = medsynth("show", "lab-sine", pythonpath=lab)
    assert r.returncode == 0, r.stderr
    assert "| hidden | int | 8 * | 64 | MLP width |" in r.stdout, r.stdout
    r = medsynth("train", "lab-sine", "--out", tmp_path / "run", "--no-progress", pythonpath=lab)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "run" / "checkpoint.pt").is_file() and r.stdout.startswith("lab-sine (smoke): step 2")


def test_without_the_entry_point_the_experiment_is_unknown_and_import_brings_it(lab, tmp_path):
    module = tmp_path / "my_exps.py"; module.write_text(LAB)
    r = medsynth("show", "lab-sine")
    assert r.returncode == 2 and r.stderr.startswith("medsynth: error: experiment: unknown experiment 'lab-sine'")
    r = medsynth("--import", module, "show", "lab-sine")
    assert r.returncode == 0, r.stderr
    r = medsynth("--import", "lab_experiments", "show", "lab-sine", pythonpath=lab)   # by module name
    assert r.returncode == 0, r.stderr


def test_a_broken_entry_point_is_reported_not_fatal(tmp_path):
    info = tmp_path / "broken-0.1.dist-info"; info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: broken\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[medsynth_nb.experiments]\nbroken = lab_missing_module\n")
    r = medsynth("list", pythonpath=tmp_path)
    assert r.returncode == 0 and "toy-regression" in r.stdout
    assert "medsynth: warning: could not import entry point broken = lab_missing_module: ModuleNotFoundError" in r.stderr


@pytest.mark.parametrize("argv, message", [
    (("--import", "no_such_module_xyz", "list"), "--import: module: importing 'no_such_module_xyz' failed"),
    (("show", "toy-regression", "--preset", "demo", "--import", "x"), None),      # argparse's own usage error
    (("apply", "nowhere", "a.nii.gz", "b.nii.gz"), "RUN: expected a trained run directory holding checkpoint.pt"),
    (("evaluate", "nowhere", "--data", "x"), "RUN: expected a trained run directory"),
])
def test_errors_are_one_line_with_status_2(argv, message):
    r = medsynth(*argv)
    assert r.returncode == 2, (r.returncode, r.stderr)
    assert "Traceback" not in r.stderr
    if message: assert r.stderr.startswith(f"medsynth: error: {message}") and r.stderr.count("\n") == 1, r.stderr


def test_apply_a_folder_keeps_each_scans_grid_and_skips_done_work(tmp_path):
    "harmonize on two real scans stored differently (LAS and flipped to RAS): each output on its own input's grid."
    run = tmp_path / "h"
    r = medsynth("train", "harmonize", "--out", run, "--steps", "1", "--no-progress")
    assert r.returncode == 0, r.stderr
    d, aff, _ = load_nifti(Path(data_path) / "anatomical.nii")
    folder = tmp_path / "scans"; folder.mkdir()
    small, shift = np.maximum(d[12:18], 0), np.array([[1, 0, 0, 12], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1.0]])
    save_nifti(folder / "a.nii.gz", small, aff @ shift)
    flip = np.diag([-1.0, 1, 1, 1]); flip[0, 3] = small.shape[0] - 1          # the same voxels, stored the other way
    save_nifti(folder / "b.nii.gz", small[::-1].copy(), aff @ shift @ flip)
    r = medsynth("apply", run, folder, tmp_path / "out", "--option", "steps=1", "--device", "cpu")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().endswith("wrote 2 file(s)"), r.stdout
    a, b = nib.load(str(tmp_path / "out" / "a.nii.gz")), nib.load(str(tmp_path / "out" / "b.nii.gz"))
    np.testing.assert_allclose(a.affine, aff @ shift); np.testing.assert_allclose(b.affine, aff @ shift @ flip)
    assert a.shape == b.shape == small.shape and a.get_data_dtype() == np.float32
    # the same anatomy in the same place in millimetres: the flipped file's output, flipped back, is the first
    np.testing.assert_allclose(b.get_fdata()[::-1], a.get_fdata(), atol=1e-5)
    r = medsynth("apply", run, folder, tmp_path / "out", "--option", "steps=1")
    assert r.returncode == 0 and "wrote 0 file(s)" in r.stdout
