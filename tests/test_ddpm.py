"DDPM/DDIM schedulers: equality with diffusers, golden values, closed forms, losses, sampling loops, bad inputs."
import math
import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st

from medsynth_nb.ddpm import (DDIMScheduler, DDPMScheduler, PREDICTION_TYPES, TIMESTEP_SPACINGS, VARIANCE_TYPES,
                              ddim_sample, ddpm_sample, diffusion_loss, discretized_gaussian_log_likelihood,
                              dummy_model, dummy_sample_deter, make_betas, normal_kl, vb_terms_bpd)
from medsynth_nb.utils import make_generator, test_allclose

torch.set_num_threads(1)
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
    (lambda: DDPMScheduler().step(torch.zeros(1, 1, 2, 2), 1000, torch.zeros(1, 1, 2, 2)), ValueError, "timestep: expected 0 <= timestep < 1000"),
    (lambda: DDPMScheduler().step(torch.zeros(1, 1, 2, 2), -3, torch.zeros(1, 1, 2, 2)), ValueError, "got -3"),
    (lambda: DDPMScheduler().step(torch.zeros(1, 1, 2, 2), "5", torch.zeros(1, 1, 2, 2)), TypeError, "timestep: expected an int"),
    (lambda: DDPMScheduler(variance_type="learned_range").step(torch.zeros(1, 1, 2, 2), 5, torch.zeros(1, 1, 2, 2)), ValueError, "learned_range needs 2×"),
    (lambda: DDIMScheduler().step(torch.zeros(1, 1, 2, 2), 5, torch.zeros(1, 1, 2, 2)), ValueError, "call scheduler.set_timesteps"),
    (lambda: DDPMScheduler().set_timesteps(1001), ValueError, "cannot be larger than num_train_timesteps"),
    (lambda: DDIMScheduler().set_timesteps(1001), ValueError, "cannot be larger than num_train_timesteps"),
    (lambda: DDPMScheduler(beta_schedule="sigmoid"), ValueError, "beta_schedule: expected one of"),
    (lambda: DDPMScheduler(variance_type="fixed_small_log"), ValueError, "variance_type: expected one of"),
    (lambda: DDPMScheduler(prediction_type="x0"), ValueError, "prediction_type: expected one of"),
    (lambda: DDPMScheduler().add_noise(torch.zeros(2, 1), torch.zeros(2, 1), torch.tensor([0, 1000])), ValueError, "timesteps: expected values in [0, 999]"),
    (lambda: DDPMScheduler().step(torch.zeros(1, 1, 2, 2), 5, torch.full((1, 1, 2, 2), float("nan"))), ValueError, "sample: expected finite values"),
    (lambda: ddim_sample(lambda x, t: x, DDPMScheduler(), (2, 1, 4, 4), 5, cond=torch.zeros(1, 1, 4, 4), progress=False), ValueError, "cond: expected shape"),
    (lambda: ddpm_sample(lambda x, t: x, DDIMScheduler(), (2, 1, 4, 4), progress=False), TypeError, "expected a DDPMScheduler"),
])
def test_bad_inputs(call, exc, msg):
    with pytest.raises(exc) as e: call()
    assert msg in str(e.value)
