"""`medsynth_nb.apply`: a trained run applied to scans on their own grid, and scored with the paper's metrics."""
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from nibabel.testing import data_path

from medsynth_nb.apply import apply_to_files, apply_to_folder, evaluate_run, get_applier
from medsynth_nb.data import load_nifti, samples_root, save_nifti
from medsynth_nb.engine import train

S = samples_root()
SCAN = Path(data_path) / "anatomical.nii"       # a real T1 scan, stored LAS, 33 x 41 x 25 at 2 mm


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    d = tmp_path_factory.mktemp("runs")
    return dict(h=train("harmonize", "smoke", out=d / "h", steps=1, progress=False).out,
                l=train("lowdose-gan", "smoke", out=d / "l", steps=1, progress=False).out)


@pytest.fixture(scope="module")
def small_scan(tmp_path_factory):
    "Six sagittal slices of nibabel's scan: cheap to translate slice by slice."
    d, aff, _ = load_nifti(SCAN)
    p = tmp_path_factory.mktemp("scan") / "small.nii.gz"
    save_nifti(p, np.maximum(d[12:18], 0), aff @ np.array([[1, 0, 0, 12], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1.0]]))
    return p


def _read(p): return nib.load(str(p)).get_fdata(dtype=np.float32)


def test_harmonize_output_keeps_the_scan_grid_and_ignores_its_units(runs, small_scan, tmp_path):
    "Durrer's preprocessing makes the output independent of the scan's intensity units; grid and affine are kept."
    a = apply_to_files(runs["h"], {"source": small_scan}, tmp_path / "a.nii.gz", steps=1)
    d, aff, _ = load_nifti(small_scan)
    save_nifti(tmp_path / "x10.nii.gz", d * 10, aff)
    b = apply_to_files(runs["h"], {"source": tmp_path / "x10.nii.gz"}, tmp_path / "b.nii.gz", steps=1)
    img = nib.load(str(a))
    assert img.shape == d.shape
    np.testing.assert_allclose(img.affine, aff)
    np.testing.assert_allclose(_read(a), _read(b), atol=1e-5)
    assert np.abs(_read(a)).max() > 0
    c = apply_to_files(runs["h"], {"source": small_scan}, tmp_path / "c.nii.gz", steps=1, seed=1)
    assert np.abs(_read(a) - _read(c)).max() > 0                  # the seed reaches the sampler


def test_harmonize_apply_takes_the_dpm_sampler(runs, small_scan, tmp_path):
    "--option sampler=dpm reaches translate_slices: the same scan grid, another chain than the run's DDIM; eta refused."
    a = apply_to_files(runs["h"], {"source": small_scan}, tmp_path / "a.nii.gz", steps=3)
    p = apply_to_files(runs["h"], {"source": small_scan}, tmp_path / "p.nii.gz", steps=3, sampler="dpm")
    assert _read(p).shape == _read(a).shape and np.abs(_read(p) - _read(a)).max() > 0
    with pytest.raises(ValueError, match="takes no eta"):
        apply_to_files(runs["h"], {"source": small_scan}, tmp_path / "e.nii.gz", steps=3, sampler="dpm", eta=0.5)


def test_lowdose_output_is_in_the_scan_units(runs, tmp_path):
    "Pinetz's normalisation is undone: scaling both inputs by 10 scales the synthetic scan by 10 (same seed)."
    na, aff, _ = load_nifti(S / "dose_3T_d000.nii.gz"); sd = load_nifti(S / "dose_3T_d100.nii.gz")[0]
    sl = (slice(None), slice(None), slice(40, 46))
    for k, f in ((1, ""), (10, "x10")):
        save_nifti(tmp_path / f"na{f}.nii.gz", na[sl] * k, aff); save_nifti(tmp_path / f"sd{f}.nii.gz", sd[sl] * k, aff)
    opts = dict(dose=0.33, field=3.0)
    a = apply_to_files(runs["l"], {"native": tmp_path / "na.nii.gz", "standard": tmp_path / "sd.nii.gz"},
                       tmp_path / "a.nii.gz", **opts)
    b = apply_to_files(runs["l"], {"native": tmp_path / "nax10.nii.gz", "standard": tmp_path / "sdx10.nii.gz"},
                       tmp_path / "b.nii.gz", **opts)
    np.testing.assert_allclose(_read(b), 10 * _read(a), rtol=1e-4, atol=1e-3 * float(_read(b).max()))
    # the generator adds a dose-dependent residual: another dose, another scan
    c = apply_to_files(runs["l"], {"native": tmp_path / "na.nii.gz", "standard": tmp_path / "sd.nii.gz"},
                       tmp_path / "c.nii.gz", dose=0.1, field=3.0)
    assert np.abs(_read(a) - _read(c)).max() > 0


def test_second_input_is_resampled_onto_the_first(runs, tmp_path):
    "A standard-dose scan stored with another field of view gives the same output as the aligned one."
    na, aff, _ = load_nifti(S / "dose_3T_d000.nii.gz"); sd = load_nifti(S / "dose_3T_d100.nii.gz")[0]
    sl = (slice(None), slice(None), slice(40, 46))
    save_nifti(tmp_path / "na.nii.gz", na[sl], aff); save_nifti(tmp_path / "sd.nii.gz", sd[sl], aff)
    shifted = aff.copy(); shifted[:3, 3] += aff[:3, :3] @ np.array([0, 5, 0])
    save_nifti(tmp_path / "sd_crop.nii.gz", sd[:, 5:, 40:46], shifted)
    kw = dict(dose=0.33, field=3.0)
    a = apply_to_files(runs["l"], {"native": tmp_path / "na.nii.gz", "standard": tmp_path / "sd.nii.gz"},
                       tmp_path / "a.nii.gz", **kw)
    b = apply_to_files(runs["l"], {"native": tmp_path / "na.nii.gz", "standard": tmp_path / "sd_crop.nii.gz"},
                       tmp_path / "b.nii.gz", **kw)
    inner = (slice(None), slice(12, None), slice(None))          # away from the cropped rows (the U-Net's reach)
    np.testing.assert_allclose(_read(a)[inner], _read(b)[inner], atol=1e-3 * float(_read(a).max()))


def test_folder_and_evaluation_write_their_files(runs, small_scan, tmp_path):
    (tmp_path / "in").mkdir()
    for n in ("s1", "s2"): (tmp_path / "in" / f"{n}.nii.gz").write_bytes(small_scan.read_bytes())
    done = apply_to_folder(runs["h"], tmp_path / "in", tmp_path / "out", steps=1)
    assert [p.name for p in done] == ["s1.nii.gz", "s2.nii.gz"]
    before = (tmp_path / "out" / "s1.nii.gz").stat().st_mtime_ns
    assert apply_to_folder(runs["h"], tmp_path / "in", tmp_path / "out", steps=1) == []
    assert (tmp_path / "out" / "s1.nii.gz").stat().st_mtime_ns == before          # nothing rewritten
    for n in ("s1", "s2"):
        (tmp_path / "pairs" / n).mkdir(parents=True)
        (tmp_path / "pairs" / n / "t1.nii.gz").write_bytes(small_scan.read_bytes())
        (tmp_path / "pairs" / n / "t2.nii.gz").write_bytes(small_scan.read_bytes())
    rows = evaluate_run(runs["h"], tmp_path / "pairs", tmp_path / "eval", role_map={"source": "t1", "target": "t2"},
                        steps=1, tissues=False)
    orig = [r for r in rows if r["method"] == "original"]
    assert len(rows) == 4 and all(r["mse"] == 0 for r in orig)       # source == target: the baseline row is exact
    assert all(r["mse"] > 0 for r in rows if r["method"] == "model")
    md = (tmp_path / "eval" / "metrics.md").read_text()
    assert "| mean of 2 | model |" in md and len((tmp_path / "eval" / "metrics.csv").read_text().splitlines()) == 5


def test_errors(runs, small_scan, tmp_path):
    with pytest.raises(ValueError, match="has no applier"): get_applier("toy-regression")
    with pytest.raises(ValueError, match="missing \\['standard'\\]"):
        apply_to_files(runs["l"], {"native": small_scan}, tmp_path / "x.nii.gz", dose=0.3, field=3)
    with pytest.raises(ValueError, match="dose"):
        apply_to_files(runs["l"], {"native": small_scan, "standard": small_scan}, tmp_path / "x.nii.gz", field=3)
    with pytest.raises(ValueError, match="a .nii or .nii.gz file name"):
        apply_to_files(runs["h"], {"source": small_scan}, tmp_path / "x.png")
    with pytest.raises(ValueError, match="role_map"):
        apply_to_folder(runs["h"], tmp_path, tmp_path / "o", role_map={"src": "t1"})


def test_export_loads_back_the_ema_networks_and_runs_no_code(runs, tmp_path):
    "model.safetensors holds each network (EMA where kept); load_exported rebuilds them; the card names data and licence."
    from safetensors import safe_open
    from medsynth_nb.apply import export_run, load_exported
    from medsynth_nb.harmonize import load_harmonizer
    out = export_run(runs["h"], tmp_path / "h")
    models, cfg = load_exported(out)
    ema_model = load_harmonizer(runs["h"], ema=True)[0]
    x, t = torch.randn(2, 2, 32, 32, generator=torch.Generator().manual_seed(0)), torch.tensor([3, 500])
    with torch.no_grad(): torch.testing.assert_close(models["model"](x, t), ema_model(x, t), rtol=0, atol=0)
    raw = load_harmonizer(runs["h"], ema=False)[0]
    assert any((a != b).any() for a, b in zip(raw.state_dict().values(), ema_model.state_dict().values()))  # EMA ≠ raw
    with safe_open(str(out / "model.safetensors"), "pt") as f: meta = f.metadata()
    assert meta["experiment"] == "harmonize" and json.loads(meta["ema"]) == ["model"]
    card = (out / "README.md").read_text()
    assert "Apache-2.0" in card and "simulated subjects" in card and "harmonize" in card
    assert not any(p.suffix in (".pt", ".pkl") for p in out.iterdir())


def test_lowdose_3d_generator_in_overlapping_cubes(tmp_path):
    "A 3-D run applied with --option window: the scan's grid is kept; whole-volume and windowed outputs agree in the brain."
    from medsynth_nb.cli import main
    run = train("lowdose-gan", "smoke", out=tmp_path / "l3", steps=1, progress=False, dims=3).out
    na, aff, _ = load_nifti(S / "dose_3T_d000.nii.gz"); sd = load_nifti(S / "dose_3T_d100.nii.gz")[0]
    sl = (slice(20, 60), slice(20, 70), slice(30, 54))
    save_nifti(tmp_path / "na.nii.gz", na[sl], aff); save_nifti(tmp_path / "sd.nii.gz", sd[sl], aff)
    assert main(["apply", str(run), str(tmp_path / "na.nii.gz"), str(tmp_path / "w.nii.gz"), "--with",
                 f"standard={tmp_path / 'sd.nii.gz'}", "--option", "dose=0.33", "--option", "field=3",
                 "--option", "window=16"]) == 0
    whole = apply_to_files(run, {"native": tmp_path / "na.nii.gz", "standard": tmp_path / "sd.nii.gz"},
                           tmp_path / "a.nii.gz", dose=0.33, field=3.0)
    w = nib.load(str(tmp_path / "w.nii.gz"))
    assert w.shape == na[sl].shape
    np.testing.assert_allclose(w.affine, aff)
    brain = _read(whole) > 0
    # a one-step smoke generator: the outputs differ by its (noise-driven) residual only, a small share of the scan
    assert np.abs(_read(tmp_path / "w.nii.gz") - _read(whole))[brain].mean() < 0.2 * np.abs(_read(whole))[brain].mean()
    with pytest.raises(ValueError, match="window: expected a positive multiple of 2\\^levels"):
        apply_to_files(run, {"native": tmp_path / "na.nii.gz", "standard": tmp_path / "sd.nii.gz"},
                       tmp_path / "e.nii.gz", dose=0.33, field=3.0, window=6)
