"WGAN-GP: losses, gradient penalty (closed forms, per-sample α, conditions, graph), toy helpers, bad inputs."
import math
import warnings

import pytest
import torch
from hypothesis import given, settings, strategies as st
from torch import nn

from medsynth_nb.utils import make_generator, seeded, test_allclose
from medsynth_nb.wgan import (ToyCritic, ToyGenerator, clip_weights, critic_loss, drift_penalty, generator_loss,
                              gradient_penalty, mode_coverage, ring_centres, ring_of_gaussians, toy_critic_step,
                              toy_generator_step, train_toy)
from refusals import refusal_test

F64 = torch.float64


class Linear(nn.Module):
    "f(x) = <w, x> + b (+ <w_c, c>)."
    def __init__(self, w, wc=None):
        super().__init__()
        self.w = nn.Parameter(w.clone())
        self.b = nn.Parameter(torch.tensor(0.7, dtype=w.dtype))
        self.wc = None if wc is None else nn.Parameter(wc.clone())

    def forward(self, x, c=None):
        out = (x * self.w).flatten(1).sum(1) + self.b
        return out if c is None else out + (c * self.wc).flatten(1).sum(1)


def quad(x, c=None):
    "f = ½‖x‖² (+ ½‖c‖²): its gradient is the input itself, so the penalty depends on every α_i."
    out = 0.5 * x.pow(2).flatten(1).sum(1)
    return out if c is None else out + 0.5 * c.pow(2).flatten(1).sum(1)


shapes = st.tuples(st.integers(1, 5), st.lists(st.integers(1, 4), min_size=1, max_size=3))


@settings(max_examples=25, deadline=None)
@given(shapes, st.floats(0.05, 3.0), st.integers(0, 10_000), st.booleans())
def test_linear_critic_penalty_is_closed_form(shape, wnorm, seed, one_sided):
    B, dims = shape
    g = make_generator(seed)
    w = torch.randn(dims, generator=g, dtype=F64)
    w = w * (wnorm / w.norm())
    real, fake = torch.randn(B, *dims, generator=g, dtype=F64), torch.randn(B, *dims, generator=g, dtype=F64)
    gp = gradient_penalty(Linear(w), real, fake, one_sided=one_sided, generator=g)
    want = (max(wnorm - 1, 0.0) if one_sided else wnorm - 1) ** 2
    test_allclose(gp.detach(), torch.tensor(want, dtype=F64), rtol=1e-10, atol=1e-12)


@settings(max_examples=15, deadline=None)
@given(st.integers(1, 4), st.integers(1, 3), st.integers(0, 10_000))
def test_conditional_linear_critic_norm_over_image_and_condition(B, k, seed):
    g = make_generator(seed)
    w, wc = torch.randn(1, 3, 3, generator=g, dtype=F64), torch.randn(k, generator=g, dtype=F64)
    real, fake = torch.randn(B, 1, 3, 3, generator=g, dtype=F64), torch.randn(B, 1, 3, 3, generator=g, dtype=F64)
    cr, cf = torch.rand(B, k, generator=g, dtype=F64), torch.rand(B, k, generator=g, dtype=F64)
    gp = gradient_penalty(Linear(w, wc), real, fake, cr, cf, generator=g)
    want = (torch.cat([w.flatten(), wc]).norm() - 1) ** 2
    test_allclose(gp.detach(), want, rtol=1e-10, atol=1e-12)


def test_one_sided_is_zero_inside_the_unit_ball():
    g = make_generator(0)
    w = torch.tensor([0.3, -0.4], dtype=F64)  # ‖w‖ = 0.5
    x, y = torch.randn(7, 2, generator=g, dtype=F64), torch.randn(7, 2, generator=g, dtype=F64)
    assert float(gradient_penalty(Linear(w), x, y, one_sided=True, generator=g).detach()) == 0.0
    test_allclose(gradient_penalty(Linear(w), x, y, generator=g).detach(), torch.tensor(0.25, dtype=F64))


@pytest.mark.parametrize("conditional", [False, True])
def test_alpha_is_per_sample_and_shared_between_image_and_condition(conditional):
    g = make_generator(11)
    B = 8
    real, fake = torch.randn(B, 2, 3, generator=g), torch.randn(B, 2, 3, generator=g)
    cr, cf = (torch.randn(B, 4, generator=g), torch.randn(B, 4, generator=g)) if conditional else (None, None)
    gp = gradient_penalty(quad, real, fake, cr, cf, generator=make_generator(5))
    # float64 reference from the same draws: α is the function's first and only draw, one value per sample
    alpha = torch.rand(B, generator=make_generator(5)).double()

    def reference(a):
        xh = real.double() + a.view(-1, 1, 1) * (fake.double() - real.double())
        sq = xh.flatten(1).pow(2).sum(1)
        if conditional:
            sq = sq + (cr.double() + a.view(-1, 1) * (cf.double() - cr.double())).pow(2).sum(1)
        return (sq.sqrt() - 1).pow(2).mean()

    ref = reference(alpha)
    test_allclose(gp.detach().double(), ref, rtol=1e-5, atol=1e-6)
    # the test is sensitive: a batch-shared α, or independent α for the condition, gives another number
    assert abs(float(reference(alpha[:1].expand(B))) - float(ref)) > 1e-2
    if conditional:
        other = torch.rand(B, generator=make_generator(6)).double()
        xh = real.double() + alpha.view(-1, 1, 1) * (fake.double() - real.double())
        ch = cr.double() + other.view(-1, 1) * (cf.double() - cr.double())
        mixed = ((xh.flatten(1).pow(2).sum(1) + ch.pow(2).sum(1)).sqrt() - 1).pow(2).mean()
        assert abs(float(mixed) - float(ref)) > 1e-2


def test_penalty_gradient_reaches_critic_parameters_exactly():
    g = make_generator(2)
    w = torch.tensor([1.5, -2.0, 0.5], dtype=F64)
    D = Linear(w)
    gradient_penalty(D, torch.randn(5, 3, generator=g, dtype=F64), torch.randn(5, 3, generator=g, dtype=F64),
                     generator=g).backward()
    n = w.norm()
    test_allclose(D.w.grad, 2 * (n - 1) * w / n, rtol=1e-10, atol=1e-12)
    # through a real network too: the penalty alone produces non-zero parameter gradients
    with seeded(0):
        C = ToyCritic(hidden=16)
    gradient_penalty(C, torch.randn(6, 2, generator=g), torch.randn(6, 2, generator=g), generator=g).backward()
    weights = [m.weight for m in C.modules() if isinstance(m, nn.Linear)]
    assert all(w.grad is not None and float(w.grad.abs().sum()) > 0 for w in weights)


def test_eps_and_dead_critic():
    g = make_generator(3)
    w = torch.tensor([0.6, 0.8, 1.2], dtype=F64)
    x, y = torch.randn(4, 3, generator=g, dtype=F64), torch.randn(4, 3, generator=g, dtype=F64)
    test_allclose(gradient_penalty(Linear(w), x, y, eps=1e-6, generator=g).detach(),
                  ((w.pow(2).sum() + 1e-6).sqrt() - 1) ** 2, rtol=1e-12, atol=1e-14)
    for eps in (0.0, 1e-6):
        p = nn.Parameter(torch.zeros(3, dtype=F64))
        dead = lambda x: torch.relu(x @ p - 50.0)  # zero gradient everywhere it is evaluated
        gp = gradient_penalty(dead, x, y, eps=eps, generator=g)
        gp.backward()
        test_allclose(gp.detach(), torch.tensor((math.sqrt(eps) - 1) ** 2, dtype=F64), rtol=1e-12, atol=1e-12)
        assert p.grad is None or torch.isfinite(p.grad).all()


def test_batchnorm_warning_only_with_batchnorm():
    g = make_generator(0)
    x, y = torch.randn(4, 2, generator=g), torch.randn(4, 2, generator=g)
    with pytest.warns(UserWarning, match="BatchNorm"):
        gradient_penalty(ToyCritic(hidden=8, batchnorm=True), x, y, generator=g)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        gradient_penalty(ToyCritic(hidden=8), x, y, generator=g)


def test_generator_leaves_global_rng_alone_and_is_reproducible():
    x, y = torch.randn(6, 3), torch.randn(6, 3)
    state = torch.random.get_rng_state()
    a = gradient_penalty(quad, x, y, generator=make_generator(9)).detach()
    b = gradient_penalty(quad, x, y, generator=make_generator(9)).detach()
    assert torch.equal(torch.random.get_rng_state(), state)
    assert float(a) == float(b)
    assert float(a) != float(gradient_penalty(quad, x, y, generator=make_generator(10)).detach())


def test_dtype_follows_inputs():
    x = torch.randn(3, 2, dtype=F64)
    assert gradient_penalty(quad, x, x + 1, generator=make_generator(0)).dtype == F64
    assert gradient_penalty(quad, x.float(), x.float() + 1, generator=make_generator(0)).dtype == torch.float32


def test_penalty_is_invariant_to_the_critic_sign():
    "Pinetz's flipped convention (f → -f) leaves the penalty unchanged."
    x, y = torch.randn(5, 2), torch.randn(5, 2)
    a = gradient_penalty(quad, x, y, generator=make_generator(1))
    b = gradient_penalty(lambda t: -quad(t), x, y, generator=make_generator(1))
    test_allclose(a.detach(), b.detach())


X4, C4 = torch.randn(4, 2), torch.randn(4, 3)
BAD = [
    (dict(real=X4, fake=torch.randn(5, 2)), ValueError, "real and fake: expected the same shape"),
    (dict(real=X4, fake=X4, cond_real=C4), ValueError, "expected both or neither, got only cond_real"),
    (dict(real=X4, fake=X4, cond_fake=C4), ValueError, "got only cond_fake"),
    (dict(real=X4, fake=X4, cond_real=C4, cond_fake=C4[:, :2]), ValueError, "cond_real and cond_fake: expected the same shape"),
    (dict(real=X4, fake=X4, cond_real=C4[:2], cond_fake=C4[:2]), ValueError, "real and cond_real: expected the same batch size, got shapes (4, 2) and (2, 3)"),
    (dict(real=X4, fake=X4.double()), TypeError, "expected the same dtype"),
    (dict(real=X4.long(), fake=X4.long()), TypeError, "real: expected a real floating-point tensor"),
    (dict(real=X4.numpy(), fake=X4), TypeError, "real: expected a torch.Tensor"),
    (dict(real=X4, fake=X4, cond_real=C4.long(), cond_fake=C4.long()), TypeError, "cond_real: expected a real floating-point"),
    (dict(real=torch.randn(0, 2), fake=torch.randn(0, 2)), ValueError, "B >= 1"),
    (dict(real=torch.tensor(1.0), fake=torch.tensor(2.0)), ValueError, "B >= 1"),
    (dict(real=X4, fake=X4, eps=-1e-3), ValueError, "eps: expected a number >= 0, got -0.001"),
    (dict(real=X4, fake=X4, eps=float("nan")), ValueError, "eps: expected a finite number, got nan"),
    (dict(real=X4, fake=X4, eps=True), TypeError, "eps: expected a real number, got True (bool)"),
]


@pytest.mark.parametrize("kwargs,exc,msg", BAD)
def test_gradient_penalty_bad_inputs(kwargs, exc, msg):
    with pytest.raises(exc) as e:
        gradient_penalty(quad, **kwargs)
    assert msg in str(e.value), str(e.value)


def test_bad_critics():
    with pytest.raises(TypeError, match="critic: expected a callable"):
        gradient_penalty("D", X4, X4)
    with pytest.raises(ValueError, match="one score per sample"):
        gradient_penalty(lambda x: x, X4, X4)
    with pytest.raises(ValueError, match="does not depend on its input"):
        gradient_penalty(lambda x: torch.zeros(4), X4, X4)


@settings(max_examples=25, deadline=None)
@given(st.lists(st.floats(-5, 5), min_size=1, max_size=6), st.lists(st.floats(-5, 5), min_size=1, max_size=6))
def test_losses(dr, df):
    dr, df = torch.tensor(dr, dtype=F64), torch.tensor(df, dtype=F64)
    test_allclose(critic_loss(dr, df), df.mean() - dr.mean())
    test_allclose(generator_loss(df), -df.mean())
    test_allclose(critic_loss(-dr, -df, pinetz_sign=True), critic_loss(dr, df), rtol=1e-12, atol=1e-12)
    test_allclose(generator_loss(-df, pinetz_sign=True), generator_loss(df), rtol=1e-12, atol=1e-12)
    test_allclose(drift_penalty(dr, df), dr.pow(2).mean() + df.pow(2).mean())


def test_loss_bad_inputs():
    with pytest.raises(ValueError, match="d_real: expected at least one critic score"):
        critic_loss(torch.ones(0), torch.ones(2))
    with pytest.raises(TypeError, match="d_fake: expected a torch.Tensor"):
        generator_loss([1.0])
    with pytest.raises(TypeError, match="d_fake: expected a real floating-point"):
        drift_penalty(torch.ones(2), torch.ones(2, dtype=torch.int64))


def test_clip_weights():
    with seeded(0):
        C = ToyCritic(hidden=16)
    clip_weights(C, 0.05)
    assert max(p.detach().abs().max() for p in C.parameters()) <= torch.tensor(0.05)
    with pytest.raises(ValueError, match="c: expected a number > 0, got -1"):
        clip_weights(C, -1)
    with pytest.raises(TypeError, match="module: expected an nn.Module"):
        clip_weights([torch.ones(2)])


def test_ring():
    state = torch.random.get_rng_state()
    x = ring_of_gaussians(3000, generator=make_generator(0))
    assert torch.equal(torch.random.get_rng_state(), state)
    assert x.shape == (3000, 2) and x.dtype == torch.float32
    assert torch.equal(x, ring_of_gaussians(3000, generator=make_generator(0)))
    cov = mode_coverage(x)
    assert cov["modes_covered"] == 8 and abs(cov["high_quality"] - (1 - math.exp(-4.5))) < 0.01
    test_allclose(ring_centres(4), torch.tensor([[2.0, 0.0], [0.0, 2.0], [-2.0, 0.0], [0.0, -2.0]]), atol=1e-6, rtol=0)
    y = ring_of_gaussians(500, modes=3, radius=1.0, std=0.0, generator=make_generator(1))
    assert torch.allclose(y.norm(dim=1), torch.ones(500))
    assert mode_coverage(torch.zeros(50, 2))["modes_covered"] == 0
    with pytest.raises(ValueError, match="n: expected an int >= 1"):
        ring_of_gaussians(0)
    with pytest.raises(ValueError, match="std: expected a number >= 0"):
        ring_of_gaussians(5, std=-1.0)
    with pytest.raises(ValueError, match=r"samples: expected shape \(n, 2\)"):
        mode_coverage(torch.zeros(5, 3))


def test_toy_steps():
    with seeded(1):
        G, D = ToyGenerator(hidden=16), ToyCritic(hidden=16)
    real, z = ring_of_gaussians(32, generator=make_generator(0)), torch.randn(32, 2, generator=make_generator(1))
    d0 = [p.detach().clone() for p in D.parameters()]
    g0 = [p.detach().clone() for p in G.parameters()]
    out = toy_critic_step(G, D, torch.optim.SGD(D.parameters(), lr=0.1), real, z, lambda_gp=10.0,
                          generator=make_generator(2), drift=5e-4)
    assert set(out) == {"loss", "wasserstein", "gp"} and all(isinstance(v, float) for v in out.values())
    assert any(not torch.equal(p.detach(), q) for p, q in zip(D.parameters(), d0))
    assert all(torch.equal(p.detach(), q) for p, q in zip(G.parameters(), g0))
    # the generator step leaves D's weights, gradients and requires_grad flags alone (even a frozen D)
    D.net[0].weight.requires_grad_(False)
    d1 = [p.detach().clone() for p in D.parameters()]
    gr = [None if p.grad is None else p.grad.clone() for p in D.parameters()]
    flags = [p.requires_grad for p in D.parameters()]
    out_g = toy_generator_step(G, D, torch.optim.SGD(G.parameters(), lr=0.1), z)
    assert isinstance(out_g["loss"], float)
    assert all(torch.equal(p.detach(), q) for p, q in zip(D.parameters(), d1))
    assert all((a is None and p.grad is None) or torch.equal(p.grad, a) for p, a in zip(D.parameters(), gr))
    assert [p.requires_grad for p in D.parameters()] == flags
    assert any(not torch.equal(p.detach(), q) for p, q in zip(G.parameters(), g0))
    # clipping after the step
    toy_critic_step(G, D, torch.optim.SGD(D.parameters(), lr=1.0), real, z, lambda_gp=0.0, clip=0.01)
    assert max(p.detach().abs().max() for p in D.parameters()) <= torch.tensor(0.01)


def test_train_toy_is_deterministic_restores_threads_and_learns():
    threads = torch.get_num_threads()
    state = torch.random.get_rng_state()
    kw = dict(steps=60, batch=64, hidden=32, seed=3)
    G1, _, h1 = train_toy("gp", **kw)
    G2, _, h2 = train_toy("gp", **kw)
    assert torch.get_num_threads() == threads
    assert torch.equal(torch.random.get_rng_state(), state)
    assert h1 == h2 and len(h1["wasserstein"]) == 60
    with seeded(3):
        G0 = ToyGenerator(2, 32, 3)
    before = mode_coverage(G0.sample(1000, generator=make_generator(0)))["mean_distance"]
    after = mode_coverage(G1.sample(1000, generator=make_generator(0)))["mean_distance"]
    assert after < 0.7 * before, (before, after)  # the generator moves out towards the ring
    _, Dc, hc = train_toy("clip", steps=3, batch=16, hidden=8)
    assert max(p.detach().abs().max() for p in Dc.parameters()) <= torch.tensor(0.01)
    with pytest.raises(ValueError, match=r"method: expected one of \('gp', 'clip'\), got 'spectral'"):
        train_toy("spectral")
    with pytest.raises(ValueError, match="steps: expected an int >= 1"):
        train_toy(steps=0)


# ---------------------------------------------------------------- mixed precision: the penalty runs in float32

def _scaled_linear_critic(norm=1.02):
    "f(x) = w2ᵀ(W1 x + b1) + b2 with ‖W1ᵀw2‖ = norm: the penalty is (norm - 1)² everywhere."
    with seeded(0):
        D = nn.Sequential(nn.Linear(8, 64), nn.Linear(64, 1), nn.Flatten(0))
    with torch.no_grad():
        D[1].weight.mul_(norm / (D[1].weight @ D[0].weight).norm())
    return D


def _naive_penalty(critic, real, fake, generator):
    "The two-sided penalty in whatever precision the caller's autocast gives (gradient_penalty before the fix)."
    alpha = torch.rand(real.shape[0], 1, generator=generator)
    x_hat = (real + alpha * (fake - real)).requires_grad_(True)
    (grad,) = torch.autograd.grad(critic(x_hat).sum(), x_hat, create_graph=True)
    return (grad.norm(dim=1) - 1).pow(2).mean()


def _value_and_grads(D, penalty, bf16, x, y):
    D.zero_grad()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        p = penalty(D, x, y, generator=make_generator(2))
    p.backward()
    return p.detach().double(), torch.cat([(q.grad if q.grad is not None else torch.zeros_like(q)).flatten()
                                           for q in D.parameters()]).double()


def _rel(a, b): return float((a - b).norm() / b.norm())


@pytest.mark.parametrize("critic", ["linear", "mlp"])
def test_penalty_under_bf16_autocast_equals_fp32(critic):
    D = _scaled_linear_critic() if critic == "linear" else ToyCritic(hidden=32)
    x, y = (torch.randn(64, 8 if critic == "linear" else 2, generator=make_generator(s)) for s in (0, 1))
    ref_v, ref_g = _value_and_grads(D, gradient_penalty, False, x, y)
    v, g = _value_and_grads(D, gradient_penalty, True, x, y)
    test_allclose(v, ref_v, rtol=1e-6, atol=0)
    test_allclose(g, ref_g, rtol=1e-6, atol=1e-9)
    if critic == "linear":
        w = D[1].weight.detach().double() @ D[0].weight.detach().double()
        test_allclose(ref_v, (w.norm() - 1) ** 2, rtol=1e-4, atol=0)     # closed form 0.02²
        nv, ng = _value_and_grads(D, _naive_penalty, True, x, y)      # the naive bf16 penalty is measurably off
        assert _rel(nv, ref_v) > 0.05 and _rel(ng, ref_g) > 0.02, (_rel(nv, ref_v), _rel(ng, ref_g))
    # low-precision inputs are computed in float32
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert gradient_penalty(D, x.bfloat16(), y.bfloat16(), generator=make_generator(2)).dtype == torch.float32


# ---------------------------------------------------------------- adversarial semantics: signs and the whole objective

def _gap(D, G, real, z):
    "The critic gap mean f(x) - mean f(G(z)): the critic widens it, the generator narrows it."
    with torch.no_grad():
        return float(D(real).mean() - D(G(z)).mean())


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_one_critic_step_widens_the_gap_and_one_generator_step_narrows_it(seed):
    with seeded(seed):
        G, D = ToyGenerator(hidden=32), ToyCritic(hidden=32)
    real, z = ring_of_gaussians(256, generator=make_generator(seed)), torch.randn(256, 2, generator=make_generator(seed + 9))
    g0 = _gap(D, G, real, z)
    toy_critic_step(G, D, torch.optim.SGD(D.parameters(), lr=1e-2), real, z, lambda_gp=0.0)
    g1 = _gap(D, G, real, z)
    toy_generator_step(G, D, torch.optim.SGD(G.parameters(), lr=1e-2), z)
    g2 = _gap(D, G, real, z)
    assert g1 > g0 and g2 < g1, (g0, g1, g2)


def test_critic_step_minimises_the_whole_objective():
    "L_D = f̄(x̃) - f̄(x) + λ·GP + drift·(mean f(x)² + mean f(x̃)²): the reported loss and the SGD update, exactly."
    with seeded(4):
        G, D = ToyGenerator(hidden=16), ToyCritic(hidden=16)
    real, z = ring_of_gaussians(32, generator=make_generator(0)), torch.randn(32, 2, generator=make_generator(1))
    lam, drift, lr = 10.0, 0.5, 0.05
    with torch.no_grad():
        fake = G(z)
    d_real, d_fake = D(real), D(fake)
    gp = gradient_penalty(D, real, fake, generator=make_generator(3))
    want = d_fake.mean() - d_real.mean() + lam * gp + drift * (d_real.pow(2).mean() + d_fake.pow(2).mean())
    grads = torch.autograd.grad(want, list(D.parameters()), allow_unused=True)
    before = [p.detach().clone() for p in D.parameters()]
    out = toy_critic_step(G, D, torch.optim.SGD(D.parameters(), lr=lr), real, z, lambda_gp=lam, drift=drift,
                          generator=make_generator(3))
    assert math.isclose(out["loss"], float(want.detach()), rel_tol=1e-5)
    assert math.isclose(out["gp"], float(gp.detach()), rel_tol=1e-5) and float(gp.detach()) > 0.1
    assert math.isclose(out["wasserstein"], float((d_real.mean() - d_fake.mean()).detach()), rel_tol=1e-5, abs_tol=1e-7)
    for p, p0, gr in zip(D.parameters(), before, grads):
        test_allclose(p.detach(), p0 - lr * (gr if gr is not None else 0), rtol=1e-5, atol=1e-7)


def test_generator_step_follows_minus_mean_critic_score():
    "θ_G ← θ_G - η ∇(-mean f(G(z))), exactly (plain SGD)."
    with seeded(5):
        G, D = ToyGenerator(hidden=16), ToyCritic(hidden=16)
    z = torch.randn(32, 2, generator=make_generator(1))
    grads = torch.autograd.grad(-D(G(z)).mean(), list(G.parameters()))
    before = [p.detach().clone() for p in G.parameters()]
    toy_generator_step(G, D, torch.optim.SGD(G.parameters(), lr=0.1), z)
    for p, p0, gr in zip(G.parameters(), before, grads):
        test_allclose(p.detach(), p0 - 0.1 * gr, rtol=1e-5, atol=1e-7)


def test_gradient_penalty_reduces_a_steep_critic_slope():
    "Minimising the penalty alone moves ‖∇f‖ towards 1 (two-sided: from both sides; one-sided: only from above)."
    for start, one_sided in ((3.0, False), (0.3, False), (3.0, True), (0.3, True)):
        w = torch.tensor([start, 0.0], dtype=F64)
        D = Linear(w)
        x, y = torch.randn(8, 2, generator=make_generator(0), dtype=F64), torch.randn(8, 2, generator=make_generator(1), dtype=F64)
        gradient_penalty(D, x, y, one_sided=one_sided, generator=make_generator(2)).backward()
        with torch.no_grad():
            D.w -= 0.1 * D.w.grad
        after = float(D.w.detach().norm())
        if one_sided and start < 1:
            assert after == start          # inside the unit ball: no force
        else:
            assert abs(after - 1) < abs(start - 1), (start, one_sided, after)


_G, _D = ToyGenerator(hidden=4, depth=1), ToyCritic(hidden=4, depth=1)
_R, _Z = torch.randn(8, 2), torch.randn(8, 2)
_OPT = torch.optim.SGD(_D.parameters(), lr=0.0)
BAD_OTHER = [  # (call, exception, message fragment): refusals of the losses, the ring and the toy
    (lambda: critic_loss(torch.ones(2), [1.0]), TypeError, "d_fake: expected a torch.Tensor, got list"),
    (lambda: clip_weights(_D, 0), ValueError, "c: expected a number > 0, got 0"),
    (lambda: clip_weights(_D, True), TypeError, "c: expected a real number, got True (bool)"),
    (lambda: clip_weights(_D, float("inf")), ValueError, "c: expected a finite number, got inf"),
    (lambda: ring_centres(8.0), TypeError, "modes: expected an int, got 8.0 (float)"),
    (lambda: ring_centres(True), TypeError, "modes: expected an int, got True (bool)"),
    (lambda: ring_centres(0), ValueError, "modes: expected an int >= 1, got 0"),
    (lambda: ring_centres(8, radius=0.0), ValueError, "radius: expected a number > 0, got 0"),
    (lambda: ring_of_gaussians(10.0), TypeError, "n: expected an int, got 10.0 (float)"),
    (lambda: ring_of_gaussians(True), TypeError, "n: expected an int, got True (bool)"),
    (lambda: ring_of_gaussians(0), ValueError, "n: expected an int >= 1, got 0"),
    (lambda: ring_of_gaussians(5, std=-1.0), ValueError, "std: expected a number >= 0, got -1"),
    (lambda: ring_of_gaussians(5, std=float("nan")), ValueError, "std: expected a finite number, got nan"),
    (lambda: mode_coverage(torch.zeros(5, 2), std=0.0), ValueError, "std: expected a number > 0, got 0"),
    (lambda: mode_coverage(torch.zeros(5, 2), n_std=-3.0), ValueError, "n_std: expected a number > 0, got -3"),
    (lambda: mode_coverage(torch.full((5, 2), float("nan"))), ValueError, "samples: expected finite values"),
    (lambda: ToyGenerator(hidden=0), ValueError, "hidden: expected an int >= 1, got 0"),
    (lambda: ToyGenerator(latent_dim=2.0), TypeError, "latent_dim: expected an int, got 2.0 (float)"),
    (lambda: ToyCritic(depth=True), TypeError, "depth: expected an int, got True (bool)"),
    (lambda: _G.sample(3.0), TypeError, "n: expected an int, got 3.0 (float)"),
    (lambda: toy_critic_step(_G, _D, _OPT, _R, _Z[:4]), ValueError, "real and z: expected the same batch size"),
    (lambda: toy_critic_step(_G, _D, _OPT, _R, _Z, lambda_gp=-1.0), ValueError, "lambda_gp: expected a number >= 0, got -1"),
    (lambda: toy_critic_step(_G, _D, _OPT, _R, _Z, drift=float("nan")), ValueError, "drift: expected a finite number"),
    (lambda: toy_critic_step(_G, _D, _OPT, _R, _Z, clip=0.0), ValueError, "clip: expected a number > 0, got 0"),
    (lambda: train_toy(steps=0), ValueError, "steps: expected an int >= 1, got 0"),
    (lambda: train_toy(steps=2.0), TypeError, "steps: expected an int, got 2.0 (float)"),
    (lambda: train_toy(n_critic=True), TypeError, "n_critic: expected an int, got True (bool)"),
    (lambda: train_toy(batch=1.5), TypeError, "batch: expected an int, got 1.5 (float)"),
    (lambda: train_toy(lr=0.0), ValueError, "lr: expected a number > 0, got 0"),
    (lambda: train_toy(lambda_gp=-1.0), ValueError, "lambda_gp: expected a number >= 0, got -1"),
    (lambda: train_toy("clip", clip=-0.01), ValueError, "clip: expected a number > 0, got -0.01"),
    (lambda: train_toy(modes=8.0), TypeError, "modes: expected an int, got 8.0 (float)"),
    (lambda: train_toy(radius=-2.0), ValueError, "radius: expected a number > 0, got -2"),
    (lambda: train_toy(hidden=0), ValueError, "hidden: expected an int >= 1, got 0"),
]


test_bad_inputs_other_functions = refusal_test(BAD_OTHER)
