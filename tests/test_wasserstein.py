"Noise-preserving Wasserstein patch loss: exact references (POT), properties (hypothesis), the paper's IPOT, bad inputs."
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st
from hypothesis.extra.numpy import arrays

from medsynth_nb.utils import make_generator, test_allclose
from medsynth_nb.wasserstein import (draw_offset, extract_patches, gaussian_downsample, ipot_w1,
                                     multiscale_wasserstein_patch_loss, patch_grid, sinkhorn_w1, sorted_plan, w1_sorted,
                                     wasserstein_patch_loss)
from refusals import refusal_test

ot = pytest.importorskip("ot")




def _pot_per_patch(pred, target, n, offset):
    m = n ** (pred.ndim - 2)
    xp = extract_patches(pred, n, offset).reshape(-1, m).numpy()
    yp = extract_patches(target, n, offset).reshape(-1, m).numpy()
    u = np.full(m, 1.0 / m)
    emd = np.array([ot.emd2(u, u, np.abs(a[:, None] - b[None, :])) for a, b in zip(xp, yp)])
    return emd, ot.wasserstein_1d(xp.T, yp.T, p=1)


@pytest.mark.parametrize("shape,n,offset", [
    ((2, 1, 9, 7), 3, (1, 2)), ((1, 3, 11, 10), 4, (3, 0)), ((2, 1, 8, 8), 4, None), ((1, 1, 5, 5), 5, (4, 4)),
    ((1, 1, 5, 6, 7), 2, (0, 1, 3)), ((1, 2, 7, 9, 6), 3, (2, 2, 1)), ((1, 1, 8, 8, 8), 4, None), ((2, 1, 6, 6), 1, None)])
@pytest.mark.parametrize("backend", ["numpy", "torch"])
def test_matches_pot_per_patch(shape, n, offset, backend):
    g = make_generator(hash((shape, n)) % 2 ** 31)
    pred = torch.randn(shape, dtype=torch.float64, generator=g)
    target = torch.randn(shape, dtype=torch.float64, generator=g) * 2 + 0.3
    ours = wasserstein_patch_loss(pred, target, n, offset, reduction="none", backend=backend)
    assert ours.shape == shape[:2] + tuple(math.ceil(s / n) for s in shape[2:])
    emd, w1d = _pot_per_patch(pred, target, n, offset)
    assert np.abs(ours.flatten().numpy() - emd).max() <= 1e-6
    assert np.abs(ours.flatten().numpy() - w1d).max() <= 1e-6
    test_allclose(wasserstein_patch_loss(pred, target, n, offset, backend=backend), torch.tensor(emd.sum(), dtype=torch.float64), rtol=1e-10, atol=1e-10)
    test_allclose(wasserstein_patch_loss(pred, target, n, offset, reduction="mean", backend=backend), torch.tensor(emd.mean(), dtype=torch.float64), rtol=1e-10, atol=1e-10)


def test_random_offset_reproducible_and_matches_explicit():
    x, y = torch.randn(1, 1, 9, 10, 11, dtype=torch.float64), torch.randn(1, 1, 9, 10, 11, dtype=torch.float64)
    o = draw_offset(3, 4, make_generator(5))
    a = wasserstein_patch_loss(x, y, 4, "random", generator=make_generator(5))
    test_allclose(a, wasserstein_patch_loss(x, y, 4, o))
    before = torch.random.get_rng_state()
    wasserstein_patch_loss(x, y, 4, "random", generator=make_generator(6))
    assert torch.equal(before, torch.random.get_rng_state())  # global RNG untouched


@pytest.mark.parametrize("rng_name,hi", [("code", 2), ("paper", 3)])
def test_offset_ranges(rng_name, hi):
    vals = {o for s in range(300) for o in draw_offset(2, 5, make_generator(s), rng_name)}
    assert vals == set(range(hi + 1))


def test_no_voxel_dropped_and_wrap():
    x = torch.arange(7 * 5 * 4, dtype=torch.float32).reshape(1, 1, 7, 5, 4)
    p = extract_patches(x, 3, (2, 1, 0))
    assert p.shape == (1, 1, 3 * 2 * 2, 27)
    assert set(p.flatten().tolist()) == set(range(140))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_numpy_and_torch_paths_identical(dtype):
    g = make_generator(1)
    x, y = torch.randn(3, 2, 17, 13, dtype=dtype, generator=g), torch.randn(3, 2, 17, 13, dtype=dtype, generator=g)
    x[0, 0, :4, :4] = 0.5  # ties
    outs = []
    for be in ("numpy", "torch"):
        p, t = x.clone().requires_grad_(), y.clone().requires_grad_()
        loss = wasserstein_patch_loss(p, t, 4, (1, 3), backend=be); loss.backward()
        outs.append((loss.detach(), p.grad, t.grad))
    if dtype == torch.float32:  # same sorted values; tie order may differ, which moves equal gradients around
        test_allclose(outs[0][0], outs[1][0], rtol=0, atol=0)
    for a, b in zip(outs[0], outs[1]): test_allclose(a.sum(), b.sum(), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("shape,n,offset", [((2, 1, 7, 6), 3, (1, 2)), ((1, 2, 5, 4, 6), 2, (1, 0, 1))])
@pytest.mark.parametrize("backend", ["numpy", "torch"])
def test_gradcheck(shape, n, offset, backend):
    g = make_generator(2)
    x = torch.randn(shape, dtype=torch.float64, generator=g, requires_grad=True)
    y = torch.randn(shape, dtype=torch.float64, generator=g, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: wasserstein_patch_loss(a, b, n, offset, backend=backend), (x, y))
    assert torch.autograd.gradcheck(lambda a, b: wasserstein_patch_loss(a, b, n, offset, reduction="none", backend=backend), (x, y))


def test_float32_packed_sort_is_exact():
    # extreme float32 values, zeros of both signs, denormals and ties: the packed-index sort must return exact values
    vals = torch.tensor([3.4e38, -3.4e38, 0.0, -0.0, 1e-45, -1e-45, 1.0, 1.0, np.nextafter(np.float32(1), np.float32(2)),
                         -1.0, 1e-38, 7.0, 7.0, -7.0, 2.5, -2.5], dtype=torch.float32)
    x = vals.reshape(1, 1, 4, 4).clone().requires_grad_()
    y = torch.zeros(1, 1, 4, 4)
    w = wasserstein_patch_loss(x, y, 4, backend="numpy")
    ref = wasserstein_patch_loss(x.detach(), y, 4, backend="torch")
    assert w.item() == ref.item()
    w.backward()
    xs = x.detach().reshape(-1)
    expected = torch.sign(xs) / 16
    assert torch.equal(x.grad.reshape(-1), expected)


def test_closed_forms():
    g = make_generator(3)
    y = torch.randn(2, 1, 10, 9, dtype=torch.float64, generator=g); x = torch.randn(2, 1, 10, 9, dtype=torch.float64, generator=g)
    npatch = 2 * 4 * 3
    test_allclose(wasserstein_patch_loss(y - 0.7, y, 3, (2, 1)), torch.tensor(0.7 * npatch, dtype=torch.float64))
    test_allclose(wasserstein_patch_loss(3 * x, 3 * y, 3), 3 * wasserstein_patch_loss(x, y, 3))
    test_allclose(wasserstein_patch_loss(-x, -y, 3), wasserstein_patch_loss(x, y, 3))
    # constant patches: W1 = |a - b|
    test_allclose(wasserstein_patch_loss(torch.full((1, 1, 4, 4), 2.0), torch.full((1, 1, 4, 4), -1.0), 2, reduction="mean"), torch.tensor(3.0))
    # scale invariance of IPOT / Sinkhorn (beta, eps relative to max C)
    for method in ("ipot", "sinkhorn"):
        test_allclose(wasserstein_patch_loss(5 * x, 5 * y, 3, method=method, n_iter=20), 5 * wasserstein_patch_loss(x, y, 3, method=method, n_iter=20), rtol=1e-9, atol=1e-9)


def test_sorted_plan_is_optimal_and_feasible():
    g = make_generator(4)
    x, y = torch.randn(6, 9, dtype=torch.float64, generator=g), torch.randn(6, 9, dtype=torch.float64, generator=g)
    T = sorted_plan(x, y)
    C = (x[:, :, None] - y[:, None, :]).abs()
    test_allclose((T * C).sum((1, 2)), w1_sorted(x, y))
    test_allclose(T.sum(1), torch.full((6, 9), 1 / 9, dtype=torch.float64))
    test_allclose(T.sum(2), torch.full((6, 9), 1 / 9, dtype=torch.float64))


# --- properties (hypothesis) -------------------------------------------------------------------------------
# Domain: finite normal float64 in [-1e3, 1e3]. Subnormals are excluded on purpose: W1 between [0, 0] and [5e-324, 0]
# underflows to exactly 0 (the mean of 5e-324 / 2), which would break 'zero only for equal multisets' by arithmetic.
finite = st.floats(-1e3, 1e3, allow_nan=False, allow_infinity=False, allow_subnormal=False, width=64)
rows = st.integers(1, 4).flatmap(lambda r: st.integers(1, 12).map(lambda m: (r, m)))


def _arr(shape): return arrays(np.float64, shape, elements=finite)


@settings(max_examples=40, deadline=None)
@given(data=st.data(), shape=rows)
def test_properties_metric(data, shape):
    x = torch.from_numpy(data.draw(_arr(shape))); y = torch.from_numpy(data.draw(_arr(shape))); z = torch.from_numpy(data.draw(_arr(shape)))
    wxy, wyx = w1_sorted(x, y), w1_sorted(y, x)
    test_allclose(wxy, wyx, rtol=0, atol=0)                                              # symmetry
    assert (wxy >= 0).all()
    assert (w1_sorted(x, z) <= wxy + w1_sorted(y, z) + 1e-9).all()                        # triangle inequality
    perm = torch.from_numpy(np.array(data.draw(st.permutations(range(shape[1])))))
    test_allclose(w1_sorted(x[:, perm], y), wxy, rtol=1e-12, atol=1e-12)                 # permutation invariance
    test_allclose(w1_sorted(x, x[:, perm]), torch.zeros(shape[0], dtype=torch.float64), rtol=0, atol=0)  # zero for equal multisets
    equal = torch.tensor([sorted(a) == sorted(b) for a, b in zip(x.tolist(), y.tolist())])
    assert torch.equal(wxy == 0, equal)                                                  # zero only for equal multisets


@settings(max_examples=15, deadline=None)
@given(data=st.data(), n=st.integers(1, 3), d=st.sampled_from([2, 3]))
def test_properties_loss(data, n, d):
    sizes = tuple(data.draw(st.integers(n, n + 4)) for _ in range(d))
    x = torch.from_numpy(data.draw(_arr((1, 1) + sizes))); y = torch.from_numpy(data.draw(_arr((1, 1) + sizes)))
    off = tuple(data.draw(st.integers(0, s - 1)) for s in sizes)
    a = wasserstein_patch_loss(x, y, n, off)
    test_allclose(a, wasserstein_patch_loss(y, x, n, off), rtol=1e-12, atol=1e-9)
    emd, _ = _pot_per_patch(x, y, n, off)
    assert abs(a.item() - emd.sum()) <= 1e-6 * max(1.0, abs(emd.sum()))
    c = data.draw(st.floats(-10, 10))
    test_allclose(wasserstein_patch_loss(x + c, x, n, off), torch.tensor(abs(c) * math.prod(math.ceil(s / n) for s in sizes), dtype=torch.float64), rtol=1e-9, atol=1e-7)


# --- the paper's IPOT and Sinkhorn ---------------------------------------------------------------------------
def _paper_code(img1, img2, n, num_iterations=100):
    "Transcription of Pinetz et al.'s PatchWiseWasserSteinSinkhorn (shift=False)."
    x = img1.unfold(2, n, n).unfold(3, n, n).unfold(4, n, n).reshape(-1, n ** 3)
    y = img2.unfold(2, n, n).unfold(3, n, n).unfold(4, n, n).reshape(-1, n ** 3)
    C_res = torch.abs(x[:, None, :] - y[:, :, None])
    with torch.no_grad():
        Q = C_res.detach()
        eps = torch.max(torch.max(Q, -1, keepdim=True)[0], -2, keepdim=True)[0] * 10
        Q = torch.exp(-Q / eps)
        b = torch.ones((Q.shape[0], n ** 3, 1)).type_as(Q)
        T = 1
        for _ in range(num_iterations):
            K = T * Q
            a = 1 / n ** 3 / torch.matmul(K, b)
            b = 1 / n ** 3 / torch.matmul(K.transpose(2, 1), a)
            T = a * K * b.transpose(2, 1)
    return torch.sum((T * C_res).sum((1, 2)))


@pytest.mark.parametrize("chunk", [1, 5, 1024])
def test_ipot_equals_paper_code(chunk):
    g = make_generator(7)
    x, y = torch.randn(2, 1, 8, 4, 8, dtype=torch.float64, generator=g), torch.randn(2, 1, 8, 4, 8, dtype=torch.float64, generator=g)
    a1, b1, a2, b2 = (t.clone().requires_grad_() for t in (x, y, x, y))
    ref = _paper_code(a1, b1, 4); ref.backward()
    ours = wasserstein_patch_loss(a2, b2, 4, method="ipot", chunk=chunk); ours.backward()
    test_allclose(ours, ref, rtol=1e-12, atol=0)
    test_allclose(a2.grad, a1.grad, rtol=1e-10, atol=1e-12)
    test_allclose(b2.grad, b1.grad, rtol=1e-10, atol=1e-12)


def test_ipot_and_sinkhorn_bounds_and_convergence():
    g = make_generator(8)
    x, y = 0.5 + 0.05 * torch.randn(16, 64, dtype=torch.float64, generator=g), 0.5 + 0.07 * torch.randn(16, 64, dtype=torch.float64, generator=g)
    ex = w1_sorted(x, y)
    paper = ipot_w1(x, y)  # beta = 10 max C, 100 iterations: far from converged, overestimates
    assert (paper > ex).all() and paper.sum() > 1.3 * ex.sum()
    test_allclose(ipot_w1(x, y, n_iter=200, beta=0.1), ex, rtol=5e-3, atol=0)
    sk = sinkhorn_w1(x[:8], y[:8], n_iter=600, eps=0.005)
    ex = ex[:8]
    assert (sk >= ex * (1 - 1e-3)).all()  # converged: >= W1 up to the marginal error of the last iterate
    test_allclose(sk, ex, rtol=0.08, atol=0)  # entropic bias at eps = 0.005 max C


def test_multiscale_and_downsample():
    from scipy.ndimage import gaussian_filter
    g = make_generator(9)
    v = torch.randn(1, 2, 9, 8, 7, dtype=torch.float64, generator=g)
    test_allclose(gaussian_downsample(v)[0, 1], torch.from_numpy(gaussian_filter(v[0, 1].numpy(), 1.0, mode="constant", truncate=4.0)[::2, ::2, ::2]))
    x, y = torch.randn(1, 1, 16, 16, 16, generator=g), torch.randn(1, 1, 16, 16, 16, generator=g)
    ps = [x, gaussian_downsample(x), gaussian_downsample(gaussian_downsample(x))]
    ts = [y, gaussian_downsample(y), gaussian_downsample(gaussian_downsample(y))]
    test_allclose(multiscale_wasserstein_patch_loss(ps, y), sum(wasserstein_patch_loss(p, t) for p, t in zip(ps, ts)))
    test_allclose(multiscale_wasserstein_patch_loss(x, y), multiscale_wasserstein_patch_loss(ps, y))
    with pytest.raises(ValueError, match="preds: expected 3 tensors"): multiscale_wasserstein_patch_loss(ps[:2], y)


# --- bad inputs ----------------------------------------------------------------------------------------------
X = torch.rand(1, 1, 8, 8)
BAD = [
    (dict(pred=X, target=torch.rand(1, 1, 8, 9)), ValueError, "pred and target: expected the same shape"),
    (dict(pred=X, target=X, patch_size=9), ValueError, "patch_size: expected at most the smallest spatial size 8"),
    (dict(pred=X, target=X, patch_size=0), ValueError, "patch_size: expected an int >= 1, got 0"),
    (dict(pred=X, target=X, patch_size=2.0), TypeError, "patch_size: expected an int, got 2.0 (float)"),
    (dict(pred=X, target=X, patch_size=True), TypeError, "patch_size: expected an int, got True (bool)"),
    (dict(pred=(X * 9).long(), target=(X * 9).long()), TypeError, "pred: expected a real floating-point tensor"),
    (dict(pred=X, target=(X * 9).int()), TypeError, "target: expected a real floating-point tensor"),
    (dict(pred=X, target=X.double()), TypeError, "pred and target: expected the same dtype"),
    (dict(pred=X.numpy(), target=X), TypeError, "pred: expected a torch.Tensor"),
    (dict(pred=X[0], target=X[0]), ValueError, "pred: expected 4 or 5 dimensions"),
    (dict(pred=X.to(torch.complex64), target=X.to(torch.complex64)), TypeError, "pred: expected a real floating-point tensor"),
    (dict(pred=X, target=X, offset=(1,)), ValueError, "offset: expected None, 'random' or a tuple of 2 ints"),
    (dict(pred=X, target=X, offset=(1, 2.0)), TypeError, "offset[1]: expected an int, got 2.0 (float)"),
    (dict(pred=X, target=X, offset=(True, 0)), TypeError, "offset[0]: expected an int, got True (bool)"),
    (dict(pred=X, target=X, offset=(0, 8)), ValueError, "offset[1]: expected an int in [0, 7], got 8"),
    (dict(pred=X, target=X, offset=(-1, 0)), ValueError, "offset[0]: expected an int in [0, 7], got -1"),
    (dict(pred=X, target=X, offset="rand"), ValueError, "offset: expected None, 'random'"),
    (dict(pred=X, target=X, offset="random", offset_range="text"), ValueError, "offset_range: expected one of"),
    (dict(pred=X, target=X, method="emd"), ValueError, "method: expected one of"),
    (dict(pred=X, target=X, reduction="max"), ValueError, "reduction: expected one of"),
    (dict(pred=X, target=X, method="ipot", n_iter=0), ValueError, "n_iter: expected an int >= 1, got 0"),
    (dict(pred=X, target=X, method="ipot", n_iter=10.0), TypeError, "n_iter: expected an int, got 10.0 (float)"),
    (dict(pred=X, target=X, method="sinkhorn", n_iter=True), TypeError, "n_iter: expected an int, got True (bool)"),
    (dict(pred=X, target=X, method="sinkhorn", eps=0.0), ValueError, "eps: expected a number > 0, got 0"),
    (dict(pred=X, target=X, method="sinkhorn", eps=float("nan")), ValueError, "eps: expected a finite number, got nan"),
    (dict(pred=X, target=X, method="ipot", beta=-1.0), ValueError, "beta: expected a number > 0, got -1"),
    (dict(pred=X, target=X, method="ipot", chunk=0), ValueError, "chunk: expected an int >= 1, got 0"),
    (dict(pred=X, target=X, method="ipot", chunk=2.5), TypeError, "chunk: expected an int, got 2.5 (float)"),
    (dict(pred=X, target=X, backend="cupy"), ValueError, "backend: expected one of ('auto', 'numpy', 'torch'), got 'cupy'"),
    (dict(pred=X * float("inf"), target=X), ValueError, "pred: expected finite values"),
]


@pytest.mark.parametrize("kwargs,exc,msg", BAD, ids=[b[2][:40] for b in BAD])
def test_bad_inputs(kwargs, exc, msg):
    with pytest.raises(exc, match=msg.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[").replace("]", r"\]")):
        wasserstein_patch_loss(**kwargs)


def test_extract_patches_bad_inputs():
    with pytest.raises(ValueError, match="x: expected 4 or 5 dimensions"): extract_patches(torch.rand(8, 8), 2)
    with pytest.raises(ValueError, match="patch_size: expected at most"): extract_patches(torch.rand(1, 1, 3, 8), 4)
    with pytest.raises(ValueError, match="scales: expected an int >= 1, got 0"): multiscale_wasserstein_patch_loss(X, X, scales=0)


R = torch.rand(3, 16, dtype=torch.float64)
BAD_OTHER = [  # (call, exception, message fragment): the other public functions' refusals
    (lambda: w1_sorted(R, R[:2]), ValueError, "x and y: expected the same shape"),
    (lambda: w1_sorted(R[0], R[0]), ValueError, "x: expected 2 dimensions"),
    (lambda: w1_sorted(R, R * float("nan")), ValueError, "y: expected finite values"),
    (lambda: w1_sorted(R, R.float()), TypeError, "x and y: expected the same dtype"),
    (lambda: w1_sorted(R, R, backend="cupy"), ValueError, "backend: expected one of"),
    (lambda: w1_sorted(R[:, :0], R[:, :0]), ValueError, "x: expected at least one sample per row"),
    (lambda: sorted_plan(R, R[:, :8]), ValueError, "x and y: expected the same shape"),
    (lambda: ipot_w1(R, R, n_iter=0), ValueError, "n_iter: expected an int >= 1, got 0"),
    (lambda: ipot_w1(R, R, n_iter=5.0), TypeError, "n_iter: expected an int, got 5.0 (float)"),
    (lambda: ipot_w1(R, R, beta=0), ValueError, "beta: expected a number > 0, got 0"),
    (lambda: ipot_w1(R.float(), R.float(), chunk=True), TypeError, "chunk: expected an int, got True (bool)"),
    (lambda: sinkhorn_w1(R, R, eps=-0.1), ValueError, "eps: expected a number > 0, got -0.1"),
    (lambda: sinkhorn_w1(R * float("inf"), R), ValueError, "x: expected finite values"),
    (lambda: draw_offset(2, 0), ValueError, "patch_size: expected an int >= 1, got 0"),
    (lambda: draw_offset(2.0, 4), TypeError, "ndim: expected an int, got 2.0 (float)"),
    (lambda: draw_offset(2, 4, offset_range="text"), ValueError, "offset_range: expected one of ('code', 'paper')"),
    (lambda: patch_grid((8, 8), 2.0), TypeError, "patch_size: expected an int, got 2.0 (float)"),
    (lambda: patch_grid((8, 0), 2), ValueError, "spatial[1]: expected an int >= 1, got 0"),
    (lambda: extract_patches(X, 2, offset=(0, 1.5)), TypeError, "offset[1]: expected an int, got 1.5 (float)"),
    (lambda: extract_patches(X, True), TypeError, "patch_size: expected an int, got True (bool)"),
    (lambda: gaussian_downsample(X, sigma=0.0), ValueError, "sigma: expected a number > 0, got 0"),
    (lambda: gaussian_downsample(X, size=9.0), TypeError, "size: expected an int, got 9.0 (float)"),
    (lambda: gaussian_downsample(X, stride=0), ValueError, "stride: expected an int >= 1, got 0"),
    (lambda: multiscale_wasserstein_patch_loss(X, X, scales=2.0), TypeError, "scales: expected an int, got 2.0 (float)"),
    (lambda: multiscale_wasserstein_patch_loss(X, X, scales=True), TypeError, "scales: expected an int, got True (bool)"),
]


test_bad_inputs_other_functions = refusal_test(BAD_OTHER)


# --- the custom backward: equal to autograd's gradient of the plain implementation -------------------------------
def _plain_patches(x, n, offset):
    "The cut as autograd views (roll or index_select per axis, reshape, permute): independent of _PatchRows."
    d, spatial = x.ndim - 2, x.shape[2:]
    grid = [math.ceil(s / n) for s in spatial]
    for k, (s, gk, o) in enumerate(zip(spatial, grid, offset)):
        x = x.index_select(2 + k, (torch.arange(gk * n) + o) % s)
    shape = list(x.shape[:2])
    for gk in grid: shape += [gk, n]
    perm = [0, 1] + [2 + 2 * k for k in range(d)] + [3 + 2 * k for k in range(d)]
    return x.reshape(shape).permute(perm).reshape(-1, n ** d)


def _sort_order(a, packed):
    "The order the sort promises: stable; for the packed float32 sort −0.0 first and negative ties by descending index."
    if not packed: return torch.sort(a, dim=-1, stable=True).indices
    v, idx = a.double().numpy(), np.arange(a.shape[1])
    neg = np.signbit(v)
    return torch.from_numpy(np.lexsort((np.where(neg, -idx, idx), np.where(neg & (v == 0), -5e-324, v)), axis=-1))


@pytest.mark.parametrize("shape,n,offset", [((2, 1, 16, 24), 8, (3, 4)), ((1, 2, 9, 7), 3, (1, 2)),
                                            ((2, 1, 8, 12, 16), 4, (1, 2, 3)), ((1, 1, 5, 6, 7), 2, (0, 1, 1)),
                                            ((2, 1, 64, 64, 40), 4, (2, 0, 1))])   # the last: block-copy wrap
@pytest.mark.parametrize("dtype,backend", [(torch.float32, "numpy"), (torch.float64, "numpy"), (torch.float32, "torch"),
                                           (torch.float64, "torch")])
def test_backward_equals_autograd_of_plain(shape, n, offset, dtype, backend):
    g = make_generator(11)
    x = torch.randn(shape, dtype=dtype, generator=g)
    y = (torch.randn(shape, dtype=dtype, generator=g) * 4).round() / 4       # many ties in the target
    x[:, :, : shape[2] // 2] = (x[:, :, : shape[2] // 2] * 2).round() / 2     # ties of both signs, zeros, in pred
    x[0, 0, 0, :2] = -0.0
    y[-1, -1, -1] = x[-1, -1, -1]                                             # x_(k) = y_(k) in some patches
    a1, b1, a2, b2 = (t.clone().requires_grad_() for t in (x, y, x, y))
    ours = wasserstein_patch_loss(a1, b1, n, offset, reduction="none", backend=backend)
    wts = torch.rand(ours.shape, dtype=dtype, generator=g)                   # a different dL/dw per patch
    (ours * wts).sum().backward()
    xr, yr = _plain_patches(a2, n, offset), _plain_patches(b2, n, offset)
    packed = dtype == torch.float32 and backend == "numpy"
    px, py = _sort_order(xr.detach(), packed), _sort_order(yr.detach(), packed)
    ref = (xr.gather(1, px) - yr.gather(1, py)).abs().mean(-1)
    (ref * wts.flatten()).sum().backward()
    assert torch.equal(ours.detach().flatten(), ref.detach())
    assert torch.equal(a1.grad, a2.grad) and torch.equal(b1.grad, b2.grad)
    assert a1.grad.abs().sum() > 0 and b1.grad.abs().sum() > 0


@pytest.mark.parametrize("backend", ["numpy", "torch"])
def test_backward_gradcheck_only_one_input(backend):
    g = make_generator(12)
    x = torch.randn(2, 1, 6, 8, dtype=torch.float64, generator=g, requires_grad=True)
    y = torch.randn(2, 1, 6, 8, dtype=torch.float64, generator=g)
    assert torch.autograd.gradcheck(lambda a: wasserstein_patch_loss(a, y, 2, (1, 1), backend=backend), (x,))
    assert torch.autograd.gradcheck(lambda b: wasserstein_patch_loss(y, b, 2, (1, 1), backend=backend), (x,))


def test_cut_paths_and_adjoint():
    from medsynth_nb.wasserstein import _SMALL, _rows, _unrows, _unwrap, _wrap
    g = make_generator(13)
    big = torch.randn(2, 1, 64, 64, 40, dtype=torch.float64, generator=g)
    assert big.numel() >= _SMALL
    for x, n, o in [(big, 4, (1, 2, 3)), (big[..., :8, :8, :8], 4, (1, 2, 3)), (big[0:1, :, :7, :5, 0], 3, (2, 1))]:
        w = _wrap(x, n, o)
        idx = [(torch.arange(math.ceil(s / n) * n) + ok) % s for s, ok in zip(x.shape[2:], o)]
        ref = x
        for k, i in enumerate(idx): ref = ref.index_select(2 + k, i)
        assert torch.equal(w, ref)
        G = torch.randn(w.shape, dtype=torch.float64, generator=g)
        test_allclose((w * G).sum(), (x * _unwrap(G, x.shape, n, o)).sum(), rtol=1e-12, atol=1e-9)
        r = _rows(w.contiguous(), n)
        assert torch.equal(_unrows(r, w.shape, n), w)


def test_nonfinite_found_after_the_fact():
    x, y = torch.rand(2, 1, 8, 8), torch.rand(2, 1, 8, 8)
    y[1, 0, 7, 7] = float("nan")
    with pytest.raises(ValueError, match="target: expected finite values, found 1 NaN/inf entries"):
        wasserstein_patch_loss(x, y, 4, "random", reduction="none", generator=make_generator(0))
    x[0, 0, 3, 3] = -float("inf")
    with pytest.raises(ValueError, match="pred: expected finite values, found 1 NaN/inf entries"):
        wasserstein_patch_loss(x, y, 4, backend="torch")
    big = torch.full((1, 1, 4, 4), 3.0e38)                                    # finite inputs, W1 overflows: no error
    assert wasserstein_patch_loss(big, -big, 4).item() == float("inf")
