"Metrics: references on random inputs, properties, and the bad-input matrix."
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st

from medsynth_nb import metrics as M
from medsynth_nb.utils import make_generator, test_allclose
from refusals import refusal_test

IMAGE_METRICS = [M.mse, M.mae, M.rmse, M.nmse, M.psnr, M.ssim, M.snr_db, M.ahd]


def pair(shape, seed=0, dtype=torch.float64, noise=0.1):
    g = make_generator(seed)
    t = torch.rand(shape, generator=g, dtype=dtype)
    p = (t + noise * torch.randn(shape, generator=g, dtype=dtype)).clamp(0, 1)
    return p, t


@settings(max_examples=25, deadline=None)
@given(h=st.integers(11, 30), w=st.integers(11, 30), dr=st.floats(0.5, 3.0), seed=st.integers(0, 10_000))
def test_ssim_matches_skimage_2d(h, w, dr, seed):
    from skimage.metrics import structural_similarity
    p, t = pair((1, 1, h, w), seed)
    ref = structural_similarity(t[0, 0].numpy(), p[0, 0].numpy(), data_range=dr, gaussian_weights=True, sigma=1.5,
                                use_sample_covariance=False)
    assert abs(M.ssim(p, t, data_range=dr).item() - ref) < 1e-9


@pytest.mark.parametrize("shape", [(2, 1, 11, 12, 13), (1, 3, 16, 15, 14)])
def test_ssim_matches_skimage_3d_and_channels(shape):
    from skimage.metrics import structural_similarity
    p, t = pair(shape, 3)
    ours = M.ssim(p, t, data_range=1.0, reduction="none")
    for b in range(shape[0]):
        ref = structural_similarity(t[b].numpy(), p[b].numpy(), data_range=1.0, gaussian_weights=True, sigma=1.5,
                                    use_sample_covariance=False, channel_axis=0)
        assert abs(ours[b].item() - ref) < 1e-9


def test_ssim_float32_within_1e3_and_differentiable():
    from skimage.metrics import structural_similarity
    p, t = pair((2, 1, 40, 40), 5, dtype=torch.float32)
    p.requires_grad_(True)
    v = M.ssim(p, t, data_range=1.0, reduction="none")
    for b in range(2):
        ref = structural_similarity(t[b, 0].double().numpy(), p[b, 0].detach().double().numpy(), data_range=1.0,
                                    gaussian_weights=True, sigma=1.5, use_sample_covariance=False)
        assert abs(v[b].item() - ref) < 1e-3
    (1 - v.mean()).backward()
    assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 10_000))
def test_ssim_properties(seed):
    p, t = pair((1, 1, 16, 16), seed)
    assert abs(M.ssim(p, t, 1.0) - M.ssim(t, p, 1.0)) < 1e-12          # symmetric
    assert M.ssim(p, t, 1.0) <= 1 + 1e-12
    assert abs(M.ssim(t, t, 1.0).item() - 1) < 1e-12


def test_psnr_per_image_data_range_not_first_sample():
    # Pinetz's code used the first sample's max for the whole batch; ours is per image.
    p, t = pair((2, 1, 16, 16), 1)
    t2 = t.clone(); t2[1] *= 0.5; p2 = p.clone(); p2[1] *= 0.5
    per = M.psnr(p2, t2, reduction="none")
    for b in range(2):
        rng = (t2[b].max() - t2[b].min()).item()
        ref = 10 * math.log10(rng ** 2 / ((p2[b] - t2[b]) ** 2).mean().item())
        assert abs(per[b].item() - ref) < 1e-9


@pytest.mark.parametrize("fn", IMAGE_METRICS)
def test_bad_inputs(fn):
    p, t = pair((1, 1, 16, 16), 2)
    with pytest.raises(ValueError, match="pred: expected 4 or 5 dimensions"):
        fn(p[0], t[0])
    with pytest.raises(ValueError, match="expected the same shape"):
        fn(p, t[..., :12])
    with pytest.raises(TypeError, match="real floating-point"):
        fn(p.to(torch.complex128), t.to(torch.complex128))
    with pytest.raises(TypeError, match="torch.Tensor"):
        fn(p.numpy(), t.numpy())
    with pytest.raises(ValueError, match="finite"):
        fn(p * float("nan"), t)
    with pytest.raises(TypeError, match="same dtype"):
        fn(p.float(), t)
    with pytest.raises(ValueError, match="reduction"):
        fn(p, t, reduction="median")


def test_snr_equals_minus_nmse_db():
    p, t = pair((3, 1, 20, 20), 4)
    test_allclose(M.snr_db(p, t, reduction="none"), -10 * torch.log10(M.nmse(p, t, reduction="none")))


def test_ahd_counts_against_numpy_with_mask():
    p, t = pair((2, 1, 8, 9, 10), 6)
    mask = torch.rand(p.shape, generator=make_generator(1)) > 0.3
    ours = M.ahd(p, t, mask=mask, reduction="none")
    for b in range(2):
        mb = mask[b].numpy()
        ref = np.abs(np.histogram(p[b].numpy()[mb], 255, (0, 1))[0] - np.histogram(t[b].numpy()[mb], 255, (0, 1))[0]).sum()
        assert ours[b].item() == ref


def test_mae_ce_and_sigma_need_masks():
    p, t = pair((1, 1, 8, 8), 7)
    with pytest.raises(ValueError, match="at least one CE voxel"):
        M.mae_ce(p, t, torch.zeros(p.shape, dtype=torch.bool))
    with pytest.raises(ValueError, match="expected the same shape"):
        M.mae_sigma(p, t, torch.zeros(1, 1, 4, 4, dtype=torch.bool))


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), p_fill=st.floats(0.05, 0.6))
def test_dice_and_hausdorff_against_references(seed, p_fill):
    from scipy.spatial.distance import directed_hausdorff
    rng = np.random.default_rng(seed)
    a = torch.from_numpy(rng.random((1, 12, 14)) < p_fill)
    b = torch.from_numpy(rng.random((1, 12, 14)) < p_fill)
    A, B = a[0].numpy(), b[0].numpy()
    tot = A.sum() + B.sum()
    ref_d = 1.0 if tot == 0 else 2 * (A & B).sum() / tot
    assert abs(M.dice(a, b).item() - ref_d) < 1e-12
    assert M.dice(a, b).item() == M.dice(b, a).item()
    h = M.hausdorff(a, b).item()
    if A.any() and B.any():
        pa, pb = np.argwhere(A), np.argwhere(B)
        assert abs(h - max(directed_hausdorff(pa, pb)[0], directed_hausdorff(pb, pa)[0])) < 1e-9
        assert M.hausdorff(a, b, percentile=95).item() <= h + 1e-12
    assert h == M.hausdorff(b, a).item()


def test_pcc_reference():
    from scipy.stats import pearsonr
    p, t = pair((2, 1, 10, 10), 9)
    per = M.pcc(p, t, reduction="none")
    for b in range(2):
        assert abs(per[b].item() - pearsonr(p[b].flatten().numpy(), t[b].flatten().numpy())[0]) < 1e-12


# --- MAE_σ: the paper's literal reading and the noise reading ---------------------------------------------------------
def _masked_numpy_std(x, keep):
    return x[keep].std()   # population σ, as the paper's "standard deviation of the non-CE pixels"


def test_mae_sigma_literal_against_numpy():
    p, t = pair((2, 1, 12, 13), 11)
    excl = torch.rand(p.shape, generator=make_generator(2)) > 0.6
    ours = M.mae_sigma(p, t, excl, reduction="none")
    for b in range(2):
        keep = ~excl[b].numpy()
        assert abs(ours[b].item() - abs(_masked_numpy_std(p[b].numpy(), keep) - _masked_numpy_std(t[b].numpy(), keep))) < 1e-12


def _noise_sigma_numpy(x, region, d):
    "Reference: high-pass with scipy's 3^d uniform filter (nearest-in-support borders do not matter inside `region`)."
    from scipy.ndimage import uniform_filter
    r = x - uniform_filter(x, 3, mode="reflect")
    v = r[region]
    return 1.4826 * np.median(np.abs(v - np.median(v))) / math.sqrt(1 - 3.0 ** -d)


@pytest.mark.parametrize("shape", [(2, 1, 20, 24), (1, 1, 10, 12, 14)])
def test_noise_sigma_against_scipy_on_the_interior(shape):
    g = make_generator(3)
    x = torch.rand(shape, generator=g, dtype=torch.float64)
    region = torch.rand(shape, generator=g) > 0.3
    inner = torch.zeros(shape, dtype=torch.bool)
    inner[(slice(None), slice(None)) + (slice(1, -1),) * (len(shape) - 2)] = True
    region &= inner                                        # the borders' padding conventions differ: leave them out
    ours = M.noise_sigma(x, region)
    for b in range(shape[0]):
        ref = _noise_sigma_numpy(x[b, 0].numpy(), region[b, 0].numpy(), len(shape) - 2)
        assert abs(ours[b].item() - ref) < 1e-12


@pytest.mark.parametrize("d,sigma", [(2, 0.02), (2, 0.1), (3, 0.05)])
def test_noise_sigma_recovers_white_noise_level(d, sigma):
    shape = (1, 1) + ((160,) * 2 if d == 2 else (40,) * 3)
    x = 0.3 + sigma * torch.randn(shape, generator=make_generator(4), dtype=torch.float64)
    est = M.noise_sigma(x, torch.ones(shape, dtype=torch.bool)).item()
    assert abs(est / sigma - 1) < 0.03


def test_mae_sigma_noise_punishes_a_perfect_denoiser():
    "A noise-free output scores ≈ σ on the noise reading; an output with the same noise level scores ≈ 0."
    g = make_generator(5)
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, 96), torch.linspace(-1, 1, 96), indexing="ij")
    clean = (0.5 + 0.3 * (xx > 0).float() + 0.2 * yy)[None, None].double()    # anatomy: an edge and a ramp
    sigma = 0.04
    truth = clean + sigma * torch.randn(clean.shape, generator=g, dtype=torch.float64)
    other = clean + sigma * torch.randn(clean.shape, generator=g, dtype=torch.float64)
    excl = torch.zeros(clean.shape, dtype=torch.bool)
    denoiser = M.mae_sigma_noise(clean, truth, excl).item()
    preserving = M.mae_sigma_noise(other, truth, excl).item()
    assert abs(denoiser / sigma - 1) < 0.15 and preserving < 0.05 * sigma
    assert M.mae_sigma_noise(truth, truth, excl).item() == 0.0


def test_noise_region_drops_the_support_rim_and_masked_voxels():
    sup = torch.zeros(1, 1, 7, 7, dtype=torch.bool)
    sup[..., 1:6, 1:6] = True
    excl = torch.zeros_like(sup)
    excl[0, 0, 3, 3] = True
    r = M.noise_region(excl, sup)[0, 0]
    expect = torch.zeros(7, 7, dtype=torch.bool)
    expect[2:5, 2:5] = True
    expect[3, 3] = False
    assert torch.equal(r, expect)


def test_mae_sigma_noise_bad_inputs():
    p, t = pair((1, 1, 8, 8), 7)
    with pytest.raises(ValueError, match="mask: expected a binary mask"):
        M.mae_sigma_noise(p, t, torch.full(p.shape, 0.5))
    with pytest.raises(ValueError, match="region: every image needs at least two voxels"):
        M.mae_sigma_noise(p, t, torch.ones(p.shape, dtype=torch.bool))
    with pytest.raises(ValueError, match="support: expected a binary mask"):
        M.mae_sigma_noise(p, t, torch.zeros(p.shape, dtype=torch.bool), support=2 * torch.ones(p.shape))


def test_binary_float_masks_equal_bool_masks():
    p, t = pair((2, 1, 8, 8), 8)
    m = torch.rand(p.shape, generator=make_generator(3)) > 0.5
    for fn in (M.mae_ce, M.mae_sigma):
        assert torch.equal(fn(p, t, m.float(), reduction="none"), fn(p, t, m, reduction="none"))
    sup = torch.ones_like(m)
    assert torch.equal(M.noise_region(m.float(), sup.long()), M.noise_region(m, sup))


_P, _T = pair((2, 1, 16, 16), 11)
_M = torch.rand(_P.shape, generator=make_generator(12)) > 0.5
_L = (torch.rand(2, 8, 8, generator=make_generator(13)) * 3).long()
BAD = [  # (call, exception, message fragment): every refusal at the metrics' boundary
    (lambda: M.psnr(_P, _T, data_range=0.0), ValueError, "data_range: expected a number > 0, got 0"),
    (lambda: M.psnr(_P, _T, data_range=True), TypeError, "data_range: expected a real number, got True (bool)"),
    (lambda: M.psnr(_P, _T, data_range=float("inf")), ValueError, "data_range: expected a finite number, got inf"),
    (lambda: M.psnr(_P, _T, data_range=torch.tensor([1.0, float("nan")], dtype=torch.float64)), ValueError,
     "data_range: expected finite values"),
    (lambda: M.psnr(_P, _T, data_range=torch.tensor([1.0, -1.0], dtype=torch.float64)), ValueError,
     "data_range: expected values > 0"),
    (lambda: M.psnr(_P, torch.ones_like(_T)), ValueError, "target: expected a non-constant image per batch item"),
    (lambda: M.ssim(_P, torch.zeros_like(_T)), ValueError, "target: expected a non-constant image per batch item"),
    (lambda: M.psnr(_P, _T, reduction="avg"), ValueError, "reduction: expected one of ('mean', 'sum', 'none'), got 'avg'"),
    (lambda: M.ssim(_P, _T, 1.0, win_size=7.0), TypeError, "win_size: expected an int, got 7.0 (float)"),
    (lambda: M.ssim(_P, _T, 1.0, win_size=True), TypeError, "win_size: expected an int, got True (bool)"),
    (lambda: M.ssim(_P, _T, 1.0, win_size=0), ValueError, "win_size: expected an int >= 1, got 0"),
    (lambda: M.ssim(_P, _T, 1.0, win_size=4), ValueError, "win_size: expected an odd int, got 4"),
    (lambda: M.ssim(_P, _T, 1.0, sigma=0), ValueError, "sigma: expected a number > 0, got 0"),
    (lambda: M.ssim(_P, _T, 1.0, k1=-0.01), ValueError, "k1: expected a number > 0, got -0.01"),
    (lambda: M.ssim(_P, _T, 1.0, k2=float("nan")), ValueError, "k2: expected a finite number, got nan"),
    (lambda: M.gaussian_window(11, sigma=-1.0), ValueError, "sigma: expected a number > 0, got -1"),
    (lambda: M.snr_db(_P, _T, crop=(2.5, 0)), TypeError, "crop[0]: expected an int, got 2.5 (float)"),
    (lambda: M.snr_db(_P, _T, crop=(0, True)), TypeError, "crop[1]: expected an int, got True (bool)"),
    (lambda: M.snr_db(_P, _T, crop=3), ValueError, "crop: expected a pair (rows, cols), got 3"),
    (lambda: M.snr_db(_P, _T, crop=(-1, 0)), ValueError, "crop: expected non-negative"),
    (lambda: M.snr_db(_P, torch.zeros_like(_T)), ValueError, "target: SNR is undefined for an all-zero target"),
    (lambda: M.ce_mask(_P, _T, threshold=0), ValueError, "threshold: expected a number > 0, got 0"),
    (lambda: M.ce_mask(_P, _T, brain_mask=_P), ValueError, "brain_mask: expected a binary mask"),
    (lambda: M.ce_mask(_P, _T, brain_mask=_M[:1]), ValueError, "native and brain_mask: expected the same shape"),
    (lambda: M.mae_ce(_P, _T, _M.float() * 0.5), ValueError, "mask: expected a binary mask (0 and 1 only)"),
    (lambda: M.mae_ce(_P, _T, _M.tolist()), TypeError, "mask: expected a torch.Tensor, got list"),
    (lambda: M.mae_sigma(_P, _T, torch.full(_P.shape, float("nan"))), ValueError, "mask: expected finite values"),
    (lambda: M.noise_sigma(_P, _M[:, :, :8]), ValueError, "x and region: expected the same shape"),
    (lambda: M.noise_region(_M.float() + 1), ValueError, "mask: expected a binary mask"),
    (lambda: M.noise_region(_M[0]), ValueError, "mask: expected 4 or 5 dimensions"),
    (lambda: M.noise_region(_M, _M[:1]), ValueError, "mask and support: expected the same shape"),
    (lambda: M.ahd(_P, _T, bins=2.5), TypeError, "bins: expected an int, got 2.5 (float)"),
    (lambda: M.ahd(_P, _T, bins=True), TypeError, "bins: expected an int, got True (bool)"),
    (lambda: M.ahd(_P, _T, bins=0), ValueError, "bins: expected an int >= 1, got 0"),
    (lambda: M.ahd(_P, _T, value_range=(1.0, 0.0)), ValueError, "value_range: expected lo < hi, got (1.0, 0.0)"),
    (lambda: M.ahd(_P, _T, value_range=(0.0, float("nan"))), ValueError, "value_range[1]: expected a finite number"),
    (lambda: M.ahd(_P, _T, value_range=1.0), ValueError, "value_range: expected a pair (lo, hi), got 1.0"),
    (lambda: M.ahd(_P, _T, mask=_P), ValueError, "mask: expected a binary mask"),
    (lambda: M.pcc(_P[0, 0, 0], _T[0, 0, 0] * float("inf")), ValueError, "target: expected finite values"),
    (lambda: M.dice(_L, _L, labels=[1.5]), TypeError, "labels[0]: expected an int, got 1.5 (float)"),
    (lambda: M.dice(_L, _L, labels=[True]), TypeError, "labels[0]: expected an int, got True (bool)"),
    (lambda: M.dice(_L, _L, labels=[]), ValueError, "labels: expected a non-empty list of ints, got []"),
    (lambda: M.dice(_L.tolist(), _L), TypeError, "pred: expected a torch.Tensor, got list"),
    (lambda: M.hausdorff(_M[:, 0], _M[:, 0], percentile=0), ValueError, "percentile: expected a number in (0, 100], got 0"),
    (lambda: M.hausdorff(_M[:, 0], _M[:, 0], percentile=101), ValueError, "percentile: expected a number in (0, 100]"),
    (lambda: M.hausdorff(_M[:, 0], _M[:, 0], spacing=0.0), ValueError, "spacing: expected a number > 0, got 0"),
    (lambda: M.hausdorff(_M[:, 0], _M[:, 0], spacing=(1.0, -2.0)), ValueError, "spacing[1]: expected a number > 0, got -2"),
    (lambda: M.hausdorff(_M[:, 0], _M[:, 0], spacing=(1.0, float("nan"))), ValueError, "spacing[1]: expected a finite"),
]


test_bad_input_matrix = refusal_test(BAD)
