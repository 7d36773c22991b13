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
    (dict(real=X4, fake=X4, cond_real=C4[:2], cond_fake=C4[:2]), ValueError, "cond_real: expected batch size 4"),
    (dict(real=X4, fake=X4.double()), TypeError, "expected the same dtype"),
    (dict(real=X4.long(), fake=X4.long()), TypeError, "real: expected a real floating-point tensor"),
    (dict(real=X4.numpy(), fake=X4), TypeError, "real: expected a torch.Tensor"),
    (dict(real=X4, fake=X4, cond_real=C4.long(), cond_fake=C4.long()), TypeError, "cond_real: expected a real floating-point"),
    (dict(real=torch.randn(0, 2), fake=torch.randn(0, 2)), ValueError, "B >= 1"),
    (dict(real=torch.tensor(1.0), fake=torch.tensor(2.0)), ValueError, "B >= 1"),
    (dict(real=X4, fake=X4, eps=-1e-3), ValueError, "eps: expected a finite number >= 0"),
    (dict(real=X4, fake=X4, eps=float("nan")), ValueError, "eps: expected a finite number >= 0"),
]


@pytest.mark.parametrize("kwargs,exc,msg", BAD)
def test_gradient_penalty_bad_inputs(kwargs, exc, msg):
    with pytest.raises(exc, match=msg.replace("(", r"\(").replace(")", r"\)")):
        gradient_penalty(quad, **kwargs)


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
    with pytest.raises(ValueError, match="c: expected a finite number > 0"):
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
    with pytest.raises(ValueError, match="method: expected 'gp' or 'clip'"):
        train_toy("spectral")
    with pytest.raises(ValueError, match="steps: expected an int >= 1"):
        train_toy(steps=0)
