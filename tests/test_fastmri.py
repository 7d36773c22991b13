"""KSpaceSliceDataset on fastMRI-shaped folders, checked against fastMRI's own reader, transforms and masks.

The files are tiny fastMRI knee files scaled by 1/10 (k-space 64x37, readout oversampled, odd width; targets 32x32),
written from the Shepp-Logan phantom and simulated birdcage coils: multi-coil with reconstruction_rss, single-coil
with reconstruction_esc, and a test file (undersampled k-space, its own `mask`, no target)."""
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

import fastmri
from fastmri.data import transforms as T
from fastmri.data.mri_data import SliceDataset
from fastmri.data.subsample import EquispacedMaskFractionFunc, RandomMaskFunc

from medsynth_nb.data import (KSpaceSliceDataset, center_crop_or_pad, crop_kspace, find_samples, ismrmrd_header,
                              kspace_collate, load_fastmri_h5)
from medsynth_nb.kspace import birdcage_maps, fft2c, ifft2c, random_line_mask, rss, shepp_logan
from medsynth_nb.utils import make_generator, test_allclose

SAMPLES = Path(__file__).resolve().parent.parent / "data_samples"
H, W, CROP = 64, 37, (32, 32)
COLS = np.zeros(W, bool); COLS[::3] = True; COLS[15:22] = True


def _write(path, kspace, target=None, key="reconstruction_rss", header=None, mask=None, attrs=None):
    with h5py.File(path, "w") as f:
        f["kspace"] = np.asarray(kspace, np.complex64)
        if target is not None: f[key] = np.asarray(target, np.float32); f.attrs["max"] = float(target.max())
        if header is not None: f["ismrmrd_header"] = np.bytes_(header)
        if mask is not None: f["mask"] = mask
        f.attrs["acquisition"] = "CORPD_FBK"
        f.attrs.update(attrs or {})
    return path


def _centre_image(k):
    "numpy reference: centred orthonormal inverse FFT, then the 32x32 centre (fastMRI's (n - s) // 2 offsets)."
    img = np.fft.fftshift(np.fft.ifft2(np.fft.ifftshift(k, axes=(-2, -1)), norm="ortho"), axes=(-2, -1))
    return img[..., (H - CROP[0]) // 2:(H - CROP[0]) // 2 + CROP[0], (W - CROP[1]) // 2:(W - CROP[1]) // 2 + CROP[1]]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("fastmri")
    obj = shepp_logan((28, 30)).to(torch.complex64)
    obj = center_crop_or_pad(obj * torch.exp(1j * torch.linspace(0, 2, 30)), (H, W))   # off-centre phase: no symmetry
    obj = torch.roll(obj, (3, 1), (-2, -1))                                              # nor a centred object
    coils = birdcage_maps((H, W), 4) * obj
    multi_k = np.stack([fft2c(coils).numpy(), fft2c(coils.flip(-1)).numpy()])
    single_k = np.stack([fft2c(obj).numpy(), fft2c(obj.flip(-2)).numpy()])
    hdr = ismrmrd_header((H, W), coils=4, recon_matrix=CROP)
    d = dict(root=root, multi_k=multi_k, single_k=single_k)
    (root / "multicoil").mkdir(); (root / "singlecoil").mkdir(); (root / "test").mkdir()
    d["multi"] = _write(root / "multicoil" / "m.h5", multi_k, np.sqrt((np.abs(_centre_image(multi_k)) ** 2).sum(1)),
                        header=hdr)
    d["single"] = _write(root / "singlecoil" / "s.h5", single_k, np.abs(_centre_image(single_k)), "reconstruction_esc",
                         header=ismrmrd_header((H, W), coils=1, recon_matrix=CROP))
    d["test"] = _write(root / "test" / "t.h5", multi_k * COLS, header=hdr, mask=COLS, attrs={"num_low_frequency": 7})
    return d


def _fastmri_cropped(kspace, crop=CROP):
    "fastMRI's way: to_tensor, ifft2c, complex_center_crop (image space), fft2c back."
    return fastmri.fft2c(T.complex_center_crop(fastmri.ifft2c(T.to_tensor(kspace)), crop))


def test_multicoil_matches_fastmri_reader_and_transforms(files):
    ours, ref = KSpaceSliceDataset(files["multi"]), SliceDataset(files["root"] / "multicoil", challenge="multicoil")
    assert len(ours) == len(ref) == 2
    for j in range(2):
        kspace, mask, target, attrs, _, sl = ref[j]
        it = ours[j]
        assert mask is None and sl == j and tuple(attrs["recon_size"][:2]) == CROP
        assert it["kspace"].shape == (4, 32, 32) and it["mask"].shape == (1, 32, 32) and it["slice"] == j
        test_allclose(it["kspace"], torch.view_as_complex(_fastmri_cropped(kspace)), rtol=0, atol=1e-5)
        assert torch.equal(it["target"][0], torch.from_numpy(target))
        assert it["max"] == pytest.approx(attrs["max"]) and it["num_low_frequencies"] == 32
        # fastMRI's full U-Net transform (ifft, crop, abs, rss, normalise): undo its normalisation, same image
        u = T.UnetDataTransform("multicoil")(kspace, mask, target, attrs, "m.h5", j)
        test_allclose(u.image * u.std + u.mean, rss(ifft2c(it["kspace"])[None])[0, 0], rtol=0, atol=1e-4)
        test_allclose(rss(ifft2c(it["kspace"])[None])[0], it["target"], rtol=0, atol=1e-5)


def test_singlecoil_esc_matches_fastmri(files):
    ours = KSpaceSliceDataset(files["single"], target="reconstruction_esc")
    ref = SliceDataset(files["root"] / "singlecoil", challenge="singlecoil")
    for j in range(2):
        kspace, _, target, attrs, _, _ = ref[j]
        it = ours[j]
        assert kspace.shape == (H, W) and it["kspace"].shape == (1, 32, 32)      # a coil axis of 1 added
        test_allclose(it["kspace"][0], torch.view_as_complex(_fastmri_cropped(kspace)), rtol=0, atol=1e-5)
        assert torch.equal(it["target"][0], torch.from_numpy(target))
        test_allclose(ifft2c(it["kspace"]).abs(), it["target"], rtol=0, atol=1e-5)


@pytest.mark.parametrize("make", [lambda: RandomMaskFunc([0.25], [3]),
                                  lambda: EquispacedMaskFractionFunc([0.2, 0.1], [3, 6], seed=0)])
def test_fastmri_maskfunc_objects(files, make):
    mf = make()
    ds = KSpaceSliceDataset(files["multi"], mask_func=mf, seed=11)
    full = KSpaceSliceDataset(files["multi"])
    ref = SliceDataset(files["root"] / "multicoil", challenge="multicoil")
    masks = []
    for k in range(len(ds)):
        it = ds[k]
        direct, nlow = make()((1, 32, 32, 2), seed=11 + k)        # a fresh object: only the seed matters
        assert torch.equal(it["mask"], direct[0, :, :, 0].expand(1, 32, 32)) and int(it["num_low_frequencies"]) == nlow
        assert 1 < it["mask"].numel() / it["mask"].sum() < 8
        masked, _, n2 = T.apply_mask(_fastmri_cropped(ref[k][0]), mf, seed=11 + k)
        test_allclose(it["kspace"], torch.view_as_complex(masked), rtol=0, atol=1e-5)
        assert torch.equal(it["kspace"], full[k]["kspace"] * it["mask"]) and n2 == nlow
        masks.append(it["mask"])
    assert torch.equal(KSpaceSliceDataset(files["multi"], mask_func=make(), seed=11)[1]["mask"], masks[1])
    other = [KSpaceSliceDataset(files["multi"], mask_func=make(), seed=s)[0]["mask"] for s in range(12, 20)]
    assert any(not torch.equal(m, masks[0]) for m in other)      # the seed is used


def test_our_mask_functions_unchanged(files):
    def lines(shape, g):
        return random_line_mask(shape, [0.25], [3], seed=int(torch.randint(2 ** 31, (1,), generator=g)))
    it = KSpaceSliceDataset(files["multi"], mask_func=lines, seed=4)[1]
    want = lines(CROP, make_generator(4 + 1))
    assert torch.equal(it["mask"][0], want[0]) and int(it["num_low_frequencies"]) == want[1]


def test_existing_sample_is_untouched():
    p = SAMPLES / find_samples("kspace", SAMPLES)[0]["path"]
    raw = load_fastmri_h5(p, keys=("kspace", "reconstruction_rss"))
    for crop in (True, (128, 128)):
        ds = KSpaceSliceDataset(p, crop=crop)
        for k in range(len(ds)):
            assert torch.equal(ds[k]["kspace"], torch.from_numpy(raw["kspace"][k]))     # bit for bit: no FFT round trip
            assert torch.equal(ds[k]["target"][0], torch.from_numpy(raw["reconstruction_rss"][k]))
    ks = torch.from_numpy(raw["kspace"][0])
    assert crop_kspace(ks, (128, 128)) is ks


def test_test_file_without_target(files):
    ds = KSpaceSliceDataset(files["test"], crop=False)
    ref = SliceDataset(files["root"] / "test", challenge="multicoil")
    for j in range(2):
        it, (kspace, mask, target, _, _, _) = ds[j], ref[j]
        assert target is None and sorted(it) == ["kspace", "mask", "num_low_frequencies", "slice"]
        assert torch.equal(it["mask"][0, 0], torch.from_numpy(mask).float()) and int(it["num_low_frequencies"]) == 7
        assert torch.equal(it["kspace"], torch.from_numpy(kspace))
    with pytest.raises(ValueError, match=r"t\.h5: holds undersampled k-space with its own 'mask'; "
                                         r"cropping it .* \(32, 32\)"):
        KSpaceSliceDataset(files["test"])
    masked = KSpaceSliceDataset(files["test"], mask_func=RandomMaskFunc([0.25], [3]))[0]   # crop from the header
    assert masked["kspace"].shape == (4, 32, 32) and "target" not in masked


def test_targets_and_crop_errors(files, tmp_path):
    with pytest.raises(ValueError, match=r"s\.h5: no target 'reconstruction_rss' \(the target argument\); the file has "
                                         r"\['ismrmrd_header', 'kspace', 'reconstruction_esc'\]"):
        KSpaceSliceDataset(files["single"])
    with pytest.raises(ValueError, match="target: expected one of"): KSpaceSliceDataset(files["multi"], target="rss")
    bare = _write(tmp_path / "bare.h5", files["multi_k"])
    with pytest.raises(ValueError, match="bare.h5: crop=True needs the image size, but the file has no "
                                         "'reconstruction_rss' and no ismrmrd_header reconSpace; pass crop"):
        KSpaceSliceDataset(bare)
    (tmp_path / "hdr").mkdir()          # no target: the header's reconSpace, read as fastMRI reads it (x = rows)
    hdr = _write(tmp_path / "hdr" / "h.h5", files["multi_k"], header=ismrmrd_header((H, W), recon_matrix=(40, 24)))
    assert tuple(SliceDataset(tmp_path / "hdr", challenge="multicoil")[0][3]["recon_size"][:2]) == (40, 24)
    assert KSpaceSliceDataset(hdr)[0]["kspace"].shape == (4, 40, 24)
    attr = _write(tmp_path / "attr.h5", files["multi_k"], attrs={"recon_size": [32, 32, 1]})
    assert KSpaceSliceDataset(attr)[0]["kspace"].shape == (4, 32, 32)
    thin = b'<ismrmrdHeader xmlns="http://www.ismrm.org/ISMRMRD"><encoding></encoding></ismrmrdHeader>'
    assert KSpaceSliceDataset(_write(tmp_path / "thin_attr.h5", files["multi_k"], header=thin,
                                     attrs={"recon_size": [24, 20, 1]}))[0]["kspace"].shape == (4, 24, 20)
    with pytest.raises(ValueError, match="thin.h5: crop=True needs the image size, but the file has no "
                                         "'reconstruction_rss' and no ismrmrd_header reconSpace"):
        KSpaceSliceDataset(_write(tmp_path / "thin.h5", files["multi_k"], header=thin))
    # explicit sizes, not square: rows and columns are not swapped; the target is cropped the same way
    it = KSpaceSliceDataset(files["multi"], crop=(40, 24))[0]
    assert it["kspace"].shape == (4, 40, 24) and it["target"].shape == (1, 40, 24)
    test_allclose(it["kspace"], torch.view_as_complex(_fastmri_cropped(files["multi_k"][0], (40, 24))),
                  rtol=0, atol=1e-5)
    with pytest.raises(TypeError, match=r"crop\[0\]: expected an int"):
        KSpaceSliceDataset(files["multi"], crop=(3.0, 2))
    with pytest.raises(ValueError, match=r"crop: expected True, False or a pair \(h, w\)"):
        KSpaceSliceDataset(files["multi"], crop=32)
    with h5py.File(tmp_path / "short.h5", "w") as f:
        f["kspace"] = files["multi_k"]; f["reconstruction_rss"] = np.zeros((1, 32, 32), np.float32)
    with pytest.raises(ValueError, match=r"short.h5: 'reconstruction_rss' has shape \(1, 32, 32\), expected 2 slices"):
        KSpaceSliceDataset(tmp_path / "short.h5")
    class Flat:   # fastMRI's call convention, but a mask without the trailing complex axis
        def __call__(self, shape, offset=None, seed=None): return torch.ones(1, 1, shape[-2]), 0
    with pytest.raises(ValueError, match=r"mask_func\(\.\.\.\): expected a fastMRI mask \(\.\.\., 32, 1\)"):
        KSpaceSliceDataset(files["multi"], mask_func=Flat())[0]


def _item(h, w, coils=2, target=(32, 32)):
    g = torch.Generator().manual_seed(h * 100 + w)
    ks = torch.randn(coils, h, w, generator=g, dtype=torch.complex64)
    return dict(kspace=ks, mask=torch.ones(1, h, w), target=torch.rand(1, *target, generator=g),
                num_low_frequencies=torch.tensor(4), slice=torch.tensor(0))


def test_collate_pads_about_the_centre():
    a, b = _item(64, 38), _item(64, 35, target=(30, 31))
    out = kspace_collate([a, b])
    assert out["kspace"].shape == (2, 2, 64, 38) and out["mask"].shape == (2, 1, 64, 38)
    assert out["kspace_shape"].tolist() == [[64, 38], [64, 35]]
    assert torch.equal(out["kspace"][0], a["kspace"]) and torch.equal(out["mask"][0], a["mask"])
    left = 38 // 2 - 35 // 2                                       # 2: the DC column 17 lands on 19
    assert torch.equal(out["kspace"][1, ..., left:left + 35], b["kspace"])
    assert out["mask"][1].sum() == 64 * 35 and torch.equal(out["mask"][1, ..., left:left + 35], b["mask"])
    assert torch.equal(out["target"][1], center_crop_or_pad(b["target"], (32, 32)))
    assert out["target"].shape == (2, 1, 32, 32)
    # the DC stays the DC: a constant image, padded in k-space, is still a constant (real, positive) image
    dc = torch.zeros(1, 8, 35, dtype=torch.complex64); dc[0, 4, 17] = 1
    padded = kspace_collate([dict(kspace=dc, mask=torch.ones(1, 8, 35)),
                             dict(kspace=torch.zeros(1, 8, 38, dtype=torch.complex64), mask=torch.ones(1, 8, 38))])
    img = ifft2c(padded["kspace"][0])
    test_allclose(img, torch.full_like(img, img[0, 0, 0].real), rtol=0, atol=1e-6)
    assert img[0, 0, 0].real > 0


def test_collate_equal_sizes_and_errors(files):
    items = [KSpaceSliceDataset(files["multi"])[j] for j in range(2)]
    out, ref = kspace_collate(items), torch.utils.data.default_collate(items)
    assert all(torch.equal(out[k], ref[k]) for k in ref) and out["kspace_shape"].tolist() == [[32, 32]] * 2
    wide = KSpaceSliceDataset(files["multi"], crop=False)[0]
    with pytest.raises(ValueError, match=r"batch\[1\]: expected the keys"):
        kspace_collate([wide, KSpaceSliceDataset(files["test"], crop=False)[0]])
    with pytest.raises(ValueError, match=r"batch\[1\]\['kspace'\]: expected 4 coils like batch\[0\]"):
        kspace_collate([wide, KSpaceSliceDataset(files["single"], target="reconstruction_esc")[0]])
    with pytest.raises(ValueError, match="batch: expected a non-empty list"): kspace_collate([])
    b = next(iter(torch.utils.data.DataLoader(KSpaceSliceDataset(files["multi"], crop=False), batch_size=2,
                                              collate_fn=kspace_collate)))
    assert b["kspace"].shape == (2, 4, H, W) and b["target"].shape == (2, 1, 32, 32)
