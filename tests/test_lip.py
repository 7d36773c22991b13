"LIP-CAR (medsynth_nb.lip): GenTV against a float64 loop, the solver, frozen networks, smoke training, bad inputs."
import copy
import math

import numpy as np
import pytest
import torch
from torch import nn

from medsynth_nb import lip
from medsynth_nb.lip import (LIPCAR_METHODS, NETWORKS, LipCarConfig, LipCarUNet, apply_network, build_networks, gentv, lip_car_objective,
                             lip_car_solve, load_lipcar_samples, network_io, region_metrics, run_methods, secant_oracle, ssim_loss,
                             cached_arrays, evaluation_key)
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


def gentv_by_hand(u: torch.Tensor, eps: float) -> torch.Tensor:
    "Isotropic GenTV of u = x − x̄ per image: forward differences, zero in the last column / row, written out."
    dx, dy = torch.zeros_like(u), torch.zeros_like(u)
    dx[..., :, :-1] = u[..., :, 1:] - u[..., :, :-1]
    dy[..., :-1, :] = u[..., 1:, :] - u[..., :-1, :]
    return torch.sqrt(dx ** 2 + dy ** 2 + eps).sum(dim=(1, 2, 3))


def objective_by_hand(op, x, y, x_bar, alpha, x_pre, eps=1e-8):
    "½ Σ (Ψ([x, x_P]) − y)² + α·GenTV(x; x̄), per image, written out independently of the library."
    pred = op(torch.cat([x, x_pre], 1))
    return 0.5 * ((pred - y) ** 2).sum(dim=(1, 2, 3)) + alpha * gentv_by_hand(x - x_bar, eps)


def test_gentv_hand_cases():
    "Neumann boundary (no wrap-around), the ε smoothing and the centring on x̄, each by a number worked out by hand."
    u = torch.zeros(1, 1, 4, 5, dtype=torch.float64); u[0, 0, 3, 4] = 0.6  # one bright pixel in the last row and column
    # its own forward differences are 0 (boundary); its left neighbour sees dx = 0.6, its upper one dy = 0.6
    test_allclose(gentv(u, eps=0.0), torch.tensor([1.2], dtype=torch.float64), rtol=1e-12, atol=0)
    test_allclose(gentv(u, isotropic=False), torch.tensor([1.2], dtype=torch.float64), rtol=1e-12, atol=0)
    const = torch.full((2, 1, 3, 4), 0.25, dtype=torch.float64)  # no edges: only √ε per pixel remains
    test_allclose(gentv(const), torch.full((2,), 12 * 1e-4, dtype=torch.float64), rtol=1e-12, atol=0)
    test_allclose(gentv(const, eps=1e-6), torch.full((2,), 12 * 1e-3, dtype=torch.float64), rtol=1e-12, atol=0)
    # a diagonal step: at (i, j) with dx = dy = 1 the isotropic term is √2, the ℓ1 term 2
    v = torch.zeros(1, 1, 2, 2, dtype=torch.float64); v[0, 0, 0, 1] = v[0, 0, 1, 0] = 1.0
    # (0,0): dx = 1, dy = 1; (0,1): dx = 0 (edge), dy = −1; (1,0): dx = −1, dy = 0 (edge); (1,1): 0
    test_allclose(gentv(v, eps=0.0), torch.tensor([math.sqrt(2) + 2], dtype=torch.float64), rtol=1e-12, atol=0)
    test_allclose(gentv(v, isotropic=False), torch.tensor([4.0], dtype=torch.float64), rtol=1e-12, atol=0)
    # centred on x̄: GenTV(x; x̄) = TV(x − x̄), zero-edged when x = x̄, and not TV(x)
    g = make_generator(11)
    x, xb = torch.rand(2, 1, 6, 5, generator=g, dtype=torch.float64), torch.rand(2, 1, 6, 5, generator=g, dtype=torch.float64)
    test_allclose(gentv(x, xb), gentv_by_hand(x - xb, 1e-8), rtol=1e-12, atol=0)
    test_allclose(gentv(x, x), torch.full((2,), 30 * 1e-4, dtype=torch.float64), rtol=1e-12, atol=0)
    assert bool(((gentv(x, xb) - gentv(x)).abs() > 0.1).all())


@pytest.fixture
def small_problem():
    "A nonlinear forward operator (a float64 LipCarUNet) with y, x_P, x̄ and a start x0."
    with seeded(0): op = LipCarUNet(2, base=4, levels=2).double()
    g = make_generator(12)
    r = lambda: torch.rand(2, 1, 16, 16, generator=g, dtype=torch.float64)
    x_p, x_true, x_bar = r(), r(), r()
    with torch.no_grad(): y = op(torch.cat([x_true, x_p], 1))
    return op, y, x_p, x_bar


def test_objective_matches_hand_written(small_problem):
    op, y, x_p, x_bar = small_problem
    x = (y + 0.1 * torch.rand(y.shape, generator=make_generator(13), dtype=torch.float64)).requires_grad_(True)
    alpha = torch.tensor([6e-3, 0.05], dtype=torch.float64)
    obj, fid, reg = lip_car_objective(op, x, y, x_bar, alpha, x_p)
    ref = objective_by_hand(op, x, y, x_bar, alpha, x_p)
    test_allclose(obj, ref, rtol=1e-12, atol=1e-12)
    test_allclose(fid, 0.5 * ((op(torch.cat([x, x_p], 1)) - y) ** 2).sum(dim=(1, 2, 3)), rtol=1e-12, atol=1e-12)
    test_allclose(reg, gentv_by_hand(x - x_bar, 1e-8), rtol=1e-12, atol=1e-12)
    g_lib, = torch.autograd.grad(obj.sum(), x)
    g_ref, = torch.autograd.grad(ref.sum(), x)
    test_allclose(g_lib, g_ref, rtol=1e-10, atol=1e-12)
    assert float(fid.detach().min()) > 1e-3 and float(g_ref.abs().max()) > 1e-3  # both terms are active


TorchAdam = torch.optim.Adam


class RecordingAdam(TorchAdam):
    "torch.optim.Adam that keeps every instance and the gradient it was given at each step."
    made: list = []

    def __init__(self, params, **kw):
        super().__init__(params, **kw)
        self.grads = []
        RecordingAdam.made.append(self)

    def step(self, closure=None):
        self.grads.append(self.param_groups[0]["params"][0].grad.detach().clone())
        return super().step(closure)


@pytest.fixture
def recording_adam(monkeypatch):
    RecordingAdam.made = []
    monkeypatch.setattr(torch.optim, "Adam", RecordingAdam)
    return RecordingAdam.made


@pytest.mark.parametrize("recipe,lr,eps", [("paper", 1e-3, 1e-8), ("code", 1e-2, 1e-7)])
def test_solver_adam_settings_and_gradient(small_problem, recording_adam, recipe, lr, eps):
    "The Adam actually used has the recipe's step (paper 1e-3 = PyTorch's default; code 1e-2) and gets ∇f of the hand objective."
    op, y, x_p, x_bar = small_problem
    res = lip_car_solve(op, y, x_bar, x_pre=x_p, iters=3, recipe=recipe)
    (opt,) = recording_adam
    (group,) = opt.param_groups
    assert (group["lr"], group["betas"], group["eps"]) == (lr, (0.9, 0.999), eps)
    assert res.settings["lr"] == lr and res.settings["recipe"] == recipe
    if recipe == "paper":
        torch_defaults = TorchAdam([torch.zeros(1, requires_grad=True)]).defaults  # the unpatched class
        assert {k: group[k] for k in ("lr", "betas", "eps")} == {k: torch_defaults[k] for k in ("lr", "betas", "eps")}
    x0 = y.clone().requires_grad_(True)
    g_ref, = torch.autograd.grad(objective_by_hand(op, x0, y, x_bar, 6e-3, x_p).sum(), x0)
    assert len(opt.grads) == 3
    test_allclose(opt.grads[0], g_ref, rtol=1e-10, atol=1e-12)


def test_solver_overrides_and_default_lr(recording_adam):
    op = _linear_op()
    y, x_p = torch.rand(1, 1, 8, 8), torch.rand(1, 1, 8, 8)
    lip_car_solve(op, y, None, x_pre=x_p, iters=1)
    lip_car_solve(op, y, None, x_pre=x_p, iters=1, lr=3e-3, recipe="code")
    assert [o.param_groups[0]["lr"] for o in recording_adam] == [1e-3, 3e-3]
    assert [o.param_groups[0]["eps"] for o in recording_adam] == [1e-8, 1e-7]


@pytest.mark.parametrize("recipe,lr", [("paper", 1e-3), ("code", 1e-2)])
def test_solver_first_step_is_lr_against_the_gradient(small_problem, recipe, lr):
    "Adam's first step is lr·sign(g): the solver descends the hand-written objective, by the recipe's step."
    op, y, x_p, x_bar = small_problem
    x0 = y.clone().requires_grad_(True)
    g, = torch.autograd.grad(objective_by_hand(op, x0, y, x_bar, 6e-3, x_p).sum(), x0)
    res = lip_car_solve(op, y, x_bar, x_pre=x_p, iters=1, recipe=recipe, nonneg=False)
    big = g.abs() > 1e-4
    assert float(big.double().mean()) > 0.5
    test_allclose((res.x - y)[big], -lr * g.sign()[big], rtol=0, atol=lr * 1e-3)


def test_solver_objective_decreases(small_problem):
    op, y, x_p, x_bar = small_problem
    start = y + 0.2 * torch.rand(y.shape, generator=make_generator(14), dtype=torch.float64)
    res = lip_car_solve(op, y, x_bar, x_pre=x_p, x0=start)  # the paper's recipe: 150 steps of 1e-3
    assert res.objective.shape == (151, 2)
    test_allclose(res.objective[0], objective_by_hand(op, start, y, x_bar, 6e-3, x_p).detach(), rtol=1e-12, atol=1e-12)
    test_allclose(res.objective[-1], objective_by_hand(op, res.x, y, x_bar, 6e-3, x_p).detach(), rtol=1e-12, atol=1e-12)
    test_allclose(res.objective, res.fidelity + 6e-3 * res.regulariser)
    assert bool((res.objective[-1] < 0.7 * res.objective[0]).all()), res.objective[[0, -1]]
    assert bool((res.objective[1:11] < res.objective[:10]).all())  # the first steps all go downhill


def test_solver_linear_operator_reaches_the_minimiser():
    "Ψ(x, x_P) = 0.3 x + 0.7 x_P, y = Ψ(x*), x̄ = x*: the minimiser is x*. lr 1e-3 needs more than 150 steps to get there."
    g = make_generator(3)
    x_star, x_p = torch.rand(2, 1, 16, 16, generator=g), torch.rand(2, 1, 16, 16, generator=g)
    op = _linear_op().train()
    with torch.no_grad(): y = op(torch.cat([x_star, x_p], 1))
    paper = lip_car_solve(op, y, x_star, x_pre=x_p)
    assert float((paper.x - y).abs().max()) <= 150 * 1e-3 * 1.01 < float((x_star - y).abs().max())
    for res in (lip_car_solve(op, y, x_star, x_pre=x_p, iters=1000), lip_car_solve(op, y, x_star, x_pre=x_p, recipe="code")):
        assert bool((res.objective[-1] < 0.1 * res.objective[0]).all())
        assert float((res.x - x_star).abs().max()) < 0.02
    assert op.weight.grad is None and op.training and op.weight.requires_grad


def test_solver_projection():
    "x ≥ 0 is enforced when (and only when) asked: the paper's recipe projects, the code's does not."
    op = _linear_op()
    g = make_generator(15)
    x_p = 0.5 + 0.5 * torch.rand(2, 1, 8, 8, generator=g)
    y = 0.2 * torch.rand(2, 1, 8, 8, generator=g)  # darker than 0.7 x_P: the least-squares x is negative
    kw = dict(alpha=0.0, iters=300, x_pre=x_p)
    ls = (y - 0.7 * x_p) / 0.3
    assert float(ls.max()) < 0
    for res in (lip_car_solve(op, y, None, recipe="code", nonneg=True, **kw), lip_car_solve(op, y, None, lr=1e-2, **kw)):
        assert bool((res.x >= 0).all())
        test_allclose(res.x, torch.zeros_like(y), atol=1e-6, rtol=0)
    free = lip_car_solve(op, y, None, recipe="code", **kw)  # no projection: it goes negative, towards ls
    assert float(free.x.max()) < -0.5 and not free.settings["nonneg"]
    assert float((free.x - ls).abs().max()) < float((torch.zeros_like(ls) - ls).abs().max())


class DeviceRecorder(nn.Module):
    "Records the device of every input, then runs the wrapped network."
    def __init__(self, net):
        super().__init__()
        self.net, self.devices = net, []

    def forward(self, x):
        self.devices.append(x.device.type)
        return self.net(x)


def _meta(net): return DeviceRecorder(copy.deepcopy(net).to("meta"))


def test_solve_runs_on_the_operators_device():
    "Inputs on the CPU, Ψ on another device (meta: shapes only): every Ψ call must see the network's device."
    with seeded(0): rec = _meta(LipCarUNet(2, base=4, levels=2))
    g = make_generator(16)
    y, x_p, x_bar = (torch.rand(2, 1, 16, 16, generator=g) for _ in range(3))
    with pytest.raises(NotImplementedError, match="meta"):  # the solve ran; only copying a data-less answer back fails
        lip_car_solve(rec, y, x_bar, x_pre=x_p, x0=y.clone(), iters=3, alpha=torch.full((2,), 6e-3))
    assert rec.devices == ["meta"] * 4


def test_apply_network_and_run_methods_move_inputs():
    with seeded(0): nets = build_networks(base=4, levels=2)
    d = load_lipcar_samples()
    batch = {k: d[k][:2, :, :32, :32] for k in ("pre", "low", "high")}
    rec = _meta(nets["L2H"])
    with pytest.raises(NotImplementedError, match="meta"): apply_network(rec, "L2H", batch)
    assert rec.devices == ["meta"]
    nets = dict(nets, PH2L=_meta(nets["PH2L"]))  # end-to-end networks on the CPU, the forward operator elsewhere
    with pytest.raises(NotImplementedError, match="meta"): run_methods(nets, batch, iters=2)
    assert nets["PH2L"].devices == ["meta"] * 3


def test_smoke_training_four_networks(tmp_path):
    from medsynth_nb.engine import train
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
        (lambda: gentv(torch.rand(1, 1, 4, 4), eps=-1.0), ValueError, "eps: expected a number >= 0, got -1"),
        (lambda: lip_car_solve(op, y - 1, None, x_pre=xp), ValueError, "y: expected non-negative images"),
        (lambda: lip_car_solve(op, y, None, x_pre=xp[:1]), ValueError, "x_pre and y: expected the same shape"),
        (lambda: lip_car_solve(op, y, torch.rand(2, 1, 8, 8), x_pre=xp), ValueError, "x_bar and y: expected the same shape"),
        (lambda: lip_car_solve(op, y.long(), None, x_pre=xp), TypeError, "y: expected a real floating-point tensor"),
        (lambda: lip_car_solve(op, y * float("nan"), None, x_pre=xp), ValueError, "y: expected finite values"),
        (lambda: lip_car_solve(op, y, None, alpha=float("inf"), x_pre=xp), ValueError, "alpha: expected non-negative finite"),
        (lambda: lip_car_solve(op, y, None, alpha=torch.ones(3), x_pre=xp), ValueError, "alpha: expected a number or a tensor of shape (2,)"),
        (lambda: lip_car_solve(op, y, None, iters=-1, x_pre=xp), ValueError, "iters: expected an int >= 0, got -1"),
        (lambda: lip_car_solve(op, y, None, lr=0.0, x_pre=xp), ValueError, "lr: expected a number > 0, got 0"),
        (lambda: lip_car_solve(op, y, None, x0=torch.rand(1, 1, 16, 16), x_pre=xp), ValueError, "x0 and y: expected the same shape"),
        (lambda: lip_car_solve(42, y, None), TypeError, "forward_op: expected a callable"),
        (lambda: lip_car_solve(op, y, None, x_pre=xp, recipe="keras"), ValueError, "recipe: expected one of ('paper', 'code')"),
        (lambda: lip_car_solve(lambda t: t[:, :, :8], y, None), ValueError, "forward_op: expected an output of shape"),
        (lambda: LipCarUNet(0), ValueError, "in_channels: expected an int >= 1, got 0"),
        (lambda: LipCarUNet(1, levels=3)(torch.rand(1, 1, 20, 20)), ValueError, "divisible by 2^levels = 8"),
        (lambda: network_io("X", {}), ValueError, "name: expected one of"),
        (lambda: LipCarConfig(data="mri"), ValueError, "data: expected one of ('simulate', 'samples'), got 'mri'"),
        (lambda: LipCarConfig(low_dose=1.5), ValueError, "low_dose: expected a number in (0, 1), got 1.5"),
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
    out = run_methods(nets, batch, iters=3)
    assert list(out) == list(LIPCAR_METHODS) and bool((out["LIP-CAR"] >= 0).all())
    x_bar = apply_network(nets["PL2H"], "PL2H", batch)
    for recipe in ("paper", "code"):  # LIP-CAR is lip_car_solve with Ψ_PH2L, x̄ = NN-PL2H and the recipe
        got = run_methods(nets, batch, iters=3, recipe=recipe)["LIP-CAR"]
        want = lip_car_solve(nets["PH2L"], batch["low"], x_bar, x_pre=batch["pre"], iters=3, recipe=recipe).x
        torch.testing.assert_close(got, want, rtol=0, atol=0)
    test_allclose(out["NN-PL2H"], x_bar, rtol=0, atol=0)


def test_dose_slices_from_the_heldout_anatomy():
    "anatomy='colin27' reaches the simulator (and the cache key): same seed, another brain."
    from medsynth_nb.lip import dose_slices
    a, b = dose_slices(10_000, 2, anatomy="colin27"), dose_slices(10_000, 2)
    assert a["pre"].shape == b["pre"].shape and not np.array_equal(a["labels"], b["labels"])
    again = dose_slices(10_000, 2, anatomy="colin27")   # cached under its own key; each call gets its own arrays
    assert all(np.array_equal(again[k], a[k]) for k in a) and again["pre"] is not a["pre"]


def test_heldout_sets_are_colin27_another_person():
    "Held-out subjects (TEST_FIRST_SEED…, TEST_ANATOMY) are Colin27: GM/WM Dice < 0.75 to a training subject (ICBM152)."
    from medsynth_nb.lip import TEST_ANATOMY, TEST_FIRST_SEED, TRAIN_FIRST_SEED, simulate_lipcar, dose_slices
    from medsynth_nb.phantom import axial_slices
    from medsynth_nb.phantom import anatomy_dice, random_subject
    assert TEST_ANATOMY == "colin27"
    labels = lambda seed, anatomy: random_subject(seed, doses=(0.0,), anatomy=anatomy)["labels"].numpy()
    train, held = labels(TRAIN_FIRST_SEED, "icbm152"), labels(TEST_FIRST_SEED, TEST_ANATOMY)
    d = anatomy_dice(held, train)
    assert max(d.values()) < 0.75, d
    old = anatomy_dice(labels(TEST_FIRST_SEED, "icbm152"), train)  # the old split: a warp of the training template
    assert min(old.values()) > max(d.values()) + 0.05, (old, d)
    # the held-out slices are slices of that Colin27 subject (labels are drawn before the doses' noise)
    s = dose_slices(TEST_FIRST_SEED, 2, anatomy=TEST_ANATOMY)
    np.testing.assert_array_equal(s["labels"], axial_slices(held, s["z_index"], side=128).numpy())
    h = simulate_lipcar([TEST_FIRST_SEED], 2, anatomy=TEST_ANATOMY)
    np.testing.assert_array_equal(h["labels"][:, 0].numpy(), s["labels"])


# ---- one validation vocabulary (issue 18): bool/float ints, non-finite data, raw torch errors turned into messages ----
from medsynth_nb.lip import (LipCarSlices, image_metrics, load_lipcar_samples, network_io, region_metrics, run_methods,
                             secant_oracle, simulate_lipcar, dose_slices)


def _bad_lip_cases():
    op, y, xp = _linear_op(), torch.rand(2, 1, 16, 16), torch.rand(2, 1, 16, 16)
    net2 = LipCarUNet(2, base=2, levels=1)
    b = {"pre": xp, "low": y, "high": y}
    return [
        (lambda: LipCarUNet(True), TypeError, "in_channels: expected an int, got True (bool)"),
        (lambda: LipCarUNet(1, levels=2.0), TypeError, "levels: expected an int, got 2.0 (float)"),
        (lambda: LipCarUNet(1, base=True), TypeError, "base: expected an int, got True (bool)"),
        (lambda: LipCarUNet(1, negative_slope=-0.2), ValueError, "negative_slope: expected a number >= 0, got -0.2"),
        (lambda: build_networks(names=("H2L", "X")), ValueError, "name: expected one of"),
        (lambda: network_io("PH2L", [y, xp]), ValueError, "batch: expected a dict of (B, 1, H, W) images"),
        (lambda: network_io("PH2L", {"high": y, "pre": xp[:1], "low": y}), ValueError,
         "batch['pre'] and batch['high']: expected the same shape"),
        (lambda: gentv(torch.rand(1, 1, 4, 4), eps=float("nan")), ValueError, "eps: expected a finite number"),
        (lambda: gentv(torch.rand(1, 1, 4, 4) * float("inf")), ValueError, "x: expected finite values"),
        (lambda: lip_car_solve(op, y, None, iters=True, x_pre=xp), TypeError, "iters: expected an int, got True (bool)"),
        (lambda: lip_car_solve(op, y, None, iters=2.0, x_pre=xp), TypeError, "iters: expected an int, got 2.0 (float)"),
        (lambda: lip_car_solve(op, y, None, lr=float("inf"), x_pre=xp), ValueError, "lr: expected a finite number"),
        (lambda: lip_car_solve(op, y, None, eps=-1, x_pre=xp), ValueError, "eps: expected a number >= 0, got -1"),
        (lambda: lip_car_solve(op, y, y * float("nan"), x_pre=xp), ValueError, "x_bar: expected finite values"),
        (lambda: lip_car_solve(op, y, None, x_pre=xp * float("nan")), ValueError, "x_pre: expected finite values"),
        (lambda: lip_car_solve(net2, y, None), ValueError, "x_pre: forward_op takes 2 input channels, y gives 1"),
        (lambda: image_metrics(y, y[:1]), ValueError, "pred and target: expected the same shape"),
        (lambda: region_metrics(y, y, torch.ones_like(y).long(), win_size=4), ValueError,
         "win_size: expected an odd int >= 3, got 4"),
        (lambda: region_metrics(y, y, torch.ones_like(y).long(), win_size=11.0), TypeError,
         "win_size: expected an int, got 11.0 (float)"),
        (lambda: secant_oracle(xp, y, y, dose=0), ValueError, "dose: expected a number in (0, 1], got 0"),
        (lambda: secant_oracle(xp * float("nan"), y, y), ValueError, "pre: expected finite values"),
        (lambda: apply_network(net2, "PL2H", {"low": y * float("nan"), "pre": xp}), ValueError, "batch: expected finite values"),
        (lambda: apply_network(net2, "PL2H", b, chunk=0), ValueError, "chunk: expected an int >= 1, got 0"),
        (lambda: run_methods({"L2H": op}, b, iters=1), ValueError, "nets: expected trained networks L2H, PL2H and PH2L"),
        (lambda: run_methods({}, b, guess="X"), ValueError, "guess: expected one of ('PL2H', 'L2H'), got 'X'"),
        (lambda: run_methods({}, b, forward="L2H"), ValueError, "forward: expected one of ('PH2L', 'H2L'), got 'L2H'"),
        (lambda: dose_slices(1.5), TypeError, "seed: expected an int, got 1.5 (float)"),
        (lambda: dose_slices(0, n_slices=True), TypeError, "n_slices: expected an int, got True (bool)"),
        (lambda: dose_slices(0, low_dose=1.0), ValueError, "low_dose: expected a number in (0, 1), got 1"),
        (lambda: dose_slices(0, size=0), ValueError, "size: expected an int >= 1, got 0"),
        (lambda: dose_slices(0, snr=0), ValueError, "snr: expected a number > 0, got 0"),
        (lambda: simulate_lipcar([0], slices_per_subject=0), ValueError, "slices_per_subject: expected an int >= 1, got 0"),
        (lambda: simulate_lipcar([0], scale=(0, float("nan"))), ValueError, "scale[1]: expected a finite number"),
        (lambda: LipCarSlices({"pre": y}), ValueError, "data: expected a dict with 'pre', 'low' and 'high'"),
        (lambda: LipCarSlices(b, crop=8.0), TypeError, "crop: expected an int, got 8.0 (float)"),
        (lambda: LipCarSlices(b, crop=8, crops_per_slice=0), ValueError, "crops_per_slice: expected an int >= 1, got 0"),
        (lambda: LipCarConfig(crop=-16), ValueError, "crop: expected an int >= 0, got -16"),
        (lambda: LipCarConfig(networks=()), ValueError, "networks: expected a non-empty subset of"),
        (lambda: LipCarConfig(levels=0), ValueError, "levels: expected an int >= 1, got 0"),
    ]


@pytest.mark.parametrize("i", range(39))
def test_lip_refuses_bad_input(i):
    cases = _bad_lip_cases()
    assert len(cases) == 39
    fn, exc, msg = cases[i]
    with pytest.raises(exc) as e: fn()
    assert msg in str(e.value), (msg, str(e.value))


def test_apply_network_in_chunks_keeps_item_order():
    "apply_network returns item i's output at position i (chunks of 2 over 3 different slices)."
    with seeded(0): nets = build_networks(base=4, levels=2)
    d = load_lipcar_samples()
    batch = {k: d[k][:3, :, :32, :32] for k in ("pre", "low", "high")}
    alone = torch.cat([apply_network(nets["PL2H"], "PL2H", {k: v[i:i + 1] for k, v in batch.items()}) for i in range(3)])
    torch.testing.assert_close(apply_network(nets["PL2H"], "PL2H", batch, chunk=2), alone)


def test_dose_slices_are_the_old_subject_slices_turned_anterior_up():
    "dose_slices equals the old lip.subject_slices (frozen hashes) up to its orientation fix: rows flipped inside the padding."
    from medsynth_nb.data import array_sha256
    from medsynth_nb.lip import dose_slices
    old = {
        "lip_7_2_pre": "360cba2683ef887f0a0bd4cf392ce1ea095ab1db8dfa3c5b73b87078947bf790",
        "lip_7_2_low": "2fc2df88ace126709f2aea1980bf865bae4dbfe2688dd10ec033e00ca727537a",
        "lip_7_2_high": "6af358a6d8957cf32bf6d9df4b58a7f479e3efa76e08b2fb65afa127457926f7",
        "lip_7_2_labels": "785c38f20756a60f998a48bdc6ff4a3c35319e18a7c689738fde99697ccae6ac",
        "lip_7_2_z_index": "949319d6e667030923d4db645cca78cbc04b101db12c3bea7e32c7bcf48a7372",
        "lip_10000_3_pre": "35fe4cc1a3dc344ba84df7489a2930df81015d817b8118493b489027685a2c0e",
        "lip_10000_3_low": "2b3e1b41fc76d6427aeb2197f87fdadbd672e2d064de8056ba33aedc9c2d7c9b",
        "lip_10000_3_high": "f0f011e0c67b9d75028e632047560f593bb7afa6fb2b3c00dd093fec8dda6589",
        "lip_10000_3_labels": "737711a46298857d218cba2930d6ffde47a116ff3046cc8ad9458038a46c0a21",
        "lip_10000_3_z_index": "949edba53784d105030743ff46390605f475837d98dd054ef854e4e42c6dd20c",
    }
    def posterior_up(v, size, Y=117, X=99):   # the old layout: y increasing downwards, same centred padding
        ph, pw = size - Y, size - X
        core = v[:, ph // 2: ph // 2 + Y, pw // 2: pw // 2 + X][:, ::-1]
        return np.pad(core, ((0, 0), (ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2)))
    got = {}
    for name, size, d in (("lip_7_2", 128, dose_slices(7, 2, size=128)),
                          ("lip_10000_3", 130, dose_slices(10000, 3, field=1.5, low_dose=0.1, snr=math.inf, size=130,
                                                           anatomy="colin27"))):
        for k, v in d.items(): got[f"{name}_{k}"] = v if k == "z_index" else posterior_up(v, size)
    assert {k: array_sha256(np.ascontiguousarray(v)) for k, v in got.items()} == old


# --- the evaluation cache (lesson 40's slow cells and recipe 64 reuse what an unchanged key already computed)

def test_cached_arrays_reuses_only_an_equal_key(tmp_path):
    calls = []
    def compute():
        calls.append(1)
        return {"LIP-CAR (code: lr 1e-2, no x ≥ 0)": torch.arange(6.0).reshape(2, 3), "sweep": np.array([0.5, 0.25])}
    path = tmp_path / "eval" / "methods.npz"
    first = cached_arrays(path, {"nets": "a", "settings": {"iters": 150}}, compute)
    again = cached_arrays(path, {"nets": "a", "settings": {"iters": 150}}, compute)
    assert len(calls) == 1 and list(again) == list(first)
    assert isinstance(again["LIP-CAR (code: lr 1e-2, no x ≥ 0)"], torch.Tensor) and isinstance(again["sweep"], np.ndarray)
    assert torch.equal(again["LIP-CAR (code: lr 1e-2, no x ≥ 0)"], first["LIP-CAR (code: lr 1e-2, no x ≥ 0)"])
    assert np.array_equal(again["sweep"], first["sweep"])
    for other in ({"nets": "b", "settings": {"iters": 150}}, {"nets": "a", "settings": {"iters": 40}}):
        n = len(calls); cached_arrays(path, other, compute); assert len(calls) == n + 1  # recomputed ...
        cached_arrays(path, other, compute); assert len(calls) == n + 1                   # ... and stored
    assert [p.name for p in path.parent.iterdir()] == ["methods.npz"]  # no temporary file left behind


def test_cached_arrays_keeps_the_old_file_when_compute_fails(tmp_path):
    path = tmp_path / "c.npz"
    cached_arrays(path, {"k": 1}, lambda: {"x": torch.ones(2)})
    def boom(): raise RuntimeError("solver diverged")
    with pytest.raises(RuntimeError, match="solver diverged"): cached_arrays(path, {"k": 2}, boom)
    assert torch.equal(cached_arrays(path, {"k": 1}, boom)["x"], torch.ones(2))


def test_evaluation_key_tracks_weights_data_and_settings():
    with seeded(0): nets = build_networks(base=4, levels=2)
    g = make_generator(3)
    data = {k: torch.rand(2, 1, 16, 16, generator=g) for k in ("pre", "low", "high")}
    k0 = evaluation_key(nets, dict(data, scale=(0.0, 1.0)), name="methods")
    assert evaluation_key(nets, dict(data, scale=(0.0, 2.0)), name="methods") == k0  # non-tensors are not data
    assert evaluation_key(nets, data, name="experiments")["settings"] != k0["settings"]
    assert evaluation_key(nets, dict(data, low=data["low"].clone().index_put_((torch.tensor([1]),), torch.tensor(0.5))),
                          name="methods")["data"] != k0["data"]
    assert evaluation_key(nets, dict(data, low=data["low"].double()), name="methods")["data"] != k0["data"]  # dtype
    changed = copy.deepcopy(nets)
    with torch.no_grad(): next(changed["PH2L"].parameters()).view(-1)[0].add_(1e-3)  # one weight of one network
    k1 = evaluation_key(changed, data, name="methods")
    assert [n for n in NETWORKS if k1["nets"][n] != k0["nets"][n]] == ["PH2L"]
    assert k1["code"] == k0["code"] and k0["torch"] == torch.__version__


def test_code_digest_ignores_layout_and_drawing_code(tmp_path, monkeypatch):
    src = {"base": "def f(x):\n    return x + 1\n\ndef plot_f(x):\n    return 'drawn'\nFIG2_COLUMNS = ('a',)\n",
           "layout": "# a comment\ndef f(x):  # same code, other layout\n    return (x\n            + 1)\n\n"
                     "def plot_f(x):\n    return 'drawn differently'\nFIG2_COLUMNS = ('b', 'c')\n",
           "logic": "def f(x):\n    return x + 2\n\ndef plot_f(x):\n    return 'drawn'\nFIG2_COLUMNS = ('a',)\n"}
    for name, text in src.items(): (tmp_path / f"{name}.py").write_text(text)
    fake = lambda full: type("M", (), {"__file__": str(tmp_path / (full.split(".")[-1] + ".py"))})
    monkeypatch.setattr(lip.importlib, "import_module", fake)
    d = {name: lip._code_digest(name) for name in src}
    assert d["layout"] == d["base"] and d["logic"] != d["base"]
    assert lip._code_digest("base", "logic") != d["base"]
