"Lei et al.'s reconstruction (medsynth_nb.recon): DC exactness, equivariance, CS, regimes, fastMRI HDF5, bad inputs."
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st

from medsynth_nb import recon
from medsynth_nb.kspace import hard_dc, kspace_residual, poisson_disc_mask, zero_filled
from medsynth_nb.utils import test_allclose
from medsynth_nb.utils import num_threads, seeded
from meta_device import MetaDeviceModel

DATA = Path(__file__).resolve().parent.parent / "data_samples"

@pytest.fixture(scope="module")
def acq():
    mask, maps = recon.recon_setup((32, 32), 5.0, coils=4)
    x = torch.polar(torch.rand(2, 1, 32, 32, generator=torch.Generator().manual_seed(0)),
                    torch.rand(2, 1, 32, 32, generator=torch.Generator().manual_seed(1)))
    return x, recon.measure(x, mask, maps), mask, maps

GENERATORS = [lambda: recon.PlainGenerator(features=4, blocks=2), lambda: recon.UnrolledGenerator(3, 4),
              lambda: recon.UnrolledGenerator(2, 4, dc="soft"), lambda: recon.UnrolledGenerator(2, 4, block="preact")]


@pytest.mark.parametrize("G", GENERATORS)
def test_generator_last_op_is_hard_dc(G, acq):
    "G(y) = hard_dc(x_pre): the output is Eq. 8 applied to what the last network module produced; misfit drops >= 2x."
    x, y, mask, maps = acq
    torch.manual_seed(0)
    g = G()
    with torch.no_grad():
        out, pre = recon.final_dc_input(g, y, mask, maps)
        assert out.shape == (2, 1, 32, 32) and out.is_complex()
        test_allclose(out, hard_dc(pre, y, mask, maps), rtol=0, atol=1e-5)
        r_pre, r_out = kspace_residual(pre, y, mask, maps), kspace_residual(out, y, mask, maps)
        assert bool((2 * r_out <= r_pre).all()), (r_pre, r_out)


@pytest.mark.parametrize("G", GENERATORS)
def test_generator_single_coil_output_is_consistent(G, acq):
    "One coil: Eq. 8 is a projection, so the output's misfit is < 1e-6 (the pre-DC image's is of order 1) and G(y) is a fixed point."
    x, _, mask, _ = acq
    torch.manual_seed(0)
    g = G()
    y1 = recon.measure(x, mask, None)
    with torch.no_grad():
        out1, pre1 = recon.final_dc_input(g, y1, mask)
    assert float(kspace_residual(out1, y1, mask).max()) < 1e-6
    assert float(kspace_residual(pre1, y1, mask).min()) > 0.1
    test_allclose(hard_dc(out1, y1, mask), out1, rtol=0, atol=1e-5)      # hook-free: idempotent on the output


def test_checks_fail_without_the_final_dc(acq):
    "The same weights with final_dc=False fail every DC check (the checks above are not vacuous)."
    x, y, mask, maps = acq
    torch.manual_seed(0)
    g, g_no = recon.UnrolledGenerator(3, 4), recon.UnrolledGenerator(3, 4, final_dc=False)
    g_no.load_state_dict(g.state_dict())
    y1 = recon.measure(x, mask, None)
    with torch.no_grad():
        out, pre = recon.final_dc_input(g_no, y, mask, maps)
        out1 = g_no(y1, mask)
        assert torch.equal(out, pre)
        assert not torch.allclose(out, hard_dc(pre, y, mask, maps), atol=1e-3)
        assert float(kspace_residual(out1, y1, mask).min()) > 0.1
        assert not torch.allclose(hard_dc(out1, y1, mask), out1, atol=1e-3)


@settings(max_examples=8, deadline=None)
@given(st.integers(-8, 8), st.integers(-8, 8))
def test_prox_shift_equivariant(dy, dx):
    torch.manual_seed(0)
    P = recon.ProxResNet(features=4, blocks=2).eval()
    x = torch.randn(1, 2, 16, 16, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        test_allclose(P(torch.roll(x, (dy, dx), (-2, -1))), torch.roll(P(x), (dy, dx), (-2, -1)), rtol=1e-4, atol=1e-5)

@settings(max_examples=10, deadline=None)
@given(st.integers(1, 3), st.integers(0, 1000))
def test_haar_orthonormal(levels, seed):
    c = torch.randn(2, 16, 24, dtype=torch.complex128, generator=torch.Generator().manual_seed(seed))
    test_allclose(recon.ihaar2(recon.haar2(c, levels), levels), c, rtol=0, atol=1e-12)
    test_allclose(recon.haar2(c, levels).abs().pow(2).sum(), c.abs().pow(2).sum(), rtol=1e-12, atol=0)

def test_haar_matches_pywt():
    pywt = pytest.importorskip("pywt")
    x = np.random.default_rng(0).standard_normal((8, 8))
    cA, (cH, cV, cD) = pywt.dwt2(x, "haar")
    ours = recon.haar2(torch.from_numpy(x), 1).numpy()
    np.testing.assert_allclose(ours[:4, :4], cA, atol=1e-12)
    np.testing.assert_allclose(np.abs(ours[4:, 4:]), np.abs(cD), atol=1e-12)

def test_cs_beats_zero_filling_and_agrees_with_sigpy():
    pytest.importorskip("sigpy")
    mask, maps = recon.recon_setup((64, 64), 5.0, coils=4)
    x = recon.complex_slices(2000, (64, 64), 1, deform=False)
    y = recon.measure(x, mask, maps)
    zf = recon.recon_scores(zero_filled(y, mask, maps), x)["snr"]
    f = recon.recon_scores(recon.cs_wavelet_recon(y, mask, maps, recon.CS_LAM, 30, "fista"), x)["snr"]
    s = recon.recon_scores(recon.cs_wavelet_recon(y, mask, maps, recon.CS_LAM, 30, "sigpy"), x)["snr"]
    assert f > zf + 5 and s > zf + 5 and abs(f - s) < 1.5

def test_hybrid_schedule():
    assert [recon.hybrid_l1_weight(s) for s in (0, 499, 500, 1000, 10**6)] == [1.0, 1.0, 1.0, 0.99, 0.99]   # Sec. IV.D
    assert math.isclose(recon.hybrid_l1_weight(750), 0.995)
    assert recon.hybrid_l1_weight(1000, final=0.995) == 0.995                                          # the code's
    ws = [recon.hybrid_l1_weight(s, 10, 20, 0.9) for s in range(30)]
    assert all(a >= b for a, b in zip(ws, ws[1:]))

def test_label_sets():
    from medsynth_nb.config import get_experiment
    cfg = get_experiment("recon-unpaired").config("smoke")
    assert not set(recon.input_subjects(cfg)) & set(recon.label_subjects(cfg))
    assert not set(recon.TEST_SUBJECTS) & (set(recon.input_subjects(cfg)) | set(recon.label_subjects(cfg)))
    p = cfg.replace(label_mode="partial")
    assert set(recon.label_subjects(p)) <= set(recon.input_subjects(p))

@pytest.mark.parametrize("name", ["recon-unpaired", "recon-l1", "recon-hybrid"])
def test_smoke_training(name, tmp_path):
    from medsynth_nb.engine import train, load_models
    with num_threads(1):
        r = train(name, "smoke", tmp_path / "run", progress=False)
    last = r.history[-1]
    assert last["step"] == 3 and all(math.isfinite(v) for v in last.values() if isinstance(v, float))
    key = "model" if name == "recon-l1" else "generator"
    assert key in load_models(tmp_path / "run")

def test_plain_generator_smoke():
    from medsynth_nb.engine import train
    with num_threads(1):
        r = train("recon-unpaired", "smoke", progress=False, generator="plain", blocks=2, label_mode="partial")
    assert math.isfinite(r.history[-1]["generator/loss"])

def test_fastmri_h5_into_pipeline():
    from medsynth_nb.data import KSpaceSliceDataset
    from medsynth_nb.kspace import espirit_maps
    ds = KSpaceSliceDataset(DATA / "kspace_3T_axt1post.h5",
                            mask_func=lambda shape, g: poisson_disc_mask(shape, 5.0, calib=recon.lei_calib(shape), seed=0))
    it = ds[0]
    y, mask = it["kspace"][None], it["mask"][0]
    y = y / y.abs().amax()
    assert y.shape[1] == 8
    maps = espirit_maps(y[0], calib_width=12, kernel_width=5)
    with torch.no_grad(): out, pre = recon.final_dc_input(recon.UnrolledGenerator(1, 4), y, mask, maps)
    test_allclose(out, hard_dc(pre, y, mask, maps), rtol=0, atol=1e-5)
    assert float(kspace_residual(out, y, mask, maps)) * 2 < float(kspace_residual(pre, y, mask, maps))
    cs = recon.cs_wavelet_recon(y, mask, maps, recon.CS_LAM, 10, "fista")
    assert cs.shape == (1, 1) + tuple(y.shape[-2:])

def test_bad_inputs(acq):
    x, y, mask, maps = acq
    G = recon.UnrolledGenerator(1, 4)
    cases = [((y, torch.ones(31, 32), maps), ValueError, "mask"),
             ((y, torch.full((32, 32), 0.5), maps), ValueError, "mask: expected a binary mask"),
             ((y.abs(), mask, maps), TypeError, "y"),
             ((y[:, 0], mask, maps), ValueError, "y"),
             ((y, mask, maps[:3]), ValueError, "maps: expected 4 coils"),
             ((y, mask, maps.abs()), TypeError, "maps"),
             ((y, mask, maps[..., :16]), ValueError, "maps: expected spatial size"),
             ((y, mask, None), ValueError, "maps: needed")]
    for args, err, msg in cases:
        with pytest.raises(err, match=msg): G(*args)
        with pytest.raises(err, match=msg): recon.cs_wavelet_recon(*args, backend="fista")
    with pytest.raises(ValueError, match="x: expected 2 channels"): recon.LeiCritic()(x.abs())
    with pytest.raises(TypeError, match="x"): recon.LeiCritic()(x)
    with pytest.raises(ValueError, match="dc"): recon.UnrolledGenerator(dc="hard")
    with pytest.raises(ValueError, match="levels"): recon.cs_wavelet_fista(recon.measure(torch.ones(1, 1, 20, 20, dtype=torch.complex64), torch.ones(20, 20)), torch.ones(20, 20), levels=3)
    from medsynth_nb.config import get_experiment
    for bad, msg in [(dict(regime="gan"), "regime"), (dict(label_mode="partial", label_subjects=9), "label_subjects"),
                     (dict(shape=(8, 8)), "shape"), (dict(critic_input="phase"), "critic_input")]:
        with pytest.raises(ValueError, match=msg): get_experiment("recon-unpaired").config("smoke", **bad)

def test_lei_crop_is_the_centre_272_by_216():
    "Lei score the centre 272 x 216 of 320 x 256 (Sec. IV.C): 24 rows and 20 columns off each border."
    from medsynth_nb.metrics import snr_db
    assert recon.lei_crop((320, 256)) == (24, 20)
    g = torch.Generator().manual_seed(0)
    gt = torch.polar(torch.rand(2, 1, 320, 256, generator=g) + 0.5, torch.rand(2, 1, 320, 256, generator=g))
    pred = gt + 0.05 * torch.randn(2, 1, 320, 256, dtype=torch.complex64, generator=g)
    pred[..., :24, :] = 0; pred[..., 296:, :] = 0; pred[..., :, :20] = 0; pred[..., :, 236:] = 0   # border garbage
    centre = (slice(None), slice(None), slice(24, 296), slice(20, 236))
    assert pred.abs()[centre].shape[-2:] == (272, 216)
    ref = snr_db(pred.abs()[centre], gt.abs()[centre])
    s = recon.recon_scores(pred, gt)["snr"]
    assert math.isclose(s, float(ref), rel_tol=1e-6)
    p64, g64 = pred.abs()[centre].double().numpy(), gt.abs()[centre].double().numpy()   # numpy float64, per image
    per = [10 * np.log10((g64[i] ** 2).sum() / ((p64[i] - g64[i]) ** 2).sum()) for i in range(2)]
    assert math.isclose(s, float(np.mean(per)), rel_tol=1e-5)
    assert recon.recon_scores(pred, gt, crop=(23, 20))["snr"] < s - 1 and recon.recon_scores(pred, gt, crop=(24, 19))["snr"] < s - 1


def test_recipes_paper_default_code_option():
    "Paper values (Sec. IV.A/IV.D, Fig. 6) are the defaults; the authors' code's are recipe='code'; explicit values win."
    from medsynth_nb.config import get_experiment
    c = recon.ReconConfig()
    assert (c.lr, c.critic_lr, c.betas, c.l1_final, c.block) == (1e-4, 1e-4, (0.9, 0.999), 0.99, "postact")
    k = recon.ReconConfig(recipe="code")
    assert (k.lr, k.critic_lr, k.betas, k.l1_final, k.block) == (5e-5, 5e-5, (0.5, 0.9), 0.995, "preact")
    assert recon.ReconConfig(recipe="code", lr=1e-3).lr == 1e-3
    p = get_experiment("recon-unpaired").config("paper")
    assert (p.lr, p.betas, p.batch_size, p.iterations, p.blocks, p.gp_weight, p.acceleration) == (1e-4, (0.9, 0.999), 4, 3, 2, 10.0, 10.0)
    assert (p.input_subjects, p.label_subjects, p.label_mode) == (7, 6, "disjoint")                 # Sec. IV.C
    for name in ("recon-l1", "recon-hybrid"):
        assert get_experiment(name).config("paper").input_subjects == 6                              # Sec. IV.D
    with pytest.raises(ValueError, match="recipe"): recon.ReconConfig(recipe="tf")
    with pytest.raises(ValueError, match="block"): recon.ReconConfig(block="resnext")


def test_disjoint_unpaired_critic_sees_magnitudes():
    "Sec. IV.C: magnitude labels and a 1-channel critic for disjoint unpaired training; paired critics see complex images."
    from medsynth_nb.config import get_experiment
    for preset in ("smoke", "demo", "paper"):
        assert get_experiment("recon-unpaired").config(preset).critic_input == "magnitude"
        assert get_experiment("recon-hybrid").config(preset).critic_input == "complex"
    assert recon.ReconConfig(label_mode="partial").critic_input == "complex"
    assert recon.ReconConfig(critic_input="complex").critic_input == "complex"                      # the option
    task = recon.build_recon(get_experiment("recon-unpaired").config("smoke"))
    assert task.models["critic"].in_channels == 1


def test_post_activation_block():
    "Paper block: ReLU(BN(x + conv(ReLU(BN(conv(x)))))): the output is >= 0 and the BN-ReLU come after the sum."
    torch.manual_seed(0)
    b = recon.PostActBlock(4).eval()
    x = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = torch.relu(b.post[0](x + b.body(x)))
        test_allclose(b(x), ref, rtol=0, atol=0)
        assert float(b(x).min()) >= 0
    P = recon.ProxResNet(4, 2, 1, "postact")
    convs = [m for m in P.net if isinstance(m, torch.nn.Conv2d)]
    assert isinstance(P.net[-1], torch.nn.Conv2d) and convs[-1].out_channels == 2                      # last conv: no BN-ReLU
    assert isinstance(P.net[1], torch.nn.BatchNorm2d)                                                  # BN-ReLU after conv 1
    Q = recon.ProxResNet(4, 2, 1, "preact")
    assert isinstance(Q.net[1], recon.PreActBlock) and isinstance(Q.net[-3], torch.nn.BatchNorm2d)


# ---------------------------------------------------------------- GAN wiring
def _task(name="recon-unpaired", **kw):
    from medsynth_nb.config import get_experiment
    cfg = get_experiment(name).config("smoke", **kw)
    torch.manual_seed(0)
    task = recon.build_recon(cfg)
    batch = task.data(4, torch.Generator().manual_seed(1))
    return cfg, task, batch


def _ctx(task, cfg, step=0):
    from medsynth_nb.engine import Context
    ctx = Context(task.models, task.models, torch.Generator().manual_seed(2), torch.device("cpu"), cfg)
    ctx.step = step
    return ctx


def _gap(task, cfg, b):
    "mean D(label) - mean D(G(y)) on the batch, as the critic sees them."
    G, D = task.models["generator"], task.models["critic"]
    with torch.no_grad():
        fake = recon.critic_view(G(b["y"], b["mask"], b.get("maps")), cfg.critic_input)
        return float(D(recon.critic_view(b["label"], cfg.critic_input)).mean() - D(fake).mean())


def _step(task, phase, b, ctx):
    ph = next(p for p in task.phases if p.name == phase)
    out = ph.loss(b, ctx)
    loss = out[0] if isinstance(out, tuple) else out
    opt = task.optimizers[ph.optimizer]
    for o in task.optimizers.values(): o.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return loss


@pytest.mark.parametrize("name", ["recon-unpaired", "recon-hybrid"])
def test_one_critic_step_widens_the_gap(name):
    "(P1.D): the critic ascends E D(y) - E D(G(x_zf)); without the penalty one Adam step must widen that gap."
    cfg, task, b = _task(name, gp_weight=0.0)
    before = _gap(task, cfg, b)
    _step(task, "critic", b, _ctx(task, cfg))
    assert _gap(task, cfg, b) > before + 1e-6


def test_one_generator_step_narrows_the_gap():
    "(P1.G): the generator descends -E D(G(x_zf)); one step must narrow the critic gap."
    cfg, task, b = _task("recon-unpaired")
    before = _gap(task, cfg, b)
    _step(task, "generator", b, _ctx(task, cfg))
    assert _gap(task, cfg, b) < before - 1e-6


def test_hybrid_generator_loss_is_eq4():
    "Eq. (4): (1 - f) (-E D(G)) + f E|G - x|_1, with f = 1 before l1_only and 0.99 after ramp_end."
    cfg, task, b = _task("recon-hybrid", l1_only=5, ramp_end=10)
    G, D = task.models["generator"], task.models["critic"]
    ph = next(p for p in task.phases if p.name == "generator")
    for step, f in ((0, 1.0), (20, 0.99)):
        torch.manual_seed(3)
        loss, _ = ph.loss(b, _ctx(task, cfg, step))
        torch.manual_seed(3)
        with torch.no_grad():
            out = G(b["y"], b["mask"], b.get("maps"))
            adv = -D(recon.critic_view(out, cfg.critic_input)).mean()
            l1 = (recon.to_channels(out) - recon.to_channels(b["target"])).abs().mean()
        test_allclose(loss.detach(), (1 - f) * adv + f * l1, rtol=1e-4, atol=1e-6)


def test_unpaired_generator_gets_no_paired_gradient():
    "The unpaired loss is -E D(G) alone: with a critic that outputs a constant, the generator gets zero gradient."
    cfg, task, b = _task("recon-unpaired")
    D = task.models["critic"]
    for p in D.parameters(): torch.nn.init.zeros_(p)
    ph = next(p for p in task.phases if p.name == "generator")
    loss, _ = ph.loss(b, _ctx(task, cfg))
    loss.backward()
    assert all(p.grad is None or float(p.grad.abs().max()) == 0 for p in task.models["generator"].parameters())


class _DeviceRecorder(MetaDeviceModel):
    "A stand-in generator whose parameter lives on the meta device; it records where its inputs arrive."

    def forward(self, y, mask, maps=None):
        self.seen.append((y.device, mask.device, None if maps is None else maps.device))
        return torch.zeros(y.shape[0], 1, *y.shape[-2:], dtype=torch.complex64, device=y.device)


def test_reconstruct_moves_inputs_to_the_models_device(acq):
    "reconstruct sends y, mask and maps to the model's device (here 'meta'), chunk by chunk; no GPU needed."
    _, y, mask, maps = acq
    G = _DeviceRecorder()
    out = recon.reconstruct(G, y, mask, maps, batch_size=1)
    assert len(G.seen) == 2 and all(d == torch.device("meta") for row in G.seen for d in row)
    assert out.device.type == "meta"
    G.seen.clear()
    recon.reconstruct(G, recon.measure(acq[0], mask, None), mask)
    assert G.seen[0][:2] == (torch.device("meta"), torch.device("meta")) and G.seen[0][2] is None


def test_test_subjects_are_colin27():
    "Table II's test subjects warp Colin27 (another person): GM/WM Dice < 0.75 to every training subject (warped ICBM152)."
    from medsynth_nb.phantom import anatomy_dice, random_subject
    from medsynth_nb.config import get_experiment
    assert recon.TEST_ANATOMY == "colin27"
    lab = lambda s, a, d=2.0: random_subject(s, doses=(0.0,), anatomy=a, deform_voxels=d)["labels"]   # as complex_slices
    cfg = get_experiment("recon-unpaired").config("demo")
    train = [lab(s, "icbm152") for s in recon.input_subjects(cfg)]
    tpl = lab(0, "icbm152", 0.0)
    for s in recon.TEST_SUBJECTS[:2]:
        test = lab(s, recon.TEST_ANATOMY)
        worst = max(max(anatomy_dice(test, t).values()) for t in train + [tpl])
        assert worst < 0.75, (s, worst)
    # the contrast that makes the bound mean something: warped ICBM152 subjects lie above it (to their template)
    assert min(min(anatomy_dice(t, tpl).values()) for t in train[:2]) > 0.75
    # complex_slices passes the anatomy through (and caches per anatomy)
    c = recon.complex_slices(recon.TEST_SUBJECTS[0], (32, 32), 2, deform=False, anatomy="colin27")
    i = recon.complex_slices(recon.TEST_SUBJECTS[0], (32, 32), 2, deform=False)
    assert (c.abs() - i.abs()).abs().mean() > 0.02
    torch.testing.assert_close(recon.simulate_set([recon.TEST_SUBJECTS[0]], (32, 32), 2, False, anatomy="colin27"), c)

def test_table2_evaluates_on_test_anatomy(monkeypatch):
    "table2 simulates its ground truth from TEST_ANATOMY (Colin27) by default; training streams stay on ICBM152."
    seen = []
    class Stop(Exception): pass
    def fake(subjects, shape, n, deform, anatomy="icbm152"):
        seen.append((tuple(subjects), anatomy)); raise Stop
    monkeypatch.setattr(recon, "simulate_set", fake)
    with pytest.raises(Stop): recon.table2((5.0,), "smoke")
    assert seen == [(tuple(recon.TEST_SUBJECTS[:2]), "colin27")]
    from medsynth_nb.config import get_experiment
    seen.clear()
    with pytest.raises(Stop): recon.build_recon(get_experiment("recon-l1").config("smoke"))
    assert seen and all(a == "icbm152" for _, a in seen)

def test_table2_reuse_refuses_another_run(tmp_path):
    "reuse=True evaluates a finished run of the same config and refuses a run of other settings."
    from medsynth_nb.engine import train
    with num_threads(1):
        for exp in ("recon-unpaired", "recon-l1", "recon-hybrid"):
            train(exp, "smoke", tmp_path / f"{exp}-R5", acceleration=5.0, progress=False)
        stamp = lambda: sorted((p.name, p.stat().st_mtime_ns) for p in tmp_path.rglob("checkpoint.pt"))
        before = stamp()
        rows = recon.table2((5.0,), "smoke", out=tmp_path, reuse=True)
        assert stamp() == before and len(before) == 3 and len(rows) == 5          # evaluated, not retrained
        fresh = recon.table2((5.0,), "smoke", out=tmp_path / "fresh")             # the same training from scratch
        for a, b in zip(rows[:4], fresh[:4]): assert math.isclose(a["snr"], b["snr"], abs_tol=1e-3), (a, b)   # ZF, nets
        with pytest.raises(ValueError, match="out:"): recon.table2((5.0,), "smoke", out=tmp_path, reuse=True, steps=4)


# ---- one validation vocabulary (issue 18): refusals at the public entries, none per step inside the networks ----------
BAD_RECON = [
    (lambda a: recon.UnrolledGenerator(iterations=True), TypeError, "iterations: expected an int, got True (bool)"),
    (lambda a: recon.UnrolledGenerator(iterations=2.0), TypeError, "iterations: expected an int, got 2.0 (float)"),
    (lambda a: recon.UnrolledGenerator(iterations=0), ValueError, "iterations: expected an int >= 1, got 0"),
    (lambda a: recon.UnrolledGenerator(step=float("nan")), ValueError, "step: expected a finite number"),
    (lambda a: recon.UnrolledGenerator(dc="hard"), ValueError, "dc: expected one of ('gradient', 'soft'), got 'hard'"),
    (lambda a: recon.PlainGenerator(features=0), ValueError, "features: expected an int >= 1, got 0"),
    (lambda a: recon.ProxResNet(4, blocks=1.0), TypeError, "blocks: expected an int, got 1.0 (float)"),
    (lambda a: recon.ProxResNet(4, block="post"), ValueError, "block: expected one of"),
    (lambda a: recon.LeiCritic(features=(4, 0)), ValueError, "features[1]: expected an int >= 1, got 0"),
    (lambda a: recon.LeiCritic(negative_slope=-1), ValueError, "negative_slope: expected a number >= 0, got -1"),
    (lambda a: recon.critic_view(a[0], "phase"), ValueError, "mode: expected one of ('complex', 'magnitude')"),
    (lambda a: recon.hybrid_l1_weight(1.5), TypeError, "step: expected an int, got 1.5 (float)"),
    (lambda a: recon.hybrid_l1_weight(0, final=1.5), ValueError, "final: expected a number in [0, 1], got 1.5"),
    (lambda a: recon.lei_crop((320,)), ValueError, "shape: expected a pair of ints (H, W)"),
    (lambda a: recon.lei_calib((64.0, 64)), TypeError, "shape[0]: expected an int, got 64.0 (float)"),
    (lambda a: recon.complex_slices(1.5), TypeError, "seed: expected an int, got 1.5 (float)"),
    (lambda a: recon.complex_slices(0, n_slices=0), ValueError, "n_slices: expected an int >= 1, got 0"),
    (lambda a: recon.simulate_set([]), ValueError, "subjects: expected at least one subject id"),
    (lambda a: recon.recon_setup((32, 32), 5.0, coils=True), TypeError, "coils: expected an int, got True (bool)"),
    (lambda a: recon.measure(a[0] * float("nan"), a[2], a[3]), ValueError, "x: expected finite values"),
    (lambda a: recon.measure(a[0], 0.5 * a[2], a[3]), ValueError, "mask: expected a binary mask"),
    (lambda a: recon.reconstruct(recon.UnrolledGenerator(1, 4), a[1] * float("nan"), a[2], a[3]), ValueError,
     "y: expected finite values"),
    (lambda a: recon.reconstruct(recon.UnrolledGenerator(1, 4), a[1], a[2], a[3], batch_size=0), ValueError,
     "batch_size: expected an int >= 1, got 0"),
    (lambda a: recon.reconstruct(recon.UnrolledGenerator(1, 4), a[1], a[2], a[3].expand(3, -1, -1, -1)), ValueError,
     "maps: expected batch 1 or 2 (the batch of y)"),
    (lambda a: recon.UnrolledGenerator(1, 4)(a[1], a[2].expand(3, 1, -1, -1), a[3]), ValueError,
     "mask: expected batch 1 or 2 (the batch of y)"),
    (lambda a: recon.recon_scores(a[0], a[0][:1]), ValueError, "pred and target: expected the same shape"),
    (lambda a: recon.recon_scores(a[0], a[0], crop=(2.0, 2)), TypeError, "crop[0]: expected an int, got 2.0 (float)"),
    (lambda a: recon.haar2(torch.zeros(1, 1, 12, 12), 3), ValueError, "levels: H and W must be divisible by 2**levels = 8"),
    (lambda a: recon.haar2(torch.zeros(1, 1, 8, 8), -1), ValueError, "levels: expected an int >= 0, got -1"),
    (lambda a: recon.cs_wavelet_fista(a[1] * float("inf"), a[2], a[3]), ValueError, "y: expected finite values"),
    (lambda a: recon.cs_wavelet_fista(a[1], a[2], a[3], lam=-1.0), ValueError, "lam: expected a number >= 0, got -1"),
    (lambda a: recon.cs_wavelet_recon(a[1], a[2], a[3], iterations=2.5, backend="fista"), TypeError,
     "iterations: expected an int, got 2.5 (float)"),
    (lambda a: recon.cs_wavelet_recon(a[1], a[2], a[3], backend="bart"), ValueError, "backend: expected one of"),
]


@pytest.mark.parametrize("call,exc,msg", BAD_RECON, ids=[f"{i}-{b[2][:40]}" for i, b in enumerate(BAD_RECON)])
def test_recon_refuses_bad_input(acq, call, exc, msg):
    with pytest.raises(exc) as e: call(acq)
    assert msg in str(e.value), str(e.value)


@pytest.mark.parametrize("bad,exc,msg", [
    (dict(iterations=True), TypeError, ("iterations: expected", "got True (bool)")),   # the engine's type check
    (dict(coils=2.0), TypeError, ("coils: expected", "got 2.0 (float)")),
    (dict(acceleration=1.0), ValueError, "acceleration: expected a number > 1, got 1"),
    (dict(shape=(8, 64)), ValueError, "shape: expected (H, W) with both sides >= 16"),
    (dict(shape=(32.0, 32)), TypeError, ("shape", "expected", "32.0")),
    (dict(l1_final=1.5), ValueError, "l1_final: expected a number in [0, 1], got 1.5"),
    (dict(critic_lr=0.0), ValueError, "critic_lr: expected a number > 0, got 0"),
    (dict(regime="gan"), ValueError, "regime: experiment 'recon-unpaired' is the variant regime='unpaired', got 'gan'"),
])
def test_recon_config_refuses(bad, exc, msg):
    from medsynth_nb.config import get_experiment
    with pytest.raises(exc) as e: get_experiment("recon-unpaired").config("smoke", **bad)
    assert all(m in str(e.value) for m in ((msg,) if isinstance(msg, str) else msg)), str(e.value)


def test_recon_config_refuses_an_unknown_regime():
    with pytest.raises(ValueError, match=r"regime: expected one of \('unpaired', 'l1', 'hybrid'\), got 'gan'"):
        recon.ReconConfig(regime="gan")


def test_generators_check_once_not_per_step(acq, monkeypatch):
    "The K DC steps inside the unrolled G run with check=False: no NaN scan per step, and the same numbers."
    from medsynth_nb import kspace
    x, y, mask, maps = acq
    torch.manual_seed(0); G = recon.UnrolledGenerator(3, 4).eval()
    with torch.no_grad(): ref = G(y, mask, maps)
    monkeypatch.setattr(kspace, "_check_dc", lambda *a, **k: (_ for _ in ()).throw(AssertionError("per-step check")))
    with torch.no_grad(): assert torch.equal(G(y, mask, maps), ref)


def test_reconstruct_in_chunks_keeps_item_order(acq):
    "Chunked inference returns item i's reconstruction at position i, equal to reconstructing it alone."
    x, y, mask, maps = acq
    y3 = torch.cat([y, y.flip(-1)])[:3]                                  # three different items, chunks of 2
    with seeded(0): G = recon.UnrolledGenerator(2, 4).eval()
    alone = torch.cat([recon.reconstruct(G, y3[i:i + 1], mask, maps) for i in range(3)])
    torch.testing.assert_close(recon.reconstruct(G, y3, mask, maps, batch_size=2), alone)
    out, pre = recon.reconstruct(G, y3, mask, maps, batch_size=2, pre_dc=True)
    torch.testing.assert_close(out, alone)
    torch.testing.assert_close(pre, torch.cat([recon.final_dc_input(G, y3[i:i + 1], mask, maps)[1] for i in range(3)]))


def test_complex_slices_equal_the_old_subject_slices():
    "complex_slices (phantom.subject_volumes + axial_slices) is bit-identical to the old recon.subject_slices (frozen hashes)."
    from medsynth_nb.data import array_sha256
    old = {
        "recon_3_32_2_def": "33a03859a216c12de983b9de88d02ac0dbfd9a128fca46bbd35a2f9fc64dea4b",
        "recon_2000_24x40_3_nodef_colin": "cf9dfe83c7cd01e006a32a84962173bbe3521fa4698f12ecf43a75ea39c89b8b",
    }
    got = {"recon_3_32_2_def": recon.complex_slices(3, (32, 32), 2, deform=True),
           "recon_2000_24x40_3_nodef_colin": recon.complex_slices(2000, (24, 40), 3, deform=False, anatomy="colin27")}
    assert {k: array_sha256(v.numpy()) for k, v in got.items()} == old
