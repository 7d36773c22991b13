"medsynth_nb.phantom: physics checks, determinism, and data_samples/ rebuilt exactly from the manifest."
import json, math, os, subprocess, sys
from pathlib import Path

import numpy as np
import pytest
import torch

import medsynth_nb.phantom as P
from medsynth_nb.data import load_manifest, verify_manifest
from medsynth_nb.utils import test_allclose
from refusals import refusal_test

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "data_samples"

def test_rebuild_reproduces_manifest_exactly(tmp_path):
    man = P.build_samples(tmp_path, anatomy_root=SAMPLES, verbose=False)
    shipped = load_manifest(SAMPLES)
    assert [e["path"] for e in man["files"]] == [e["path"] for e in shipped["files"]]
    for new, old in zip(man["files"], shipped["files"]):
        assert new["arrays"] == old["arrays"], new["path"]
    assert verify_manifest(tmp_path) == []

def test_manifest_covers_folder_and_size():
    man = load_manifest(SAMPLES)
    listed = {e["path"] for e in man["files"]}
    present = {p.name for p in SAMPLES.iterdir() if p.is_file()} - {"manifest.json", "ICBM152_LICENSE.txt", "COLIN27_LICENSE.txt"}
    assert listed == present
    assert sum(p.stat().st_size for p in SAMPLES.iterdir()) <= 20 * 2**20
    notice = (SAMPLES / "ICBM152_LICENSE.txt").read_text()
    assert "McConnell Brain Imaging Centre" in notice and "Permission to use, copy, modify" in notice
    colin = (SAMPLES / "COLIN27_LICENSE.txt").read_text()
    assert "Holmes" in colin and "Permission to use, copy, modify" in colin and "mricron-data" in colin
    for e in man["files"]:
        assert e["meaning"] and all(len(a["sha256"]) == 64 for a in e["arrays"].values())

def test_cli_check():
    r = subprocess.run([sys.executable, "-m", "medsynth_nb.phantom", "--check", "--out", str(SAMPLES)], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr

def test_library_does_not_need_nilearn():
    code = "import sys, medsynth_nb.phantom as P; P.load_anatomy(); print('nilearn' in sys.modules)"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert r.stdout.strip() == "False", r.stderr

def test_mprage_closed_form_matches_bloch_and_contrast_order():
    def bloch(T1, TR, TI, flip_deg, echo_spacing, n_readouts, n_tr=30, **_):
        a = math.radians(flip_deg); kc = n_readouts // 2; TA = TI - kc * echo_spacing
        rel = lambda M, t: M * math.exp(-t / T1) + 1 - math.exp(-t / T1)
        M = 1.0
        for _ in range(n_tr):
            M = rel(-M, TA)
            for k in range(n_readouts):
                if k == kc: s = M * math.sin(a)
                M = rel(M * math.cos(a), echo_spacing)
            M = rel(M, TR - TA - n_readouts * echo_spacing)
        return s
    for B, prot in P.MPRAGE_PROTOCOLS.items():
        for T1 in (500.0, 838.0, 1607.0, 4300.0):
            assert P.mprage_signal(1.0, T1, 1e12, **{**prot, "TE": 0.0}) == pytest.approx(bloch(T1, **prot), rel=1e-9, abs=1e-12)
    r = {B: P.tissue_signals(B, "mprage")["gm"] / P.tissue_signals(B, "mprage")["wm"] for B in P.FIELDS}
    assert r[3.0] < r[1.5] < 1
    assert 0.6 < r[1.5] < 0.8 and 0.4 < r[3.0] < 0.6  # DESIGN expects ~0.71 / ~0.55

def test_enhancement_monotone_stronger_at_3t_and_for_gadobutrol():
    doses = np.linspace(0, 1, 11)
    e = {(a, B): np.array([P.tissue_signals(B, "spgr", d, a)["rim"] for d in doses]) for a in P.RELAXIVITY for B in P.FIELDS}
    for v in e.values(): assert np.all(np.diff(v) > 0)
    for a in P.RELAXIVITY: assert np.all(e[a, 3.0][1:] / e[a, 3.0][0] > e[a, 1.5][1:] / e[a, 1.5][0])
    for B in P.FIELDS: assert np.all(e["gadobutrol", B][1:] > e["gadoterate", B][1:])
    T1_0, T1_d = P.relaxation("rim", 1.5)[0], P.relaxation("rim", 1.5, dose=0.5)[0]
    assert 1000 / T1_d - 1000 / T1_0 == pytest.approx(4.78 * 0.5 * 0.1, rel=1e-12)

def test_rician_background_and_determinism():
    z = np.zeros((200, 500))
    n = P.add_rician_noise(z, 2.0, seed=0)
    assert n.mean() == pytest.approx(2.0 * math.sqrt(math.pi / 2), rel=0.01)
    assert np.array_equal(n, P.add_rician_noise(z, 2.0, seed=0)) and not np.array_equal(n, P.add_rician_noise(z, 2.0, seed=1))
    with pytest.raises(ValueError, match="sigma"): P.add_rician_noise(z, -1)

def test_multicoil_kspace_uses_the_library_coils_and_fft():
    "One coil simulator, one fft2c, one rss (medsynth_nb.kspace): the phantom's k-space is built from them."
    from medsynth_nb.kspace import birdcage_maps, fft2c, ifft2c, rss
    assert not hasattr(P, "_fft2c") and not hasattr(P, "_ifft2c") and P.birdcage_maps is birdcage_maps and P.rss is rss
    img = np.random.default_rng(1).random((2, 16, 16))
    k, maps, xc = P.multicoil_kspace(img, 4, 0.0, seed=0)
    assert k.shape == (2, 4, 16, 16) and k.dtype == np.complex64 and maps.dtype == np.complex128
    test_allclose(torch.from_numpy(maps), birdcage_maps((16, 16), 4, dtype=torch.complex128), rtol=0, atol=0)
    test_allclose(torch.from_numpy(k), fft2c(torch.from_numpy(maps[None] * xc[:, None])).to(torch.complex64), rtol=0, atol=0)
    test_allclose(rss(ifft2c(torch.from_numpy(k.astype(np.complex128))))[:, 0], torch.from_numpy(img), rtol=0, atol=1e-5)
    test_allclose(np.abs(xc), img, rtol=1e-12, atol=0)
    with pytest.raises(ValueError, match="real \\(slices, H, W\\)"): P.multicoil_kspace(img[0])

def test_bad_physics_inputs():
    with pytest.raises(ValueError, match="field"): P.relaxation("gm", 7.0)
    with pytest.raises(ValueError, match="tissue"): P.relaxation("bone", 3.0)
    with pytest.raises(ValueError, match="sequence"): P.tissue_signals(3.0, "flair")
    with pytest.raises(ValueError, match="does not fit"): P.mprage_signal(1, 1000, 80, 1000, 300, 3, 9, 7, 160)
    with pytest.raises(ValueError, match="unknown tissue"): P.simulate_image({"bone": np.zeros((2, 2, 2))})

def test_random_subject_seeded_and_global_rng_untouched():
    before_t, before_np = torch.random.get_rng_state(), np.random.get_state()[1].copy()
    a = P.random_subject(3, field=1.5, doses=(0.0, 1.0))
    assert torch.equal(torch.random.get_rng_state(), before_t) and np.array_equal(np.random.get_state()[1], before_np)
    b = P.random_subject(3, field=1.5, doses=(0.0, 1.0))
    assert torch.equal(a["images"], b["images"]) and torch.equal(a["labels"], b["labels"])
    assert (a["labels"] == P.LABELS["rim"]).any() and all(0.9 <= v <= 1.1 for v in a["t1_scale"].values())
    rim = a["labels"] == P.LABELS["rim"]
    assert a["images"][1][rim].mean() > a["images"][0][rim].mean()
    ds = P.RandomDoseSeriesDataset(1000, seed=5, slice_axis=0)
    it = ds[999]
    assert len(ds) == 1000 and it["x_NA"].shape == (1, 117, 95)
    with pytest.raises(IndexError): ds[1000]


# --- held-out anatomy ------------------------------------------------------------------------------------------
def _labels(fr): return P.tissue_labels({t: fr[t] for t in ("csf", "gm", "wm")})

def test_heldout_anatomy_is_distinct_from_every_training_subject():
    icbm, colin = P.load_anatomy(SAMPLES), P.load_anatomy(SAMPLES, "colin27")
    train = [_labels(P.deform({t: icbm[t] for t in ("csf", "gm", "wm")}, 2.0, seed=s)) for s in range(3)]
    tpl = _labels(icbm)
    for l in train:  # training subjects are warps of one template: close to it
        d = P.anatomy_dice(l, tpl); assert min(d.values()) > 0.7, d
    held = [_labels(colin)] + [_labels(P.deform({t: colin[t] for t in ("csf", "gm", "wm")}, 2.0, seed=s)) for s in (0, 1)]
    for h in held:
        for l in train + [tpl]:
            d = P.anatomy_dice(h, l); assert max(d.values()) < 0.75, d

def test_random_subject_from_heldout_anatomy():
    a = P.random_subject(3, field=3.0, doses=(0.0,), anatomy="colin27")
    b = P.random_subject(3, field=3.0, doses=(0.0,))
    assert a["images"].shape == b["images"].shape
    assert max(P.anatomy_dice(a["labels"], b["labels"]).values()) < 0.75
    with pytest.raises(ValueError, match="expected one of"): P.random_subject(3, anatomy="mni305")

def test_anatomy_dice_hand_computed():
    a = np.array([[[2, 2, 3, 0]]]); b = np.array([[[2, 3, 3, 3]]])
    d = P.anatomy_dice(a, b)
    assert d == {"gm": pytest.approx(2 * 1 / 3), "wm": pytest.approx(2 * 1 / 4)}
    with pytest.raises(ValueError, match="one shape"): P.anatomy_dice(a, b[..., :2])

@pytest.mark.skipif(not Path("/usr/share/mricron/templates/ch2bet.nii.gz").exists(), reason="optional: apt-get install mricron-data")
def test_colin27_derivation_reproduces_shipped_maps(tmp_path):
    for f in P.ANATOMY_FILES.values(): (tmp_path / f).write_bytes((SAMPLES / f).read_bytes())
    P.derive_anatomy_from_mricron(tmp_path)
    for f in P.COLIN27_FILES.values():
        new, old = (P.load_nifti(d / f, dtype=None)[0] for d in (tmp_path, SAMPLES))
        assert np.abs(new.astype(int) - old.astype(int)).max() <= 1, f  # uint8 rounding of float sums


# ---------- one validation vocabulary: every refusal at the boundary ----------
_F = {t: np.full((6, 7, 8), v) for t, v in (("csf", 0.2), ("gm", 0.5), ("wm", 0.3))}
BAD = [  # (call, exception, message fragment)
    (lambda: P.load_anatomy(SAMPLES, "mni305"), ValueError, "name: expected one of ('icbm152', 'colin27'), got 'mni305'"),
    (lambda: P.partial_volume_fractions(np.ones((3, 3, 3)), n_iter=2.0), TypeError, "n_iter: expected an int, got 2.0"),
    (lambda: P.partial_volume_fractions(np.full((2, 2, 2), np.nan)), ValueError, "t1: expected finite values, found 8 NaN/inf"),
    (lambda: P.resample_to_grid(np.ones((2, 2, 2)), np.eye(4), np.eye(4), (2, 2, 2), sub=0), ValueError,
     "sub: expected an int >= 1, got 0"),
    (lambda: P.resample_to_grid(np.ones((2, 2, 2)), np.zeros((4, 4)), np.eye(4), (2, 2, 2)), ValueError,
     "src_affine: expected an invertible matrix"),
    (lambda: P.resample_to_grid(np.ones((2, 2, 2)), np.eye(4), np.eye(4), (2, 2.0, 2)), TypeError,
     "dst_shape[1]: expected an int, got 2.0"),
    (lambda: P.relaxation("gm", 3.0, dose=3.5), ValueError, "dose: expected a number in [0, 3], got 3.5"),
    (lambda: P.relaxation("gm", 3.0, t1_scale=0.0), ValueError, "t1_scale: expected a number > 0, got 0"),
    (lambda: P.relaxation("gm", True), TypeError, "field: expected a real number, got True (bool)"),
    (lambda: P.relaxation("gm", float("nan")), ValueError, "field: expected a finite number, got nan"),
    (lambda: P.mprage_signal(1, 1000, 80, 2300, 900, 3, 9, 6, 160.0), TypeError, "n_readouts: expected an int, got 160.0"),
    (lambda: P.mprage_signal(1, 1000, 80, 2300, 900, 3, 9, 0, 160), ValueError, "echo_spacing: expected a number > 0, got 0"),
    (lambda: P.tissue_signals(3.0, "spgr", protocol=dict(TI=900.0)), ValueError, "protocol key: expected one of ('TR', 'TE', 'flip_deg')"),
    (lambda: P.tissue_signals(3.0, "spgr", protocol=dict(TE=-1.0)), ValueError, "protocol['TE']: expected a number >= 0, got -1"),
    (lambda: P.tissue_signals(3.0, "spgr", t1_scale=dict(bone=1.0)), ValueError, "t1_scale key: expected one of"),
    (lambda: P.simulate_image({}), ValueError, "fractions: expected a non-empty dict tissue -> map"),
    (lambda: P.simulate_image(dict(_F, gm=_F["gm"] * np.nan)), ValueError, "fractions['gm']: expected finite values"),
    (lambda: P.simulate_image(_F, bias=np.ones((6, 7))), ValueError, "bias: expected the fractions' shape (6, 7, 8)"),
    (lambda: P.simulate_image(_F, bias=np.full((6, 7, 8), np.inf)), ValueError, "bias: expected finite values"),
    (lambda: P.tissue_labels({"bone": np.ones(3)}), ValueError, "fractions: expected maps of some of"),
    (lambda: P.add_lesions(_F, n_lesions=1.0), TypeError, "n_lesions: expected an int, got 1.0 (float)"),
    (lambda: P.add_lesions(_F, n_lesions=-1), ValueError, "n_lesions: expected an int >= 0, got -1"),
    (lambda: P.add_lesions(_F, core_radius=(3.0, 1.0)), ValueError, "core_radius: expected lo <= hi, got (3.0, 1.0)"),
    (lambda: P.add_lesions(_F, rim_width=(0.0, 1.0)), ValueError, "rim_width[0]: expected a number > 0, got 0"),
    (lambda: P.add_lesions(_F, irregularity=float("inf")), ValueError, "irregularity: expected a finite number, got inf"),
    (lambda: P.add_lesions({"gm": _F["gm"]}), ValueError, "fractions: expected maps 'csf', 'gm' and 'wm', got \"missing ['csf', 'wm']\""),
    (lambda: P.bias_field((4, 4, 4), float("nan")), ValueError, "strength: expected a finite number, got nan"),
    (lambda: P.bias_field((4, 0, 4)), ValueError, "shape[1]: expected an int >= 1, got 0"),
    (lambda: P.add_rician_noise(np.ones(3), float("nan")), ValueError, "sigma: expected a finite number, got nan"),
    (lambda: P.add_rician_noise(np.array([1.0, np.inf]), 0.1), ValueError, "image: expected finite values, found 1 NaN/inf"),
    (lambda: P.smooth_phase((4,)), ValueError, "shape: expected at least (H, W), got (4,)"),
    (lambda: P.smooth_phase((4, 4), max_phase=float("nan")), ValueError, "max_phase: expected a finite number"),
    (lambda: P.multicoil_kspace(np.ones((1, 4, 4)), n_coils=True), TypeError, "n_coils: expected an int, got True (bool)"),
    (lambda: P.multicoil_kspace(np.ones((1, 4, 4)), noise_sigma=-0.1), ValueError, "noise_sigma: expected a number >= 0"),
    (lambda: P.multicoil_kspace(np.full((1, 4, 4), np.nan)), ValueError, "image: expected finite values"),
    (lambda: P.deform(_F, grid=1), ValueError, "grid: expected an int >= 2, got 1"),
    (lambda: P.deform(_F, grid=5.0), TypeError, "grid: expected an int, got 5.0 (float)"),
    (lambda: P.deform(_F, amplitude=-1.0), ValueError, "amplitude: expected a number >= 0, got -1"),
    (lambda: P.deform({t: v[:1] for t, v in _F.items()}), ValueError, "fractions: expected maps at least 2 voxels"),
    (lambda: P.random_subject(1.5), TypeError, "seed: expected an int, got 1.5 (float)"),
    (lambda: P.random_subject(True), TypeError, "seed: expected an int, got True (bool)"),
    (lambda: P.random_subject(-1), ValueError, "seed: expected an int >= 0, got -1"),
    (lambda: P.random_subject(1, field=2.0), ValueError, "field: expected one of (1.5, 3.0), got 2.0"),
    (lambda: P.random_subject(1, doses=()), ValueError, "doses: expected a non-empty sequence of dose fractions"),
    (lambda: P.random_subject(1, doses=(0.0, float("nan"))), ValueError, "doses[1]: expected a finite number, got nan"),
    (lambda: P.random_subject(1, sequence="flair"), ValueError, "sequence: expected one of ('spgr', 'spin_echo', 'mprage')"),
    (lambda: P.random_subject(1, n_lesions=(3, 1)), ValueError, "n_lesions: expected lo <= hi, got (3, 1)"),
    (lambda: P.random_subject(1, n_lesions=(1, 2.5)), TypeError, "n_lesions[1]: expected an int, got 2.5 (float)"),
    (lambda: P.random_subject(1, snr=0.0), ValueError, "snr: expected a number > 0, got 0"),
    (lambda: P.random_subject(1, bias_strength=-0.1), ValueError, "bias_strength: expected a number >= 0"),
    (lambda: P.random_subject(1, deform_voxels=float("inf")), ValueError, "deform_voxels: expected a finite number"),
    (lambda: P.random_subject(1, t1_jitter=1.0), ValueError, "t1_jitter: expected a number in [0, 1), got 1"),
    (lambda: P.random_subject(1, anatomy="mni305"), ValueError, "anatomy: expected one of ('icbm152', 'colin27'), got 'mni305'"),
    (lambda: P.RandomDoseSeriesDataset(2.0), TypeError, "n: expected an int, got 2.0 (float)"),
    (lambda: P.RandomDoseSeriesDataset(True), TypeError, "n: expected an int, got True (bool)"),
    (lambda: P.RandomDoseSeriesDataset(2, seed=0.5), TypeError, "seed: expected an int, got 0.5"),
    (lambda: P.RandomDoseSeriesDataset(2, fields=(2.0,)), ValueError, "fields[0]: expected one of (1.5, 3.0), got 2.0"),
    (lambda: P.RandomDoseSeriesDataset(2, doses=(1.5,)), ValueError, "doses[0]: expected a number in [0, 1], got 1.5"),
    (lambda: P.RandomDoseSeriesDataset(2, doses=()), ValueError, "fields/doses: expected at least one field and one dose"),
    (lambda: P.RandomDoseSeriesDataset(2, slice_axis=3), ValueError, "slice_axis: expected an int in [0, 2], got 3"),
    (lambda: P.RandomDoseSeriesDataset(2)[1.0], TypeError, "i: expected an int, got 1.0 (float)"),
    (lambda: P.RandomDoseSeriesDataset(2, foo=1), ValueError, "subject_kw: expected arguments of random_subject"),
    (lambda: P.RandomDoseSeriesDataset(2, snr=-1.0), ValueError, "snr: expected a number > 0, got -1"),
    (lambda: P.tissue_signals(3.0, "spgr", protocol=dict(TR=0.0)), ValueError, "protocol['TR']: expected a number > 0, got 0"),
    (lambda: P.tissue_signals(3.0, "spgr", protocol=dict(flip_deg=0)), ValueError, "protocol['flip_deg']: expected a number > 0"),
    (lambda: P.build_samples("/tmp/never", seed=0.5), TypeError, "seed: expected an int, got 0.5 (float)"),
]


test_bad_input_matrix = refusal_test(BAD)


def test_random_subject_snr_inf_is_noise_free():
    "snr=math.inf means no noise (LIP-CAR's clean reference set uses it); NaN, 0 and -inf are refused."
    import math
    from medsynth_nb.phantom import random_subject
    a = random_subject(3, doses=(0.0,), snr=math.inf, deform_voxels=0.0)["images"][0]
    assert np.isfinite(a).all() and a.max() > 0
    for bad in (float("nan"), 0.0, -math.inf):
        with pytest.raises(ValueError, match="snr: expected"): random_subject(3, snr=bad)


def test_anatomy_maps_is_a_read_only_cache_of_load_anatomy():
    "The simulators share one read-only copy per anatomy; it equals a fresh load and cannot be changed by a caller."
    a, b = P.anatomy_maps("colin27"), P.anatomy_maps("colin27")
    assert a is b
    fresh = P.load_anatomy(None, "colin27")
    for k in ("t1", "gm", "wm", "csf", "mask"):
        assert np.array_equal(a[k], fresh[k]) and not a[k].flags.writeable
    with pytest.raises(ValueError, match="read-only"): a["gm"][0, 0, 0] = 1.0
    with pytest.raises(ValueError, match="name: expected one of"): P.anatomy_maps("mni305")


# ---- one subject pipeline (issue 18): one orientation, one bounded cache, build_samples split into its writers ----
def test_axial_slices_orientation_anterior_up_left_on_the_left():
    "A marker at the anterior end of y lands in the top row; one at the smallest x (patient's left) in the first column."
    vol = np.zeros((6, 10, 4), np.float32)
    vol[:, -1, :] = 1.0          # anterior end (largest y: the MNI grid is RAS)
    vol[0, :, :] += 2.0          # patient's left (smallest x)
    s = P.axial_slices(vol)
    assert s.shape == (4, 10, 10)
    rows = s[0].sum(1)
    assert int(rows.argmax()) == 0 and float(rows[0]) > float(rows[1:].max())   # anterior row on top
    assert int(s[0].sum(0).argmax()) == 2                                        # first unpadded column: left
    assert float(s[:, :, :2].abs().sum()) == 0 and float(s[:, :, 8:].abs().sum()) == 0   # centred zero padding
    torch.testing.assert_close(P.axial_slices(vol, z=[3, 1]), s[[3, 1]])
    # integer label maps are padded, never resized; float volumes resize with antialiasing and stay >= 0
    assert P.axial_slices(vol.astype(np.int64), side=12).dtype == torch.int64
    assert P.axial_slices(vol, size=(5, 3)).shape == (4, 5, 3) and float(P.axial_slices(vol, size=5).min()) >= 0

def test_axial_slices_on_the_anatomy_cerebellum_at_the_bottom():
    "On the real template: the inferior slices' tissue (cerebellum, at the back of the head) sits in the lower rows."
    m = P.anatomy_maps()["mask"]
    assert (np.sign(np.diag(P.anatomy_maps()["affine"])[:3]) == 1).all()   # RAS grid
    s = P.axial_slices(m, z=[8, 10, 12]).numpy()
    rows = s.sum((0, 2))
    centre = (rows * np.arange(len(rows))).sum() / rows.sum()
    assert centre > 0.6 * len(rows), centre   # posterior = bottom, so anterior = top

def test_axial_slices_refusals():
    vol = np.zeros((6, 10, 4), np.float32)
    for call, err, msg in [
        (lambda: P.axial_slices(vol[..., 0]), ValueError, "vol: expected an (X, Y, Z) array or tensor"),
        (lambda: P.axial_slices(vol, z=[4]), ValueError, "z: expected a non-empty sequence of slice indices in [0, 4)"),
        (lambda: P.axial_slices(vol, z=[]), ValueError, "z: expected a non-empty sequence"),
        (lambda: P.axial_slices(vol, z=[True]), ValueError, "z: expected"),
        (lambda: P.axial_slices(vol, side=9), ValueError, "side: expected an int >= 10, got 9"),
        (lambda: P.axial_slices(vol, side=12.0), TypeError, "side: expected an int, got 12.0 (float)"),
        (lambda: P.axial_slices(vol, size=(4, 0)), ValueError, "size: expected an int >= 1, got 0"),
        (lambda: P.axial_slices(vol, size=(4, 4, 4)), ValueError, "size: expected an int or (H, W)"),
        (lambda: P.axial_slices(vol.astype(np.int32), size=4), ValueError, "vol: expected a floating-point volume"),
    ]:
        with pytest.raises(err, match=None) as e: call()
        assert msg in str(e.value), (msg, str(e.value))

def test_subject_volumes_is_random_subject_cached_and_copied():
    "Equal to random_subject; one simulation per subject; a caller mutating its result cannot corrupt the cache."
    kw = dict(doses=(0.0, 0.5), deform_voxels=0.0, n_lesions=(1, 1), bias_strength=0.0)
    ref = P.random_subject(11, **kw)
    a = P.subject_volumes(11, **kw)
    for k in ("images", "labels", "doses"): torch.testing.assert_close(a[k], ref[k], rtol=0, atol=0)
    assert (a["field"], a["sigma"], a["t1_scale"]) == (ref["field"], ref["sigma"], ref["t1_scale"])
    info = P._cached_subject.cache_info()
    a["images"].mul_(0); a["labels"].fill_(-1); a["t1_scale"]["gm"] = -1.0   # scribble on every part of the result
    b = P.subject_volumes(11, doses=[0.0, 0.5], field=1.5, deform_voxels=0.0, n_lesions=[1, 1], bias_strength=0.0)
    assert P._cached_subject.cache_info().hits == info.hits + 1 and P._cached_subject.cache_info().misses == info.misses
    torch.testing.assert_close(b["images"], ref["images"], rtol=0, atol=0)
    torch.testing.assert_close(b["labels"], ref["labels"], rtol=0, atol=0)
    assert b["t1_scale"] == ref["t1_scale"]
    assert P._cached_subject.cache_info().maxsize == P.SUBJECT_CACHE_SIZE   # bounded

def test_subject_cache_is_bounded_lru_and_checks_before_caching():
    calls = []
    @P.subject_cache
    def sim(seed: int) -> dict:
        calls.append(seed)
        return {"x": np.full(2, float(seed))}
    for s in range(P.SUBJECT_CACHE_SIZE + 1): sim(s)
    sim(P.SUBJECT_CACHE_SIZE); sim(0)                       # the newest is kept, the oldest was dropped
    assert calls == list(range(P.SUBJECT_CACHE_SIZE + 1)) + [0]
    r = sim(5); r["x"][:] = -1
    assert (sim(5)["x"] == 5).all()
    # subject_volumes validates before the cache: bool seed and unknown arguments refused, also after a cached call
    P.subject_volumes(1, doses=(0.0,), deform_voxels=0.0)
    with pytest.raises(TypeError, match=r"seed: expected an int, got True \(bool\)"): P.subject_volumes(True, doses=(0.0,), deform_voxels=0.0)
    with pytest.raises(ValueError, match="kw: expected arguments of random_subject"): P.subject_volumes(1, dose=(0.0,))
    with pytest.raises(ValueError, match="anatomy: expected one of"): P.subject_volumes(1, anatomy="mni305")

def _same_entries(a, b) -> bool:
    """Manifest entries equal: hashes and text exactly, float metadata (sigma) to 1e-12 relative: numpy's exp differs
    in the last bit between AVX2 and AVX-512 machines, while the stored arrays (int16/float32, hashed) do not."""
    if isinstance(a, float) and isinstance(b, float): return math.isclose(a, b, rel_tol=1e-12, abs_tol=0)
    if isinstance(a, dict) and isinstance(b, dict): return a.keys() == b.keys() and all(_same_entries(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list): return len(a) == len(b) and all(map(_same_entries, a, b))
    return type(a) == type(b) and a == b


def test_sample_writers_each_reproduce_their_files(tmp_path):
    "build_samples is its writers in order; each writer alone rebuilds its family of the shipped manifest."
    shipped = {e["path"]: e for e in load_manifest(SAMPLES)["files"]}
    anat = P.load_anatomy(SAMPLES)
    seen = []
    for write in P.SAMPLE_WRITERS:
        entries = write(tmp_path, anat, 0)
        assert entries and _same_entries(entries, [shipped[e["path"]] for e in entries]), write.__name__
        seen += [e["path"] for e in entries]
    assert set(seen) == {p for p, e in shipped.items() if e["kind"] != "anatomy"}

def test_samples_are_cut_in_the_one_orientation():
    "The LIP-CAR and k-space samples are axial_slices of the samples' subject (anterior up), like every simulated set."
    from medsynth_nb.data import load_fastmri_h5, load_nifti
    lab = load_nifti(SAMPLES / "dose_labels.nii.gz", dtype=None)[0].astype(np.int64)
    z = np.load(SAMPLES / "lipcar_slices.npz")
    assert np.array_equal(z["labels"], P.axial_slices(lab, z["z_index"], side=128).numpy())
    rss = load_fastmri_h5(SAMPLES / "kspace_3T_axt1post.h5")["reconstruction_rss"]
    brain = P.axial_slices(lab, np.sort(P._lesion_z(lab)[:4]), side=128).numpy() > 0
    head = rss > 0.25 * rss.max()
    dice = lambda a, b: 2 * (a & b).sum() / (a.sum() + b.sum())
    assert dice(head, brain) > 0.99 > dice(head, brain[:, ::-1]), (dice(head, brain), dice(head, brain[:, ::-1]))
