"DDPM/DDIM schedulers: equality with diffusers, golden values, closed forms, losses, sampling loops, bad inputs."
import json
import math
import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st

from medsynth_nb.ddpm import (DDIMScheduler, DDPMScheduler, PREDICTION_TYPES, TIMESTEP_SPACINGS, VARIANCE_TYPES,
                              ddim_sample, ddpm_sample, diffusion_loss, discretized_gaussian_log_likelihood,
                              dummy_model, dummy_sample_deter, make_betas, normal_kl, PointDenoiser, uniform_timesteps,
                              vb_terms_bpd)
from medsynth_nb.utils import make_generator, test_allclose
from meta_device import MetaDeviceModel
from refusals import refusal_test

diffusers = pytest.importorskip("diffusers")


def _ddpm_pair(dtype, n_steps=None, **kw):
    ours, theirs = DDPMScheduler(**kw, dtype=dtype), diffusers.DDPMScheduler(**kw)
    if n_steps: ours.set_timesteps(n_steps); theirs.set_timesteps(n_steps)
    return ours, theirs


@pytest.mark.parametrize("variance_type", VARIANCE_TYPES)
@pytest.mark.parametrize("prediction_type", PREDICTION_TYPES)
@pytest.mark.parametrize("clip", [True, False])
def test_ddpm_step_equals_diffusers(variance_type, prediction_type, clip):
    kw = dict(variance_type=variance_type, prediction_type=prediction_type, clip_sample=clip)
    g = make_generator(0)
    for dtype, tol in ((torch.float32, 0.0), (torch.float64, 1e-3)):
        ours, theirs = _ddpm_pair(dtype, **kw)
        for t in (999, 998, 500, 10, 2, 1, 0):
            x = torch.randn(2, 2, 5, 5, generator=g)
            out = torch.randn(2, 4 if variance_type == "learned_range" else 2, 5, 5, generator=g)
            if variance_type == "learned_range": out[:, 2:] = out[:, 2:].tanh()
            a, b = ours.step(out, t, x, generator=make_generator(t)), theirs.step(out, t, x, generator=make_generator(t))
            assert (a.prev_sample - b.prev_sample).abs().max().item() <= tol
            if clip or dtype == torch.float32:
                assert (a.pred_original_sample - b.pred_original_sample).abs().max().item() <= tol


@pytest.mark.parametrize("spacing", TIMESTEP_SPACINGS)
@pytest.mark.parametrize("n", [1, 7, 50])
def test_ddpm_respaced_equals_diffusers(spacing, n):
    ours, theirs = _ddpm_pair(torch.float32, n, timestep_spacing=spacing)
    assert torch.equal(ours.timesteps, theirs.timesteps)
    g = make_generator(1)
    for t in ours.timesteps.tolist():
        x, out = torch.randn(1, 1, 4, 4, generator=g), torch.randn(1, 1, 4, 4, generator=g)
        assert torch.equal(ours.step(out, t, x, generator=make_generator(t)).prev_sample,
                           theirs.step(out, t, x, generator=make_generator(t)).prev_sample)


@pytest.mark.parametrize("prediction_type", PREDICTION_TYPES)
@pytest.mark.parametrize("spacing", TIMESTEP_SPACINGS)
@pytest.mark.parametrize("eta", [0.0, 1.0])
@pytest.mark.parametrize("alpha_one", [True, False])
def test_ddim_step_equals_diffusers(prediction_type, spacing, eta, alpha_one):
    kw = dict(prediction_type=prediction_type, timestep_spacing=spacing, set_alpha_to_one=alpha_one)
    g = make_generator(2)
    for dtype in (torch.float32, torch.float64):
        ours, theirs = DDIMScheduler(**kw, dtype=dtype), diffusers.DDIMScheduler(**kw)
        ours.set_timesteps(10); theirs.set_timesteps(10)
        assert torch.equal(ours.timesteps, theirs.timesteps)
        worst = 0.0
        for t in ours.timesteps.tolist():
            x, out = torch.randn(2, 1, 4, 4, generator=g), torch.randn(2, 1, 4, 4, generator=g)
            a = ours.step(out, t, x, eta=eta, generator=make_generator(t))
            b = theirs.step(out, t, x, eta=eta, generator=make_generator(t))
            worst = max(worst, (a.prev_sample - b.prev_sample).abs().max().item())
        if dtype == torch.float32: assert worst == 0.0
        else: assert worst <= (5e-6 if prediction_type != "sample" else 1e-3)


def test_golden_values_of_diffusers_tests():
    sch, x, g = DDPMScheduler(dtype=torch.float32), dummy_sample_deter(), make_generator(0)
    for t in range(999, -1, -1): x = sch.step(dummy_model(x, t), t, x, generator=g).prev_sample
    assert abs(x.abs().mean().item() - 0.3372) < 1e-3 and abs(x.abs().sum().item() - 258.9606) < 5e-2
    for kw, (gs, gm) in [({}, (172.0067, 0.223967)), (dict(prediction_type="v_prediction"), (52.5302, 0.0684)),
                         (dict(set_alpha_to_one=True, beta_start=0.01), (149.8295, 0.1951))]:
        sch, x = DDIMScheduler(**kw), dummy_sample_deter(); sch.set_timesteps(10)
        for t in sch.timesteps: x = sch.step(dummy_model(x, t), t, x).prev_sample
        assert abs(x.abs().sum().item() - gs) < 1e-2 and abs(x.abs().mean().item() - gm) < 1e-3


@pytest.mark.parametrize("name,dname", [("linear", "linear"), ("scaled_linear", "scaled_linear"), ("cosine", "squaredcos_cap_v2")])
def test_tables_and_add_noise(name, dname):
    ours, theirs = DDPMScheduler(beta_schedule=name), diffusers.DDPMScheduler(beta_schedule=dname)
    assert torch.equal(DDPMScheduler(beta_schedule=name, dtype=torch.float32).alphas_cumprod, theirs.alphas_cumprod)
    assert bool((ours.alphas_cumprod[1:] < ours.alphas_cumprod[:-1]).all())          # ᾱ strictly decreasing
    g = make_generator(3)
    x0, e, t = torch.randn(6, 1, 3, 3, generator=g), torch.randn(6, 1, 3, 3, generator=g), torch.randint(0, 1000, (6,), generator=g)
    test_allclose(ours.add_noise(x0, e, t), theirs.add_noise(x0, e, t), atol=1e-6, rtol=1e-6)


def test_linear_alphas_cumprod_vs_numpy_float64():
    test_allclose(DDPMScheduler().alphas_cumprod.numpy(), np.cumprod(1 - np.linspace(1e-4, 0.02, 1000)), rtol=1e-12, atol=0)
    b = make_betas(100, beta_schedule="cosine")
    assert b.max() <= 0.999 and bool((b > 0).all())


@settings(max_examples=10, deadline=None)
@given(st.integers(0, 999), st.floats(-1, 1))
def test_add_noise_moments(t, x0_value):
    s, n = DDPMScheduler(), 4000
    xt = s.add_noise(torch.full((n, 1), x0_value), torch.randn(n, 1, generator=make_generator(t)), torch.full((n,), t))
    ab = s.alphas_cumprod[t].item()
    assert abs(xt.mean().item() - math.sqrt(ab) * x0_value) < 5 * math.sqrt((1 - ab) / n) + 1e-6
    assert abs(xt.var().item() - (1 - ab)) < 0.1 * (1 - ab) + 1e-6


def test_same_seed_same_step_and_global_rng_untouched():
    s, x, out = DDPMScheduler(), torch.randn(1, 1, 4, 4), torch.randn(1, 1, 4, 4)
    state = torch.random.get_rng_state()
    a = s.step(out, 500, x, generator=make_generator(5)).prev_sample
    b = s.step(out, 500, x, generator=make_generator(5)).prev_sample
    assert torch.equal(a, b) and torch.equal(torch.random.get_rng_state(), state)


def test_losses():
    sch = DDPMScheduler(variance_type="learned_range")
    x0 = torch.randint(0, 256, (3, 1, 4, 4), generator=make_generator(0)) / 127.5 - 1
    e, t = torch.randn(x0.shape, generator=make_generator(1)), torch.tensor([0, 5, 700])
    r = diffusion_loss(lambda inp, tt: torch.cat([e, -torch.ones_like(e)], 1), sch, x0, timesteps=t, noise=e)
    assert r["mse"].item() == 0.0
    xt = sch.add_noise(x0, e, t)
    vb = vb_terms_bpd(sch, x0, xt, t, x0, sch._bcast(sch.posterior_log_variance_clipped, t, xt).expand_as(xt))
    assert vb[1:].abs().max() < 1e-6 and vb[0] > 0
    m, lv = torch.randn(5, generator=make_generator(2)), torch.randn(5, generator=make_generator(3))
    assert normal_kl(m, lv, m, lv).abs().max() < 1e-6
    assert (normal_kl(m, lv, m + 0.1, lv) > 0).all()
    levels = torch.linspace(-1, 1, 256)
    assert abs(discretized_gaussian_log_likelihood(levels, torch.tensor(0.2), torch.tensor(-3.0)).exp().sum().item() - 1) < 1e-5


@pytest.mark.parametrize("prediction_type", PREDICTION_TYPES)
def test_smoke_conditional_model_trains_and_samples(prediction_type):
    "A Durrer-style conditional smoke U-Net (input [source, x_t], learned variance) trains and samples."
    from medsynth_nb.layers import unet_from_preset
    net = unet_from_preset("smoke", in_channels=2, out_channels=2, model_channels=8, num_groups=4, channel_mult=(1, 2))
    sch = DDPMScheduler(variance_type="learned_range", prediction_type=prediction_type)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3)
    g = make_generator(0)
    src = torch.rand(4, 1, 8, 8, generator=g) * 2 - 1
    losses = []
    for _ in range(15):
        r = diffusion_loss(net, sch, -src, cond=src, generator=g); opt.zero_grad(); r["loss"].backward(); opt.step()
        losses.append(r["loss"].item())
    assert all(math.isfinite(l) for l in losses)
    out = ddpm_sample(net, sch, (4, 1, 8, 8), make_generator(1), cond=src, progress=False, num_inference_steps=5)
    out2 = ddim_sample(net, sch, (4, 1, 8, 8), 5, generator=make_generator(1), cond=src, progress=False)
    assert out.shape == out2.shape == (4, 1, 8, 8) and torch.isfinite(out).all() and torch.isfinite(out2).all()


def test_ddim_eta1_noise_matches_ddpm_respaced_variance():
    "DDIM with η = 1 adds exactly the fixed_small variance of the respaced DDPM chain."
    d, p = DDIMScheduler(clip_sample=False), DDPMScheduler(clip_sample=False)
    d.set_timesteps(20); p.set_timesteps(20)
    x, out = torch.randn(1, 1, 8, 8), torch.randn(1, 1, 8, 8)
    for t in (950, 500, 100):
        a = d.step(out, t, x, eta=1.0, generator=make_generator(9)).prev_sample
        b = p.step(out, t, x, generator=make_generator(9)).prev_sample
        test_allclose(a, b, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("call,exc,msg", [
    (lambda: DDPMScheduler().step(torch.zeros(1, 1, 2, 2), 1000, torch.zeros(1, 1, 2, 2)), ValueError, "timestep: expected an int in [0, 999], got 1000"),
    (lambda: DDPMScheduler().step(torch.zeros(1, 1, 2, 2), -3, torch.zeros(1, 1, 2, 2)), ValueError, "got -3"),
    (lambda: DDPMScheduler().step(torch.zeros(1, 1, 2, 2), "5", torch.zeros(1, 1, 2, 2)), TypeError, "timestep: expected an int"),
    (lambda: DDPMScheduler(variance_type="learned_range").step(torch.zeros(1, 1, 2, 2), 5, torch.zeros(1, 1, 2, 2)), ValueError, "learned_range needs 2×"),
    (lambda: DDIMScheduler().step(torch.zeros(1, 1, 2, 2), 5, torch.zeros(1, 1, 2, 2)), ValueError, "call scheduler.set_timesteps"),
    (lambda: DDPMScheduler().set_timesteps(1001), ValueError, "num_inference_steps: expected an int in [1, 1000], got 1001"),
    (lambda: DDIMScheduler().set_timesteps(1001), ValueError, "num_inference_steps: expected an int in [1, 1000], got 1001"),
    (lambda: DDPMScheduler(beta_schedule="sigmoid"), ValueError, "beta_schedule: expected one of"),
    (lambda: DDPMScheduler(variance_type="fixed_small_log"), ValueError, "variance_type: expected one of"),
    (lambda: DDPMScheduler(prediction_type="x0"), ValueError, "prediction_type: expected one of"),
    (lambda: DDPMScheduler().add_noise(torch.zeros(2, 1), torch.zeros(2, 1), torch.tensor([0, 1000])), ValueError, "timesteps: expected values in [0, 999]"),
    (lambda: ddim_sample(lambda x, t: x, DDPMScheduler(), (2, 1, 4, 4), 5, cond=torch.zeros(1, 1, 4, 4), progress=False), ValueError, "cond: expected shape"),
    (lambda: ddpm_sample(lambda x, t: x, DDIMScheduler(), (2, 1, 4, 4), progress=False), ValueError, "call scheduler.set_timesteps"),
    (lambda: ddpm_sample(lambda x, t: x, "ddpm", (2, 1, 4, 4), progress=False), TypeError,
     "scheduler: expected a scheduler with diffusers' API (set_timesteps, timesteps, step), got str without"),
    (lambda: ddim_sample(lambda x, t: x, object(), (2, 1, 4, 4), progress=False), TypeError, "got object without set_timesteps"),
])
def test_bad_inputs(call, exc, msg):
    with pytest.raises(exc) as e: call()
    assert msg in str(e.value)


_X = torch.zeros(2, 1, 4, 4)
_NAN = torch.full((2, 1, 4, 4), float("nan"))
_ID = lambda x, t: x
BAD_BOUNDARY = [  # (call, exception, message fragment): one refusal per argument at the public boundary
    (lambda: make_betas(10.0), TypeError, "num_train_timesteps: expected an int, got 10.0 (float)"),
    (lambda: make_betas(True), TypeError, "num_train_timesteps: expected an int, got True (bool)"),
    (lambda: make_betas(0), ValueError, "num_train_timesteps: expected an int >= 1, got 0"),
    (lambda: make_betas(10, beta_start=0.0), ValueError, "beta_start: expected a number in (0, 1), got 0"),
    (lambda: make_betas(10, beta_end=1.5), ValueError, "beta_end: expected a number in (0, 1), got 1.5"),
    (lambda: make_betas(10, beta_end=float("nan")), ValueError, "beta_end: expected a finite number, got nan"),
    (lambda: make_betas(10, beta_schedule="cosine", max_beta=1.0), ValueError, "max_beta: expected a number in (0, 1), got 1"),
    (lambda: DDPMScheduler(num_train_timesteps=True), TypeError, "num_train_timesteps: expected an int, got True (bool)"),
    (lambda: DDPMScheduler(num_train_timesteps=100.0), TypeError, "num_train_timesteps: expected an int, got 100.0 (float)"),
    (lambda: DDIMScheduler(num_train_timesteps=0), ValueError, "num_train_timesteps: expected an int >= 1, got 0"),
    (lambda: DDPMScheduler(clip_sample_range=0.0), ValueError, "clip_sample_range: expected a number > 0, got 0"),
    (lambda: DDPMScheduler(clip_sample=1), ValueError, "clip_sample: expected one of (True, False), got 1"),
    (lambda: DDPMScheduler(steps_offset=-1), ValueError, "steps_offset: expected an int >= 0, got -1"),
    (lambda: DDPMScheduler(steps_offset=1.0), TypeError, "steps_offset: expected an int, got 1.0 (float)"),
    (lambda: DDPMScheduler(dtype=torch.float16), ValueError, "dtype: expected one of (torch.float32, torch.float64)"),
    (lambda: DDIMScheduler(set_alpha_to_one=0), ValueError, "set_alpha_to_one: expected one of (True, False), got 0"),
    (lambda: DDPMScheduler().set_timesteps(True), TypeError, "num_inference_steps: expected an int, got True (bool)"),
    (lambda: DDPMScheduler().set_timesteps(50.0), TypeError, "num_inference_steps: expected an int, got 50.0 (float)"),
    (lambda: DDIMScheduler().set_timesteps(0), ValueError, "num_inference_steps: expected an int in [1, 1000], got 0"),
    (lambda: DDPMScheduler(steps_offset=100).set_timesteps(10), ValueError, "steps_offset: expected an offset keeping"),
    (lambda: DDPMScheduler().step(_X, 5.0, _X), TypeError, "timestep: expected an int, got 5.0 (float)"),
    (lambda: DDPMScheduler().step(_X, True, _X), TypeError, "timestep: expected an int, got True (bool)"),
    (lambda: DDPMScheduler().step(_X, torch.tensor(5.0), _X), TypeError, "timestep: expected an int, got 5.0 (float)"),
    (lambda: DDPMScheduler().previous_timestep(1000), ValueError, "timestep: expected an int in [0, 999], got 1000"),
    (lambda: _ddim(10).step(_X, 900, _X, eta=-0.5), ValueError, "eta: expected a number >= 0, got -0.5"),
    (lambda: _ddim(10).step(_X, 900, _X, eta=True), TypeError, "eta: expected a real number, got True (bool)"),
    (lambda: DDPMScheduler().add_noise(_NAN, _X, torch.tensor([1, 2])), ValueError, "original_samples: expected finite values"),
    (lambda: DDPMScheduler().add_noise(_X, _NAN, torch.tensor([1, 2])), ValueError, "noise: expected finite values"),
    (lambda: DDPMScheduler().add_noise(_X, _X, torch.tensor([1, 2, 3])), ValueError, "timesteps: expected 1 or 2 (batch) values, got 3"),
    (lambda: DDPMScheduler().get_velocity(_NAN, _X, torch.tensor([1, 2])), ValueError, "sample: expected finite values"),
    (lambda: DDPMScheduler().get_velocity(_X, _X[:1], torch.tensor([1, 2])), ValueError, "sample and noise: expected the same shape"),
    (lambda: ddpm_sample(_ID, DDPMScheduler(), (2, 1, 4.0, 4), progress=False), TypeError, "shape[2]: expected an int, got 4.0"),
    (lambda: ddpm_sample(_ID, DDPMScheduler(), (2, 0, 4, 4), progress=False), ValueError, "shape[1]: expected an int >= 1, got 0"),
    (lambda: ddpm_sample(_ID, DDPMScheduler(), (2,), progress=False), ValueError, "shape: expected (B, C, ...), got (2,)"),
    (lambda: ddpm_sample("net", DDPMScheduler(), (2, 1, 4, 4), progress=False), TypeError, "model: expected a callable, got str"),
    (lambda: ddpm_sample(_ID, DDPMScheduler(), (2, 1, 4, 4), cond=_NAN, progress=False), ValueError, "cond: expected finite values"),
    (lambda: ddpm_sample(_ID, DDPMScheduler(), (2, 1, 4, 4), progress=False, callback=3), TypeError, "callback: expected a callable"),
    (lambda: ddpm_sample(_ID, DDPMScheduler(), (2, 1, 4, 4), progress=False, num_inference_steps=True), TypeError,
     "num_inference_steps: expected an int, got True (bool)"),
    (lambda: ddim_sample(_ID, DDIMScheduler(), (2, 1, 4, 4), 5.0, progress=False), TypeError,
     "num_inference_steps: expected an int, got 5.0 (float)"),
    (lambda: ddim_sample(_ID, DDIMScheduler(), (2, 1, 4, 4), 5, eta=-1.0, progress=False), ValueError, "eta: expected a number >= 0, got -1"),
    (lambda: uniform_timesteps(2.0, 10), TypeError, "batch_size: expected an int, got 2.0 (float)"),
    (lambda: uniform_timesteps(2, True), TypeError, "num_train_timesteps: expected an int, got True (bool)"),
    (lambda: diffusion_loss(_ID, DDPMScheduler(), _NAN), ValueError, "x0: expected finite values"),
    (lambda: diffusion_loss(_ID, DDPMScheduler(), _X, cond=_X[:1]), ValueError, "cond: expected shape (2, C_cond, 4, 4)"),
    (lambda: diffusion_loss(_ID, DDPMScheduler(), _X, cond=_NAN), ValueError, "cond: expected finite values"),
    (lambda: diffusion_loss(_ID, DDPMScheduler(), _X, lambda_vb=-1.0), ValueError, "lambda_vb: expected a number >= 0, got -1"),
    (lambda: diffusion_loss(_ID, DDPMScheduler(), _X, noise=_X[:1]), ValueError, "original_samples and noise: expected the same shape"),
    (lambda: diffusion_loss(_ID, DDPMScheduler(), _X, timesteps=torch.tensor([0.5, 1.0])), TypeError,
     "timesteps: expected an integer tensor"),
    (lambda: diffusion_loss(lambda x, t: x[:1], DDPMScheduler(), _X), ValueError, "model output: expected shape (2, 1, 4, 4), got (1, 1, 4, 4)"),
    (lambda: diffusion_loss(_ID, DDPMScheduler(variance_type="learned_range"), _X), ValueError,
     "model output: expected shape (2, 2, 4, 4) (ε and v for learned_range), got (2, 1, 4, 4)"),
    (lambda: diffusion_loss(_ID, DDIMScheduler(), _X), TypeError, "scheduler: expected a DDPMScheduler, got DDIMScheduler"),
    (lambda: vb_terms_bpd(DDPMScheduler(), _X, _X, torch.tensor([1]), _X, _X), ValueError, "t: expected a tensor of shape (2,)"),
    (lambda: vb_terms_bpd(DDPMScheduler(), _X, _X, torch.tensor([1, 2]), _X[:1], _X), ValueError,
     "pred_x0 and x_t: expected the same shape"),
    (lambda: dummy_sample_deter(batch_size=0), ValueError, "batch_size: expected an int >= 1, got 0"),
    (lambda: PointDenoiser(hidden=64.0), TypeError, "hidden: expected an int, got 64.0 (float)"),
]


def _ddim(n):
    s = DDIMScheduler(); s.set_timesteps(n)
    return s


test_bad_inputs_at_the_boundary = refusal_test(BAD_BOUNDARY)


def test_step_does_not_scan_for_nan():
    "The hot path: step checks shapes and the timestep only, so a NaN passes through (the sampler checks its inputs once)."
    out = DDPMScheduler().step(_X, 5, _NAN, generator=make_generator(0)).prev_sample
    assert torch.isnan(out).all()


# ---------------------------------------------------------------------------------------------------------------
# Semantics pinned against float64 closed forms (numpy), independent of diffusers
# ---------------------------------------------------------------------------------------------------------------

def _np_tables(schedule="linear", T=1000):
    b = make_betas(T, beta_schedule=schedule).numpy() if schedule != "linear" else np.linspace(1e-4, 0.02, T)
    a = 1 - b
    ab = np.cumprod(a)
    return b, a, ab, np.append(1.0, ab[:-1])


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_posterior_tables_closed_form(schedule):
    "q(x_{t-1} | x_t, x_0) = N(c1 x_0 + c2 x_t, β̃_t): Ho et al. Eq. 6-7 in numpy float64."
    s = DDPMScheduler(beta_schedule=schedule)
    b, a, ab, abp = _np_tables(schedule)
    var = (1 - abp) / (1 - ab) * b
    np.testing.assert_allclose(s.posterior_variance.numpy(), var, rtol=1e-12, atol=0)
    np.testing.assert_allclose(s.posterior_mean_coef1.numpy(), np.sqrt(abp) * b / (1 - ab), rtol=1e-12, atol=0)
    np.testing.assert_allclose(s.posterior_mean_coef2.numpy(), np.sqrt(a) * (1 - abp) / (1 - ab), rtol=1e-12, atol=0)
    np.testing.assert_allclose(s.posterior_log_variance_clipped.numpy(), np.log(np.append(var[1], var[1:])), rtol=1e-12)
    # the posterior mean at x_t drawn from x_0 is the conditional expectation: c1 + c2·√ᾱ_t = √ᾱ_{t-1}
    np.testing.assert_allclose(s.posterior_mean_coef1.numpy() + s.posterior_mean_coef2.numpy() * np.sqrt(ab), np.sqrt(abp),
                               rtol=1e-10)


def _outputs(ptype, x0, eps, ab):
    "What a perfect network outputs for each prediction type (closed forms)."
    return {"epsilon": eps, "sample": x0, "v_prediction": np.sqrt(ab) * eps - np.sqrt(1 - ab) * x0}[ptype]


@pytest.mark.parametrize("ptype", PREDICTION_TYPES)
def test_prediction_type_conversions_closed_form(ptype):
    "ε ↔ x_0 ↔ v: the scheduler reads each output type back into the same x̂_0 and ε̂ (float64)."
    s = DDPMScheduler(prediction_type=ptype)
    g = np.random.default_rng(0)
    x0, eps = g.normal(size=(4, 1, 3, 3)), g.normal(size=(4, 1, 3, 3))
    for t in (0, 1, 250, 999):
        ab = float(s.alphas_cumprod[t])
        xt = np.sqrt(ab) * x0 + np.sqrt(1 - ab) * eps
        out = torch.from_numpy(_outputs(ptype, x0, eps, ab))
        x0h, epsh = s._pred_x0_eps(out, torch.from_numpy(xt), torch.tensor(ab, dtype=torch.float64))
        tol = 1e-7 if (ptype == "sample" and t == 0) else 1e-9            # ε from x_0 divides by √(1-ᾱ_0) = 0.01
        np.testing.assert_allclose(x0h.numpy(), x0, rtol=0, atol=1e-9 * (1 if ptype != "epsilon" else 1 / np.sqrt(ab)))
        np.testing.assert_allclose(epsh.numpy(), eps, rtol=0, atol=tol)
    tt = torch.tensor([3, 700])
    v = s.get_velocity(torch.from_numpy(x0[:2]), torch.from_numpy(eps[:2]), tt).numpy()
    abt = s.alphas_cumprod[tt].numpy()[:, None, None, None]
    np.testing.assert_allclose(v, np.sqrt(abt) * eps[:2] - np.sqrt(1 - abt) * x0[:2], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("ptype", PREDICTION_TYPES)
@pytest.mark.parametrize("n_steps", [None, 10])
def test_ddpm_step_is_the_posterior_of_the_predicted_x0(ptype, n_steps):
    "One ancestral step with a perfect network = μ̃_t(x_0, x_t) + √β̃_t z exactly, also between respaced steps t → t'."
    s = DDPMScheduler(prediction_type=ptype, clip_sample=False)
    if n_steps: s.set_timesteps(n_steps)
    g = np.random.default_rng(1)
    x0, eps = g.normal(size=(2, 1, 4, 4)), g.normal(size=(2, 1, 4, 4))
    ab_all = DDPMScheduler().alphas_cumprod.numpy()
    for t in s.timesteps.tolist():
        tp = s.previous_timestep(t)
        ab, abp = ab_all[t], (ab_all[tp] if tp >= 0 else 1.0)
        beta = 1 - ab / abp                                                  # the respaced β between t and t'
        xt = np.sqrt(ab) * x0 + np.sqrt(1 - ab) * eps
        mean = np.sqrt(abp) * beta / (1 - ab) * x0 + np.sqrt(1 - beta) * (1 - abp) / (1 - ab) * xt
        var = (1 - abp) / (1 - ab) * beta
        z = torch.randn(x0.shape, generator=make_generator(t), dtype=torch.float64).numpy()
        res = s.step(torch.from_numpy(_outputs(ptype, x0, eps, ab)), t, torch.from_numpy(xt), generator=make_generator(t))
        expect = mean + (np.sqrt(max(var, 1e-20)) * z if t > 0 else 0)
        tol = 1e-6 if ptype == "epsilon" and t >= 990 else 1e-9              # x̂_0 = (x_t − …)/√ᾱ_t, √ᾱ_999 ≈ 0.006
        np.testing.assert_allclose(res.prev_sample.numpy(), expect, rtol=0, atol=tol)
        np.testing.assert_allclose(res.pred_original_sample.numpy(), x0, rtol=0, atol=tol)


def test_ddpm_step_uses_alpha_bar_not_alpha():
    "Durrer Eq. 4 read literally (√(1-α_t) instead of √(1-ᾱ_t)) is not what the step does; Ho Eq. 11 is."
    s = DDPMScheduler(clip_sample=False)
    b, a, ab, _ = _np_tables()
    g = np.random.default_rng(2)
    xt, eps = g.normal(size=(1, 1, 5, 5)), g.normal(size=(1, 1, 5, 5))
    for t in (1, 100, 999):
        z = torch.randn(xt.shape, generator=make_generator(0), dtype=torch.float64).numpy()
        sigma = np.sqrt((1 - ab[t - 1]) / (1 - ab[t]) * b[t])
        ho = (xt - b[t] / np.sqrt(1 - ab[t]) * eps) / np.sqrt(a[t]) + sigma * z
        literal = (xt - b[t] / np.sqrt(1 - a[t]) * eps) / np.sqrt(a[t]) + sigma * z
        got = s.step(torch.from_numpy(eps), t, torch.from_numpy(xt), generator=make_generator(0)).prev_sample.numpy()
        np.testing.assert_allclose(got, ho, rtol=0, atol=1e-9)
        assert np.abs(got - literal).max() > (0.03 if t >= 100 else 1e-3)   # ᾱ_t ≈ α_t only near t = 0


@pytest.mark.parametrize("eta", [0.0, 0.7, 1.0])
@pytest.mark.parametrize("ptype", PREDICTION_TYPES)
def test_ddim_step_closed_form(eta, ptype):
    "x_{t'} = √ᾱ_{t'} x̂_0 + √(1-ᾱ_{t'}-σ²) ε̂ + σ z, σ = η √((1-ᾱ_{t'})/(1-ᾱ_t) (1-ᾱ_t/ᾱ_{t'})) (Song et al. Eq. 12, 16)."
    s = DDIMScheduler(prediction_type=ptype, clip_sample=False)
    s.set_timesteps(20)
    ab_all = s.alphas_cumprod.numpy()
    g = np.random.default_rng(3)
    for t in s.timesteps.tolist():
        x0, eps = g.normal(size=(2, 1, 3, 3)), g.normal(size=(2, 1, 3, 3))
        tp = t - 1000 // 20
        ab, abp = ab_all[t], (ab_all[tp] if tp >= 0 else 1.0)
        xt = np.sqrt(ab) * x0 + np.sqrt(1 - ab) * eps
        sigma = eta * np.sqrt((1 - abp) / (1 - ab) * (1 - ab / abp))
        z = torch.randn(x0.shape, generator=make_generator(t), dtype=torch.float64).numpy() if eta > 0 else 0
        expect = np.sqrt(abp) * x0 + np.sqrt(1 - abp - sigma ** 2) * eps + sigma * z
        got = s.step(torch.from_numpy(_outputs(ptype, x0, eps, ab)), t, torch.from_numpy(xt), eta=eta,
                     generator=make_generator(t)).prev_sample.numpy()
        tol = 1e-6 if (ptype == "epsilon" and t >= 900) or (ptype == "sample" and t < 50) else 1e-9
        np.testing.assert_allclose(got, expect, rtol=0, atol=tol)
    # η = 0 is deterministic: the generator is never used
    x = torch.randn(1, 1, 3, 3, dtype=torch.float64)
    t0 = int(s.timesteps[3])
    assert torch.equal(s.step(x, t0, x, eta=0.0, generator=make_generator(1)).prev_sample,
                       s.step(x, t0, x, eta=0.0, generator=make_generator(2)).prev_sample)


@pytest.mark.parametrize("n_steps", [None, 25])
def test_learned_range_variance_interpolation(n_steps):
    "log σ² = (v+1)/2 · log β_t + (1-v)/2 · log β̃_t (Nichol & Dhariwal Eq. 15), per pixel, t → t' after respacing."
    s = DDPMScheduler(variance_type="learned_range", clip_sample=False)
    if n_steps: s.set_timesteps(n_steps)
    ab_all = s.alphas_cumprod.numpy()
    g = torch.Generator().manual_seed(4)
    x = torch.randn(2, 1, 4, 4, generator=g, dtype=torch.float64)
    eps = torch.randn(2, 1, 4, 4, generator=g, dtype=torch.float64)
    v = torch.rand(2, 1, 4, 4, generator=g, dtype=torch.float64) * 2 - 1
    v[0, 0, 0, :] = torch.tensor([-1.0, 0.0, 0.5, 1.0], dtype=torch.float64)
    for t in s.timesteps.tolist()[::3]:
        if t == 0: continue
        tp = s.previous_timestep(t)
        ab, abp = ab_all[t], (ab_all[tp] if tp >= 0 else 1.0)
        beta = 1 - ab / abp
        beta_tilde = max((1 - abp) / (1 - ab) * beta, 1e-20)
        frac = (v.numpy() + 1) / 2
        std = np.exp(0.5 * (frac * np.log(beta) + (1 - frac) * np.log(beta_tilde)))
        mean = s.step(torch.cat([eps, v], 1), t, x, generator=make_generator(5)).prev_sample.numpy() \
            - std * torch.randn(x.shape, generator=make_generator(5), dtype=torch.float64).numpy()
        other = s.step(torch.cat([eps, v], 1), t, x, generator=make_generator(6)).prev_sample.numpy()
        z6 = torch.randn(x.shape, generator=make_generator(6), dtype=torch.float64).numpy()
        np.testing.assert_allclose(other, mean + std * z6, rtol=0, atol=1e-9)
        fixed = DDPMScheduler(variance_type="fixed_small", clip_sample=False)
        if n_steps: fixed.set_timesteps(n_steps)
        np.testing.assert_allclose(mean, fixed.step(eps, t, x, generator=make_generator(5)).prev_sample.numpy()
                                   - np.sqrt(beta_tilde) * torch.randn(x.shape, generator=make_generator(5), dtype=torch.float64).numpy(),
                                   rtol=0, atol=1e-9)                     # the mean does not depend on v
        # v = -1 is fixed_small (β̃), v = +1 is fixed_large (β)
        np.testing.assert_allclose(std[0, 0, 0, [0, 3]], [np.sqrt(beta_tilde), np.sqrt(beta)], rtol=1e-9)


class _Recorder(torch.nn.Module):
    "Records the condition channels and the x_t channel of every call; outputs a fixed function of x_t."
    def __init__(self, c_cond=1, c_out=1):
        super().__init__()
        self.c_cond, self.c_out, self.conds, self.xs = c_cond, c_out, [], []
        self.w = torch.nn.Parameter(torch.tensor(0.3))

    def forward(self, inp, t):
        self.conds.append(inp[:, :self.c_cond].clone()); self.xs.append(inp[:, self.c_cond:].clone())
        out = self.w * inp[:, self.c_cond:]
        return out if self.c_out == 1 else torch.cat([out, torch.zeros_like(out)], 1)


@pytest.mark.parametrize("sampler", ["ddpm", "ddim"])
def test_condition_reconcatenated_every_step(sampler):
    "Durrer Fig. 3: the clean source is concatenated before x_t at every step; x_t changes from call to call."
    cond = torch.rand(2, 1, 6, 6, generator=make_generator(0))
    learned = sampler == "ddpm"
    sch = DDPMScheduler(variance_type="learned_range" if learned else "fixed_small")
    m = _Recorder(c_out=2 if learned else 1)
    if sampler == "ddpm": ddpm_sample(m, sch, (2, 1, 6, 6), make_generator(1), cond=cond, progress=False, num_inference_steps=8)
    else: ddim_sample(m, sch, (2, 1, 6, 6), 8, generator=make_generator(1), cond=cond, progress=False)
    assert len(m.conds) == 8 and all(torch.equal(c, cond) for c in m.conds)
    assert all(not torch.equal(a, b) for a, b in zip(m.xs, m.xs[1:]))
    x_T = torch.randn(2, 1, 6, 6, generator=make_generator(1))
    assert torch.equal(m.xs[0], x_T)                                          # the chain starts from the generator's x_T


class _Stop(Exception):
    pass


class _MetaRecorder(MetaDeviceModel):
    "A model whose parameters live on the meta device: records where its inputs are, then stops the loop."

    def forward(self, inp, t):
        self.seen.append((inp.device.type, t.device.type))
        raise _Stop


@pytest.mark.parametrize("sampler", ["ddpm", "ddim"])
def test_sampling_moves_inputs_to_the_model_device(sampler):
    "No GPU needed: a meta-device model must receive meta inputs, though cond and the generator are on the CPU."
    m = _MetaRecorder()
    cond = torch.rand(1, 1, 4, 4)
    fn = (lambda: ddpm_sample(m, DDPMScheduler(), (1, 1, 4, 4), make_generator(0), cond=cond, progress=False)) if sampler == "ddpm" \
        else (lambda: ddim_sample(m, DDPMScheduler(), (1, 1, 4, 4), 5, generator=make_generator(0), cond=cond, progress=False))
    with pytest.raises(_Stop): fn()
    assert m.seen == [("meta", "meta")]


def test_cpu_generator_gives_the_same_numbers_on_any_device():
    "Noise is drawn on the generator's device and then moved, so a CPU generator works for a model on any device."
    from medsynth_nb.ddpm import _randn
    a = _randn((2, 3), make_generator(3), torch.float32, torch.device("cpu"))
    assert torch.equal(a, torch.randn(2, 3, generator=make_generator(3)))
    assert _randn((2, 3), make_generator(3), torch.float32, torch.device("meta")).device.type == "meta"


# ---------------------------------------------------------------------------------------------------------------
# Configurations: plain JSON, and diffusers' from_config both ways
# ---------------------------------------------------------------------------------------------------------------

def _assert_same_steps(a, b, n=10, **kw):
    "Both respaced to n steps: identical timesteps and bit-identical steps on the same inputs and generator seed."
    a.set_timesteps(n); b.set_timesteps(n)
    assert torch.equal(a.timesteps, b.timesteps)
    x, out = torch.randn(2, 1, 5, 5, generator=make_generator(8)), torch.randn(2, 1, 5, 5, generator=make_generator(9))
    for t in a.timesteps.tolist():
        pa = a.step(out, t, x, generator=make_generator(t), **kw).prev_sample
        assert torch.equal(pa, b.step(out, t, x, generator=make_generator(t), **kw).prev_sample), t


_PAIRS = {"ddpm": (DDPMScheduler, "DDPMScheduler", dict(variance_type="fixed_large"), {}),
          "ddim": (DDIMScheduler, "DDIMScheduler", dict(set_alpha_to_one=False), dict(eta=1.0))}


@pytest.mark.parametrize("pair", list(_PAIRS))
def test_config_is_json_and_round_trips(pair):
    cls, _, kw, _ = _PAIRS[pair]
    for dtype in (torch.float32, torch.float64):
        ours = cls(beta_schedule="cosine", prediction_type="v_prediction", steps_offset=1, dtype=dtype, **kw)
        text = json.dumps(ours.config)                                        # plain JSON: no torch.dtype inside
        back = cls.from_config(json.loads(text))
        assert back.config == ours.config and back.dtype == dtype and repr(back) == repr(ours)
        for name in ("betas", "alphas_cumprod"): assert torch.equal(getattr(back, name), getattr(ours, name))
        _assert_same_steps(back, ours, **_PAIRS[pair][3])
    assert json.loads(json.dumps(cls(dtype=torch.float32).config))["tables_dtype"] == "float32"
    # a dtype given as a torch.dtype or as its name, in a config or as an override
    assert cls.from_config({"dtype": torch.float32}).dtype == torch.float32
    assert cls.from_config({"tables_dtype": "float32"}, dtype="float64").dtype == torch.float64


@pytest.mark.parametrize("pair", list(_PAIRS))
def test_config_loads_into_diffusers_and_back(pair):
    cls, dname, kw, step_kw = _PAIRS[pair]
    dcls = getattr(diffusers, dname)
    ours = cls(beta_schedule="scaled_linear", prediction_type="v_prediction", clip_sample=False,
               timestep_spacing="trailing", dtype=torch.float32, **kw)
    theirs = dcls.from_config(ours.config)                                    # ours -> diffusers
    for k, v in ours.config.items():
        if k != "tables_dtype": assert theirs.config[k] == v, k
    assert torch.equal(theirs.alphas_cumprod, ours.alphas_cumprod)            # bit for bit in float32 mode
    _assert_same_steps(ours, theirs, **step_kw)
    plain = dcls(beta_schedule="scaled_linear", prediction_type="v_prediction", clip_sample=False,
                 timestep_spacing="trailing", **kw)
    mine = cls.from_config(plain.config, dtype="float32")                      # diffusers' FrozenDict -> ours
    assert torch.equal(mine.alphas_cumprod, plain.alphas_cumprod)
    _assert_same_steps(mine, plain, **step_kw)
    assert cls.from_config(plain.config).dtype == torch.float64                # our default when none is given
    assert cls.from_config(theirs.config).dtype == torch.float32               # diffusers keeps our extra key
    with pytest.raises(ValueError, match="config: thresholding=True is not implemented"):
        cls.from_config(dcls(thresholding=True).config)
    with pytest.raises(ValueError, match="config: rescale_betas_zero_snr=True is not implemented"):
        cls.from_config(dcls(rescale_betas_zero_snr=True).config)
    with pytest.raises(ValueError, match="config: trained_betas="):
        cls.from_config({"trained_betas": [0.1, 0.2]})
    with pytest.raises(ValueError, match="config: expected a dict"):
        cls.from_config([("beta_schedule", "linear")])


# ---------------------------------------------------------------------------------------------------------------
# Our samplers with diffusers' schedulers (duck-typed on set_timesteps / timesteps / step)
# ---------------------------------------------------------------------------------------------------------------

def _toy_net(c_out=1):
    "A deterministic conditional toy ε-network [cond, x_t] -> ε (or [ε, v]) that depends on x_t, cond and t."
    def f(inp, t):
        c, x = inp[:, :1], inp[:, 1:]
        eps = torch.tanh(x) * 0.7 + 0.2 * c + 1e-3 * t.to(x.dtype).reshape(-1, 1, 1, 1)
        return eps if c_out == 1 else torch.cat([eps, torch.tanh(x - c)], 1)
    return f


_COND = torch.rand(2, 1, 6, 6, generator=make_generator(11))


def _pipeline_loop(sched, n, model, **step_kw):
    "diffusers' pipeline loop: x_T · init_noise_sigma, scale_model_input, step(**step_kw); 'gen' = the loop's generator."
    gen = make_generator(7); sched.set_timesteps(n)
    x = torch.randn((2, 1, 6, 6), generator=gen) * sched.init_noise_sigma
    for t in sched.timesteps:
        out = model(torch.cat([_COND, sched.scale_model_input(x, t)], 1), t.expand(2))
        x = sched.step(out, t, x, **{k: (gen if isinstance(v, str) else v) for k, v in step_kw.items()}).prev_sample
    return x


_OURS = dict(cond=_COND, progress=False)


@pytest.mark.parametrize("name,sampler,ref_kw", [
    ("DDPMScheduler", "ddpm", dict(generator="gen")),
    ("DDIMScheduler", "ddim", dict(eta=0.5, generator="gen")),
    ("DPMSolverMultistepScheduler", "ddim", {}),
    ("UniPCMultistepScheduler", "ddim", {}),
    ("EulerDiscreteScheduler", "ddim", dict(generator="gen")),
])
def test_samplers_equal_diffusers_pipeline_loop(name, sampler, ref_kw):
    cls, net = getattr(diffusers, name), _toy_net()
    ref = _pipeline_loop(cls(), 8, net, **ref_kw)
    if sampler == "ddpm": got = ddpm_sample(net, cls(), (2, 1, 6, 6), make_generator(7), num_inference_steps=8, **_OURS)
    else: got = ddim_sample(net, cls(), (2, 1, 6, 6), 8, eta=ref_kw.get("eta", 0.0), generator=make_generator(7), **_OURS)
    assert torch.equal(got, ref)


def test_ddim_sample_converts_diffusers_ddpm_with_diffusers_ddim():
    net = _toy_net()
    ref = _pipeline_loop(diffusers.DDIMScheduler.from_config(diffusers.DDPMScheduler(beta_schedule="scaled_linear").config),
                         8, net, eta=0.3, generator="gen")
    got = ddim_sample(net, diffusers.DDPMScheduler(beta_schedule="scaled_linear"), (2, 1, 6, 6), 8, eta=0.3,
                      generator=make_generator(7), **_OURS)
    assert torch.equal(got, ref)


def test_euler_x_T_is_not_standard_normal():
    "Why Euler is the behavioural check: its x_T has std sigma_max (~14.6), so the loop must scale by init_noise_sigma."
    s = diffusers.EulerDiscreteScheduler(); s.set_timesteps(8)
    assert float(s.init_noise_sigma) > 10


@pytest.mark.parametrize("drop", ["init_noise_sigma", "scale_model_input"])
def test_sampler_uses_init_noise_sigma_and_scale_model_input(drop):
    "A scheduler whose x_T scale / model-input scale is hidden from the sampler gives a different sample than diffusers'."
    net = _toy_net()
    ref = _pipeline_loop(diffusers.EulerDiscreteScheduler(), 8, net, generator="gen")

    class Hidden(diffusers.EulerDiscreteScheduler):
        pass
    h = Hidden()
    if drop == "init_noise_sigma": Hidden.init_noise_sigma = 1.0
    else: h.scale_model_input = lambda x, t: x
    got = ddim_sample(net, h, (2, 1, 6, 6), 8, generator=make_generator(7), **_OURS)
    assert (got - ref).abs().max() > 1e-2


def test_learned_variance_channels_split_only_when_the_scheduler_does_not_read_them():
    net2 = _toy_net(c_out=2)
    eps_half = lambda inp, t: net2(inp, t)[:, :1]
    for cls, kw in ((diffusers.DDIMScheduler, dict(eta=0.0, generator="gen")), (diffusers.DPMSolverMultistepScheduler, {})):
        ref = _pipeline_loop(cls(), 8, eps_half, **kw)
        assert torch.equal(ddim_sample(net2, cls(), (2, 1, 6, 6), 8, generator=make_generator(7), **_OURS), ref)
    learned = dict(variance_type="learned_range")
    ref = _pipeline_loop(diffusers.DDPMScheduler(**learned), 8, net2, generator="gen")
    got = ddpm_sample(net2, diffusers.DDPMScheduler(**learned), (2, 1, 6, 6), make_generator(7), num_inference_steps=8, **_OURS)
    assert torch.equal(got, ref)
    split = ddpm_sample(eps_half, diffusers.DDPMScheduler(), (2, 1, 6, 6), make_generator(7), num_inference_steps=8, **_OURS)
    assert (got - split).abs().max() > 1e-3                                    # v was read: not the fixed-variance chain


def test_sampler_keywords_and_callback_with_diffusers_schedulers():
    net = _toy_net()
    with pytest.raises(ValueError, match="eta: DPMSolverMultistepScheduler.step takes no eta"):
        ddim_sample(net, diffusers.DPMSolverMultistepScheduler(), (2, 1, 6, 6), 8, eta=0.5, **_OURS)
    with pytest.raises(ValueError, match="eta: UniPCMultistepScheduler.step takes no eta"):
        ddim_sample(net, diffusers.UniPCMultistepScheduler(), (2, 1, 6, 6), 8, eta=1.0, **_OURS)
    seen = []
    ddim_sample(net, diffusers.DPMSolverMultistepScheduler(), (2, 1, 6, 6), 4, callback=lambda i, t, x, x0: seen.append(x0),
                **_OURS)
    assert seen == [None] * 4                                                  # its step output has no pred_original_sample
    seen.clear()
    ddim_sample(net, diffusers.DDIMScheduler(), (2, 1, 6, 6), 4, callback=lambda i, t, x, x0: seen.append(x0), **_OURS)
    assert len(seen) == 4 and all(isinstance(s, torch.Tensor) for s in seen)
    with pytest.raises(ValueError, match=r"num_inference_steps: expected an int in \[1, 1000\], got 0"):
        ddim_sample(net, diffusers.DPMSolverMultistepScheduler(), (2, 1, 6, 6), 0, **_OURS)
    with pytest.raises(TypeError, match="num_inference_steps: expected an int, got 8.0"):
        ddpm_sample(net, diffusers.DDPMScheduler(), (2, 1, 6, 6), num_inference_steps=8.0, **_OURS)


# ---------------------------------------------------------------------------------------------------------------
# DPM-Solver++(2M): step by step against diffusers, the update closed forms, the local order
# ---------------------------------------------------------------------------------------------------------------

from medsynth_nb.ddpm import DPMSolverMultistepScheduler, _dpm_first_order, _dpm_second_order, _vp_alpha_sigma


def _tanh_model(x, t):
    return torch.tanh(x * 1.3) * 0.8 + 1e-3 * torch.as_tensor(t, dtype=x.dtype)


def _dpm_chains(n, model, dtype=torch.float32, **kw):
    "Ours and diffusers' chains side by side from diffusers' test sample: per-step max |Δx|, |Δx̂_0|."
    ours, theirs = DPMSolverMultistepScheduler(**kw, dtype=dtype), diffusers.DPMSolverMultistepScheduler(**kw)
    ours.set_timesteps(n); theirs.set_timesteps(n)
    assert torch.equal(ours.timesteps, theirs.timesteps)
    if dtype == torch.float32: assert torch.equal(ours.sigmas, theirs.sigmas)
    xa = xb = dummy_sample_deter()
    diffs = []
    for t in ours.timesteps.tolist():
        a = ours.step(model(xa, t), t, xa)
        xb = theirs.step(model(xb, t), t, xb).prev_sample
        diffs.append(((a.prev_sample - xb).abs().max().item(),
                      (a.pred_original_sample - theirs.model_outputs[-1]).abs().max().item()))
        xa = a.prev_sample
    return diffs


@pytest.mark.parametrize("prediction_type", PREDICTION_TYPES)
@pytest.mark.parametrize("spacing", TIMESTEP_SPACINGS)
@pytest.mark.parametrize("order", [1, 2])
@pytest.mark.parametrize("final,lower_final", [("zero", True), ("zero", False), ("sigma_min", True), ("sigma_min", False)])
@pytest.mark.parametrize("n", [3, 8, 16])
def test_dpm_every_step_equals_diffusers_bit_for_bit(prediction_type, spacing, order, final, lower_final, n):
    kw = dict(prediction_type=prediction_type, timestep_spacing=spacing, solver_order=order,
              final_sigmas_type=final, lower_order_final=lower_final)
    for model in (dummy_model, _tanh_model):
        assert all(d == (0.0, 0.0) for d in _dpm_chains(n, model, **kw))


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_dpm_float64_mode_close_to_diffusers(prediction_type):
    worst = max(max(d) for d in _dpm_chains(20, _tanh_model, torch.float64, prediction_type=prediction_type))
    assert worst < 1e-4


def test_dpm_updates_closed_forms_float64():
    "First order = DDIM η=0 jump; 2M = Lu et al. Algorithm 2, (1 + 1/2r) x̂0(s) − 1/2r x̂0(s1); to σ = 0: x̂0."
    ab = DPMSolverMultistepScheduler().alphas_cumprod.numpy()
    sg = lambda t: torch.tensor(np.sqrt((1 - ab[t]) / ab[t]), dtype=torch.float64)
    lam = lambda t: 0.5 * np.log(ab[t] / (1 - ab[t]))
    g = np.random.default_rng(7)
    x, x0, x0p = (torch.from_numpy(g.normal(size=(2, 1, 4, 4))) for _ in range(3))
    for t, s, s1 in ((300, 500, 700), (10, 60, 150), (800, 900, 999)):
        eps = (x.numpy() - np.sqrt(ab[s]) * x0.numpy()) / np.sqrt(1 - ab[s])
        np.testing.assert_allclose(_dpm_first_order(x, x0, sg(s), sg(t)).numpy(),
                                   np.sqrt(ab[t]) * x0.numpy() + np.sqrt(1 - ab[t]) * eps, rtol=0, atol=1e-11)
        h, r = lam(t) - lam(s), (lam(s) - lam(s1)) / (lam(t) - lam(s))
        want = (np.sqrt((1 - ab[t]) / (1 - ab[s])) * x.numpy()
                - np.sqrt(ab[t]) * (np.exp(-h) - 1) * ((1 + 1 / (2 * r)) * x0.numpy() - 1 / (2 * r) * x0p.numpy()))
        np.testing.assert_allclose(_dpm_second_order(x, x0, x0p, sg(s1), sg(s), sg(t)).numpy(), want, rtol=0, atol=1e-11)
    assert torch.equal(_dpm_first_order(x, x0, sg(40), torch.zeros((), dtype=torch.float64)), x0)


def test_dpm_local_error_orders_on_gaussian_data():
    "Exact ODE trajectory of N(0, s²) data: one step's error shrinks ~4× (first order) and ~8× (2M) when h halves."
    s, c = 0.5, torch.randn(8, 2, dtype=torch.float64, generator=make_generator(5))
    sig = lambda lam: torch.tensor(math.exp(-lam), dtype=torch.float64)
    def traj(lam):
        a, st = _vp_alpha_sigma(sig(lam)); return c * (a ** 2 * s ** 2 + st ** 2) ** 0.5
    def x0(lam):
        a, st = _vp_alpha_sigma(sig(lam)); return a * s ** 2 * traj(lam) / (a ** 2 * s ** 2 + st ** 2)
    for lam_s in (-1.5, 0.0, 1.5):
        errs = []
        for h in (0.2, 0.1, 0.05):
            exact = traj(lam_s + h)
            e1 = (_dpm_first_order(traj(lam_s), x0(lam_s), sig(lam_s), sig(lam_s + h)) - exact).abs().max().item()
            e2 = (_dpm_second_order(traj(lam_s), x0(lam_s), x0(lam_s - h), sig(lam_s - h), sig(lam_s), sig(lam_s + h))
                  - exact).abs().max().item()
            errs.append((e1, e2))
        for (a1, a2), (b1, b2) in zip(errs, errs[1:]):
            assert 3.3 < a1 / b1 < 5 and 7 < a2 / b2 < 9, (lam_s, errs)


def test_dpm_config_travels_and_sampler_equals_diffusers():
    ours = DPMSolverMultistepScheduler(prediction_type="v_prediction", final_sigmas_type="sigma_min", dtype=torch.float32)
    back = DPMSolverMultistepScheduler.from_config(json.loads(json.dumps(ours.config)))
    assert back.config == ours.config
    theirs = diffusers.DPMSolverMultistepScheduler.from_config(ours.config)
    for k, v in ours.config.items():
        if k != "tables_dtype": assert theirs.config[k] == v, k
    mine = DPMSolverMultistepScheduler.from_config(diffusers.DPMSolverMultistepScheduler(solver_order=1).config)
    assert (mine.solver_order, mine.timestep_spacing, mine.dtype) == (1, "linspace", torch.float64)
    net = _toy_net()
    a = ddim_sample(net, ours, (2, 1, 6, 6), 12, generator=make_generator(7), **_OURS)
    b = ddim_sample(net, theirs, (2, 1, 6, 6), 12, generator=make_generator(7), **_OURS)
    assert torch.equal(a, b)
    assert torch.equal(ddim_sample(net, ours, (2, 1, 6, 6), 12, generator=make_generator(7), **_OURS), a)   # restarted
    # from the training DDPM config (learned variance): the sampler drops v, the solver never sees it
    d = DPMSolverMultistepScheduler.from_config(DDPMScheduler(variance_type="learned_range", dtype=torch.float32).config,
                                                timestep_spacing="linspace")
    net2 = _toy_net(c_out=2)
    assert torch.equal(ddim_sample(net2, d, (2, 1, 6, 6), 12, generator=make_generator(7), **_OURS),
                       ddim_sample(lambda i, t: net2(i, t)[:, :1], diffusers.DPMSolverMultistepScheduler(), (2, 1, 6, 6),
                                   12, generator=make_generator(7), **_OURS))


def test_dpm_bad_inputs():
    s, x = DPMSolverMultistepScheduler(), torch.zeros(2, 1, 4, 4)
    with pytest.raises(ValueError, match="call scheduler.set_timesteps"): s.step(x, 999, x)
    s.set_timesteps(10)
    with pytest.raises(ValueError, match="timestep: 501 is not one of the 10 timesteps"): s.step(x, 501, x)
    s.step(x, 999, x)
    with pytest.raises(ValueError, match=r"timestep: expected 899 \(step 2 of 10\)"): s.step(x, 799, x)
    with pytest.raises(ValueError, match=r"model_output: expected shape \(2, 1, 4, 4\)"): s.step(torch.zeros(2, 2, 4, 4), 899, x)
    for t in s.timesteps.tolist()[1:]: s.step(x, t, x)
    with pytest.raises(ValueError, match="expected no further step"): s.step(x, 0, x)
    with pytest.raises(ValueError, match=r"solver_order: expected an int in \[1, 2\], got 3"): DPMSolverMultistepScheduler(solver_order=3)
    with pytest.raises(ValueError, match="algorithm_type: expected one of"): DPMSolverMultistepScheduler(algorithm_type="dpmsolver")
    with pytest.raises(ValueError, match="lower_order_final: expected one of"): DPMSolverMultistepScheduler(lower_order_final=1)
    with pytest.raises(ValueError, match="config: use_karras_sigmas=True is not implemented"):
        DPMSolverMultistepScheduler.from_config({"use_karras_sigmas": True})
    with pytest.raises(ValueError, match="config: euler_at_final=True is not implemented"):
        DPMSolverMultistepScheduler.from_config(diffusers.DPMSolverMultistepScheduler(euler_at_final=True).config)
