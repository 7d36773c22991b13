"""Validation hooks of harmonize and lowdose-gan (medsynth_nb.validation): simulated validation subjects disjoint from
training and test, runs on files validated on exactly the held-out subjects, metrics that are what they say."""
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import medsynth_nb.own_data as own
import medsynth_nb.validation as val
from medsynth_nb.config import get_experiment
from medsynth_nb.data import load_nifti, samples_root, save_nifti
from medsynth_nb.engine import train
from medsynth_nb.run_state import load_checkpoint, read_log
from medsynth_nb.utils import make_generator

S = samples_root()


class Ctx:
    def __init__(self, **models):
        self.models = type("Models", (), models)()
        self.device, self.rng = torch.device("cpu"), make_generator(0)


def _spy(monkeypatch, name):
    "Record the subjects the validator of `name` is made with."
    seen = {}
    make, best = val.VALIDATORS[name]
    def spy(cfg, subjects=None):
        seen["subjects"] = None if subjects is None else [s.id for s in subjects]
        return make(cfg, subjects)
    monkeypatch.setitem(val.VALIDATORS, name, (spy, best))
    return seen


@pytest.fixture(scope="module")
def brats(tmp_path_factory):
    root = tmp_path_factory.mktemp("brats")
    a15, aff, _ = load_nifti(S / "mprage_1.5T.nii.gz"); a3 = load_nifti(S / "mprage_3T.nii.gz")[0]
    for k in range(4):
        d = root / f"sub-{k:02d}"; d.mkdir()
        save_nifti(d / "t1.nii.gz", np.roll(a15, 2 * k, 1), aff); save_nifti(d / "t2.nii.gz", np.roll(a3, 2 * k, 1), aff)
    return root


def test_harmonize_on_files_is_validated_on_the_held_out_subject(brats, tmp_path, monkeypatch):
    seen = _spy(monkeypatch, "harmonize")
    res = train("harmonize", "smoke", out=tmp_path / "h", steps=2, progress=False, dataset=str(brats),
                dataset_roles="source=t1,target=t2", val_fraction=0.25, val_every=1)
    assert seen["subjects"] == [s.id for s in own.held_out_subjects(res.out)] and len(seen["subjects"]) == 1
    rows = [r for r in read_log(res.out) if "val/translation_mse" in r]
    assert [r["step"] for r in rows] == [1, 2]
    assert json.loads((res.out / "best.json").read_text())["metric"] == "val/translation_mse"
    assert sorted(p.name for p in (res.out / "samples").iterdir()) == ["step_00000001.png", "step_00000002.png"]


def test_nothing_held_out_means_no_validation(brats, tmp_path):
    res = train("harmonize", "smoke", out=tmp_path / "h", steps=1, progress=False, dataset=str(brats),
                dataset_roles="source=t1,target=t2", val_fraction=0.0)
    assert not any(k.startswith("val/") for r in read_log(res.out) for k in r)


def test_simulated_validation_subjects_are_neither_training_nor_test(tmp_path):
    cfg = get_experiment("harmonize").config("smoke", subject_seed=6999, n_subjects=3)   # 6999..7001 hits VAL_SEEDS
    with pytest.raises(ValueError, match=r"seeds: expected validation subjects disjoint .*\[7000, 7001\]"):
        val.harmonize_validator(cfg)(Ctx(model=torch.nn.Identity()))
    lcfg = get_experiment("lowdose-gan").config("smoke", subject_seed=7001, train_subjects=1)
    with pytest.raises(ValueError, match=r"\[7001\] in both"):
        val.lowdose_validator(lcfg)(Ctx(generator=torch.nn.Identity()))


def test_harmonize_translation_mse_compares_the_translation_with_the_target():
    "Durrer's oracle translates to the source itself: the metric must be the source-vs-target MSE in the target's brain."
    from medsynth_nb.harmonize import OracleDenoiser, brain_mask, harmonization_data, masked_mse
    cfg = get_experiment("harmonize").config("smoke")
    with torch.no_grad(): out = val.harmonize_validator(cfg)(Ctx(model=OracleDenoiser(cfg.scheduler())))
    b = val.validation_slices(harmonization_data(cfg.replace(subject_seed=val.VAL_SEEDS[0], n_subjects=2)), 4)
    mask = torch.stack([brain_mask(t[0]) for t in b["target"]])[:, None]
    ref = float(masked_mse(b["source"], b["target"], mask))
    assert ref > 1e-3 and float(out["translation_mse"]) == pytest.approx(ref, rel=1e-4)
    assert torch.equal(out["translated"].clamp(0, 1), out["translated"])   # in Durrer's [0, 1] range


def test_lowdose_l1_is_the_error_to_the_real_low_dose(tmp_path):
    "A generator with zero residual synthesises the native image: l1 = mean |y_LD| over the fixed crops."
    from medsynth_nb.lowdose import build_networks
    cfg = get_experiment("lowdose-gan").config("smoke", train_subjects=2, ce_fraction=0.5)
    G, _ = build_networks(cfg)
    for p in G.parameters(): torch.nn.init.zeros_(p)
    hook = val.lowdose_validator(cfg)
    with torch.no_grad(): a, b = hook(Ctx(generator=G)), hook(Ctx(generator=G))
    assert torch.equal(a["real"], b["real"])                                   # the same crops at every call
    assert torch.equal(a["synthetic"], a["native"])
    # the crops, drawn independently: the validation subjects' series, the config's crop, the run's seed
    from medsynth_nb.lowdose import DoseCropStream, normalized_series, simulate_dose_series
    crops = DoseCropStream(normalized_series(simulate_dose_series(val.VAL_SEEDS)), cfg.dims, cfg.crop,
                           ce_fraction=cfg.ce_fraction)(8, make_generator(cfg.seed))
    assert torch.equal(a["native"], crops["x_NA"]) and torch.equal(a["standard"], crops["x_SD"])
    assert torch.equal(a["real"], crops["x_NA"] + crops["y_LD"])
    ref = crops["y_LD"].abs()
    assert float(a["l1"]) == pytest.approx(float(ref.mean()), rel=1e-6) and float(ref.mean()) > 0
    ce = (a["standard"] >= 1.1 * a["native"]) & (a["native"] > 0)
    assert ce.any() and float(a["l1_ce"]) == pytest.approx(float(ref[ce].mean()), rel=1e-6)


def test_lowdose_on_files_is_validated_on_the_held_out_subject(tmp_path, monkeypatch):
    csv_path = tmp_path / "doses.csv"
    csv_path.write_text("subject,dose,path,field\n" + "".join(
        f"s{B}T,{d},{(S / f'dose_{B}T_d{round(100 * d):03d}.nii.gz').resolve()},{B}\n"
        for B in ("1.5", "3") for d in (0, 0.1, 0.33, 1)))
    seen = _spy(monkeypatch, "lowdose-gan")
    res = train("lowdose-gan", "smoke", out=tmp_path / "l", steps=2, progress=False, dataset=str(csv_path),
                val_fraction=0.5, val_every=1)
    assert seen["subjects"] == [s.id for s in own.held_out_subjects(res.out)]
    best = json.loads((res.out / "best.json").read_text())
    rows = {r["step"]: r for r in read_log(res.out)}
    assert best["metric"] == "val/l1" and best["value"] == min(rows[s]["val/l1"] for s in (1, 2))
    assert load_checkpoint(res.out / "best.pt")["step"] == best["step"]


@pytest.mark.parametrize("name, metric", [("recon-unpaired", "val/snr"), ("recon-l1", "val/snr"),
                                          ("patchinv-uapi", "val/ssim"), ("lip-car", "val/ssim")])
def test_every_experiment_family_validates_while_training(tmp_path, name, metric):
    res = train(name, "smoke", out=tmp_path / "r", steps=2, progress=False, val_every=1)
    rows = [r for r in read_log(res.out) if metric in r]
    assert [r["step"] for r in rows] == [1, 2]
    best = json.loads((res.out / "best.json").read_text())
    assert best["metric"] == metric and best["higher"] and best["value"] == max(r[metric] for r in rows)
    assert len(list((res.out / "samples").glob("step_*.png"))) == 2


def test_recon_scores_the_generator_not_the_zero_filled_image():
    "An identity-like G returning the zero-filled image scores exactly the zero-filled SNR; a perfect G scores higher."
    from medsynth_nb.kspace import zero_filled
    from fastcore.basics import AttrDict
    cfg = get_experiment("recon-unpaired").config("smoke")
    hook = val.recon_validator(cfg)
    class ZF(torch.nn.Module):
        def forward(self, y, mask, maps): return zero_filled(y, mask, maps)
    with torch.no_grad(): out = hook(AttrDict(models=AttrDict(generator=ZF()), device=torch.device("cpu")))
    assert out["snr"] == out["snr_zero_filled"]
    assert torch.equal(out["reconstruction"], out["zero_filled"])


def test_unpaired_files_are_not_validated():
    assert val.patchinv_validator(get_experiment("patchinv-pi").config("smoke"), subjects=[]) is None


def test_recon_patchinv_lipcar_metrics_against_independent_references():
    "Known networks on the validation slices, simulated again here: the hooks' numbers are the references'."
    from fastcore.basics import AttrDict
    from medsynth_nb.kspace import zero_filled
    from medsynth_nb.lip import simulate_lipcar, ssim_loss
    from medsynth_nb.patchinv import scores, task_pairs
    from medsynth_nb.recon import measure, recon_scores, recon_setup, simulate_set
    cpu = torch.device("cpu")
    # recon: G returns 0.99 x (a known 1 % error); the zero-filled SNR from an independent measurement
    rc = get_experiment("recon-hybrid").config("smoke")
    x = simulate_set(val.VAL_SEEDS, rc.shape, 2, rc.deform)
    mask, maps = recon_setup(rc.shape, rc.acceleration, rc.coils, rc.mask_seed)
    class Truth(torch.nn.Module):
        def forward(self, y, m, s): return 0.99 * x
    with torch.no_grad(): r = val.recon_validator(rc)(AttrDict(models=AttrDict(model=Truth()), device=cpu))
    assert r["snr"] == pytest.approx(recon_scores(0.99 * x, x)["snr"], abs=1e-4)
    assert r["snr_zero_filled"] == recon_scores(zero_filled(measure(x, mask, maps), mask, maps), x)["snr"]
    # patchinv: G negates its input; scored against the paired target
    pc = get_experiment("patchinv-pi").config("smoke")
    px, py = task_pairs(pc.task, val.VAL_SEEDS, pc.size, 2, pc.deform, pc.acceleration, pc.center_fraction)
    class Neg(torch.nn.Module):
        def forward(self, t): return -t, torch.ones_like(t)
    with torch.no_grad(): p = val.patchinv_validator(pc)(AttrDict(models=AttrDict(generator=Neg()), device=cpu))
    assert (p["ssim"], p["psnr"]) == tuple(scores(-px, py).values()) and p["ssim"] != scores(px, py)["ssim"]
    # lip-car: Ψ_H2L(x_H) = x_H against x_L, Ψ_L2H(x_L) = x_L against x_H
    lc = get_experiment("lip-car").config("smoke", networks=("H2L", "L2H"))
    d = simulate_lipcar(val.VAL_SEEDS, 2, low_dose=lc.low_dose)
    class Pick(torch.nn.Module):
        def forward(self, t): return t[:, :1]
    with torch.no_grad(): q = val.lipcar_validator(lc)(AttrDict(models=AttrDict(H2L=Pick(), L2H=Pick()), device=cpu))
    ref = float(1 - ssim_loss(d["high"], d["low"]))
    assert float(q["ssim_H2L"]) == pytest.approx(ref, abs=1e-6) and float(q["ssim_L2H"]) == pytest.approx(ref, abs=1e-6)
    assert ref < 0.999   # x_L and x_H differ: a wrong target could not match by accident
