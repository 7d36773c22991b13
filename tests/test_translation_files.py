"Lesson 54: patch-invariant translation trained on two unpaired folders, applied to NIfTI scans and evaluated."
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from nibabel.testing import data_path

from medsynth_nb.cli import main
from medsynth_nb.config import get_experiment
from medsynth_nb.data import load_nifti, save_nifti
from medsynth_nb.own_data import DATA_SOURCES, check_data, held_out_subjects
from medsynth_nb.patchinv import _contrast_volumes, contrast_slices, scores, task_pairs, translate, unpaired_stream
from medsynth_nb.phantom import axial_slices
from medsynth_nb.sources import SIMULATOR_GRID, Subject, conform
from medsynth_nb.translation_files import (UnpairedFileStream, central_slices, evaluate_translation, from_model,
                                           load_translator, split_domains, to_model, apply_translator,
                                           unpaired_subjects)

SAMPLES = Path(__file__).resolve().parent.parent / "data_samples"
ANAT = Path(data_path) / "anatomical.nii"   # a real T1 scan, LAS, 33 x 41 x 25
N, D = 3, 16


def _sim(path: Path, seed: int, contrast: str, n: int = N) -> Path:
    "The simulator's subject as a NIfTI on its grid (its n lesson slices, zeros elsewhere)."
    aff = conform(SAMPLES / "mprage_1.5T.nii.gz", SIMULATOR_GRID)[1]
    vol = np.zeros(SIMULATOR_GRID.shape, np.float32)
    vol[:, :, central_slices(SIMULATOR_GRID.shape[2], n)] = _contrast_volumes(seed, n, False, 25.0, "icbm152")[contrast]
    return save_nifti(path, vol, aff)


@pytest.fixture(scope="module")
def sim_folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("sim")
    for s in (0, 1): _sim(root / "t1" / f"s{s}_T1.nii.gz", s, "t1w")
    for s in (1000, 1001, 1002): _sim(root / "t2" / f"s{s}_T2.nii.gz", s, "t2w")
    return root


@pytest.fixture(scope="module")
def ixi(tmp_path_factory):
    "IXI-like folders of real scans: the same 4 subjects in both (MPRAGE 1.5 T as 'T1', 3 T as 'T2', shifted)."
    root = tmp_path_factory.mktemp("ixi")
    a15, aff, _ = load_nifti(SAMPLES / "mprage_1.5T.nii.gz"); a3 = load_nifti(SAMPLES / "mprage_3T.nii.gz")[0]
    for k in range(4):
        save_nifti(root / "T1" / f"IXI{k:03d}-HH-{k}-T1.nii.gz", np.roll(a15, 3 * k, 1), aff)
        save_nifti(root / "T2" / f"IXI{k:03d}-HH-{k}-T2.nii.gz", np.roll(a3, 3 * k, 1), aff)
    return root


def test_slices_equal_the_simulator(sim_folders):
    "to_model on the conformed file = contrast_slices of the same subject, bit for bit (orientation, resize, range)."
    vol = torch.from_numpy(conform(sim_folders / "t1" / "s1_T1.nii.gz", SIMULATOR_GRID)[0])
    x = to_model(vol, 32, central_slices(95, N))
    assert torch.equal(x, contrast_slices(1, 32, N, deform=False)["t1w"] * 2 - 1)
    assert not torch.equal(x, contrast_slices(1, 32, N, deform=False)["t2w"] * 2 - 1)


def test_central_slices_are_the_simulators():
    "The slice positions, recovered from the simulator's label slices of an undeformed subject (the template's labels)."
    from medsynth_nb import phantom as P
    full = P.tissue_labels(P.anatomy_maps("icbm152"))
    for n in (3, 8):
        lab = _contrast_volumes(0, n, False, 25.0, "icbm152")["labels"]
        zs = [[z for z in range(full.shape[2]) if np.array_equal(full[:, :, z], lab[:, :, k])] for k in range(n)]
        assert all(len(c) == 1 for c in zs) and central_slices(full.shape[2], n).tolist() == [c[0] for c in zs]


def test_stream_equals_unpaired_stream_on_the_same_volumes(sim_folders):
    "Batch for batch the simulator's unpaired_stream(domains) on the same subjects: a swapped domain or paired draws fail."
    subs = unpaired_subjects({"source": sim_folders / "t1", "target": sim_folders / "t2"})
    assert [s.id for s in subs] == ["s0", "s1", "s1000", "s1001", "s1002"]
    src, tgt = split_domains(subs)
    stream = UnpairedFileStream(src, tgt, D, N)
    assert stream._slices == {}                                            # lazy: nothing read before a draw
    X = task_pairs("t1t2", [0, 1], D, N, deform=False)[0]
    Y = task_pairs("t1t2", [1000, 1001, 1002], D, N, deform=False)[1]
    for seed in (0, 5):
        a = stream(7, torch.Generator().manual_seed(seed))
        b = unpaired_stream(X, Y)(7, torch.Generator().manual_seed(seed))
        assert torch.equal(a["x"], b["x"]) and torch.equal(a["y"], b["y"])
    assert all(v.shape == (N, 1, D, D) for v in stream._slices.values())  # only the slices are kept


def test_stream_draws_x_and_y_independently(sim_folders):
    "Over many draws, the input slice index and the target slice index agree about as often as chance (1/6), not always."
    subs = unpaired_subjects({"source": sim_folders / "t1", "target": sim_folders / "t2"})
    src, tgt = split_domains(subs)
    stream = UnpairedFileStream(src, tgt[:2], D, N)                          # 2 subjects x 3 slices in each domain
    keys = lambda t, d: [next(j for j in range(6) if torch.equal(v, torch.cat([stream.slices(d, 0), stream.slices(d, 1)])[j]))
                         for v in t]
    b = stream(200, torch.Generator().manual_seed(1))
    same = np.mean(np.array(keys(b["x"], "x")) == np.array(keys(b["y"], "y")))
    assert 0.05 < same < 0.35, same


def test_shared_subjects_serve_one_domain(ixi):
    "IXI-like folders (every subject in both): the training domains are disjoint and the held-out subjects in neither."
    exp = get_experiment("patchinv-pi")
    cfg = exp.config("smoke", dataset=f"source={ixi / 'T1'},target={ixi / 'T2'}", val_fraction=0.25, seed=3)
    train, val = check_data(exp, cfg)
    assert len(val) == 1 and all(set(s.files) == {"source", "target"} for s in train + val)
    data = DATA_SOURCES["patchinv-pi"][1](cfg, train)
    xs, ys = ({s.id for s in data.subjects[d][0]} for d in ("x", "y"))
    assert xs and ys and not xs & ys and xs | ys == {s.id for s in train}
    assert val[0].id not in xs | ys
    with pytest.raises(ValueError, match="disjoint subjects"):
        UnpairedFileStream(train, train, D, N)                              # a paired critic is refused


def test_from_model_inverts_the_geometry():
    "Exactly at d = the padded square's side; close at the model size."
    vol = torch.from_numpy(conform(ANAT, SIMULATOR_GRID)[0])
    z = np.arange(30, 60, 7)
    assert torch.equal(from_model(axial_slices(vol, z)[:, None], vol.shape[:2]), vol[:, :, torch.from_numpy(z)])
    back = from_model(to_model(vol, 64, z), vol.shape[:2])                 # [-1, 1] per slice: compare shapes of signal
    ref = vol[:, :, torch.from_numpy(z)]
    assert np.corrcoef(back.flatten(), ref.flatten())[0, 1] > 0.9


def test_train_apply_evaluate_through_the_cli(ixi, tmp_path):
    run = tmp_path / "run"
    assert main(["train", "patchinv-uapi", "--preset", "smoke", "--steps", "2", "--out", str(run), "--no-progress",
                 "--data", f"source={ixi / 'T1'},target={ixi / 'T2'}", "--set", "val_fraction=0.25",
                 "--set", f"slices_per_subject={N}"]) == 0
    for name, opts in (("t2.nii.gz", []), ("sigma.nii.gz", ["--option", "result=uncertainty"])):
        assert main(["apply", str(run), str(ANAT), str(tmp_path / name), *opts]) == 0
    src, t2, sg = (nib.load(str(p)) for p in (ANAT, tmp_path / "t2.nii.gz", tmp_path / "sigma.nii.gz"))
    for img in (t2, sg):
        assert img.shape == src.shape and np.allclose(img.affine, src.affine)
    assert not np.array_equal(np.asarray(t2.dataobj), np.asarray(sg.dataobj)) and np.asarray(sg.dataobj).min() >= 0
    # the file equals the applier run on the conformed scan, resampled back (the 51 path): here, one slice's values
    t = load_translator(run)
    vol = torch.from_numpy(conform(ANAT, SIMULATOR_GRID)[0])
    out = apply_translator(t, {"source": vol})
    full = vol.flatten(0, 1).amax(0) > 0
    z = np.flatnonzero(full.numpy())[::4]                                   # anatomical.nii covers 25 of the 95 slices
    assert bool((out[:, :, ~full] == 0).all())
    ref = from_model((translate(t["G"], to_model(vol, t["cfg"].size, z))[0] + 1) / 2, vol.shape[:2])
    assert torch.allclose(out[:, :, torch.from_numpy(z)], ref, atol=1e-5)
    # evaluate without --data: the run's held-out subject, which has both scans
    held = held_out_subjects(run)
    assert main(["evaluate", str(run)]) == 0
    rows = (run / "evaluation" / "metrics.csv").read_text().splitlines()
    assert rows[0].startswith("subject,method,ssim,psnr,mean_sigma,pcc_images,pcc_pixels")
    assert sorted({r.split(",")[0] for r in rows[1:]}) == sorted(s.id for s in held)


def test_evaluation_is_the_lessons_scores(sim_folders, tmp_path):
    run = tmp_path / "run"
    assert main(["train", "patchinv-pi", "--preset", "smoke", "--steps", "1", "--out", str(run), "--no-progress",
                 "--data", f"source={sim_folders / 't1'},target={sim_folders / 't2'}", "--set", "val_fraction=0"]) == 0
    t = load_translator(run)
    vols = {r: torch.from_numpy(conform(_sim(tmp_path / f"{r}.nii.gz", 2000, c), SIMULATOR_GRID)[0])
            for r, c in (("source", "t1w"), ("target", "t2w"))}
    rows = evaluate_translation(t, vols, None, "s2000")
    z = central_slices(95, t["cfg"].slices_per_subject)
    x, y = (to_model(vols[r], t["cfg"].size, z) for r in ("source", "target"))
    assert rows[0] == dict(subject="s2000", method="input", **scores(x, y))
    assert rows[1] == dict(subject="s2000", method="pi", **scores(translate(t["G"], x)[0], y))


def test_errors(sim_folders, tmp_path):
    with pytest.raises(ValueError, match="dataset: expected 'source=FOLDER,target=FOLDER'"):
        unpaired_subjects(sim_folders / "t1")
    with pytest.raises(ValueError, match="dataset: expected 'source=FOLDER,target=FOLDER'"):
        unpaired_subjects({"t1": sim_folders / "t1", "target": sim_folders / "t2"})
    subs = unpaired_subjects({"source": sim_folders / "t1", "target": sim_folders / "t2"})
    with pytest.raises(ValueError, match="source: expected at least one training subject"):
        UnpairedFileStream([], subs, D, N)
    exp = get_experiment("patchinv-wgan")
    cfg = exp.config("smoke", dataset=str(sim_folders / "t1"))
    with pytest.raises(ValueError, match="dataset: expected 'source=FOLDER,target=FOLDER'"):
        check_data(exp, cfg)
    assert main(["train", "patchinv-wgan", "--preset", "smoke", "--out", str(tmp_path / "r"), "--data",
                 f"source={sim_folders / 't1'},target={sim_folders / 't2'}", "--set", "dataset_roles=source=t1"]) == 2


# ---- LIP-CAR from a dose series ----
from medsynth_nb.lip import apply_network, dose_slices, image_metrics, lip_car_solve, simulate_lipcar
from medsynth_nb.phantom import subject_volumes
from medsynth_nb.sources import read_layout
from medsynth_nb.translation_files import (LIPCAR_SIDE, brain_slices, dose_series, estimate_high, evaluate_lipcar,
                                           lipcar_files, lipcar_slices, lipcar_volume, load_lipcar, series_scale)


@pytest.fixture(scope="module")
def dose_csv(tmp_path_factory):
    "data_samples' two dose series (1.5 T, 3 T) as a dose-csv: native, 0.1, 0.2, standard."
    root = tmp_path_factory.mktemp("doses")
    csv = root / "doses.csv"
    csv.write_text("subject,dose,path,field\n" + "".join(
        f"sample{B}T,{d},{SAMPLES / f'dose_{B}T_d{round(100 * d):03d}.nii.gz'},{B}\n"
        for B in ("1.5", "3") for d in (0, 0.1, 0.2, 1)))
    return csv


@pytest.fixture(scope="module")
def lip_run(dose_csv, tmp_path_factory):
    run = tmp_path_factory.mktemp("liprun") / "run"
    assert main(["train", "lip-car", "--preset", "smoke", "--steps", "1", "--out", str(run), "--no-progress",
                 "--data", str(dose_csv), "--set", "val_fraction=0.5"]) == 0
    return run


def test_lipcar_slices_equal_the_simulator(tmp_path):
    "The simulator's subject written as a dose series: simulate_lipcar's triples at its slices and scale, bit for bit."
    aff = conform(SAMPLES / "mprage_1.5T.nii.gz", SIMULATOR_GRID)[1]
    sv = subject_volumes(1001, field=3.0, doses=(0.0, 0.2, 1.0), sequence="spin_echo", snr=40.0, anatomy="icbm152")
    rows = [f"s,{d},{save_nifti(tmp_path / f'd{d}.nii.gz', np.asarray(img), aff)},3" for d, img in zip((0, 0.2, 1), sv["images"])]
    (tmp_path / "d.csv").write_text("subject,dose,path,field\n" + "\n".join(rows) + "\n")
    v = dose_series(read_layout(tmp_path / "d.csv")[0], 0.2)
    scale = series_scale(v["pre"], v["low"])
    mine, ref = lipcar_slices(v, dose_slices(1001, 3)["z_index"], scale), simulate_lipcar([1001], 3, scale=scale)
    for k in ("pre", "low", "high"): assert torch.equal(mine[k], ref[k]), k
    assert not torch.equal(mine["low"], ref["high"])
    shifted = lipcar_slices({k: t + 5 for k, t in v.items()}, dose_slices(1001, 3)["z_index"], (scale[0] + 5, scale[1] + 5))
    inside = (..., slice(5, 5 + 117), slice(14, 14 + 99))                  # the 117 x 99 slice inside its zero padding
    for k in ("pre", "low", "high"): assert torch.allclose(shifted[k][inside], mine[k][inside], atol=1e-5)   # offset gone


def test_lipcar_data_source_is_the_training_subjects(dose_csv):
    exp = get_experiment("lip-car")
    cfg = exp.config("smoke", dataset=str(dose_csv), val_fraction=0.5, crop=0)
    train, val = check_data(exp, cfg)
    assert len(train) == len(val) == 1
    ds = lipcar_files(cfg, train)
    v = dose_series(train[0], cfg.low_dose)
    ref = lipcar_slices(v, brain_slices(v["pre"], cfg.slices_per_subject), series_scale(v["pre"], v["low"]))
    assert len(ds) == cfg.slices_per_subject
    for i in range(len(ds)):
        for k in ("pre", "low", "high"): assert torch.equal(ds[i][k], ref[k][i])
    assert torch.equal(v["low"], torch.from_numpy(conform(train[0].files["dose_0.2"], SIMULATOR_GRID)[0]))


def test_lipcar_apply_on_another_grid(lip_run, tmp_path):
    "A scan on its own grid (anatomical.nii, LAS) as x_P and 0.8 x_P as x_L: the estimate has its shape and affine."
    a = nib.load(str(ANAT))
    low = save_nifti(tmp_path / "low.nii.gz", np.asarray(a.dataobj, np.float32) * 0.8, a.affine)
    for m in ("NN-PL2H", "LIP-CAR"):
        assert main(["apply", str(lip_run), str(ANAT), str(tmp_path / f"{m}.nii.gz"), "--with", f"low={low}",
                     "--option", f"method={m}", "--option", "iters=2"]) == 0
        out = nib.load(str(tmp_path / f"{m}.nii.gz"))
        assert out.shape == a.shape and np.allclose(out.affine, a.affine)
    # on the grid: the network's estimate of the mapped slices, mapped back to the scans' units
    l = load_lipcar(lip_run)
    vols = {"native": torch.from_numpy(conform(ANAT, SIMULATOR_GRID)[0])}
    vols["low"] = 0.8 * vols["native"]
    out = lipcar_volume(l, vols, method="NN-PL2H")
    lo, hi = series_scale(vols["native"], vols["low"])
    z = np.flatnonzero(vols["native"].flatten(0, 1).amax(0).numpy() > lo)
    b = lipcar_slices({"pre": vols["native"], "low": vols["low"]}, z, (lo, hi))
    ref = from_model(apply_network(l["nets"]["PL2H"], "PL2H", b) * (hi - lo) + lo, vols["native"].shape[:2], LIPCAR_SIDE)
    assert torch.allclose(out[:, :, torch.from_numpy(z)], ref, atol=1e-6 * hi)
    x_bar = apply_network(l["nets"]["PL2H"], "PL2H", b)
    assert torch.equal(estimate_high(l, b, "LIP-CAR", iters=2),
                       lip_car_solve(l["nets"]["PH2L"], b["low"], x_bar, iters=2, x_pre=b["pre"]).x)


def test_lipcar_evaluate_held_out(lip_run, dose_csv):
    held = held_out_subjects(lip_run)
    assert main(["evaluate", str(lip_run), "--option", "iters=2"]) == 0
    lines = (lip_run / "evaluation" / "metrics.csv").read_text().splitlines()
    assert lines[0] == "subject,method,ssim,psnr,rmse,brain_rmse"
    rows = {r.split(",")[1]: r.split(",") for r in lines[1:]}
    assert set(rows) == {"x_P", "x_L", "NN-L2H", "NN-PL2H", "LIP-CAR"} and rows["x_L"][0] == held[0].id
    v = dose_series(held[0], 0.2)
    b = lipcar_slices(v, brain_slices(v["pre"], 4), series_scale(v["pre"], v["low"]))
    assert float(rows["x_L"][2]) == pytest.approx(float(image_metrics(b["low"], b["high"])["ssim"].mean()), rel=1e-6)
    assert float(rows["x_P"][3]) == pytest.approx(float(image_metrics(b["pre"], b["high"])["psnr"].mean()), rel=1e-6)


def test_lipcar_errors(dose_csv, lip_run):
    s = read_layout(dose_csv)[0]
    with pytest.raises(ValueError, match="low_dose: expected a dose of subject 'sample1.5T' among"):
        dose_series(s, 0.33)
    l = load_lipcar(lip_run)
    b = {k: torch.rand(1, 1, 32, 32) for k in ("pre", "low")}
    with pytest.raises(ValueError, match="method: expected one of"):
        estimate_high(l, b, "x_L")
    with pytest.raises(ValueError, match="run: expected a run of"):
        load_translator(lip_run)


def test_file_runs_validation(lip_run):
    "lip-car on files is validated at the end on its held-out subject (55_validation): val/ssim, best.pt, samples."
    from medsynth_nb.run_state import read_log
    last = read_log(lip_run)[-1]
    assert 0 < last["val/ssim"] <= 1 and (lip_run / "best.pt").exists() and (lip_run / "samples").is_dir()
