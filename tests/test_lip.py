"LIP-CAR (medsynth_nb.lip): GenTV against a float64 loop, the solver, frozen networks, smoke training, bad inputs."
import math

import numpy as np
import pytest
import torch
from torch import nn

from medsynth_nb.lip import (METHODS, NETWORKS, LipCarConfig, LipCarUNet, build_networks, gentv, lip_car_solve, load_lipcar_samples,
                             network_io, region_metrics, run_methods, secant_oracle, ssim_loss)
from medsynth_nb.utils import make_generator, seeded, test_allclose


def gentv_loops(u: np.ndarray, eps: float, isotropic: bool) -> np.ndarray:
    B, C, H, W = u.shape
    out = np.zeros(B)
    for b in range(B):
        for c in range(C):
            for i in range(H):
                for j in range(W):
                    dx = u[b, c, i, j + 1] - u[b, c, i, j] if j < W - 1 else 0.0
                    dy = u[b, c, i + 1, j] - u[b, c, i, j] if i < H - 1 else 0.0
                    out[b] += math.sqrt(dx * dx + dy * dy + eps) if isotropic else abs(dx) + abs(dy)
    return out


@pytest.mark.parametrize("isotropic", [True, False])
@pytest.mark.parametrize("shape", [(2, 1, 6, 5), (1, 3, 4, 7), (3, 1, 1, 4)])
def test_gentv_matches_numpy(isotropic, shape):
    g = make_generator(1)
    x, xb = torch.rand(shape, generator=g, dtype=torch.float64), torch.rand(shape, generator=g, dtype=torch.float64)
    ref = gentv_loops((x - xb).numpy(), 1e-8, isotropic)
    test_allclose(gentv(x, xb, isotropic=isotropic), torch.from_numpy(ref), rtol=1e-12, atol=1e-12)
    test_allclose(gentv(x - xb, None, isotropic=isotropic), torch.from_numpy(ref), rtol=1e-12, atol=1e-12)


def test_gentv_gradcheck_and_invariance():
    g = make_generator(2)
    x, xb = torch.rand(2, 1, 5, 4, generator=g, dtype=torch.float64), torch.rand(2, 1, 5, 4, generator=g, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda t: gentv(t, xb), (x.clone().requires_grad_(),))
    assert torch.autograd.gradcheck(lambda t: gentv(t, xb, isotropic=False), (x.clone().requires_grad_(),))
    test_allclose(gentv(x + 0.7, xb + 0.2), gentv(x, xb), rtol=1e-10, atol=1e-12)  # edges only, not offsets


def _linear_op():
    op = nn.Conv2d(2, 1, 1, bias=False)
    with torch.no_grad(): op.weight.copy_(torch.tensor([0.3, 0.7]).reshape(1, 2, 1, 1))
    return op


def test_solver_decreases_objective_nonneg_frozen():
    g = make_generator(3)
    x_star, x_p = torch.rand(2, 1, 16, 16, generator=g), torch.rand(2, 1, 16, 16, generator=g)
    op = _linear_op().train()
    with torch.no_grad(): y = op(torch.cat([x_star, x_p], 1))
    res = lip_car_solve(op, y, x_star, alpha=6e-3, iters=150, x_pre=x_p)
    assert res.objective.shape == (151, 2) and res.fidelity.shape == (151, 2)
    test_allclose(res.objective, res.fidelity + 6e-3 * res.regulariser)
    assert bool((res.objective[-1] < 0.1 * res.objective[0]).all())
    assert bool((res.x >= 0).all())
    assert float((res.x - x_star).abs().max()) < 0.02
    assert op.weight.grad is None and op.training and op.weight.requires_grad


def test_solver_projection_and_nets():
    "A network forward operator: params untouched, no grads, x ≥ 0 even from a negative-leaning start."
    with seeded(0): nets = build_networks(base=4, levels=2)
    op = nets["PH2L"]
    before = [p.detach().clone() for p in op.parameters()]
    g = make_generator(4)
    y, x_p = torch.rand(2, 1, 32, 32, generator=g), torch.rand(2, 1, 32, 32, generator=g)
    res = lip_car_solve(op, y, None, alpha=1e-3, iters=10, lr=0.5, x_pre=x_p)
    assert bool((res.x >= 0).all())
    assert all(p.grad is None for p in op.parameters())
    assert all(torch.equal(a, b) for a, b in zip(before, op.parameters()))


def test_smoke_training_four_networks(tmp_path):
    from medsynth_nb.train import train
    res = train("lip-car", preset="smoke", out=tmp_path / "run", progress=False)
    assert set(res.models) == set(NETWORKS) and res.step == 3
    last = res.history[-1]
    assert all(math.isfinite(last[f"{n}/loss"]) for n in NETWORKS)
    d = load_lipcar_samples()
    for n in NETWORKS:
        inp, target = network_io(n, d)
        with torch.no_grad(): out = res.models[n](inp[:, :, :32, :32])
        assert out.shape == (8, 1, 32, 32) and bool((out >= 0).all())


def test_unet_keras_init_trains():
    "With Keras' init the ReLU output is alive at the start (PyTorch's default often kills it)."
    for seed in range(3):
        with seeded(seed): net = LipCarUNet(1, base=4, levels=2)
        x = torch.rand(2, 1, 32, 32, generator=make_generator(seed))
        assert float((net(x) > 0).float().mean()) > 0.02  # not dead


def test_ssim_loss_zero_on_identity():
    x = torch.rand(2, 1, 32, 32, generator=make_generator(5))
    test_allclose(ssim_loss(x, x), torch.tensor(0.0), atol=1e-6, rtol=0)


def test_bad_inputs():
    op = _linear_op()
    y, xp = torch.rand(2, 1, 16, 16), torch.rand(2, 1, 16, 16)
    cases = [
        (lambda: gentv(torch.rand(8, 8)), ValueError, "x: expected 4 dimensions"),
        (lambda: gentv(torch.ones(1, 1, 4, 4, dtype=torch.int64)), TypeError, "x: expected a real floating-point tensor"),
        (lambda: gentv(torch.rand(1, 1, 4, 4), torch.rand(1, 1, 4, 5)), ValueError, "x and x_bar: expected the same shape"),
        (lambda: gentv(torch.rand(1, 1, 4, 4), eps=-1.0), ValueError, "eps: expected a non-negative number"),
        (lambda: lip_car_solve(op, y - 1, None, x_pre=xp), ValueError, "y: expected non-negative images"),
        (lambda: lip_car_solve(op, y, None, x_pre=xp[:1]), ValueError, "x_pre and y: expected the same shape"),
        (lambda: lip_car_solve(op, y, torch.rand(2, 1, 8, 8), x_pre=xp), ValueError, "x_bar and y: expected the same shape"),
        (lambda: lip_car_solve(op, y.long(), None, x_pre=xp), TypeError, "y: expected a real floating-point tensor"),
        (lambda: lip_car_solve(op, y * float("nan"), None, x_pre=xp), ValueError, "y: expected finite values"),
        (lambda: lip_car_solve(op, y, None, alpha=float("inf"), x_pre=xp), ValueError, "alpha: expected non-negative finite"),
        (lambda: lip_car_solve(op, y, None, alpha=torch.ones(3), x_pre=xp), ValueError, "alpha: expected a number or a tensor of shape (2,)"),
        (lambda: lip_car_solve(op, y, None, iters=-1, x_pre=xp), ValueError, "iters: expected a non-negative int"),
        (lambda: lip_car_solve(op, y, None, lr=0.0, x_pre=xp), ValueError, "lr: expected a positive finite step size"),
        (lambda: lip_car_solve(op, y, None, x0=torch.rand(1, 1, 16, 16), x_pre=xp), ValueError, "x0 and y: expected the same shape"),
        (lambda: lip_car_solve(42, y, None), TypeError, "forward_op: expected a callable"),
        (lambda: lip_car_solve(lambda t: t[:, :, :8], y, None), ValueError, "forward_op: expected an output of shape"),
        (lambda: LipCarUNet(0), ValueError, "in_channels: expected a positive int"),
        (lambda: LipCarUNet(1, levels=3)(torch.rand(1, 1, 20, 20)), ValueError, "divisible by 2^levels = 8"),
        (lambda: network_io("X", {}), ValueError, "name: expected one of"),
        (lambda: LipCarConfig(data="mri"), ValueError, "data: expected 'simulate' or 'samples'"),
        (lambda: LipCarConfig(low_dose=1.5), ValueError, "low_dose: expected a fraction in (0, 1)"),
    ]
    for fn, exc, msg in cases:
        with pytest.raises(exc, match=None) as e: fn()
        assert msg in str(e.value), (msg, str(e.value))


def test_network_io_inference_needs_no_target():
    d = load_lipcar_samples()
    inp, target = network_io("PL2H", {"low": d["low"], "pre": d["pre"]}, target=False)
    assert inp.shape == (8, 2, 128, 128) and target is None
    torch.testing.assert_close(inp[:, 1:], d["pre"])
    with pytest.raises(ValueError, match="needs 'high'"): network_io("PL2H", {"low": d["low"], "pre": d["pre"]})


def test_region_metrics_against_numpy():
    g = make_generator(6)
    pred, target = torch.rand(3, 1, 24, 24, generator=g), torch.rand(3, 1, 24, 24, generator=g)
    labels = torch.zeros(3, 1, 24, 24, dtype=torch.int64)
    labels[:, :, 4:20, 4:20] = 2; labels[0, :, 10:13, 10:14] = 4; labels[1, :, 2:5, 3:6] = 6  # slice 2: no lesion
    r = region_metrics(pred, target, labels)
    e2 = ((pred - target) ** 2).numpy()
    for i in range(2):
        m = labels[i].numpy() >= 4
        assert abs(float(r["lesion_rmse"][i]) - math.sqrt(e2[i][m].mean())) < 1e-6
        assert abs(float(r["brain_rmse"][i]) - math.sqrt(e2[i][labels[i].numpy() > 0].mean())) < 1e-6
    assert math.isnan(float(r["lesion_rmse"][2])) and math.isnan(float(r["lesion_ssim"][2]))
    same = region_metrics(target, target, labels)
    test_allclose(same["lesion_ssim"][:2], torch.ones(2), atol=1e-5, rtol=0)
    test_allclose(same["lesion_rmse"][:2], torch.zeros(2), atol=1e-7, rtol=0)
    assert bool((r["lesion_ssim"][:2] < 0.5).all())  # independent noise images are dissimilar
    with pytest.raises(ValueError, match="labels and target: expected the same shape"): region_metrics(pred, target, labels[:, :, :8])


def test_secant_oracle_exact_and_linear():
    g = make_generator(7)
    pre = torch.rand(2, 1, 8, 8, generator=g)
    enh = torch.rand(2, 1, 8, 8, generator=g); enh[0, 0, :2] = 0  # a band without agent
    high, low = pre + enh, pre + 0.3 * enh
    op = secant_oracle(pre, low, high)
    test_allclose(op(high), low, atol=1e-6, rtol=0)
    test_allclose(op.slope[0, 0, :2], torch.full((2, 8), 0.2))  # the dose ratio where nothing enhances
    test_allclose(op.slope[0, 0, 2:], torch.full((6, 8), 0.3), atol=1e-5, rtol=0)
    x1, x2 = torch.rand(2, 1, 8, 8, generator=g), torch.rand(2, 1, 8, 8, generator=g)
    test_allclose(op(x1) - op(x2), op.slope * (x1 - x2), atol=1e-6, rtol=0)
    # LIP-CAR with the exact operator and x̄ = x_H recovers x_H
    res = lip_car_solve(op, low, high, alpha=6e-3, iters=300, lr=1e-2)
    assert float((res.x - high).abs().max()) < 0.05 and float((low - high).abs().max()) > 0.3
    with pytest.raises(ValueError, match="high and pre: expected the same shape"): secant_oracle(pre, low, high[:1])


def test_run_methods_projection_switch():
    with seeded(0): nets = build_networks(base=4, levels=2)
    d = load_lipcar_samples()
    batch = {k: d[k][:1, :, :32, :32] for k in ("pre", "low", "high")}
    out = run_methods(nets, batch, iters=3, lr=0.5)
    assert list(out) == list(METHODS) and bool((out["LIP-CAR"] >= 0).all())
    free = run_methods(nets, batch, iters=3, lr=0.5, nonneg=False)
    assert free["LIP-CAR"].shape == (1, 1, 32, 32) and bool(torch.isfinite(free["LIP-CAR"]).all())
