"medsynth_nb.data: NIfTI/HDF5 I/O, bad inputs, preprocessing properties, slicing round trips, the three Datasets."
import os
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st

from medsynth_nb.data import (DoseSeriesDataset, decode_file, ismrmrd_header, load_manifest, parse_ismrmrd_header, KSpaceSliceDataset, PairedContrastDataset, array_sha256,
                              center_crop_or_pad, find_samples, load_fastmri_h5, load_nifti, percentile,
                              percentile_clip, percentile_normalize, minmax_normalize, save_fastmri_h5, save_nifti,
                              samples_root, slices_to_volume, verify_manifest, volume_to_slices)
from medsynth_nb.utils import make_generator, test_allclose
from refusals import refusal_test

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "data_samples"
AFF = np.array([[2., 0, 0, -98], [0, 2, 0, -134], [0, 0, 2, -72], [0, 0, 0, 1]])

def _vol(shape=(8, 9, 7), seed=0): return np.random.default_rng(seed).random(shape).astype(np.float32)

def _only(tmp_path, names): assert sorted(p.name for p in tmp_path.iterdir()) == sorted(names)

# ---------- NIfTI ----------
def test_nifti_round_trip_keeps_affine_header(tmp_path):
    import nibabel as nib
    v = _vol(); h = nib.Nifti1Header(); h.set_data_shape(v.shape); h["descrip"] = b"keep me"
    d, a, hh = load_nifti(save_nifti(tmp_path / "v.nii.gz", v, AFF, header=h))
    assert np.array_equal(d, v) and np.array_equal(a, AFF) and hh["descrip"].item() == b"keep me"
    d, a, _ = load_nifti(save_nifti(tmp_path / "v.nii", v, AFF))
    assert np.array_equal(d, v)

def test_nifti_int16_quantisation_error_bounded(tmp_path):
    v = _vol() * 1000
    d, _, h = load_nifti(save_nifti(tmp_path / "q.nii.gz", v, AFF, dtype="int16"))
    assert h.get_data_dtype() == np.int16 and np.abs(d - v).max() <= 0.5 * v.max() / 32000 + 1e-6 * v.max()  # half a step + float32 rounding

def test_nifti_labels_keep_integer_dtype(tmp_path):
    lab = (np.arange(60).reshape(3, 4, 5) % 7).astype(np.uint8)
    d, _, _ = load_nifti(save_nifti(tmp_path / "l.nii.gz", lab, AFF), dtype=None)
    assert d.dtype == np.uint8 and np.array_equal(d, lab)

@pytest.mark.parametrize("case", ["missing", "junk", "truncated_data", "truncated_header", "empty"])
def test_nifti_bad_files(tmp_path, case):
    good = save_nifti(tmp_path / "good.nii.gz", _vol((32, 32, 32))).read_bytes()
    p = tmp_path / "bad.nii.gz"
    if case == "junk": p.write_bytes(b"not nifti" * 100)
    if case == "truncated_data": p.write_bytes(good[: len(good) // 2])
    if case == "truncated_header": p.write_bytes(good[:60])
    if case == "empty": p.write_bytes(b"")
    err = FileNotFoundError if case == "missing" else ValueError
    with pytest.raises(err, match="bad.nii.gz"): load_nifti(p)

def test_truncated_uncompressed_nifti(tmp_path):
    raw = save_nifti(tmp_path / "g.nii", _vol((16, 16, 16))).read_bytes()
    (tmp_path / "t.nii").write_bytes(raw[: len(raw) - 1000])
    with pytest.raises(ValueError, match="truncated or corrupt|cannot read"): load_nifti(tmp_path / "t.nii")

@pytest.mark.parametrize("bad,err,msg", [
    (lambda v: v.astype(np.complex64), TypeError, "expected a real array"),
    (lambda v: np.where(v > 0.5, np.nan, v).astype(np.float32), ValueError, "NaN/inf"),
    (lambda v: v[0, 0], ValueError, "expected 2, 3 or 4 dimensions"),
    (lambda v: v[None, None, None], ValueError, "expected 2, 3 or 4 dimensions"),
    (lambda v: torch.from_numpy(v).to(torch.complex64), TypeError, "expected a real tensor"),
    (lambda v: v.tolist(), TypeError, "expected a numpy array or torch.Tensor"),
])
def test_nifti_save_rejects_and_leaves_old_file(tmp_path, bad, err, msg):
    v = _vol(); p = save_nifti(tmp_path / "v.nii.gz", v, AFF)
    with pytest.raises(err, match=msg): save_nifti(p, bad(v), AFF)
    assert np.array_equal(load_nifti(p)[0], v)
    _only(tmp_path, ["v.nii.gz"])

def test_nifti_crash_mid_write_leaves_no_partial_file(tmp_path, monkeypatch):
    import nibabel as nib
    def boom(self, fname, **kw):
        Path(fname).write_bytes(b"half")
        raise OSError("disk full")
    monkeypatch.setattr(nib.Nifti1Image, "to_filename", boom)
    with pytest.raises(OSError, match="disk full"): save_nifti(tmp_path / "new.nii.gz", _vol(), AFF)
    _only(tmp_path, [])

def test_nifti_bad_affine(tmp_path):
    with pytest.raises(ValueError, match="affine: expected a finite 4x4"): save_nifti(tmp_path / "a.nii.gz", _vol(), np.eye(3))

# ---------- fastMRI HDF5 ----------
def _ks(shape=(2, 3, 8, 6), seed=0):
    g = np.random.default_rng(seed)
    return (g.standard_normal(shape) + 1j * g.standard_normal(shape)).astype(np.complex64)

def test_h5_round_trip_and_fastmri_attrs(tmp_path):
    ks = _ks()
    r = load_fastmri_h5(save_fastmri_h5(tmp_path / "k.h5", ks, acquisition="AXT1POST", patient_id="p7"))
    assert r["kspace"].dtype == np.complex64 and np.array_equal(r["kspace"], ks)
    img = np.fft.fftshift(np.fft.ifftn(np.fft.ifftshift(ks, axes=(-2, -1)), axes=(-2, -1), norm="ortho"), axes=(-2, -1))
    test_allclose(r["reconstruction_rss"], np.sqrt((np.abs(img) ** 2).sum(1)).astype(np.float32), rtol=1e-5, atol=1e-6)
    a = r["attrs"]
    assert a["acquisition"] == "AXT1POST" and a["patient_id"] == "p7"
    assert np.isclose(a["max"], r["reconstruction_rss"].max()) and np.isclose(a["norm"], np.linalg.norm(r["reconstruction_rss"]), rtol=1e-6)
    assert b"ismrmrdHeader" in bytes(r["ismrmrd_header"])
    one = load_fastmri_h5(tmp_path / "k.h5", slices=1)
    assert one["kspace"].shape == (3, 8, 6)

def test_h5_single_coil(tmp_path):
    ks = _ks((2, 8, 6))
    r = load_fastmri_h5(save_fastmri_h5(tmp_path / "s.h5", ks))
    assert r["reconstruction_rss"].shape == (2, 8, 6)

@pytest.mark.parametrize("drop", ["kspace", "reconstruction_rss", "ismrmrd_header"])
def test_h5_missing_keys(tmp_path, drop):
    p = save_fastmri_h5(tmp_path / "k.h5", _ks())
    with h5py.File(p, "a") as f: del f[drop]
    with pytest.raises(ValueError, match=f"missing HDF5 dataset.*{drop}"): load_fastmri_h5(p)

def test_h5_bad_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such HDF5"): load_fastmri_h5(tmp_path / "none.h5")
    (tmp_path / "junk.h5").write_bytes(b"junk" * 100)
    with pytest.raises(ValueError, match="cannot read as HDF5"): load_fastmri_h5(tmp_path / "junk.h5")
    good = save_fastmri_h5(tmp_path / "g.h5", _ks((4, 4, 32, 32))).read_bytes()
    (tmp_path / "cut.h5").write_bytes(good[: len(good) // 2])
    with pytest.raises(ValueError, match="cut.h5"): load_fastmri_h5(tmp_path / "cut.h5")
    with h5py.File(tmp_path / "real.h5", "w") as f:
        f["kspace"] = np.zeros((1, 2, 4, 4), np.float32); f["reconstruction_rss"] = np.zeros((1, 4, 4), np.float32); f["ismrmrd_header"] = b"<x/>"
    with pytest.raises(ValueError, match="'kspace' must be complex"): load_fastmri_h5(tmp_path / "real.h5")

@pytest.mark.parametrize("bad,err,msg", [
    (lambda k: k.real.copy(), TypeError, "kspace: expected a complex array"),
    (lambda k: k[0, 0], ValueError, r"expected \(slices, coils, H, W\)"),
    (lambda k: np.where(np.abs(k) > 2, np.nan, k), ValueError, "NaN/inf"),
])
def test_h5_save_rejects_and_leaves_old_file(tmp_path, bad, err, msg):
    ks = _ks(); p = save_fastmri_h5(tmp_path / "k.h5", ks)
    with pytest.raises(err, match=msg): save_fastmri_h5(p, bad(ks))
    assert np.array_equal(load_fastmri_h5(p)["kspace"], ks)
    _only(tmp_path, ["k.h5"])

def test_h5_rss_shape_mismatch(tmp_path):
    with pytest.raises(ValueError, match="reconstruction_rss: expected shape"): save_fastmri_h5(tmp_path / "k.h5", _ks(), np.zeros((2, 8, 5), np.float32))
    _only(tmp_path, [])

# ---------- preprocessing ----------
@settings(max_examples=40, deadline=None)
@given(st.integers(1, 200), st.floats(0, 100), st.integers(0, 2**31 - 1))
def test_percentile_matches_numpy(n, q, seed):
    x = torch.from_numpy(np.random.default_rng(seed).standard_normal(n))
    test_allclose(percentile(x, q), torch.tensor(np.percentile(x.numpy(), q), dtype=torch.float64), rtol=1e-12, atol=1e-12)

def test_percentile_large_tensor_beyond_torch_quantile_limit():
    x = torch.arange(2**24 + 10, dtype=torch.float32)
    assert percentile(x, 50).item() == pytest.approx(np.percentile(x.numpy(), 50), rel=1e-6)

def test_normalisations():
    x = torch.randn(4, 5, 6, dtype=torch.float64)
    c = percentile_clip(x, 1, 99)
    assert c.min() == percentile(x, 1) and c.max() == percentile(x, 99)
    n = minmax_normalize(x); assert n.min() == 0 and n.max() == 1
    na = torch.rand(3, 4, 5) + 1
    test_allclose(percentile_normalize(3 * na, reference=na), 3 * na / percentile(na, 95))
    with pytest.raises(ValueError, match="constant image"): minmax_normalize(torch.zeros(3, 3))
    with pytest.raises(ValueError, match="NaN/inf"): percentile_clip(torch.tensor([0.0, float("nan")]))
    with pytest.raises(TypeError, match="real floating-point"): percentile(torch.ones(3, dtype=torch.complex64), 50)
    with pytest.raises(ValueError, match="empty"): percentile(torch.ones(3), 50, mask=torch.zeros(3, dtype=torch.bool))

@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(1, 9), min_size=2, max_size=3), st.lists(st.integers(1, 12), min_size=2, max_size=2))
def test_crop_pad_properties(shape, target):
    x = torch.randn(*shape)
    y = center_crop_or_pad(x, target)
    assert tuple(y.shape[-2:]) == tuple(target)
    if all(t >= s for t, s in zip(target, shape[-2:])):  # pure padding: crop back is exact, sum kept
        assert torch.equal(center_crop_or_pad(y, shape[-2:]), x)

@settings(max_examples=30, deadline=None)
@given(st.lists(st.integers(1, 6), min_size=3, max_size=3), st.sampled_from([0, 1, 2, -1, -2, -3]), st.booleans())
def test_slicing_round_trip_exact(shape, axis, channels):
    v = torch.randn(*(([2] if channels else []) + shape))
    s = volume_to_slices(v, axis)
    assert s.shape[0] == shape[axis] and s.shape[1] == (2 if channels else 1)
    assert torch.equal(slices_to_volume(s, axis, channels=channels), v)

def test_slicing_bad_inputs():
    with pytest.raises(ValueError, match="vol: expected 3 or 4 dimensions"): volume_to_slices(torch.zeros(3, 3), 0)
    with pytest.raises(ValueError, match="spatial axis"): volume_to_slices(torch.zeros(3, 3, 3), 4)
    with pytest.raises(ValueError, match="channels=True"): slices_to_volume(torch.zeros(3, 2, 4, 4), 0)

# ---------- the three Datasets on data_samples ----------
def test_samples_match_manifest():
    assert verify_manifest(SAMPLES) == []

def test_dose_series_dataset_from_samples():
    ds = DoseSeriesDataset.from_samples(SAMPLES)
    assert len(ds) == 6  # 2 fields x 3 low doses
    b = next(iter(torch.utils.data.DataLoader(ds, batch_size=3)))
    assert b["x_NA"].shape[:2] == (3, 1) and b["x_NA"].ndim == 5
    test_allclose(b["y_LD"], b["x_LD"] - b["x_NA"])
    assert sorted({round(float(d), 2) for d in b["dose"]}) == [0.1, 0.2, 0.33]
    x = ds[0]["x_NA"][0]; assert abs(percentile(x, 95, x > 0).item() - 1) < 1e-5
    sl = DoseSeriesDataset.from_samples(SAMPLES, fields=(3.0,), slice_axis=2, doses=(0.33,))
    it = sl[len(sl) // 2]
    assert it["x_NA"].shape == (1, 99, 117) and it["field"].item() == 3.0 and it["dose"].item() == pytest.approx(0.33)

def test_paired_contrast_dataset_from_samples():
    pc = PairedContrastDataset.from_samples(SAMPLES, crop=(112, 96))
    b = next(iter(torch.utils.data.DataLoader(pc, batch_size=4, shuffle=True, generator=torch.Generator().manual_seed(0))))
    assert b["source"].shape == (4, 1, 112, 96) == b["target"].shape
    assert 0 <= b["source"].min() and b["target"].max() <= 1
    rev = PairedContrastDataset.from_samples(SAMPLES, source="3T", target="1.5T")
    assert torch.equal(rev[3]["source"], PairedContrastDataset.from_samples(SAMPLES)[3]["target"])
    lc = PairedContrastDataset.from_samples(SAMPLES, kind="lipcar")
    assert len(lc) == 8 and lc[0]["condition"].shape == lc[0]["source"].shape == (1, 128, 128)

def test_kspace_dataset_from_samples():
    p = SAMPLES / find_samples("kspace", SAMPLES)[0]["path"]
    kd = KSpaceSliceDataset(p)
    assert len(kd) == 4
    s = kd[2]
    assert s["kspace"].dtype == torch.complex64 and s["kspace"].shape == (8, 128, 128) and s["mask"].shape == (1, 128, 128)
    img = torch.fft.fftshift(torch.fft.ifftn(torch.fft.ifftshift(s["kspace"], dim=(-2, -1)), dim=(-2, -1), norm="ortho"), dim=(-2, -1))
    test_allclose(img.abs().pow(2).sum(0).sqrt()[None], s["target"], rtol=1e-4, atol=1e-5)
    def rand_cols(shape, generator):
        return (torch.rand(shape[-1], generator=generator) < 0.3).float(), 0
    a, b = KSpaceSliceDataset(p, rand_cols, seed=1)[0], KSpaceSliceDataset(p, rand_cols, seed=1)[0]
    assert torch.equal(a["mask"], b["mask"]) and 0 < a["mask"].mean() < 1  # reproducible per item
    assert torch.equal(a["kspace"], kd[0]["kspace"] * a["mask"])
    # item k draws its mask from a generator seeded with seed + k: reproducible, and different per item
    c1 = KSpaceSliceDataset(p, rand_cols, seed=1)[1]["mask"]
    assert torch.equal(c1[0, 0], rand_cols((128, 128), make_generator(2))[0]) and not torch.equal(c1, a["mask"])

def test_dataset_bad_inputs(tmp_path):
    z = np.zeros((2, 3, 4), np.float32)
    with pytest.raises(ValueError, match="expected the native's shape"):
        DoseSeriesDataset([dict(native=z, standard=z, low={0.1: z[:1]}, field=1.5)])
    with pytest.raises(ValueError, match="NaN/inf"):
        DoseSeriesDataset([dict(native=np.full((2, 2, 2), np.nan, np.float32), standard=z, low={0.1: z}, field=1.5)])
    with pytest.raises(TypeError, match="source\\[0\\]: expected a real tensor"):
        PairedContrastDataset([torch.zeros(2, 3, 4, dtype=torch.complex64)], [torch.zeros(2, 3, 4)])
    assert len(PairedContrastDataset([torch.ones(2, 3, 4, dtype=torch.int16)], [torch.ones(2, 3, 4, dtype=torch.int16)])) == 2  # integer images are fine
    with pytest.raises(ValueError, match="3-D volume"): PairedContrastDataset([torch.zeros(3, 4)], [torch.zeros(3, 4)])
    with pytest.raises(ValueError, match="no such sample"): find_samples("dose_series", SAMPLES, field=7.0)
    p = save_fastmri_h5(tmp_path / "s.h5", _ks((2, 8, 6)))     # single-coil: read with a coil axis of 1
    assert KSpaceSliceDataset(p)[1]["kspace"].shape == (1, 8, 6)
    with h5py.File(tmp_path / "five.h5", "w") as f: f["kspace"] = _ks((1, 2, 2, 8, 6))
    with pytest.raises(ValueError, match=r"expected complex \(slices, coils, H, W\) or single-coil \(slices, H, W\), "
                                         r"got shape \(1, 2, 2, 8, 6\)"): KSpaceSliceDataset(tmp_path / "five.h5")
    with h5py.File(tmp_path / "real.h5", "w") as f: f["kspace"] = np.zeros((1, 8, 6), np.float32)
    with pytest.raises(ValueError, match="got shape \\(1, 8, 6\\) and dtype float32"): KSpaceSliceDataset(tmp_path / "real.h5")

def test_array_sha256_sensitive():
    a = np.arange(6, dtype=np.int16)
    assert array_sha256(a) == array_sha256(a.copy())
    assert array_sha256(a) != array_sha256(a.reshape(2, 3)) != array_sha256(a.astype(np.int32))
    assert array_sha256(a.astype(">i2")) == array_sha256(a)


# ---------- one validation vocabulary: every refusal at the boundary ----------
_X = torch.rand(4, 5, 6, generator=torch.Generator().manual_seed(0))
_V = _X.numpy()
_S = dict(native=_V + 0.1, standard=_V + 0.2, low={0.1: _V + 0.15}, field=1.5)
BAD = [  # (call, exception, message fragment)
    (lambda: percentile(_X, 101), ValueError, "q: expected a number in [0, 100], got 101"),
    (lambda: percentile(_X, [50, float("nan")]), ValueError, "q[1]: expected a finite number, got nan"),
    (lambda: percentile(_X, True), TypeError, "q: expected a real number, got True (bool)"),
    (lambda: percentile(_X, []), ValueError, "q: expected at least one percentile"),
    (lambda: percentile(_X, torch.tensor([1.0, 200.0])), ValueError, "q[1]: expected a number in [0, 100], got 200"),
    (lambda: percentile(_X, 50, mask=torch.full(_X.shape, 0.5)), ValueError, "mask: expected a binary mask"),
    (lambda: percentile(_X, 50, mask=torch.ones(4, dtype=torch.bool)), ValueError, "x and mask: expected the same shape"),
    (lambda: percentile_clip(_X, 99.0, 1.0), ValueError, "lower/upper: expected lower <= upper"),
    (lambda: percentile_clip(_X, -1.0), ValueError, "lower: expected a number in [0, 100], got -1"),
    (lambda: minmax_normalize(_X, eps=-1.0), ValueError, "eps: expected a number >= 0, got -1"),
    (lambda: percentile_normalize(_X, _X[0]), ValueError, "x and reference: expected the same shape"),
    (lambda: percentile_normalize(_X, _X * float("nan")), ValueError, "reference: expected finite values"),
    (lambda: center_crop_or_pad(_X, (2.5, 3)), TypeError, "shape[0]: expected an int, got 2.5 (float)"),
    (lambda: center_crop_or_pad(_X, (True, 3)), TypeError, "shape[0]: expected an int, got True (bool)"),
    (lambda: center_crop_or_pad(_X, (0, 3)), ValueError, "shape[0]: expected an int >= 1, got 0"),
    (lambda: center_crop_or_pad(_X, (1, 1, 1, 1)), ValueError, "shape: expected at most x.ndim = 3 sizes"),
    (lambda: center_crop_or_pad(_X, 3), ValueError, "shape: expected a sequence of sizes, got 3"),
    (lambda: volume_to_slices(_X, 1.0), TypeError, "axis: expected an int, got 1.0 (float)"),
    (lambda: volume_to_slices(_X, True), TypeError, "axis: expected an int, got True (bool)"),
    (lambda: volume_to_slices(_X, 3), ValueError, "axis: expected a spatial axis in (0, 1, 2), got 3"),
    (lambda: slices_to_volume(volume_to_slices(_X), -4), ValueError, "axis: expected a spatial axis in (0, 1, 2)"),
    (lambda: DoseSeriesDataset([_S], slice_axis=2.0), TypeError, "slice_axis: expected an int, got 2.0 (float)"),
    (lambda: DoseSeriesDataset([_S], q=0), ValueError, "q: expected a number in (0, 100], got 0"),
    (lambda: DoseSeriesDataset([dict(_S, low={})]), ValueError, "series[0]['low']: expected a non-empty dict"),
    (lambda: DoseSeriesDataset([dict(_S, low={1.5: _V})]), ValueError, "series[0]['low'] dose: expected a number in [0, 1], got 1.5"),
    (lambda: DoseSeriesDataset([dict(_S, field=float("nan"))]), ValueError, "series[0]['field']: expected a finite number"),
    (lambda: DoseSeriesDataset([dict(_S, field=True)]), TypeError, "series[0]['field']: expected a real number, got True"),
    (lambda: DoseSeriesDataset([dict(_S, native=_V * 0)]), ValueError,
     "series[0]['native']: expected a positive 95th percentile to divide by, got 0.0"),
    (lambda: DoseSeriesDataset([[1, 2]]), ValueError, "series[0]: expected a dict, got 'list'"),
    (lambda: DoseSeriesDataset.from_samples(SAMPLES, doses=(0.15,)), ValueError, "doses: expected doses of the 1.5 T samples"),
    (lambda: PairedContrastDataset([_V], [_V], crop=(8, 8.0)), TypeError, "crop[1]: expected an int, got 8.0 (float)"),
    (lambda: PairedContrastDataset([_V], [_V], crop=8), ValueError, "crop: expected a pair (h, w), got 8"),
    (lambda: PairedContrastDataset([_V], [_V], slice_axis=5), ValueError, "slice_axis: expected a spatial axis"),
    (lambda: PairedContrastDataset([_V], [_V[:2]]), ValueError, "source[0] and target[0]: expected the same shape"),
    (lambda: PairedContrastDataset([_V], [_V], transform="minmax"), ValueError, "transform: expected a callable or None"),
    (lambda: PairedContrastDataset.from_samples(SAMPLES, kind="flair"), ValueError,
     "kind: expected one of ('mprage', 'lipcar'), got 'flair'"),
    (lambda: PairedContrastDataset.from_samples(SAMPLES, source="7T"), ValueError, "source: expected one of ('1.5T', '3T'), got '7T'"),
    (lambda: KSpaceSliceDataset(SAMPLES / "kspace_3T_axt1post.h5", seed=1.0), TypeError, "seed: expected an int, got 1.0"),
    (lambda: KSpaceSliceDataset(SAMPLES / "kspace_3T_axt1post.h5", seed=True), TypeError, "seed: expected an int, got True"),
    (lambda: KSpaceSliceDataset(SAMPLES / "kspace_3T_axt1post.h5", mask_func=0.5), ValueError, "mask_func: expected a callable"),
    (lambda: KSpaceSliceDataset([]), ValueError, "paths: expected at least one .h5 file"),
    (lambda: KSpaceSliceDataset(SAMPLES / "kspace_3T_axt1post.h5", lambda s, g: torch.full(s, 0.5))[0], ValueError,
     "mask_func(...): expected a binary mask"),
    (lambda: KSpaceSliceDataset(SAMPLES / "kspace_3T_axt1post.h5", lambda s, g: torch.ones(2, s[-1]))[0], ValueError,
     "mask_func(...): expected a mask broadcastable to (1, 128, 128)"),
    (lambda: load_fastmri_h5(SAMPLES / "kspace_3T_axt1post.h5", slices=1.0), TypeError, "slices: expected an int, got 1.0"),
    (lambda: ismrmrd_header((128, 128.5)), TypeError, "matrix[1]: expected an int, got 128.5 (float)"),
    (lambda: ismrmrd_header((128, 0)), ValueError, "matrix[1]: expected an int >= 1, got 0"),
    (lambda: ismrmrd_header((8, 8), coils=True), TypeError, "coils: expected an int, got True (bool)"),
    (lambda: ismrmrd_header((8, 8), fov_mm=(256.0, -1.0)), ValueError, "fov_mm[1]: expected a number > 0, got -1"),
    (lambda: ismrmrd_header((8, 8), field_t=0), ValueError, "field_t: expected a number > 0, got 0"),
    (lambda: ismrmrd_header(128), ValueError, "matrix: expected a pair (H, W), got 128"),
    (lambda: parse_ismrmrd_header(b"<not xml"), ValueError, "xml: expected an ISMRMRD XML header"),
    (lambda: save_nifti("/tmp/never.nii", np.zeros((2, 2, 2)), np.eye(4) * float("nan")), ValueError, "affine: expected finite values"),
    (lambda: save_nifti("/tmp/never.nii", np.zeros(2)), ValueError, "data: expected 2, 3 or 4 dimensions, got 1 with shape (2,)"),
    (lambda: save_nifti("/tmp/never.nii", np.zeros((2, 2, 2)), dtype="nonsense"), TypeError, "dtype: expected a numpy dtype"),
    (lambda: load_nifti(SAMPLES / "dose_labels.nii.gz", dtype="complex64"), ValueError, "dtype: expected a real numeric dtype"),
]


test_bad_input_matrix = refusal_test(BAD)


def test_file_errors_name_the_path(tmp_path):
    "Library-raised file errors are ValueError/FileNotFoundError naming the path."
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(ValueError, match="manifest.json: not a JSON manifest"): load_manifest(tmp_path)
    (tmp_path / "manifest.json").write_text('{"files": [{"path": "a.npz"}]}')
    with pytest.raises(ValueError, match="manifest.json: expected"): load_manifest(tmp_path)
    with pytest.raises(FileNotFoundError, match="none.npz: no such sample file"): decode_file(tmp_path / "none.npz")
    (tmp_path / "junk.h5").write_bytes(b"junk")
    with pytest.raises(ValueError, match="junk.h5: cannot read as HDF5"): decode_file(tmp_path / "junk.h5")
    (tmp_path / "junk.nii.gz").write_bytes(b"junk")
    with pytest.raises(ValueError, match="junk.nii.gz: cannot read as NIfTI"): decode_file(tmp_path / "junk.nii.gz")


def test_shipped_samples_unchanged():
    "Valid input, same results: the shipped samples still match their manifest and load into the datasets."
    assert verify_manifest(SAMPLES) == []
    ds = DoseSeriesDataset.from_samples(SAMPLES, doses=(0.1,))
    assert len(ds) == 2 and PairedContrastDataset.from_samples(SAMPLES, kind="lipcar").items
