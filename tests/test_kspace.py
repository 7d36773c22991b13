"k-space: centred FFT, converters, masks, coil maps, SENSE operator and data consistency."
import math

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings, strategies as st

from medsynth_nb.kspace import (SenseOperator, _pd_radii, _pd_rho, _pd_throw, achieved_acceleration, birdcage_maps,
                                complex_to_deepinv, complex_to_fastmri, deepinv_to_complex, equispaced_line_mask,
                                espirit_maps, fastmri_to_complex, fft2c, gradient_dc, hard_dc, hard_dc_kspace, ifft2c,
                                kspace_residual, lei_fft2, lei_ifft2, poisson_disc_mask, random_line_mask, rss,
                                shepp_logan, soft_dc, varnet_dc, zero_filled)
from medsynth_nb.utils import test_allclose

HYP = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
sizes = st.integers(1, 12)


def crandn(*shape, seed=0, dtype=torch.complex128):
    return torch.randn(*shape, dtype=dtype, generator=torch.Generator().manual_seed(seed))


def np_fft2c(x):
    return np.fft.fftshift(np.fft.fft2(np.fft.ifftshift(x, axes=(-2, -1)), norm="ortho"), axes=(-2, -1))


def np_ifft2c(x):
    return np.fft.fftshift(np.fft.ifft2(np.fft.ifftshift(x, axes=(-2, -1)), norm="ortho"), axes=(-2, -1))


def bernoulli_mask(h, w, p=0.4, seed=0):
    return (torch.rand(h, w, generator=torch.Generator().manual_seed(seed)) < p).to(torch.float32)


# ---------------------------------------------------------------- FFT
@HYP
@given(h=sizes, w=sizes, b=st.integers(1, 3), seed=st.integers(0, 10_000))
def test_fft2c_matches_numpy_float64_odd_and_even(h, w, b, seed):
    x = crandn(b, 2, h, w, seed=seed)
    test_allclose(fft2c(x), torch.from_numpy(np_fft2c(x.numpy())), rtol=0, atol=1e-12)
    test_allclose(ifft2c(x), torch.from_numpy(np_ifft2c(x.numpy())), rtol=0, atol=1e-12)


@HYP
@given(h=sizes, w=sizes, seed=st.integers(0, 10_000))
def test_fft2c_unitary_and_inverse(h, w, seed):
    x = crandn(3, h, w, seed=seed)
    test_allclose(torch.linalg.vector_norm(fft2c(x)), torch.linalg.vector_norm(x), rtol=1e-12, atol=0)
    test_allclose(ifft2c(fft2c(x)), x, rtol=0, atol=1e-12)
    test_allclose(fft2c(ifft2c(x)), x, rtol=0, atol=1e-12)


@HYP
@given(h=st.integers(1, 8).map(lambda n: 2 * n), w=st.integers(1, 8).map(lambda n: 2 * n), seed=st.integers(0, 10_000))
def test_checkerboard_equals_shift_on_even_sizes(h, w, seed):
    x = crandn(2, 3, h, w, seed=seed)
    test_allclose(fft2c(x, "checkerboard"), fft2c(x, "shift"), rtol=0, atol=1e-12)
    test_allclose(ifft2c(x, "checkerboard"), ifft2c(x, "shift"), rtol=0, atol=1e-12)


def test_checkerboard_gradients_and_input_untouched():
    x = crandn(1, 1, 4, 6, seed=3).requires_grad_()
    for m in ("checkerboard", "shift"):
        assert torch.autograd.gradcheck(lambda t: fft2c(t, m), (x,), fast_mode=True)
        assert torch.autograd.gradcheck(lambda t: ifft2c(t, m), (x,), fast_mode=True)
    mask = bernoulli_mask(4, 6, seed=1)
    y = crandn(1, 1, 4, 6, seed=4)
    x1 = crandn(1, 1, 4, 6, seed=5).requires_grad_()
    assert torch.autograd.gradcheck(lambda t: hard_dc(t, y, mask, method="checkerboard"), (x1,), fast_mode=True)
    before = x.detach().clone(), y.clone()
    fft2c(x.detach(), "checkerboard"); ifft2c(x.detach(), "checkerboard"); hard_dc(x1.detach(), y, mask)
    assert torch.equal(x.detach(), before[0]) and torch.equal(y, before[1])  # the in-place sign flips never touch inputs


def test_fft2c_complex64_keeps_dtype_and_lei_scale():
    x = crandn(1, 1, 320, 256, dtype=torch.complex64)
    assert fft2c(x).dtype == torch.complex64 and ifft2c(x).dtype == torch.complex64
    x64 = x.to(torch.complex128)
    test_allclose(lei_fft2(x64), math.sqrt(320 * 256) * fft2c(x64), rtol=1e-12, atol=1e-9)
    test_allclose(lei_ifft2(lei_fft2(x64)), x64, rtol=0, atol=1e-12)


def test_fft2c_follows_input_dtype():
    a, b = crandn(4, 6, dtype=torch.complex64), crandn(4, 6, dtype=torch.complex128)
    assert fft2c(a).dtype == torch.complex64 and fft2c(b).dtype == torch.complex128


# ---------------------------------------------------------------- converters
@HYP
@given(shape=st.lists(st.integers(1, 5), min_size=1, max_size=4), seed=st.integers(0, 1000))
def test_fastmri_roundtrip_exact(shape, seed):
    x = crandn(*shape, seed=seed, dtype=torch.complex64)
    r = complex_to_fastmri(x)
    assert r.shape == (*shape, 2) and torch.equal(r[..., 0], x.real) and torch.equal(r[..., 1], x.imag)
    assert torch.equal(fastmri_to_complex(r), x)
    assert torch.equal(fastmri_to_complex(r.clone()), x)


@HYP
@given(b=st.integers(1, 3), c=st.integers(1, 4), h=sizes, w=sizes, seed=st.integers(0, 1000))
def test_deepinv_roundtrip_exact(b, c, h, w, seed):
    x = crandn(b, c, h, w, seed=seed, dtype=torch.complex64)
    d = complex_to_deepinv(x)
    assert d.shape == ((b, 2, h, w) if c == 1 else (b, 2, c, h, w))
    assert torch.equal(deepinv_to_complex(d), x)


# ---------------------------------------------------------------- masks
def test_random_line_mask_deterministic_and_global_rng_untouched():
    np_before, torch_before = np.random.get_state()[1].copy(), torch.random.get_rng_state()
    m1, n1 = random_line_mask((32, 100), [0.08, 0.04], [4, 8], seed=3)
    m2, n2 = random_line_mask((32, 100), [0.08, 0.04], [4, 8], seed=3)
    assert torch.equal(m1, m2) and n1 == n2
    assert np.array_equal(np.random.get_state()[1], np_before) and torch.equal(torch.random.get_rng_state(), torch_before)
    assert m1.shape == (32, 100) and m1.dtype == torch.float32
    assert bool((m1 == m1[:1]).all())  # whole columns


def test_random_line_mask_expected_acceleration():
    fr = np.mean([random_line_mask((8, 368), [0.08], [4], seed=s)[0].mean().item() for s in range(300)])
    assert abs(1 / fr - 4) / 4 < 0.02


@pytest.mark.parametrize("acc, cf", [(4, 0.08), (8, 0.04), (6, 0.1), (3, 0.2)])
def test_equispaced_line_mask_acceleration_and_centre(acc, cf):
    W = 368
    m, n_low = equispaced_line_mask((4, W), [cf], [acc], seed=1)
    assert n_low == round(W * cf)
    pad = (W - n_low + 1) // 2
    assert bool(m[:, pad:pad + n_low].all())
    assert abs(achieved_acceleration(m) - acc) / acc < 0.1


@pytest.mark.parametrize("shape, acc, calib", [((320, 256), 5, (20, 20)), ((128, 96), 4, (16, 16)), ((64, 64), 3, (8, 8)), ((81, 57), 6, (10, 10))])
def test_poisson_disc_acceleration_calib_determinism(shape, acc, calib):
    np_before = np.random.get_state()[1].copy()
    m = poisson_disc_mask(shape, acc, calib=calib, seed=7)
    assert np.array_equal(np.random.get_state()[1], np_before)
    assert m.shape == shape and m.dtype == torch.float32
    assert abs(achieved_acceleration(m) - acc) / acc < 0.1
    H, W = shape
    assert bool(m[H // 2 - calib[0] // 2:H // 2 - calib[0] // 2 + calib[0], W // 2 - calib[1] // 2:W // 2 - calib[1] // 2 + calib[1]].all())
    if H * W > 20_000: return  # determinism is checked on the smaller grids (each throw costs ~0.3 s here)
    assert torch.equal(m, poisson_disc_mask(shape, acc, calib=calib, seed=7))
    assert torch.equal(m, poisson_disc_mask(shape, acc, calib=calib, seed=np.random.default_rng(7)))
    assert not torch.equal(m, poisson_disc_mask(shape, acc, calib=calib, seed=8))


def test_poisson_disc_spacing_invariant():
    from scipy.spatial import cKDTree
    shape = (96, 80)
    rho = _pd_rho(shape, (12, 12))
    rx, ry = _pd_radii(shape, rho, 3.0)
    order = np.random.default_rng(0).permutation(shape[0] * shape[1])
    m = _pd_throw(shape, (order // shape[1]).tolist(), (order % shape[1]).tolist(), rx, ry)
    pts = np.argwhere(m)
    for i, j in cKDTree(pts.astype(float)).query_pairs(r=float(max(rx.max(), ry.max()))):
        dy, dx = pts[i] - pts[j]
        e_i = (dx / rx[tuple(pts[i])]) ** 2 + (dy / ry[tuple(pts[i])]) ** 2
        e_j = (dx / rx[tuple(pts[j])]) ** 2 + (dy / ry[tuple(pts[j])]) ** 2
        assert max(e_i, e_j) >= 1  # the earlier point's exclusion ellipse never contains the later one
    # and the pattern is maximal: every unsampled point is excluded by some sample
    blocked = np.zeros(shape, bool)
    for py, px in pts:
        yy, xx = np.mgrid[:shape[0], :shape[1]]
        blocked |= ((yy - py) / ry[py, px]) ** 2 + ((xx - px) / rx[py, px]) ** 2 < 1
    assert blocked.all()


# ---------------------------------------------------------------- coil maps
def test_birdcage_matches_sigpy_and_is_normalised():
    import sigpy.mri
    for shape, nc in [((64, 48), 8), ((33, 40), 4)]:
        ours = birdcage_maps(shape, nc, dtype=torch.complex128)
        test_allclose(ours, torch.from_numpy(sigpy.mri.birdcage_maps((nc, *shape))), rtol=0, atol=1e-12)
        test_allclose((ours.abs() ** 2).sum(0), torch.ones(shape, dtype=torch.float64))


def test_espirit_recovers_maps():  # the cross-check against sigpy's EspiritCalib lives in nbs/30_kspace.ipynb
    img = shepp_logan((64, 64)).to(torch.complex64) * torch.exp(0.3j * torch.linspace(-1, 1, 64))
    maps = birdcage_maps((64, 64), 6)
    ksp = fft2c(maps * img)
    est = espirit_maps(ksp, calib_width=20, kernel_width=5)
    obj = (img.abs() > 0.05) & (est.abs().sum(0) > 0)
    agree = lambda a, b: ((a.conj() * b).sum(0).abs() / (a.abs().pow(2).sum(0).sqrt() * b.abs().pow(2).sum(0).sqrt()).clamp_min(1e-12))[obj]
    assert agree(est, maps).mean() > 0.995 and agree(est, maps).min() > 0.95
    assert (est.abs().sum(0) > 0)[img.abs() > 0.05].float().mean() > 0.95  # the object is inside the support
    test_allclose((est.abs() ** 2).sum(0)[obj], torch.ones(int(obj.sum())), rtol=0, atol=1e-4)  # unit norm per pixel
    test_allclose(est[0][obj].angle(), torch.zeros(int(obj.sum())), rtol=0, atol=1e-5)         # phase relative to coil 0
    assert espirit_maps(ksp[None], calib_width=20, kernel_width=5).shape == (1, 6, 64, 64)


# ---------------------------------------------------------------- SENSE operator
@HYP
@given(h=sizes, w=sizes, c=st.integers(1, 4), b=st.integers(1, 2), batch_maps=st.booleans(), seed=st.integers(0, 10_000))
def test_sense_adjointness_complex128(h, w, c, b, batch_maps, seed):
    maps = crandn(*((b, c) if batch_maps else (c,)), h, w, seed=seed)
    mask = bernoulli_mask(h, w, seed=seed)
    op = SenseOperator(maps, mask)
    x, y = crandn(b, 1, h, w, seed=seed + 1), crandn(b, c, h, w, seed=seed + 2)
    lhs, rhs = torch.vdot(op.A(x).flatten(), y.flatten()), torch.vdot(x.flatten(), op.A_adjoint(y).flatten())
    assert abs(lhs - rhs) <= 1e-10 * max(abs(lhs), 1e-30) + 1e-12


def test_sense_single_coil_and_norm_vs_dense():
    h, w = 6, 5
    maps, mask = crandn(3, h, w, seed=1), bernoulli_mask(h, w, 0.5, seed=2)
    op = SenseOperator(maps, mask)
    A = torch.stack([op.A(e.view(1, 1, h, w)).flatten() for e in torch.eye(h * w, dtype=torch.complex128)], 1)
    assert abs(op.norm(num_iter=500, tol=1e-12, dtype=torch.complex128) - torch.linalg.matrix_norm(A, ord=2).item()) < 1e-4
    single = SenseOperator(None, torch.ones(h, w))
    x = crandn(2, 1, h, w, seed=3)
    test_allclose(single.normal(x), x, rtol=0, atol=1e-12)
    assert abs(single.norm(dtype=torch.complex128) - 1) < 1e-6


def test_zero_filled_and_rss():
    img = crandn(2, 1, 16, 12, seed=4)
    maps = birdcage_maps((16, 12), 4, dtype=torch.complex128)
    y = fft2c(maps * img)
    test_allclose(zero_filled(y, maps=maps), img, rtol=0, atol=1e-12)
    test_allclose(rss(ifft2c(y)), img.abs(), rtol=0, atol=1e-12)
    mask = bernoulli_mask(16, 12, seed=1)
    test_allclose(zero_filled(mask * y, mask, maps), SenseOperator(maps, mask).A_adjoint(y), rtol=0, atol=1e-12)


# ---------------------------------------------------------------- data consistency
@HYP
@given(h=sizes, w=sizes, seed=st.integers(0, 10_000), method=st.sampled_from(["auto", "shift"]))
def test_hard_dc_single_coil_projection(h, w, seed, method):
    mask = bernoulli_mask(h, w, seed=seed)
    x, y = crandn(2, 1, h, w, seed=seed), mask * crandn(2, 1, h, w, seed=seed + 1)
    z = hard_dc(x, y, mask, method=method)
    test_allclose(hard_dc(z, y, mask, method=method), z, rtol=0, atol=1e-12)   # idempotent
    test_allclose(mask * fft2c(z), y, rtol=0, atol=1e-12)                      # consistent on sampled entries
    test_allclose((1 - mask) * fft2c(z), (1 - mask) * fft2c(x), rtol=0, atol=1e-12)
    k = hard_dc_kspace(x, y, mask, method=method)                              # M y + (1 - M) F x, numpy float64
    m = mask.numpy()
    test_allclose(k, torch.from_numpy(m * y.numpy() + (1 - m) * np_fft2c(x.numpy())), rtol=0, atol=1e-12)
    assert kspace_residual(z, y, mask).max() < 1e-12


def test_hard_dc_checkerboard_equals_shift_and_broadcast_mask():
    mask = bernoulli_mask(1, 20, seed=3)   # a column mask broadcasting over rows
    x, y = crandn(1, 1, 16, 20, seed=1), crandn(1, 1, 16, 20, seed=2)
    test_allclose(hard_dc(x, y, mask, method="checkerboard"), hard_dc(x, y, mask, method="shift"), rtol=0, atol=1e-12)
    test_allclose(hard_dc(x, y, mask), hard_dc(x, y, mask.expand(16, 20)), rtol=0, atol=1e-12)


def test_hard_dc_multicoil_is_unit_gradient_step_with_normalised_maps():
    h, w = 24, 20
    maps, mask = birdcage_maps((h, w), 4, dtype=torch.complex128), bernoulli_mask(h, w, seed=5)
    x, truth = crandn(2, 1, h, w, seed=1), crandn(2, 1, h, w, seed=2)
    op = SenseOperator(maps, mask)
    y = op.A(truth)
    z = hard_dc(x, y, mask, maps)
    test_allclose(z, x - op.A_adjoint(op.A(x) - y), rtol=0, atol=1e-12)
    test_allclose(z, gradient_dc(x, y, mask, 1.0, maps), rtol=0, atol=1e-12)
    k = hard_dc_kspace(x, y, mask, maps)                                      # M y_i + (1 - M) F(s_i x), numpy float64
    m = mask.numpy()
    test_allclose(k, torch.from_numpy(m * y.numpy() + (1 - m) * np_fft2c((maps * x).numpy())), rtol=0, atol=1e-12)
    assert (kspace_residual(z, y, mask, maps) < kspace_residual(x, y, mask, maps)).all()
    # maps given per batch item give the same result as shared maps
    test_allclose(hard_dc(x, y, mask, maps.expand(2, -1, -1, -1)), z, rtol=0, atol=1e-12)


@pytest.mark.parametrize("lam", [0.0, 0.5, 4.0])
def test_soft_dc_single_coil_closed_form(lam):
    h, w = 12, 10
    mask = bernoulli_mask(h, w, seed=1)
    x, y = crandn(1, 1, h, w, seed=1), mask * crandn(1, 1, h, w, seed=2)
    kz, kx = fft2c(soft_dc(x, y, mask, lam)), fft2c(x)
    m = mask.bool()
    test_allclose(kz[..., m], ((kx + lam * y) / (1 + lam))[..., m], rtol=0, atol=1e-12)
    test_allclose(kz[..., ~m], kx[..., ~m], rtol=0, atol=1e-12)


def test_soft_dc_limits_cg_and_dense():
    h, w, lam = 6, 4, 2.5
    mask, maps = bernoulli_mask(h, w, seed=4), birdcage_maps((h, w), 3, dtype=torch.complex128)
    x, y = crandn(2, 1, h, w, seed=1), mask * crandn(2, 3, h, w, seed=2)
    y1 = y[:, :1]
    test_allclose(soft_dc(x, y1, mask, float("inf")), hard_dc(x, y1, mask), rtol=0, atol=1e-12)
    test_allclose(soft_dc(x, y1, mask, 0.0), x, rtol=0, atol=1e-12)
    test_allclose(soft_dc(x, y1, mask, lam, maps=torch.ones(1, h, w, dtype=torch.complex128)), soft_dc(x, y1, mask, lam), rtol=0, atol=1e-9)
    op = SenseOperator(maps, mask)
    A = torch.stack([op.A(e.view(1, 1, h, w)).flatten() for e in torch.eye(h * w, dtype=torch.complex128)], 1)
    for i in range(2):
        dense = torch.linalg.solve(torch.eye(h * w, dtype=torch.complex128) + lam * A.mH @ A, x[i].flatten() + lam * A.mH @ y[i].flatten())
        test_allclose(soft_dc(x, y, mask, lam, maps, num_iter=h * w)[i].flatten(), dense, rtol=0, atol=1e-9)
    lam_b = torch.tensor([1.0, 3.0], dtype=torch.float64).view(2, 1, 1, 1)  # per-sample weights
    test_allclose(soft_dc(x, y, mask, lam_b, maps, num_iter=h * w)[1], soft_dc(x[1:], y[1:], mask, 3.0, maps, num_iter=h * w)[0], rtol=0, atol=1e-9)


def test_gradient_dc_learnable_step_and_varnet():
    h, w = 16, 12
    mask, maps = bernoulli_mask(h, w, seed=2), birdcage_maps((h, w), 4, dtype=torch.complex128)
    x, y = crandn(1, 1, h, w, seed=1), mask * crandn(1, 4, h, w, seed=3)
    step = torch.nn.Parameter(torch.tensor(2.0, dtype=torch.float64))
    out = gradient_dc(x, y, mask, step, maps)
    op = SenseOperator(maps, mask)
    test_allclose(out.detach(), x - 2 * (op.normal(x) - op.A_adjoint(y)), rtol=0, atol=1e-12)
    test_allclose(gradient_dc(x, y, mask, step, maps, x_zf=op.A_adjoint(y)).detach(), out.detach(), rtol=0, atol=1e-12)
    out.abs().pow(2).sum().backward()
    assert step.grad is not None and torch.isfinite(step.grad)
    k = fft2c(maps * x)
    test_allclose(varnet_dc(k, y, mask, 1.0), hard_dc_kspace(x, y, mask, maps), rtol=0, atol=1e-12)
    test_allclose(varnet_dc(k, y, mask, 0.0), k, rtol=0, atol=0)


# ---------------------------------------------------------------- bad inputs
X = crandn(1, 1, 8, 8)
Y8 = crandn(1, 4, 8, 8)
MAPS = birdcage_maps((8, 8), 4, dtype=torch.complex128)
MASK = bernoulli_mask(8, 8)

BAD = [
    (lambda: fft2c(torch.randn(8, 8)), TypeError, "x: expected a complex tensor"),
    (lambda: ifft2c(torch.randn(8, 8)), TypeError, "k: expected a complex tensor"),
    (lambda: fft2c(crandn(8)), ValueError, "at least 2 dimensions"),
    (lambda: fft2c(crandn(7, 8), "checkerboard"), ValueError, "needs even H and W"),
    (lambda: fft2c(crandn(8, 8), "roll"), ValueError, "method: expected"),
    (lambda: fastmri_to_complex(torch.randn(3, 3)), ValueError, "last dimension of size 2"),
    (lambda: fastmri_to_complex(crandn(3, 2)), TypeError, "x: expected a real floating-point tensor"),
    (lambda: deepinv_to_complex(torch.randn(1, 3, 4, 4)), ValueError, "expected 2 channels"),
    (lambda: complex_to_deepinv(crandn(4, 4)), ValueError, "x: expected 4 dimensions"),
    (lambda: random_line_mask((8, 64), [0.08], [0.5]), ValueError, "accelerations: expected a number > 1, got 0.5"),
    (lambda: random_line_mask((8, 64), [0.08, 0.1], [4]), ValueError, "the same length"),
    (lambda: random_line_mask((8, 64), [1.5], [4]), ValueError, "center_fractions: expected a number in (0, 1), got 1.5"),
    (lambda: equispaced_line_mask((8, 64), [0.5], [4]), ValueError, "already exceeds"),
    (lambda: random_line_mask((64,), [0.08], [4]), ValueError, "shape: expected a pair"),
    (lambda: poisson_disc_mask((32, 32), 0.5), ValueError, "acceleration: expected a number > 1"),
    (lambda: poisson_disc_mask((32, 32), 1.0), ValueError, "acceleration: expected a number > 1"),
    (lambda: poisson_disc_mask((32, 32), "4"), TypeError, "acceleration: expected a real number, got '4' (str)"),
    (lambda: poisson_disc_mask((32, 32), 4, calib=(40, 8)), ValueError, "calib: expected a block inside"),
    (lambda: poisson_disc_mask((16, 16), 30, calib=(8, 8)), ValueError, "above the most"),
    (lambda: birdcage_maps((8, 8), 0), ValueError, "num_coils: expected an int >= 1, got 0"),
    (lambda: SenseOperator(MAPS, torch.ones(7, 8)), ValueError, "mask: expected a shape broadcasting to"),
    (lambda: SenseOperator(MAPS, 0.5 * torch.ones(8, 8)), ValueError, "mask: expected a binary mask (0 and 1 only)"),
    (lambda: SenseOperator(MAPS, torch.ones(8, 8, dtype=torch.complex64)), TypeError, "mask: expected a real tensor, got dtype torch.complex64"),
    (lambda: SenseOperator(MAPS.abs(), MASK), TypeError, "maps: expected a complex tensor"),
    (lambda: SenseOperator(MAPS, MASK).A(X.real), TypeError, "x: expected a complex tensor"),
    (lambda: SenseOperator(MAPS, MASK).A(Y8), ValueError, "x: expected an image (B, 1, H, W)"),
    (lambda: SenseOperator(MAPS, MASK).A(crandn(1, 1, 8, 6)), ValueError, "x: expected spatial size"),
    (lambda: SenseOperator(MAPS, MASK).A_adjoint(Y8[:, :2]), ValueError, "y: expected 4 coils"),
    (lambda: hard_dc(X.real, Y8, MASK, MAPS), TypeError, "x: expected a complex tensor"),
    (lambda: hard_dc(X, Y8.real, MASK, MAPS), TypeError, "y: expected a complex tensor"),
    (lambda: hard_dc(X, Y8, MASK), ValueError, "maps: needed for multi-coil y"),
    (lambda: hard_dc(X, Y8, MASK, MAPS[:2]), ValueError, "maps: expected 4 coils"),
    (lambda: hard_dc(X, Y8, MASK, birdcage_maps((8, 6), 4)), ValueError, "maps: expected spatial size"),
    (lambda: hard_dc(X, Y8, torch.ones(6, 8), MAPS), ValueError, "mask: expected a shape broadcasting to"),
    (lambda: hard_dc(X, Y8[..., :6], MASK, MAPS), ValueError, "x and y: expected the same batch and spatial size"),
    (lambda: hard_dc(X, crandn(2, 4, 8, 8), MASK, MAPS), ValueError, "x and y: expected the same batch"),
    (lambda: hard_dc(X, Y8, MASK, MAPS.expand(3, -1, -1, -1)), ValueError, "maps: expected batch 1 or 1 (the batch of y)"),
    (lambda: soft_dc(X, Y8[:, :1], MASK, -1.0), ValueError, "lam: expected values >= 0"),
    (lambda: soft_dc(X, Y8, MASK, float("inf"), MAPS), ValueError, "lam: inf is hard DC"),
    (lambda: varnet_dc(Y8, Y8[:, :2], MASK), ValueError, "k and y: expected the same shape"),
    (lambda: zero_filled(Y8), ValueError, "maps: needed to combine 4 coils"),
    (lambda: espirit_maps(Y8[0], calib_width=4, kernel_width=6), ValueError, "kernel_width <= calib_width"),
    (lambda: shepp_logan((0, 8)), ValueError, "shape[0]: expected an int >= 1, got 0"),
    # one validation vocabulary (issue 18): bool/float ints, non-finite data, non-binary masks, silent broadcasts
    (lambda: shepp_logan((True, 8)), TypeError, "shape[0]: expected an int, got True (bool)"),
    (lambda: shepp_logan((8.0, 8)), TypeError, "shape[0]: expected an int, got 8.0 (float)"),
    (lambda: birdcage_maps((8, 8), True), TypeError, "num_coils: expected an int, got True (bool)"),
    (lambda: birdcage_maps((8, 8), 4.0), TypeError, "num_coils: expected an int, got 4.0 (float)"),
    (lambda: birdcage_maps((8, 8), 4, radius=0), ValueError, "radius: expected a number > 0, got 0"),
    (lambda: random_line_mask((8, 64), 0.08, [4]), ValueError, "center_fractions: expected a list of numbers"),
    (lambda: random_line_mask((8, 64), [0.08, 0.08], [4, float("nan")]), ValueError, "accelerations: expected a finite number"),
    (lambda: poisson_disc_mask((32, 32), True), TypeError, "acceleration: expected a real number, got True (bool)"),
    (lambda: poisson_disc_mask((32, 32), float("inf")), ValueError, "acceleration: expected a finite number"),
    (lambda: poisson_disc_mask((32, 32), 4, tol=0), ValueError, "tol: expected a number in (0, 1), got 0"),
    (lambda: poisson_disc_mask((32, 32), 4, max_trials=5.0), TypeError, "max_trials: expected an int, got 5.0 (float)"),
    (lambda: poisson_disc_mask((32, 32), 4, calib=(8.0, 8)), TypeError, "calib[0]: expected an int, got 8.0 (float)"),
    (lambda: achieved_acceleration(0.5 * torch.ones(4, 4)), ValueError, "mask: expected a binary mask"),
    (lambda: SenseOperator(MAPS, MASK, method="roll"), ValueError, "method: expected one of"),
    (lambda: SenseOperator(MAPS * float("nan"), MASK), ValueError, "maps: expected finite values"),
    (lambda: SenseOperator(MAPS, MASK).A(X * float("nan")), ValueError, "x: expected finite values"),
    (lambda: SenseOperator(MAPS, MASK).A_adjoint(Y8 * float("inf")), ValueError, "y: expected finite values"),
    (lambda: SenseOperator(MAPS.expand(2, -1, -1, -1), MASK).A(crandn(3, 1, 8, 8)), ValueError,
     "maps: expected batch 1 or 3 (the batch of x)"),
    (lambda: SenseOperator(MAPS, MASK).norm(num_iter=0), ValueError, "num_iter: expected an int >= 1, got 0"),
    (lambda: zero_filled(Y8 * float("nan"), MASK, MAPS), ValueError, "y: expected finite values"),
    (lambda: zero_filled(Y8, 0.5 * MASK, MAPS), ValueError, "mask: expected a binary mask"),
    (lambda: zero_filled(Y8, MASK, MAPS.expand(2, -1, -1, -1)), ValueError, "maps: expected batch 1 or 1 (the batch of y)"),
    (lambda: hard_dc(X * float("nan"), Y8, MASK, MAPS), ValueError, "x: expected finite values"),
    (lambda: hard_dc(X, Y8 * float("inf"), MASK, MAPS), ValueError, "y: expected finite values"),
    (lambda: hard_dc(X, Y8, 0.5 * MASK, MAPS), ValueError, "mask: expected a binary mask"),
    (lambda: hard_dc(X, Y8, MASK.expand(2, 1, 8, 8), MAPS), ValueError, "mask: expected batch 1 or 1 (the batch of y)"),
    (lambda: hard_dc_kspace(X, Y8, MASK, MAPS * float("nan")), ValueError, "maps: expected finite values"),
    (lambda: kspace_residual(X * float("nan"), Y8, MASK, MAPS), ValueError, "x: expected finite values"),
    (lambda: soft_dc(X, Y8, MASK, 1.0, MAPS, num_iter=2.0), TypeError, "num_iter: expected an int, got 2.0 (float)"),
    (lambda: soft_dc(X, Y8[:, :1], MASK, float("nan")), ValueError, "lam: expected values >= 0"),
    (lambda: gradient_dc(X, Y8, MASK, float("nan"), MAPS), ValueError, "step: expected a finite number"),
    (lambda: gradient_dc(X, Y8, MASK, torch.tensor(float("inf")), MAPS), ValueError, "step: expected finite values"),
    (lambda: gradient_dc(X, Y8, MASK, 1.0, MAPS, x_zf=crandn(1, 1, 8, 6)), ValueError, "x_zf and x: expected the same shape"),
    (lambda: varnet_dc(Y8, Y8 * float("nan"), MASK), ValueError, "y: expected finite values"),
    (lambda: varnet_dc(Y8, Y8, MASK, float("inf")), ValueError, "weight: expected a finite number"),
    (lambda: varnet_dc(Y8, Y8, 2 * MASK), ValueError, "mask: expected a binary mask"),
    (lambda: espirit_maps(Y8[0], calib_width=8.0, kernel_width=4), TypeError, "calib_width: expected an int, got 8.0 (float)"),
    (lambda: espirit_maps(Y8[0], calib_width=8, kernel_width=4, thresh=-1), ValueError, "thresh: expected a number in [0, 1)"),
    (lambda: espirit_maps(Y8[0] * float("nan")), ValueError, "kspace: expected finite values"),
    (lambda: rss(Y8, dim=1.0), TypeError, "dim: expected an int, got 1.0 (float)"),
    (lambda: rss(Y8, dim=4), ValueError, "dim: expected an int in [-4, 3], got 4"),
]


@pytest.mark.parametrize("fn, exc, match", BAD, ids=[f"{i}-{b[2][:40]}" for i, b in enumerate(BAD)])
def test_bad_inputs(fn, exc, match):
    with pytest.raises(exc, match=__import__("re").escape(match)):
        fn()


def test_check_false_skips_validation_but_not_the_arithmetic():
    "check=False (used once per batch by the unrolled networks) gives bit-identical results on valid input."
    x, y, m, s = X, Y8, MASK, MAPS
    for f, args in ((hard_dc, (x, y, m, s)), (hard_dc_kspace, (x, y, m, s)), (gradient_dc, (x, y, m, 2.0, s)),
                    (soft_dc, (x, y, m, 0.5, s))):
        assert torch.equal(f(*args), f(*args, check=False))
    assert torch.equal(varnet_dc(y, y * 0.5, m, 0.3), varnet_dc(y, y * 0.5, m, 0.3, check=False))
    assert torch.equal(zero_filled(y, m, s), zero_filled(y, m, s, check=False))
    op = SenseOperator(s, m)
    assert torch.equal(op.normal(x), op.A_adjoint(op.A(x)))
