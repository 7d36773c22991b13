"""Lesson 53 on real-format data: fastMRI-shaped folders written from the simulator, read by fastMRI's own SliceDataset,
trained through the CLI (one step per regime), applied and evaluated; metrics checked against `fastmri.evaluate`.

Files: k-space 40 x 36 (larger than the 32 x 32 model grid and not square, so a crop on the wrong axes shows), targets
at the 32 x 32 recon size as fastMRI stores them; multi-coil (4 birdcage coils, reconstruction_rss), single-coil
(reconstruction_esc), and test files (undersampled k-space with their own column `mask`, no target)."""
import sys
import types
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from medsynth_nb.cli import main
from medsynth_nb.data import ismrmrd_header
from medsynth_nb.kspace import birdcage_maps, fft2c, ifft2c
from medsynth_nb.recon import complex_slices, reconstruct
from medsynth_nb.utils import test_allclose
import medsynth_nb.recon_files as rf

H0, W0, R = 40, 36, (32, 32)
COLS = np.zeros(W0, bool); COLS[::3] = True; COLS[W0 // 2 - 4:W0 // 2 + 4] = True


def _fastmri_evaluate():
    "fastmri.evaluate imports runstats at module level for its running means only; the metric functions do not use it."
    sys.modules.setdefault("runstats", types.SimpleNamespace(Statistics=object))
    from fastmri import evaluate
    return evaluate


def _centre(a, size):
    h, w = size
    return a[..., (a.shape[-2] - h) // 2:(a.shape[-2] - h) // 2 + h, (a.shape[-1] - w) // 2:(a.shape[-1] - w) // 2 + w]


def _img64(k):
    "numpy float64: centred orthonormal inverse FFT over the last two axes."
    k = np.asarray(k, np.complex128)
    return np.fft.fftshift(np.fft.ifft2(np.fft.ifftshift(k, axes=(-2, -1)), norm="ortho"), axes=(-2, -1))


def _write(path, kspace, target=None, key="reconstruction_rss", mask=None, coils=1):
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as f:
        f["kspace"] = np.asarray(kspace, np.complex64)
        if target is not None: f[key] = np.asarray(target, np.float32); f.attrs["max"] = float(np.max(target))
        if mask is not None: f["mask"] = mask
        f["ismrmrd_header"] = np.bytes_(ismrmrd_header((H0, W0), coils=coils, recon_matrix=R))
        f.attrs["acquisition"] = "AXT1"
    return path


@pytest.fixture(scope="module")
def d(tmp_path_factory):
    root = tmp_path_factory.mktemp("fastmri53")
    out = dict(root=root, truth={})
    for s in range(4):
        x = complex_slices(s, (H0, W0), 2, deform=False)[:, 0] * 2e-4
        k = fft2c(birdcage_maps((H0, W0), 4) * x[:, None]).numpy()
        _write(root / "multi" / f"vol{s}.h5", k, _centre(np.sqrt((np.abs(_img64(k)) ** 2).sum(1)), R), coils=4)
        if s < 3:
            ks = fft2c(x).numpy()
            _write(root / "single" / f"vol{s}.h5", ks, _centre(np.abs(_img64(ks)), R), "reconstruction_esc")
        out["truth"][s] = (k, fft2c(x).numpy())
    k, ks = out["truth"][3]
    _write(root / "test" / "multi9.h5", k * COLS, mask=COLS, coils=4)
    _write(root / "test1" / "single9.h5", ks * COLS, mask=COLS)
    runs = root / "runs"
    for exp, data, coils in (("recon-unpaired", "multi", 4), ("recon-l1", "single", 1), ("recon-hybrid", "multi", 4)):
        assert main(["train", exp, "--preset", "smoke", "--steps", "1", "--data", str(root / data), "--set",
                     f"coils={coils}", "--set", "val_fraction=0.25", "--out", str(runs / exp), "--no-progress"]) == 0
    out["runs"] = runs
    return out


def test_fastmri_slicedataset_reads_the_same_slices(d):
    from fastmri.data.mri_data import SliceDataset
    for challenge, folder in (("multicoil", "multi"), ("singlecoil", "single")):
        ds = SliceDataset(d["root"] / folder, challenge=challenge)
        for kspace, mask, target, attrs, fname, j in ds:
            ours = rf.read_slice(d["root"] / folder / fname, j)
            np.testing.assert_array_equal(ours.numpy(), kspace if kspace.ndim == 3 else kspace[None])
            np.testing.assert_array_equal(rf.file_target(d["root"] / folder / fname, R)[j], target)


def test_one_slice_against_numpy_and_the_true_coils(d):
    "Crop (non-square, so swapped axes fail), ESPIRiT maps vs the simulated coils, SENSE combination, in float64."
    k = d["truth"][0][0][1]                                         # (coils, H0, W0) of vol0, slice 1
    shape = (32, 28)
    kc, maps, target = rf.prepare_slice(torch.from_numpy(k), shape)
    crop = _centre(_img64(k), shape)
    ref_k = np.fft.fftshift(np.fft.fft2(np.fft.ifftshift(crop, axes=(-2, -1)), norm="ortho"), axes=(-2, -1))
    np.testing.assert_allclose(kc.numpy(), ref_k, rtol=0, atol=1e-5 * np.abs(ref_k).max())
    m = maps.numpy().astype(np.complex128)
    np.testing.assert_allclose(target[0].numpy(), (m.conj() * crop).sum(0), rtol=0, atol=1e-5 * np.abs(crop).max())
    b = _centre(birdcage_maps((H0, W0), 4).numpy().astype(np.complex128), shape)
    b = b / np.sqrt((np.abs(b) ** 2).sum(0)) * np.exp(-1j * np.angle(b[:1]))   # unit norm, phase relative to coil 0
    obj = np.sqrt((np.abs(crop) ** 2).sum(0)) > 0.2 * np.abs(crop).max()
    assert np.median(np.abs(m - b)[:, obj]) < 0.05                  # ESPIRiT finds the simulated coils


def test_batches_for_each_regime(d):
    from medsynth_nb.config import get_experiment
    cfg = get_experiment("recon-unpaired").config("smoke", coils=4, dataset=str(d["root"] / "multi"), val_fraction=0.0)
    subs = rf.fastmri_subjects(d["root"] / "multi")
    b = rf.recon_files(cfg, subs)(6, torch.Generator().manual_seed(1))
    labels = rf.FileKSpace(subs[2:], R, b["mask"], 4)
    inputs = rf.FileKSpace(subs[:2], R, b["mask"], 4)
    label_set = torch.stack([labels[i]["target"] for i in range(len(labels))])
    input_set = torch.stack([inputs[i]["target"] for i in range(len(inputs))])
    near = lambda x, s: bool(((s - x).abs().flatten(1).amax(1) < 1e-6).any())
    assert all(near(lab, label_set) and not near(lab, input_set) for lab in b["label"])   # disjoint halves
    assert all(near(t, input_set) for t in b["target"])
    test_allclose(b["y"], b["mask"] * b["y"])
    p = rf.recon_files(cfg.replace(regime="hybrid"), subs)(3, torch.Generator().manual_seed(1))
    assert torch.equal(p["label"], p["target"])


def test_apply_writes_fastmri_submissions(d, tmp_path):
    run = d["runs"] / "recon-unpaired"
    src = d["root"] / "multi" / "vol0.h5"
    assert main(["apply", str(run), str(src), str(tmp_path / "vol0.h5")]) == 0
    with h5py.File(tmp_path / "vol0.h5") as f:
        assert list(f) == ["reconstruction"] and f["reconstruction"].dtype == np.float32
        out = f["reconstruction"][()]
    np.testing.assert_allclose(out, rf.reconstruct_file(rf.load_recon_run(run), src)["model"], rtol=1e-6)
    assert main(["apply", str(run), str(d["root"] / "test"), str(tmp_path / "sub")]) == 0
    assert sorted(p.name for p in (tmp_path / "sub").iterdir()) == ["multi9.h5"]           # no temporary left
    assert main(["apply", str(run), str(src), str(tmp_path / "x.nii.gz")]) == 2


def test_scale_is_one_unit_per_volume(d, tmp_path):
    "A volume in other units (x 1000) gives the same reconstruction in those units: c divides in and multiplies out."
    loaded = rf.load_recon_run(d["runs"] / "recon-hybrid")
    src = d["root"] / "multi" / "vol1.h5"
    with h5py.File(src) as f: k = f["kspace"][()]
    big = _write(tmp_path / "big.h5", k * 1000, coils=4)
    a, b = rf.reconstruct_file(loaded, src), rf.reconstruct_file(loaded, big)
    test_allclose(torch.from_numpy(b["model"]), torch.from_numpy(a["model"] * 1000), rtol=1e-4, atol=1e-4 * a["model"].max() * 1000)
    assert abs(b["scale"] / a["scale"] - 1000) < 1e-2
    m = loaded["mask"].numpy()                                      # c: peak RSS of the zero-filled slices (numpy float64)
    crop = _centre(_img64(k), R)
    kc = np.fft.fftshift(np.fft.fft2(np.fft.ifftshift(crop, axes=(-2, -1)), norm="ortho"), axes=(-2, -1))
    c = np.sqrt((np.abs(_img64(m * kc)) ** 2).sum(1)).max()
    assert abs(a["scale"] / c - 1) < 1e-5


def test_own_mask_of_a_test_file_is_used_and_kept(d):
    "Single coil: Lei's final hard DC is exact, so the reconstruction's k-space equals the file's on ITS sampled columns."
    loaded = rf.load_recon_run(d["runs"] / "recon-l1")
    path = d["root"] / "test1" / "single9.h5"
    rec = rf.reconstruct_file(loaded, path)
    ks = torch.from_numpy(d["truth"][3][1][0])                      # slice 0, fully sampled
    m = torch.from_numpy(COLS).float().expand(H0, W0)
    y = (m * ks)[None, None]
    x = reconstruct(loaded["G"], y / rec["scale"], m)                 # what the applier must run: the file's grid and mask
    np.testing.assert_allclose((m * fft2c(x[0, 0]) * rec["scale"]).numpy(), y[0, 0].numpy(), atol=1e-4 * float(ks.abs().max()))
    np.testing.assert_allclose(rec["model"][0], _centre(x[0, 0].abs().numpy() * rec["scale"], R), rtol=1e-5, atol=1e-12)
    zf = _centre(np.abs(_img64((m * ks).numpy())), R)
    np.testing.assert_allclose(rec["zero_filled"][0], zf, rtol=1e-4, atol=1e-4 * zf.max())


def test_evaluate_matches_fastmri_evaluate(d, tmp_path):
    ev = _fastmri_evaluate()
    run = d["runs"] / "recon-l1"
    assert main(["evaluate", str(run), "--data", str(d["root"] / "single"), "--out", str(tmp_path / "ev")]) == 0
    assert main(["apply", str(run), str(d["root"] / "single"), str(tmp_path / "sub")]) == 0
    import csv
    rows = list(csv.DictReader(open(tmp_path / "ev" / "metrics.csv")))
    assert [(r["subject"], r["method"]) for r in rows[:2]] == [("vol0", "zero_filled"), ("vol0", "model")]
    for r in rows:
        if r["method"] != "model": continue
        with h5py.File(d["root"] / "single" / f"{r['subject']}.h5") as f: gt = f["reconstruction_esc"][()]
        with h5py.File(tmp_path / "sub" / f"{r['subject']}.h5") as f: pred = f["reconstruction"][()]
        for ours, fn in (("nmse", ev.nmse), ("psnr", ev.psnr), ("ssim", ev.ssim)):
            ref = np.asarray(fn(gt, pred)).item()
            assert abs(float(r[ours]) - ref) <= 1e-6 * max(1.0, abs(ref)), ours
    zf = [r for r in rows if r["method"] == "zero_filled"]
    assert all(float(r["nmse"]) > 0.01 for r in zf)                     # the input really is undersampled
    t = np.random.default_rng(0).random((3, 40, 32))
    p = t + 0.05 * np.random.default_rng(1).standard_normal(t.shape)
    ref = dict(nmse=ev.nmse(t[:, 4:36], p[:, 4:36]), psnr=ev.psnr(t[:, 4:36], p[:, 4:36]), ssim=ev.ssim(t[:, 4:36], p[:, 4:36]))
    got = rf.fastmri_metrics(t, p)                                        # crops to W x W itself, as fastmri.evaluate
    for k in ref: assert abs(got[k] - np.asarray(ref[k]).item()) < 1e-9, k


def test_held_out_file_and_errors(d, tmp_path):
    from medsynth_nb.own_data import held_out_subjects
    held = held_out_subjects(d["runs"] / "recon-unpaired")
    assert len(held) == 1 and held[0].files["kspace"].parent == d["root"] / "multi"
    from medsynth_nb.run_state import read_log   # validated at the end on that held-out file (55_validation)
    for exp in ("recon-unpaired", "recon-l1", "recon-hybrid"):
        last = read_log(d["runs"] / exp)[-1]
        assert last["step"] == 1 and last["val/snr"] > last["val/snr_zero_filled"] - 30, (exp, last)
    assert main(["evaluate", str(d["runs"] / "recon-unpaired"), "--out", str(tmp_path / "e")]) == 0
    assert f"| {held[0].id} | model |" in (tmp_path / "e" / "metrics.md").read_text()
    assert main(["train", "recon-l1", "--data", str(d["root"] / "multi"), "--set", "coils=8",
                 "--out", str(tmp_path / "r")]) == 2
    assert main(["train", "recon-l1", "--data", str(d["root"] / "test"), "--set", "coils=4",
                 "--out", str(tmp_path / "r")]) == 2
    assert main(["evaluate", str(d["runs"] / "recon-l1"), "--data", str(d["root"] / "test1"),
                 "--out", str(tmp_path / "e2")]) == 2
    with h5py.File(tmp_path / "nokspace.h5", "w") as f: f["ksp"] = np.zeros((1, 4, 4), np.complex64)
    with pytest.raises(ValueError, match="nokspace.h5: no 'kspace'"): rf.scan_h5(tmp_path / "nokspace.h5")
    (tmp_path / "none").mkdir()
    with pytest.raises(ValueError, match="no fastMRI .h5 files"): rf.fastmri_subjects(tmp_path / "none")
