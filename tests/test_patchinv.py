"Patch operator, losses, perturbations, configs and smoke training of medsynth_nb.patchinv (Angermann et al.)."
import math
import tempfile

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings, strategies as st

from medsynth_nb.patchinv import (METHODS, SCENARIOS, PatchInvConfig, TwoHeadGenerator, cubic_kernel, patch_loss, patch_op,
                                  perturb, resize_matrix, robust_rho, sample_patch_params, scores, table1, uapi_loss,
                                  unpaired_stream, zero_filled)
from medsynth_nb.train import get_experiment, train
from medsynth_nb.utils import make_generator, seeded, test_allclose

torch.set_num_threads(1)


# ---- patch operator -------------------------------------------------------------------------------------------

@settings(max_examples=10, deadline=None)
@given(st.integers(1, 4), st.integers(1, 3), st.integers(4, 24))
def test_patch_op_identity_is_exact(b, c, d):
    x = torch.randn(b, c, d, d, generator=make_generator(d))
    z = torch.zeros(b, dtype=torch.long)
    assert torch.equal(patch_op(x, torch.ones(b), z, z), x)


@settings(max_examples=10, deadline=None)
@given(st.integers(0, 10_000))
def test_patch_op_matches_torch_bicubic_with_a_075(seed):
    d = 24
    scale, top, left = sample_patch_params(3, d, generator=make_generator(seed))
    x = torch.randn(3, 2, d, d, generator=make_generator(seed + 1), dtype=torch.float64)
    side = (scale.double() * d).round().long()
    ref = torch.cat([F.interpolate(x[i:i + 1, :, t:t + s, l:l + s], size=(d, d), mode="bicubic", align_corners=False)
                     for i, (s, t, l) in enumerate(zip(side.tolist(), top.tolist(), left.tolist()))])
    test_allclose(patch_op(x, scale, top, left, a=-0.75), ref, rtol=1e-10, atol=1e-10)


def test_resize_rows_sum_to_one_and_stay_in_crop():
    A = resize_matrix(32, torch.tensor([3, 0]), torch.tensor([24, 23]))
    test_allclose(A.sum(-1), torch.ones(2, 32), rtol=0, atol=1e-6)
    assert A[0, :, :3].abs().sum() == 0 and A[0, :, 27:].abs().sum() == 0
    assert A[1, :, 23:].abs().sum() == 0


def test_cubic_kernel_values():
    t = torch.tensor([0.0, 0.5, 1.0, 1.5, 2.0, 2.5])
    a = -0.5
    want = torch.tensor([1.0, (a + 2) / 8 - (a + 3) / 4 + 1, 0.0, a * 3.375 - 5 * a * 2.25 + 8 * a * 1.5 - 4 * a, 0.0, 0.0])
    test_allclose(cubic_kernel(t, a), want, rtol=0, atol=1e-7)


def test_same_crop_on_images_and_scale_maps():
    x = torch.rand(2, 1, 16, 16, generator=make_generator(0))
    p = sample_patch_params(2, 16, generator=make_generator(1))
    both = patch_op(torch.cat([x, 2 * x], 1), *p)
    test_allclose(both[:, 1:], 2 * patch_op(x, *p))        # linear and channel-wise


def test_sample_patch_params_ranges_and_reproducible():
    s, t, l = sample_patch_params(5000, 40, generator=make_generator(3), min_scale=0.8)
    side = (s * 40).round().long()
    assert side.min() >= 32 and side.max() <= 40 and bool((t + side <= 40).all()) and bool((l + side <= 40).all())
    assert t.dtype == torch.long and s.dtype == torch.float32
    a = sample_patch_params(4, 40, generator=make_generator(9)); b = sample_patch_params(4, 40, generator=make_generator(9))
    assert all(torch.equal(u, v) for u, v in zip(a, b))
    state = torch.get_rng_state(); sample_patch_params(4, 40, generator=make_generator(9)); assert torch.equal(state, torch.get_rng_state())


@pytest.mark.parametrize("kw,msg", [
    (dict(min_scale=0.0), "0 < min_scale <= max_scale <= 1"), (dict(min_scale=-0.1), "min_scale and max_scale"),
    (dict(min_scale=0.9, max_scale=0.8), "min_scale and max_scale"), (dict(max_scale=1.01), "min_scale and max_scale"),
    (dict(batch=0), "batch: expected an int >= 1"), (dict(size=1), "size: expected an int >= 2")])
def test_sample_patch_params_bad(kw, msg):
    args = dict(batch=2, size=16) | kw
    with pytest.raises(ValueError, match=msg): sample_patch_params(**args)


def test_patch_op_bad_inputs():
    x = torch.zeros(2, 1, 8, 8); z = torch.zeros(2, dtype=torch.long); one = torch.ones(2)
    with pytest.raises(ValueError, match=r"scale: expected values rho in \(0, 1\]"): patch_op(x, one * 0, z, z)
    with pytest.raises(ValueError, match=r"scale: expected values rho in \(0, 1\]"): patch_op(x, one * 1.2, z, z)
    with pytest.raises(ValueError, match=r"top: expected shape \(2,\)"): patch_op(x, one, z[:1], z)
    with pytest.raises(ValueError, match="leaves the 8x8 image"): patch_op(x, one * 0.5, z, z + 5)
    with pytest.raises(ValueError, match="offsets >= 0"): patch_op(x, one * 0.5, z - 1, z)
    with pytest.raises(TypeError, match="left: expected an integer tensor"): patch_op(x, one, z, z.float())
    with pytest.raises(TypeError, match="scale: expected a floating-point tensor"): patch_op(x, z, z, z)
    with pytest.raises(TypeError, match="scale: expected a torch.Tensor"): patch_op(x, 1.0, z, z)
    with pytest.raises(ValueError, match="x: expected 4 dimensions"): patch_op(x[0], one, z, z)


# ---- losses -------------------------------------------------------------------------------------------------------

def test_losses_equal_their_formulas():
    a = torch.tensor([0.5, -0.2, 0.0, 1.0]).reshape(1, 1, 2, 2)
    b = torch.tensor([0.1, -0.2, 0.6, -1.0]).reshape(1, 1, 2, 2)
    s = torch.tensor([0.2, 0.1, 0.3, 0.5]).reshape(1, 1, 2, 2)
    r = (a - b).abs()
    test_allclose(patch_loss(a, b), r.mean())
    test_allclose(uapi_loss(a, b, s, eps=0), (r / s + torch.log(2 * s)).mean())
    test_allclose(uapi_loss(a, b, s), (r / (s + 1e-6) + torch.log(2 * (s + 1e-6))).mean())
    rho = torch.tensor([2.0, 0.0, 2.0, 2 + math.log(3.0)]).reshape(1, 1, 2, 2)
    test_allclose(uapi_loss(a, b, s, "robust", eps=0), (rho + torch.log1p(2 * s)).mean())
    assert uapi_loss.__defaults__[0] == "laplace"


@settings(max_examples=15, deadline=None)
@given(st.integers(0, 10_000))
def test_laplace_variant_is_the_laplace_nll(seed):
    g = make_generator(seed)
    a, b = torch.randn(2, 1, 5, 5, generator=g, dtype=torch.float64), torch.randn(2, 1, 5, 5, generator=g, dtype=torch.float64)
    s = torch.rand(2, 1, 5, 5, generator=g, dtype=torch.float64) + 0.05
    test_allclose(uapi_loss(a, b, s, eps=0), -torch.distributions.Laplace(b, s).log_prob(a).mean())


def test_robust_rho_is_c1_and_below_identity():
    t = torch.linspace(0, 10, 1001, dtype=torch.float64, requires_grad=True)
    r = robust_rho(t); r.sum().backward()
    assert bool((r <= t + 1e-12).all())
    g = t.grad
    test_allclose(g[199:202], torch.ones(3, dtype=torch.float64), rtol=0, atol=1e-2)   # slope 1 on both sides of t = 2


@pytest.mark.parametrize("variant", ["laplace", "robust"])
def test_uapi_gradients_finite_at_zero_sigma(variant):
    a = torch.zeros(1, 1, 3, 3, requires_grad=True); s = torch.zeros(1, 1, 3, 3, requires_grad=True)
    uapi_loss(a, torch.zeros(1, 1, 3, 3), s, variant).backward()
    assert torch.isfinite(s.grad).all()


def test_loss_bad_inputs():
    a = torch.zeros(1, 1, 4, 4)
    with pytest.raises(ValueError, match="a and b: expected the same shape"): patch_loss(a, a[..., :2])
    with pytest.raises(ValueError, match="a and sigma: expected the same shape"): uapi_loss(a, a, a[..., :2] + 1)
    with pytest.raises(ValueError, match="variant: expected one of"): uapi_loss(a, a, a + 1, variant="l2")
    with pytest.raises(ValueError, match="sigma: expected a non-negative"): uapi_loss(a, a, a - 1)
    with pytest.raises(TypeError, match="b: expected a real floating-point tensor"): patch_loss(a, a.long())
    with pytest.raises(TypeError, match="a: expected a torch.Tensor"): uapi_loss(0.0, a, a)


# ---- perturbations ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("sc", SCENARIOS)
def test_perturbation_statistics(sc):
    x = torch.zeros(8, 1, 64, 64)
    y = perturb(x, sc, make_generator(0))
    assert y.min() >= -1 and y.max() <= 1
    k = float(sc[2:]) / 100
    if sc == "GN0": assert torch.equal(x, y)
    elif sc.startswith("GN"): test_allclose(float(y.std()), 2 * k, rtol=0.05 if k < 0.2 else 0.1, atol=0)  # GN20 is clipped a little
    else: test_allclose(float((y != 0).float().mean()), k, rtol=0, atol=0.004)


def test_perturbation_is_reproducible_and_bad_names():
    x = torch.rand(2, 1, 8, 8)
    assert torch.equal(perturb(x, "IP5", make_generator(1)), perturb(x, "IP5", make_generator(1)))
    with pytest.raises(ValueError, match="scenario: expected one of"): perturb(x, "SP5")
    with pytest.raises(ValueError, match="value_range: expected lo < hi"): perturb(x, "GN5", value_range=(1, 0))


# ---- data, networks, configs, training ----------------------------------------------------------------------------

def test_zero_filled_keeps_a_quarter_of_kspace_and_scores():
    x = torch.rand(3, 1, 32, 32, generator=make_generator(0))
    zf = zero_filled(x, seed=1)
    assert zf.shape == x.shape and float(zf.amax()) == pytest.approx(1.0)
    s = scores(x * 2 - 1, x * 2 - 1)
    assert s["ssim"] == pytest.approx(100.0) and math.isinf(s["psnr"]) or s["psnr"] > 100


def test_unpaired_stream_draws_independently():
    x, y = torch.arange(10.0).reshape(10, 1, 1, 1), 100 + torch.arange(10.0).reshape(10, 1, 1, 1)
    b = unpaired_stream(x, y)(256, make_generator(0))
    assert b["x"].shape == (256, 1, 1, 1) and bool((b["y"] >= 100).all())
    assert (b["y"] - 100 != b["x"]).any()


def test_generator_heads():
    with seeded(0): G = TwoHeadGenerator(base_channels=4, depth=2)
    img, sig = G(torch.rand(2, 1, 16, 16) * 2 - 1)
    assert img.abs().max() < 1 and sig.min() > 0 and img.shape == sig.shape == (2, 1, 16, 16)


def test_paper_preset_and_bad_configs():
    for m in METHODS:
        c = get_experiment(f"patchinv-{m}").config("paper")
        assert (c.method, c.betas, c.lr, c.critic_lr, c.n_critic, c.gp_weight, c.drift, c.size, c.base_channels, c.depth) == \
               (m, (0.0, 0.9), 5e-5, 2e-5, 15, 10.0, 5e-4, 256, 16, 5)
    with pytest.raises(ValueError, match="task: expected one of"): PatchInvConfig(task="ct")
    with pytest.raises(ValueError, match="variant: expected one of"): PatchInvConfig(variant="gauss")
    with pytest.raises(ValueError, match="min_scale: expected a scale"): PatchInvConfig(min_scale=0.0)
    with pytest.raises(ValueError, match="size: expected a multiple"): PatchInvConfig(size=100)


@pytest.mark.parametrize("method", METHODS)
def test_smoke_training_and_resume(method, tmp_path):
    r = train(f"patchinv-{method}", "smoke", out=tmp_path, progress=False)
    assert r.step == 2 and len(r.history) == 2
    r2 = train(f"patchinv-{method}", "smoke", out=tmp_path, steps=3, resume=True, progress=False)
    assert r2.step == 3 and r2.history[-1]["step"] == 3


def test_smoke_robust_variant_and_zf_task_and_table():
    r = train("patchinv-uapi", "smoke", out=tempfile.mkdtemp(), variant="robust", task="zf", progress=False)
    assert all(math.isfinite(v) for v in r.history[-1].values() if isinstance(v, float))
    res = table1("zf", "smoke", methods=("uapi",), test_subjects=(2000,), out=tempfile.mkdtemp())
    assert set(res["uapi"]["scenarios"]) == set(SCENARIOS) and -1 <= res["uapi"]["uncertainty"]["pcc_pixels"] <= 1
