"""Training on your own files: the engine takes the training subjects' slices, the held-out subjects stay out."""
import csv
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from nibabel.testing import data_path

import medsynth_nb.own_data as own
from medsynth_nb.data import load_nifti, samples_root, save_nifti
from medsynth_nb.engine import train
from medsynth_nb.harmonize import HarmonizeConfig

S = samples_root()
MEDSYNTH = Path(sys.executable).parent / "medsynth"


def _pair(k):
    a15, aff, _ = load_nifti(S / "mprage_1.5T.nii.gz"); a3 = load_nifti(S / "mprage_3T.nii.gz")[0]
    return np.roll(a15, 2 * k, 1), np.roll(a3, 2 * k, 1), aff


@pytest.fixture(scope="module")
def brats(tmp_path_factory):
    root = tmp_path_factory.mktemp("brats")
    for k in range(4):
        a, b, aff = _pair(k)
        d = root / f"BraTS2021_{k:05d}"; d.mkdir()
        save_nifti(d / f"{d.name}_t1.nii.gz", a, aff); save_nifti(d / f"{d.name}_t2.nii.gz", b, aff)
    return root


def test_engine_trains_on_the_training_subjects_only(brats, tmp_path, monkeypatch):
    "The data source is called with the split's training subjects, and the task's data is what it returned."
    seen = {}
    roles, make = own.DATA_SOURCES["harmonize"]
    def spy(cfg, subjects):
        seen["ids"], seen["crop"] = [s.id for s in subjects], cfg.crop
        seen["data"] = make(cfg, subjects)
        return seen["data"]
    monkeypatch.setitem(own.DATA_SOURCES, "harmonize", (roles, spy))
    cfg = dict(dataset=str(brats), dataset_roles="source=t1,target=t2", val_fraction=0.25)
    train("harmonize", "smoke", out=tmp_path / "h", steps=1, progress=False, **cfg)
    held = [s.id for s in own.held_out_subjects(tmp_path / "h")]
    assert len(held) == 1 and len(seen["ids"]) == 3 and seen["crop"] == (32, 32)          # the smoke preset's crop
    assert sorted(seen["ids"] + held) == [f"BraTS2021_{k:05d}" for k in range(4)]
    # the items are the training subjects' slices: subject 0 of the source is the first training subject's t1
    first = seen["data"][0]
    ref = own.FileSlices(own.dataset_subjects(HarmonizeConfig(**cfg), roles)[0][:1], {"source": "source", "target": "target"},
                         crop=seen["crop"], transform=own.durrer_preprocess)[0]
    for k in ("source", "target"): torch.testing.assert_close(first[k], ref[k], rtol=0, atol=0)


def test_lip_cars_own_data_field_is_not_a_dataset(tmp_path):
    "LipCarConfig has a field named `data` ('simulate'/'samples'): the shared field is `dataset`, so lip-car still trains."
    from medsynth_nb.lip import LipCarConfig
    assert LipCarConfig().data == "simulate" and LipCarConfig().dataset == ""
    train("lip-car", "smoke", out=tmp_path / "lip", steps=1, progress=False)


def test_ixi_style_folders_per_contrast(tmp_path):
    "dataset='t1=T1/,t2=T2/' reads one folder per contrast (IXI), subjects paired by id."
    for k in range(2):
        a, b, aff = _pair(k)
        (tmp_path / "T1").mkdir(exist_ok=True); (tmp_path / "T2").mkdir(exist_ok=True)
        save_nifti(tmp_path / "T1" / f"IXI00{k}-Guys-T1.nii.gz", a, aff)
        save_nifti(tmp_path / "T2" / f"IXI00{k}-Guys-T2.nii.gz", b, aff)
    cfg = HarmonizeConfig(dataset=f"t1={tmp_path / 'T1'},t2={tmp_path / 'T2'}", dataset_roles="source=t1,target=t2",
                          val_fraction=0.5)
    train_s, val_s = own.dataset_subjects(cfg, ("source", "target"))
    assert len(train_s) == len(val_s) == 1
    s = train_s[0]
    assert s.files["source"].parent.name == "T1" and s.files["target"].parent.name == "T2"
    assert s.files["source"].name.split("-")[0] == s.files["target"].name.split("-")[0]     # the same subject


def run(*argv):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run([str(MEDSYNTH), *map(str, argv)], capture_output=True, text=True, env=env, timeout=900)


def test_cli_train_then_evaluate_the_held_out_subject(brats, tmp_path):
    out = tmp_path / "run"
    r = run("train", "harmonize", "--steps", "1", "--out", out, "--no-progress", "--data", brats,
            "--set", "dataset_roles=source=t1,target=t2", "--set", "val_fraction=0.25")
    assert r.returncode == 0, r.stderr
    r = run("evaluate", out, "--option", "steps=1", "--option", "tissues=false", "--device", "cpu")
    assert r.returncode == 0, r.stderr
    with open(out / "evaluation" / "metrics.csv") as f: rows = list(csv.DictReader(f))
    held = [s.id for s in own.held_out_subjects(out)]
    assert sorted({row["subject"] for row in rows}) == held and {row["method"] for row in rows} == {"original", "model"}


@pytest.mark.parametrize("sets, message", [
    (("dataset={brats}",), "dataset: experiment 'toy-regression' trains on the simulator only"),
    (("dataset={brats}", "dataset_roles=src=t1"), "dataset_roles: expected keys among the experiment's roles"),
    (("dataset={brats}", "dataset_roles=source"), "dataset_roles: expected 'KEY=VALUE,...', got 'source'"),
    (("dataset={brats}/missing",), "dataset: expected an existing folder or CSV of your scans"),
])
def test_cli_refuses_bad_data_before_building(brats, tmp_path, sets, message):
    exp = "toy-regression" if "simulator only" in message else "harmonize"
    argv = ["train", exp, "--out", tmp_path / "x", "--no-progress"]
    for s in sets: argv += ["--set", s.format(brats=brats)]
    r = run(*argv)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert r.stderr.startswith("medsynth: error: ") and message in r.stderr, r.stderr
    assert not (tmp_path / "x" / "checkpoint.pt").exists()


def test_lowdose_trains_on_dose_series_and_evaluates_the_held_out_one(tmp_path, monkeypatch):
    "A dose-series CSV: the stream is built from the training subject only; evaluation rows are the held-out one's doses."
    csv_path = tmp_path / "doses.csv"
    csv_path.write_text("subject,dose,path,field\n" + "".join(
        f"s{B}T,{d},{(S / f'dose_{B}T_d{round(100 * d):03d}.nii.gz').resolve()},{B}\n"
        for B in ("1.5", "3") for d in (0, 0.1, 0.33, 1)))
    seen = {}
    roles, make = own.DATA_SOURCES["lowdose-gan"]
    def spy(cfg, subjects):
        seen["ids"] = [s.id for s in subjects]; return make(cfg, subjects)
    monkeypatch.setitem(own.DATA_SOURCES, "lowdose-gan", (roles, spy))
    res = train("lowdose-gan", "smoke", out=tmp_path / "l", steps=1, progress=False, dataset=str(csv_path), val_fraction=0.5)
    held = own.held_out_subjects(res.out)
    assert len(seen["ids"]) == 1 and [s.id for s in held] != seen["ids"] and len(held) == 1
    from medsynth_nb.apply import evaluate_run
    rows = evaluate_run(res.out, held, tmp_path / "eval")
    assert sorted((r["subject"], r["dose"]) for r in rows) == [(held[0].id, 0.1), (held[0].id, 0.33)]
    assert {r["field"] for r in rows} == {float(held[0].id[1:-1])}
