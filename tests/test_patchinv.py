"Patch operator, losses, perturbations, configs and smoke training of medsynth_nb.patchinv (Angermann et al.)."
import inspect
import math
import tempfile

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings, strategies as st

import numpy as np
from torch import nn

from medsynth_nb.patchinv import (PATCHINV_METHODS, SCENARIOS, PatchInvConfig, cubic_kernel, evaluate_scenarios,
                                  patch_loss, patch_op, perturb, resample_scale, resize_matrix, robust_rho,
                                  sample_patch_params, scores, table1, translate, uapi_loss, uapi_term,
                                  task_pairs, uncertainty_scores, unpaired_stream, simulate_zero_filled)
from medsynth_nb.engine import Context, train
from medsynth_nb.layers import TwoHeadGenerator
from medsynth_nb.config import get_experiment
from medsynth_nb.utils import make_generator, seeded, test_allclose
from meta_device import MetaDeviceModel



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
    test_allclose(patch_op(x, scale, top, left, a=-0.75, style="torch"), ref, rtol=1e-10, atol=1e-10)


def _tf_bicubic_weights(n_in: int, n_out: int) -> np.ndarray:
    "TF's ResizeBicubic(half_pixel_centers=True) along one axis, transcribed from resize_bicubic_op.cc (float64)."
    T, a = 1024, -0.5
    x = np.arange(T + 1) / T
    near, far = ((a + 2) * x - (a + 3)) * x * x + 1, ((a * (x + 1) - 5 * a) * (x + 1) + 8 * a) * (x + 1) - 4 * a
    W = np.zeros((n_out, n_in))
    for o in range(n_out):
        u = (np.float32(o) + np.float32(0.5)) * (np.float32(n_in) / np.float32(n_out)) - np.float32(0.5)  # HalfPixelScaler
        i0 = int(np.floor(u)); off = int(np.rint(np.float32(u - np.float32(i0)) * np.float32(T)))     # lrintf(delta * 1024)
        for k, w in zip((-1, 0, 1, 2), (far[off], near[off], near[T - off], far[T - off])):
            if 0 <= i0 + k < n_in: W[o, i0 + k] += w       # Bound(): a tap outside the input gets weight 0
        W[o] /= W[o].sum()                                  # weight_sum renormalisation
    return W


@settings(max_examples=25, deadline=None)
@given(st.sampled_from([16, 20, 24, 32, 48, 64, 100, 128, 256]), st.floats(0.7, 1.0), st.integers(0, 60))
def test_tf_style_equals_tensorflow_resize_bicubic(d, rho, j):
    s = max(1, int(rho * d)); j = min(j, d - s)
    A = resize_matrix(d, torch.tensor([j]), torch.tensor([s]), dtype=torch.float64)[0]
    ref = np.zeros((d, d)); ref[:, j:j + s] = _tf_bicubic_weights(s, d)
    test_allclose(A, torch.from_numpy(ref), rtol=0, atol=1e-12)


def test_tf_and_torch_styles_differ_at_the_crop_border_only():
    x = torch.randn(1, 1, 32, 32, generator=make_generator(4), dtype=torch.float64)
    phi = (torch.tensor([0.75]), torch.tensor([3]), torch.tensor([5]))
    d = (patch_op(x, *phi) - patch_op(x, *phi, style="torch")).abs()
    assert d[..., :2, :].max() > 1e-2 and d[..., 4:-4, 4:-4].max() < 1e-3


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
    (dict(min_scale=0.0), r"min_scale: expected a number in \(0, 1\], got 0"), (dict(min_scale=-0.1), "min_scale: expected"),
    (dict(min_scale=0.9, max_scale=0.8), "min_scale and max_scale"), (dict(max_scale=1.01), "max_scale: expected a number"),
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
    test_allclose(uapi_loss(a, b, s, sigma_floor=0), (r / s + torch.log(2 * s)).mean())
    test_allclose(uapi_loss(a, b, s), (r / (s + 0.01) + torch.log(2 * (s + 0.01))).mean())
    rho = torch.tensor([2.0, 0.0, 2.0, 2 + math.log(3.0)]).reshape(1, 1, 2, 2)
    test_allclose(uapi_loss(a, b, s, "robust", sigma_floor=0), (rho + torch.log1p(2 * s)).mean())
    assert uapi_loss.__defaults__ == ("laplace", 1e-2)


@settings(max_examples=15, deadline=None)
@given(st.integers(0, 10_000))
def test_laplace_variant_is_the_laplace_nll(seed):
    g = make_generator(seed)
    a, b = torch.randn(2, 1, 5, 5, generator=g, dtype=torch.float64), torch.randn(2, 1, 5, 5, generator=g, dtype=torch.float64)
    s = torch.rand(2, 1, 5, 5, generator=g, dtype=torch.float64) + 0.05
    test_allclose(uapi_loss(a, b, s, sigma_floor=0), -torch.distributions.Laplace(b, s).log_prob(a).mean())


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
    zf = simulate_zero_filled(x, seed=1)
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
    for m in PATCHINV_METHODS:
        c = get_experiment(f"patchinv-{m}").config("paper")
        assert (c.method, c.betas, c.lr, c.critic_lr, c.n_critic, c.gp_weight, c.drift, c.size, c.base_channels, c.depth) == \
               (m, (0.0, 0.9), 5e-5, 2e-5, 15, 10.0, 5e-4, 256, 16, 5)
    with pytest.raises(ValueError, match="task: expected one of"): PatchInvConfig(task="ct")
    with pytest.raises(ValueError, match="variant: expected one of"): PatchInvConfig(variant="gauss")
    with pytest.raises(ValueError, match="min_scale: expected a scale"): PatchInvConfig(min_scale=0.0)
    with pytest.raises(ValueError, match="size: expected a multiple"): PatchInvConfig(size=100)


@pytest.mark.parametrize("method", PATCHINV_METHODS)
def test_smoke_training_and_resume(method, tmp_path):
    r = train(f"patchinv-{method}", "smoke", out=tmp_path, progress=False)
    assert r.step == 2 and len(r.history) == 2
    r2 = train(f"patchinv-{method}", "smoke", out=tmp_path, steps=3, resume=True, progress=False)
    assert r2.step == 3 and r2.history[-1]["step"] == 3


def test_smoke_robust_variant_and_zf_task_and_table():
    r = train("patchinv-uapi", "smoke", out=tempfile.mkdtemp(), variant="robust", task="zf", progress=False)
    assert all(math.isfinite(v) for v in r.history[-1].values() if isinstance(v, float))
    res = table1("zf", "smoke", methods=("uapi",), test_subjects=(2000,), out=tempfile.mkdtemp())
    cfg = get_experiment("patchinv-uapi").config("smoke", task="zf")
    kw = (cfg.size, cfg.slices_per_subject, cfg.deform, cfg.acceleration, cfg.center_fraction)
    assert torch.equal(res["uapi"]["y"], task_pairs("zf", (2000,), *kw, anatomy="colin27")[1])   # evaluated on Colin27
    assert not torch.equal(res["uapi"]["y"], task_pairs("zf", (2000,), *kw)[1])
    u = res["uapi"]["uncertainty"]
    assert set(res["uapi"]["scenarios"]) == set(SCENARIOS)
    want = np.corrcoef(u["mean_sigma"].double().numpy(), (u["pred"] - res["uapi"]["y"]).abs().mean((1, 2, 3)).double().numpy())[0, 1]
    assert u["pcc_images"] == pytest.approx(want, abs=1e-9)


# ---- UAPI stability: the term is bounded below where P σ undershoots ------------------------------------------

def _sharp_sigma(d=32, lo=1e-3, hi=1.0):
    s = torch.full((1, 1, d, d), lo); s[..., d // 2:] = hi
    return s, (torch.tensor([0.75]), torch.tensor([4]), torch.tensor([4]))


def test_bicubic_undershoot_and_the_positive_resample():
    sig, phi = _sharp_sigma()
    raw = patch_op(sig, *phi)
    assert raw.min() < -0.01                                   # the sharp edge makes P σ negative
    pos = resample_scale(sig, *phi)
    assert pos.min() > 0
    test_allclose(pos[..., :, :8], raw[..., :, :8], rtol=1e-4, atol=0)   # on the flat low side both equal σ
    test_allclose(resample_scale(sig, *phi, mode="clamp"), raw.clamp_min(0))


def test_uapi_term_bounded_below_where_p_sigma_undershoots():
    sig, phi = _sharp_sigma()
    under = patch_op(sig, *phi) < 0
    z = torch.zeros(1, 1, 1, int(under.sum()))
    floor = 0.01
    new = uapi_loss(z, z, resample_scale(sig, *phi)[under].view_as(z), sigma_floor=floor)
    old = uapi_loss(z, z, resample_scale(sig, *phi, mode="clamp")[under].view_as(z), sigma_floor=1e-6)
    assert float(new) >= math.log(2 * floor) and float(old) == pytest.approx(math.log(2e-6), rel=1e-6)
    # the whole generator term, default settings, perfect patch match, both maps: never below log 2σ_min
    a = torch.zeros(1, 1, 32, 32)
    assert float(uapi_term(a, a, torch.full_like(a, 1e-4), sig, phi)) >= math.log(2 * floor)
    assert float(uapi_term(a, a, torch.full_like(a, 1e-4), sig, phi, resample="clamp", sigma_floor=1e-6)) < math.log(2 * floor)


@settings(max_examples=20, deadline=None)
@given(st.integers(0, 10_000), st.floats(1e-3, 0.1))
def test_uapi_term_never_below_log_two_floor(seed, floor):
    g = make_generator(seed)
    a = torch.rand(2, 1, 16, 16, generator=g) * 2 - 1
    sig = torch.where(torch.rand(2, 1, 16, 16, generator=g) < 0.5, 1e-6, 3.0)       # sharp edges everywhere
    phi = sample_patch_params(2, 16, generator=g)
    for maps in ("both", "patch"):
        t = uapi_term(a, a + 1e-7, sig * 1e-3, sig, phi, maps=maps, sigma_floor=floor)
        assert float(t) >= math.log(2 * floor) - 1e-6


def test_uapi_term_is_eq9_by_hand():
    g = make_generator(11)
    a, b = torch.rand(2, 1, 8, 8, generator=g) * 2 - 1, torch.rand(2, 1, 8, 8, generator=g) * 3 - 1.5   # b beyond [-1, 1]
    sp, sf = torch.rand(2, 1, 8, 8, generator=g) + 0.05, torch.rand(2, 1, 8, 8, generator=g) + 0.05
    phi = (torch.tensor([0.75, 1.0]), torch.tensor([1, 0]), torch.tensor([2, 0]))
    f = 0.01
    def eq9(sig):
        tot = 0.0
        for i in range(2):
            for u in range(8):
                for v in range(8):
                    s = float(sig[i, 0, u, v]) + f
                    tot += abs(float(a[i, 0, u, v]) - min(1.0, max(-1.0, float(b[i, 0, u, v])))) / s + math.log(2 * s)
        return tot / 128
    Psf = torch.exp(patch_op(torch.log(sf), *phi))
    assert float(uapi_term(a, b, sp, sf, phi, maps="patch")) == pytest.approx(eq9(sp), rel=1e-5)
    assert float(uapi_term(a, b, sp, sf, phi)) == pytest.approx(0.5 * (eq9(sp) + eq9(Psf)), rel=1e-5)


# ---- the wiring of the training step: signs, weights, which patches are compared ------------------------------

def _setup(method, **over):
    exp = get_experiment(f"patchinv-{method}")
    cfg = exp.config("smoke", **over)
    with seeded(0): task = exp.build(cfg)
    ctx = Context(task.models, task.models, make_generator(5), torch.device("cpu"), cfg, micro_batch=4)
    ctx.step = 1
    batch = task.data(4, make_generator(2))
    task.before_step(ctx)
    phi = sample_patch_params(4, cfg.size, generator=make_generator(5), min_scale=cfg.min_scale)   # the same draw
    return cfg, task, ctx, batch, phi


def _gap(task, batch, phi, method):
    "Critic gap in the module's convention (the critic maximises it): f(y) - f(G x), plus the patch branch of Eq. 5."
    G, D = task.models["generator"], task.models["critic"]
    with torch.no_grad():
        fake = G(batch["x"])[0]
        gap = D(batch["y"]).mean() - D(fake).mean()
        if method != "wgan": gap = gap + D(patch_op(batch["y"], *phi)).mean() - D(patch_op(fake, *phi)).mean()
    return float(gap)


def _step(task, phase, batch, ctx):
    ph = task.phases[phase]
    out = ph.loss(batch, ctx)
    loss = out[0] if isinstance(out, tuple) else out
    opt = task.optimizers[ph.optimizer]
    opt.zero_grad(); loss.backward(); opt.step()
    return loss


@pytest.mark.parametrize("method", PATCHINV_METHODS)
def test_critic_loss_is_minus_the_gap_and_one_step_widens_it(method):
    cfg, task, ctx, batch, phi = _setup(method, gp_weight=0.0, drift=0.0, critic_lr=1e-4)
    before = _gap(task, batch, phi, method)
    loss = _step(task, 0, batch, ctx)
    assert float(loss.detach()) == pytest.approx(-before, abs=1e-5)    # Eq. 5 without penalties: f(G x) - f(y) (+ patches)
    assert _gap(task, batch, phi, method) > before + 1e-6


@pytest.mark.parametrize("method", PATCHINV_METHODS)
def test_one_critic_step_with_the_penalties_still_widens_the_gap(method):
    cfg, task, ctx, batch, phi = _setup(method, critic_lr=1e-4)
    before = _gap(task, batch, phi, method)
    _step(task, 0, batch, ctx)
    assert _gap(task, batch, phi, method) > before


@pytest.mark.parametrize("method", PATCHINV_METHODS)
def test_one_generator_step_narrows_the_gap(method):
    cfg, task, ctx, batch, phi = _setup(method, lam=0.0, lr=1e-4)
    before = _gap(task, batch, phi, method)
    _step(task, 1, batch, ctx)
    assert _gap(task, batch, phi, method) < before - 1e-6


@pytest.mark.parametrize("method", ["pi", "uapi"])
def test_generator_loss_by_hand(method):
    "Eq. 6: -½ f(G x) - ½ f(P G x) + λ ℓ(G(P x), P G(x)); ℓ = ℓ1 (PI) or Eq. 9 on both scale maps (UAPI)."
    cfg, task, ctx, batch, phi = _setup(method, lam=0.7)
    G, D, x = task.models["generator"], task.models["critic"], batch["x"]
    with torch.no_grad():
        img, sig = G(x)
        pg = patch_op(img, *phi)                             # P G(x)
        a, sa = G(patch_op(x, *phi))                         # G(P x)
        adv = -0.5 * D(img).mean() - 0.5 * D(pg).mean()
        if method == "pi": term = (a - pg).abs().mean()
        else:
            f, b = cfg.sigma_floor, pg.clamp(-1, 1)
            nll = lambda s: ((a - b).abs() / (s + f) + torch.log(2 * (s + f))).mean()
            term = 0.5 * (nll(sa) + nll(torch.exp(patch_op(torch.log(sig), *phi))))
        want = adv + 0.7 * term
    loss, logs = task.phases[1].loss(batch, ctx)
    assert float(loss) == pytest.approx(float(want), rel=1e-5, abs=1e-6)
    assert float(logs["patch_l1"]) == pytest.approx(float((a - pg).abs().mean()), rel=1e-5)
    assert float((a - img).abs().mean()) != pytest.approx(float(logs["patch_l1"]), rel=1e-3)   # not G(P x) vs G(x)


# ---- device: evaluation moves inputs to the model's device --------------------------------------------------

class _DeviceRecorder(MetaDeviceModel):
    "A stand-in generator whose parameters live on the meta device; it records the device of its inputs."
    def __init__(self):
        super().__init__()
        self.g = make_generator(0)
    def forward(self, x):
        self.seen.append(x.device.type)
        return torch.zeros(x.shape), torch.rand(x.shape, generator=self.g) + 0.1


def test_evaluation_moves_inputs_to_the_model_device():
    x = torch.rand(5, 1, 16, 16) * 2 - 1
    G = _DeviceRecorder()
    translate(G, x, batch_size=2)
    evaluate_scenarios(G, x, x, scenarios=("GN0", "IP5"))
    uncertainty_scores(G, x, x)
    assert G.seen and set(G.seen) == {"meta"}


def test_code_metric_recipe_is_the_authors_evall_2():
    from skimage.metrics import structural_similarity
    g = make_generator(8)
    y = torch.rand(9, 1, 16, 16, generator=g) * 2 - 1
    p = (y + 0.2 * torch.randn(9, 1, 16, 16, generator=g)).clamp(-1, 1)
    Y, P = [((t.double().permute(0, 2, 3, 1) + 1) * 127.5).numpy() for t in (y, p)]        # N×H×W×1 on [0, 255]
    s = scores(p, y, "code")
    assert s["psnr"] == pytest.approx(20 * np.log10(Y.max()) - 10 * np.log10(np.mean((Y - P) ** 2)), rel=1e-12)
    assert s["ssim"] == pytest.approx(100 * structural_similarity(Y, P, channel_axis=-1, data_range=Y.max() - Y.min()), rel=1e-12)
    assert abs(s["ssim"] - scores(p, y)["ssim"]) > 1                                          # not the per-slice SSIM
    with pytest.raises(ValueError, match="recipe: expected one of"): scores(p, y, "tf")


def test_code_generator_layout_is_an_option():
    with seeded(0): G = TwoHeadGenerator(base_channels=4, depth=2, layout="code")
    convs = [m for m in G.modules() if isinstance(m, nn.Conv2d)]
    assert any(m.kernel_size == (4, 4) for m in convs) and any(m.stride == (2, 2) for m in convs)
    slopes = {m.negative_slope for m in G.net.up.modules() if isinstance(m, nn.LeakyReLU)} | \
             {m.negative_slope for m in G.net.branches.modules() if isinstance(m, nn.LeakyReLU)}
    assert slopes == {0.1}
    with seeded(0): ours = TwoHeadGenerator(base_channels=4, depth=2)
    assert not any(isinstance(m, nn.LeakyReLU) for m in ours.modules()) and all(m.kernel_size == (3, 3) for m in ours.modules() if isinstance(m, nn.Conv2d))
    r = train("patchinv-uapi", "smoke", out=tempfile.mkdtemp(), generator_layout="code", progress=False)
    assert r.step == 2
    with pytest.raises(ValueError, match="generator_layout: expected one of"): PatchInvConfig(generator_layout="keras")


def test_held_out_subjects_are_another_anatomy():
    "Evaluation subjects are Colin27 (another person), far from every training subject; ICBM152 ones would be close."
    from medsynth_nb.patchinv import TEST_ANATOMY, TEST_SUBJECTS, contrast_slices
    from medsynth_nb.phantom import anatomy_dice
    assert TEST_ANATOMY == "colin27" and inspect.signature(table1).parameters["test_anatomy"].default == TEST_ANATOMY
    held = contrast_slices(TEST_SUBJECTS[0], 16, 4, anatomy=TEST_ANATOMY)["labels"]
    for train_seed in (0, 1000):                        # an input-domain and a target-domain training subject
        train_lab = contrast_slices(train_seed, 16, 4)["labels"]
        assert max(anatomy_dice(held, train_lab).values()) < 0.75
    same = anatomy_dice(contrast_slices(TEST_SUBJECTS[0], 16, 4)["labels"], contrast_slices(0, 16, 4)["labels"])
    assert min(same.values()) > 0.75                    # the test discriminates: two warped ICBM152 subjects overlap more
    with pytest.raises(ValueError, match="anatomy: expected one of"): contrast_slices(TEST_SUBJECTS[0], 16, 4, anatomy="mni305")


# ---- one validation vocabulary (issue 18): bool/float ints, unknown choices, non-finite inputs at the public entries ----
import medsynth_nb.patchinv as _pi

_X = torch.zeros(2, 1, 8, 8)
_ONE, _Z = torch.ones(2), torch.zeros(2, dtype=torch.long)
BAD_PATCHINV = [
    (lambda: _pi.sample_patch_params(True, 16), TypeError, "batch: expected an int, got True (bool)"),
    (lambda: _pi.sample_patch_params(2, 16.0), TypeError, "size: expected an int, got 16.0 (float)"),
    (lambda: _pi.sample_patch_params(2, 16, min_scale=float("nan")), ValueError, "min_scale: expected a finite number"),
    (lambda: _pi.resize_matrix(8.0, _Z, _Z + 4), TypeError, "size: expected an int, got 8.0 (float)"),
    (lambda: _pi.resize_matrix(8, _Z, _Z[:1] + 4), ValueError, "start and side: expected the same shape"),
    (lambda: _pi.resize_matrix(8, _Z, _Z + 4, a=float("inf")), ValueError, "a: expected a finite number"),
    (lambda: _pi.patch_op(_X * float("nan"), _ONE, _Z, _Z), ValueError, "x: expected finite values"),
    (lambda: _pi.patch_op(_X, _ONE, _Z, _Z, style="pil"), ValueError, "style: expected one of ('tf', 'torch')"),
    (lambda: _pi.patch_loss(_X, _X * float("inf")), ValueError, "b: expected finite values"),
    (lambda: _pi.uapi_loss(_X, _X, _X + 1, sigma_floor=True), TypeError, "sigma_floor: expected a real number, got True"),
    (lambda: _pi.uapi_loss(_X, _X, (_X + 1) * float("nan")), ValueError, "sigma: expected finite values"),
    (lambda: _pi.uapi_term(_X, _X, _X + 1, _X + 1, (_ONE, _Z)), ValueError, "phi: expected the crop (scale, top, left)"),
    (lambda: _pi.perturb(_X, "GN5", value_range=(0, float("nan"))), ValueError, "value_range[1]: expected a finite number"),
    (lambda: _pi.perturb(_X * float("nan"), "GN5"), ValueError, "x: expected finite values"),
    (lambda: _pi.contrast_slices(1.5), TypeError, "seed: expected an int, got 1.5 (float)"),
    (lambda: _pi.contrast_slices(0, size=True), TypeError, "size: expected an int, got True (bool)"),
    (lambda: _pi.contrast_slices(0, n_slices=0), ValueError, "n_slices: expected an int >= 1, got 0"),
    (lambda: _pi.contrast_slices(0, snr=-1), ValueError, "snr: expected a number > 0, got -1"),
    (lambda: _pi.simulate_zero_filled(_X, seed=0.5), TypeError, "seed: expected an int, got 0.5 (float)"),
    (lambda: _pi.simulate_zero_filled(_X * float("nan")), ValueError, "x: expected finite values"),
    (lambda: _pi.simulate_zero_filled(_X, acceleration=True), TypeError, "accelerations: expected a real number, got True (bool)"),
    (lambda: _pi.task_pairs("ct", [0]), ValueError, "task: expected one of ('t1t2', 'zf'), got 'ct'"),
    (lambda: _pi.task_pairs("t1t2", []), ValueError, "subjects: expected at least one subject id"),
    (lambda: TwoHeadGenerator(depth=2.0), TypeError, "depth: expected an int, got 2.0 (float)"),
    (lambda: _pi.unpaired_stream(_X, _X[:0]), ValueError, "x and y: expected non-empty image sets"),
    (lambda: _pi.unpaired_stream(_X, _X * float("nan")), ValueError, "y: expected finite values"),
    (lambda: _pi.translate(TwoHeadGenerator(base_channels=2, depth=1), _X, batch_size=0), ValueError,
     "batch_size: expected an int >= 1, got 0"),
    (lambda: _pi.evaluate_scenarios(None, _X, _X, scenarios=("GN7",)), ValueError, "scenarios: expected one of"),
    (lambda: _pi.evaluate_scenarios(None, _X, _X, seed=True), TypeError, "seed: expected an int, got True (bool)"),
    (lambda: _pi.table1("ct"), ValueError, "task: expected one of ('t1t2', 'zf'), got 'ct'"),
    (lambda: _pi.table1("t1t2", methods=("cycle",)), ValueError, "methods: expected one of ('wgan', 'pi', 'uapi')"),
    (lambda: _pi.PatchInvConfig(lam=-0.5), ValueError, "lam: expected a number >= 0, got -0.5"),
    (lambda: _pi.PatchInvConfig(lam_warmup=-1), ValueError, "lam_warmup: expected an int >= 0, got -1"),
    (lambda: _pi.PatchInvConfig(acceleration=1.0), ValueError, "acceleration: expected a number > 1, got 1"),
    (lambda: _pi.PatchInvConfig(center_fraction=0.0), ValueError, "center_fraction: expected a number in (0, 1), got 0"),
    (lambda: _pi.PatchInvConfig(drift=float("nan")), ValueError, "drift: expected a finite number"),
]


@pytest.mark.parametrize("call,exc,msg", BAD_PATCHINV, ids=[f"{i}-{b[2][:40]}" for i, b in enumerate(BAD_PATCHINV)])
def test_patchinv_refuses_bad_input(call, exc, msg):
    with pytest.raises(exc) as e: call()
    assert msg in str(e.value), str(e.value)


def test_translate_in_chunks_keeps_item_order():
    "translate returns item i's outputs at position i (chunks of 2 over 5 different inputs)."
    from medsynth_nb.layers import TwoHeadGenerator
    from medsynth_nb.utils import seeded
    with seeded(0): G = TwoHeadGenerator(base_channels=2, depth=1).eval()
    x = torch.rand(5, 1, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1
    y, s = translate(G, x, batch_size=2)
    with torch.no_grad(): ref = [G(x[i:i + 1]) for i in range(5)]
    torch.testing.assert_close(y, torch.cat([r[0] for r in ref])); torch.testing.assert_close(s, torch.cat([r[1] for r in ref]))


def test_contrast_slices_equal_the_old_subject_slices():
    "contrast_slices (cached volumes + phantom.axial_slices) is bit-identical to the old patchinv.subject_slices."
    from medsynth_nb.data import array_sha256
    from medsynth_nb.patchinv import contrast_slices
    old = {
        "patchinv_5_16_3_labels": "fd7f7c966eb642ae219a9c259ce419ed84ff82ac8989d7abb4eb9c229e718191",
        "patchinv_5_16_3_t1w": "eadad0c16d30147b84df0e5968b0394e93e6b79e4ec138f404c0e0f9018ee380",
        "patchinv_5_16_3_t2w": "c62bd77620281177edb7c972251c6eb26dcaf5fffd3aecc47c502bb612aedda0",
        "patchinv_2000_20_2_nodef_colin_labels": "ed213bc856ff2f43f6ff2b9facc864a9d137c200c5fcfa044c177ab8a73fb239",
        "patchinv_2000_20_2_nodef_colin_t1w": "32b17b86eb4d34ad81c491af8c67d9802645a73c40f4367b1d27c830829f2986",
        "patchinv_2000_20_2_nodef_colin_t2w": "16b51c3be5faf4cf6c29f2a022fbd3efae2f6c083c837407db3917877e6b31ea",
    }
    got = {f"patchinv_5_16_3_{k}": v for k, v in contrast_slices(5, 16, 3).items()}
    got |= {f"patchinv_2000_20_2_nodef_colin_{k}": v
            for k, v in contrast_slices(2000, 20, 2, deform=False, anatomy="colin27").items()}
    assert {k: array_sha256(v.numpy()) for k, v in got.items()} == old


# ---- cached evaluation ------------------------------------------------------------------------------------------

def test_cached_table1_rereads_only_while_checkpoints_and_test_set_match(tmp_path, monkeypatch):
    import medsynth_nb.patchinv as patchinv
    calls = []
    real_table1 = patchinv.table1
    monkeypatch.setattr(patchinv, "table1", lambda *a, **k: calls.append(a) or real_table1(*a, **k))
    kw = dict(methods=("pi",), out=tmp_path)
    first = patchinv.cached_table1("t1t2", "smoke", test_subjects=(2000,), **kw)
    again = patchinv.cached_table1("t1t2", "smoke", test_subjects=(2000,), **kw)
    assert len(calls) == 1 and not first["pi"]["cached"] and again["pi"]["cached"]
    assert again["pi"]["scenarios"] == first["pi"]["scenarios"]
    assert torch.equal(again["pi"]["pred"], first["pi"]["pred"]) and again["pi"]["train_seconds"] > 0
    other = patchinv.cached_table1("t1t2", "smoke", test_subjects=(2001,), **kw)   # another test set: evaluated
    assert len(calls) == 2 and not other["pi"]["cached"]
    monkeypatch.setattr(patchinv, "_sha256", lambda p: "another checkpoint")       # a changed checkpoint: evaluated
    assert not patchinv.cached_table1("t1t2", "smoke", test_subjects=(2001,), **kw)["pi"]["cached"]
    assert len(calls) == 3


def test_paper_table1_rows_in_table1_layout():
    from medsynth_nb.patchinv import PAPER_TABLE1, format_table1, paper_table1
    rows = paper_table1("t1t2")
    assert list(rows) == ["PI (paper)", "UAPI (paper)"]
    assert rows["PI (paper)"]["scenarios"]["GN20"] == dict(ssim=36.96, psnr=19.26)
    assert "| UAPI (paper) | 90.37/24.74 | 81.08/21.37 |" in format_table1(paper_table1("zf"))
    with pytest.raises(ValueError, match="task: expected one of"): paper_table1("ct")
