"Pinetz low-dose GAN: condition handling, network shapes, content losses, VGG loading, smoke training, evaluation, bad inputs."
import json
import math
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch

from medsynth_nb.data import DoseSeriesDataset
from medsynth_nb.lowdose import (DoseCropStream, LowDoseConfig, VGG16Features, build_networks, condition_vector,
                                 content_loss, enhancement_curve, evaluate_lowdose, generate, load_vgg16_features,
                                 lowdose_metrics, normalized_series, synthesize, synthesize_volume)
import medsynth_nb.lowdose as L
from medsynth_nb.config import get_experiment
from medsynth_nb.engine import load_models, train
from medsynth_nb.utils import make_generator, seeded, test_allclose
from medsynth_nb.wasserstein import gaussian_downsample, wasserstein_patch_loss
from meta_device import MetaDeviceModel
from refusals import refusal_test



@pytest.fixture(scope="module")
def samples():
    return normalized_series(DoseSeriesDataset.from_samples(normalize=False).series)


@pytest.fixture(scope="module")
def smoke_runs(tmp_path_factory):
    return {k: train("lowdose-gan", "smoke", out=tmp_path_factory.mktemp(k), content_loss=k, progress=False) for k in ("l1", "np")}


def small_cfg(**kw):
    return LowDoseConfig(**{**dict(crop=16, base_channels=4, levels=2, out_scales=2, num_heads=2, critic_channels=4, critic_levels=2), **kw})


# --- condition -------------------------------------------------------------------------------------------------------
def test_condition_vector_values():
    test_allclose(condition_vector(torch.tensor([0.0, 1.0, 0.33]), torch.tensor([1.5, 3.0, 3.0])),
                  torch.tensor([[0.0, -1.0], [1.0, 1.0], [0.33, 1.0]]))
    assert condition_vector(0.2, 1.5, batch=5).shape == (5, 2)


@pytest.mark.parametrize("dose,field,msg", [
    (1.01, 3.0, "dose: expected dose fractions in [0, 1]"), (-0.01, 1.5, "dose: expected dose fractions in [0, 1]"),
    (float("nan"), 1.5, "dose: expected dose fractions in [0, 1]"), (0.2, 2.0, "field: expected 1.5 or 3"),
    (0.2, 7.0, "field: expected 1.5 or 3"), (0.2, float("nan"), "field: expected 1.5 or 3"),
    (torch.tensor([0.1, 0.2]), torch.tensor([1.5, 3.0, 3.0]), "expected scalars or 3 values")])
def test_condition_vector_rejects(dose, field, msg):
    with pytest.raises(ValueError, match=msg.replace("[", r"\[").replace("]", r"\]").replace("(", r"\(")):
        condition_vector(dose, field)


def test_synthesize_rejects_bad_dose_and_field(smoke_runs, samples):
    G = smoke_runs["l1"].models["generator"]
    x = torch.rand(1, 1, 16, 16)
    with pytest.raises(ValueError, match="dose"): synthesize(G, x, x, 1.5, 3.0)
    with pytest.raises(ValueError, match="field"): synthesize(G, x, x, 0.2, 1.0)
    with pytest.raises(ValueError, match="x_NA and x_SD"): synthesize(G, x, torch.rand(1, 1, 8, 16), 0.2, 3.0)


# --- networks --------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dims", [2, 3])
def test_generator_and_critic_shapes(dims):
    cfg = small_cfg(dims=dims)
    with seeded(0): G, D = build_networks(cfg)
    s = (16,) * dims
    x = torch.randn(2, 1, *s)
    outs = generate(G, x, x, condition_vector([0.1, 0.3], [1.5, 3.0]), make_generator(0))
    assert [tuple(o.shape) for o in outs] == [(2, 1, *s), (2, 1, *(n // 2 for n in s))]
    assert D(torch.cat([x, x, x], 1), torch.zeros(2, 2)).shape == (2,)
    assert not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in D.modules())


def test_paper_preset_sizes():
    cfg = get_experiment("lowdose-gan").config("paper")
    assert (cfg.dims, cfg.base_channels, cfg.levels, cfg.critic_channels, cfg.critic_levels, cfg.n_critic, cfg.betas) == \
           (3, 8, 3, 32, 4, 5, (0.5, 0.9))
    G, D = build_networks(cfg)
    assert [m.out_channels for m in (G.stem,)] == [16]            # 2c with c = 8
    assert D.stem.out_channels == 32 and D.levels == 4


def test_condition_changes_only_its_sample():
    with seeded(0): G, _ = build_networks(small_cfg())
    G.eval()
    x = torch.randn(2, 1, 16, 16, generator=make_generator(1))
    c1, c2 = condition_vector([0.1, 0.2], [1.5, 3.0]), condition_vector([0.5, 0.2], [1.5, 3.0])
    o1 = generate(G, x, x, c1, make_generator(2))[0]
    o2 = generate(G, x, x, c2, make_generator(2))[0]
    assert (o1[0] - o2[0]).abs().max() > 1e-6
    test_allclose(o1[1], o2[1])
    # the field matters too
    o3 = generate(G, x, x, condition_vector([0.1, 0.2], [3.0, 3.0]), make_generator(2))[0]
    assert (o1[0] - o3[0]).abs().max() > 1e-6


def test_fresh_noise_changes_the_residual():
    with seeded(0): G, _ = build_networks(small_cfg())
    x = torch.randn(1, 1, 16, 16)
    c = condition_vector(0.2, 3.0)
    a, b = generate(G, x, x, c, make_generator(1))[0], generate(G, x, x, c, make_generator(2))[0]
    assert (a - b).abs().max() > 1e-6
    test_allclose(a, generate(G, x, x, c, make_generator(1))[0])


# --- data ------------------------------------------------------------------------------------------------------------
def test_crop_stream_shapes_and_reproducibility(samples):
    st = DoseCropStream(samples, dims=2, crop=32)
    a, b = st(3, make_generator(7)), st(3, make_generator(7))
    for k in a: test_allclose(a[k], b[k])
    assert a["x_NA"].shape == (3, 1, 32, 32)
    test_allclose(a["y_LD"], a["y_LD"])
    st3 = DoseCropStream(samples, dims=3, crop=16, ce_fraction=1.0)
    c = st3(2, make_generator(0))
    assert c["x_SD"].shape == (2, 1, 16, 16, 16)
    assert ((c["x_SD"] >= 1.1 * c["x_NA"]) & (c["x_NA"] > 0)).flatten(1).any(1).all()
    with pytest.raises(ValueError, match="ce_fraction"): DoseCropStream(samples, ce_fraction=2.0)
    with pytest.raises(ValueError, match="dims"): DoseCropStream(samples, dims=1)


# --- content losses --------------------------------------------------------------------------------------------------
def test_content_losses_match_references():
    y = torch.randn(2, 1, 16, 16, generator=make_generator(0))
    p = [torch.randn(2, 1, 16, 16, generator=make_generator(1)), torch.randn(2, 1, 8, 8, generator=make_generator(2))]
    ys = [y, gaussian_downsample(y)]
    test_allclose(content_loss(p, y, "l1", reduction="mean"), sum((a - t).abs().mean() for a, t in zip(p, ys)))
    test_allclose(content_loss(p, y, "l1"), sum((a - t).abs().sum() for a, t in zip(p, ys)))      # paper: ‖·‖₁
    g1, g2 = make_generator(3), make_generator(3)
    ref = sum(wasserstein_patch_loss(a, t, 8, offset="random", reduction="sum", generator=g2) for a, t in zip(p, ys))
    test_allclose(content_loss(p, y, "np", generator=g1), ref)                                     # paper: Σ_p W
    # W1 to a point mass at 0 is the mean |y| of each 64-pixel patch: Σ_p W = ‖y‖₁ / 64
    test_allclose(content_loss(torch.zeros_like(y), y, "np"), content_loss(torch.zeros_like(y), y, "l1") / 64)
    with pytest.raises(ValueError, match="kind: expected one of"): content_loss(p, y, "l2")
    with pytest.raises(ValueError, match="reduction: expected one of"): content_loss(p, y, "l1", reduction="avg")
    with pytest.raises(ValueError, match="needs a VGG16Features"): content_loss(p, y, "vgg")
    with pytest.raises(ValueError, match="preds and target"): content_loss(torch.zeros(2, 1, 8, 8), y, "l1")


def _w1_numpy(a, b):
    "W1 between two equal-size 1-D samples (float64): mean |sorted a − sorted b|."
    return np.abs(np.sort(a) - np.sort(b)).mean()


@pytest.mark.parametrize("reduction", ["sum", "mean", "code"])
def test_l1_plus_np_against_a_hand_computation(reduction):
    "ℓ_C = w0·ℓ1 + w2·W on two scales, against numpy float64 with the grid offset drawn as the library draws it."
    from medsynth_nb.wasserstein import draw_offset
    g = make_generator(10)
    y = torch.randn(2, 1, 16, 16, generator=g, dtype=torch.float64)
    p = [torch.randn(2, 1, 16, 16, generator=g, dtype=torch.float64), torch.randn(2, 1, 8, 8, generator=g, dtype=torch.float64)]
    ys = [y, gaussian_downsample(y)]
    ours = content_loss(p, y, "l1+np", generator=make_generator(4), reduction=reduction, l1_weight=0.7, np_weight=2.5)
    gen = make_generator(4)
    l1_hand, w_hand = 0.0, 0.0
    for a, t in zip(p, ys):
        e = np.abs(a.numpy() - t.numpy())
        l1_hand += e.sum() if reduction == "sum" else e.mean()
        o = draw_offset(2, 8, gen)                                 # the periodic shift of the patch grid
        A, T = (np.roll(v.numpy(), shift=(-o[0], -o[1]), axis=(2, 3)) for v in (a, t))
        ws = [_w1_numpy(A[b, 0, i:i + 8, j:j + 8].ravel(), T[b, 0, i:i + 8, j:j + 8].ravel())
              for b in range(2) for i in range(0, A.shape[2], 8) for j in range(0, A.shape[3], 8)]
        w_hand += np.mean(ws) if reduction == "mean" else np.sum(ws)
    assert abs(ours.item() - (0.7 * l1_hand + 2.5 * w_hand)) < 1e-10


def test_np_prefers_noise_to_smoothness():
    y = 0.1 * torch.randn(4, 1, 32, 32, generator=make_generator(0))
    noise = 0.1 * torch.randn(4, 1, 32, 32, generator=make_generator(1))
    zero = torch.zeros_like(y)
    assert content_loss(zero, y, "l1") < content_loss(noise, y, "l1")
    assert content_loss(noise, y, "np") < 0.4 * content_loss(zero, y, "np")


def test_16_pixel_patches_bias_the_noise_level():
    "The minimiser over s of E W(s·ε′, ε) is ≈ 0.84 for 4×4 patches, ≈ 0.95 for 8×8 (the default)."
    y, e = torch.randn(16, 1, 64, 64, generator=make_generator(0)), torch.randn(16, 1, 64, 64, generator=make_generator(1))
    ss = np.arange(0.70, 1.15, 0.02)
    def argmin(n):
        v = np.array([float(wasserstein_patch_loss(s * e, y, n, reduction="mean")) for s in ss])
        i = int(np.clip(v.argmin(), 4, len(ss) - 5))
        c = np.polyfit(ss[i - 4:i + 5], v[i - 4:i + 5], 2)
        return -c[1] / (2 * c[0])
    assert abs(argmin(4) - 0.84) < 0.02 and argmin(8) > 0.92
    assert LowDoseConfig().patch_size == 8 and get_experiment("lowdose-gan").config("paper").patch_size == 4


# --- VGG -------------------------------------------------------------------------------------------------------------
def test_vgg_weights_load_and_errors(tmp_path):
    with seeded(0): sd = {f"features.{k}": v for k, v in VGG16Features().features.state_dict().items()}
    torch.save(sd, tmp_path / "vgg16.pth")
    torch.save({k.removeprefix("features."): v for k, v in sd.items()}, tmp_path / "bare.pth")  # keys without 'features.'
    a, b = load_vgg16_features(tmp_path / "vgg16.pth"), load_vgg16_features(tmp_path / "bare.pth")
    x = torch.rand(1, 1, 16, 16)
    test_allclose(a(x), b(x))
    assert a(x).shape == (1, 256, 4, 4)
    assert not any(p.requires_grad for p in a.parameters())
    with pytest.raises(FileNotFoundError, match="no file at"): load_vgg16_features(tmp_path / "missing.pth")
    with pytest.raises(ValueError, match="needs local VGG-16 weights"): load_vgg16_features("")
    torch.save({"x": torch.zeros(1)}, tmp_path / "bad.pth")
    with pytest.raises(ValueError, match="is not a VGG-16 state dict"): load_vgg16_features(tmp_path / "bad.pth")
    with pytest.raises(ValueError, match="vgg_weights"): LowDoseConfig(content_loss="vgg")


def test_vgg_smoke_training(tmp_path):
    with seeded(0): sd = {f"features.{k}": v for k, v in VGG16Features().features.state_dict().items()}
    torch.save(sd, tmp_path / "vgg16.pth")
    r = train("lowdose-gan", "smoke", out=tmp_path / "run", content_loss="vgg", vgg_weights=str(tmp_path / "vgg16.pth"),
              steps=1, progress=False)
    assert math.isfinite(r.history[-1]["generator/content"])
    assert not any(k.startswith("vgg") for k in r.models["generator"].state_dict())   # VGG stays out of the checkpoint


# --- training --------------------------------------------------------------------------------------------------------
def test_smoke_presets_train(smoke_runs):
    for k, r in smoke_runs.items():
        h = r.history
        assert h[-1]["step"] == 3
        for key in ("critic/loss", "critic/gp", "critic/wasserstein", "generator/content", "generator/adv", "generator/l1"):
            assert math.isfinite(h[-1][key]), (k, key)


def test_smoke_run_reloads(smoke_runs):
    r = smoke_runs["np"]
    models = load_models(r.out)
    for name in ("generator", "critic"):
        a, b = models[name].state_dict(), r.models[name].state_dict()
        for key in a: test_allclose(a[key], b[key].cpu())


@pytest.mark.parametrize("bad,msg", [(dict(content_loss="l2"), "content_loss"), (dict(crop=20), "crop"),
                                     (dict(dose_min=0.6, dose_max=0.5), "dose_min/dose_max"), (dict(dims=4), "dims"),
                                     (dict(ce_fraction=1.5), "ce_fraction"), (dict(adv_weight=-1.0), "adv_weight"),
                                     (dict(out_scales=4), "out_scales"), (dict(content_reduction="avg"), "content_reduction"),
                                     (dict(label_noise_on="field"), "label_noise_on"), (dict(np_weight=-1.0), "np_weight")])
def test_config_rejects(bad, msg):
    with pytest.raises(ValueError, match=msg): LowDoseConfig(**bad)


# --- evaluation ------------------------------------------------------------------------------------------------------
def test_metrics_perfect_and_sensitive_to_smoothing(samples):
    s = samples[0]
    m = lowdose_metrics(s["low"][0.33], s["low"][0.33], s["native"], s["standard"])
    assert m["mae_ce"] == 0 and m["mae_sigma"] == 0 and m["mae_sigma_residual"] == 0 and abs(m["ssim"] - 1) < 1e-6
    res = s["low"][0.33] - s["native"]
    smooth = (s["native"] + torch.nn.functional.avg_pool3d(res[None, None], 3, 1, 1)[0, 0]) * (s["native"] > 0)
    assert lowdose_metrics(smooth, s["low"][0.33], s["native"], s["standard"])["mae_sigma_residual"] > 0.01


def test_volume_synthesis_and_curve(smoke_runs, samples):
    G = smoke_runs["l1"].models["generator"]
    s = samples[1]
    z = int((s["standard"] - s["native"]).clamp_min(0).sum((0, 1)).argmax())
    slab = dict(s, native=s["native"][:, :, z - 6:z + 6], standard=s["standard"][:, :, z - 6:z + 6],
                low={d: v[:, :, z - 6:z + 6] for d, v in s["low"].items()})
    v = synthesize_volume(G, slab, 0.2, make_generator(0))
    assert v.shape == slab["native"].shape
    assert (v[slab["native"] == 0] == 0).all()
    rows = evaluate_lowdose(G, [slab], doses=(0.2,))
    assert len(rows) == 1 and all(math.isfinite(rows[0][k]) for k in ("psnr", "ssim", "mae_ce", "mae_sigma"))
    syn, real = enhancement_curve(G, slab, [0.1, 0.17])
    assert syn.shape == (2,) and not math.isnan(real[0]) and math.isnan(real[1])


# --- wiring: signs, conditions, label noise, devices -----------------------------------------------------------------
from medsynth_nb.lowdose import lowdose_critic_loss, lowdose_generator_loss, smoothed_condition  # noqa: E402
from medsynth_nb.engine import Context  # noqa: E402


def _toy(samples, seed=0, **kw):
    cfg = small_cfg(**{**dict(gp_weight=0.0, content_loss="l1", content_weight=0.0), **kw})
    with seeded(seed): G, D = build_networks(cfg)
    batch = DoseCropStream(samples, dims=2, crop=16, ce_fraction=0.5)(4, make_generator(seed + 1))
    return cfg, G, D, batch


def _ctx(G, D, cfg, seed):
    return Context({"generator": G, "critic": D}, {"generator": G, "critic": D}, make_generator(seed), torch.device("cpu"), cfg)


def critic_gap(G, D, batch, cfg, seed=123):
    "mean f(y, c) − mean f(ŷ, ĉ), computed here from the networks (not from the loss's logs), with the fakes and"
    " doses d̂ that `lowdose_critic_loss` draws from a generator seeded with `seed` (label noise 0 in the toy)."
    g = make_generator(seed)
    na, sd, y = batch["x_NA"], batch["x_SD"], batch["y_LD"]
    c = condition_vector(batch["dose"], batch["field"])
    d_hat = cfg.dose_min + (cfg.dose_max - cfg.dose_min) * torch.rand(len(y), generator=g)
    c_hat = torch.stack([d_hat, c[:, 1]], 1)
    with torch.no_grad():
        y_hat = generate(G, na, sd, c_hat, g)[0]
        return float(D(torch.cat([y, na, sd], 1), c).mean() - D(torch.cat([y_hat, na, sd], 1), c_hat).mean())


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_one_critic_step_widens_the_gap(samples, seed):
    cfg, G, D, batch = _toy(samples, seed)
    before = critic_gap(G, D, batch, cfg)
    opt = torch.optim.Adam(D.parameters(), lr=1e-3, betas=cfg.betas)
    opt.zero_grad()
    lowdose_critic_loss(batch, _ctx(G, D, cfg, 123), cfg)[0].backward()
    opt.step()
    assert critic_gap(G, D, batch, cfg) > before + 1e-6


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_one_generator_step_narrows_the_gap(samples, seed):
    "The adversarial step raises the critic's score of the fakes, so the gap real − fake shrinks (content weight 0)."
    cfg, G, D, batch = _toy(samples, seed)
    before = critic_gap(G, D, batch, cfg)
    opt = torch.optim.Adam(G.parameters(), lr=1e-3, betas=cfg.betas)
    opt.zero_grad()
    lowdose_generator_loss(batch, _ctx(G, D, cfg, 321), cfg)[0].backward()
    opt.step()
    assert critic_gap(G, D, batch, cfg) < before - 1e-6     # measured on fakes of other draws (z, d̂) than the step's


def test_gradient_penalty_enters_the_critic_loss(samples):
    cfg, G, D, batch = _toy(samples, 0, gp_weight=10.0)
    loss, logs = lowdose_critic_loss(batch, _ctx(G, D, cfg, 5), cfg)
    assert abs(loss.item() - (-logs["wasserstein"].item() + 10.0 * logs["gp"].item())) < 1e-5


def test_condition_reaches_the_critic():
    with seeded(0): _, D = build_networks(small_cfg())
    x = torch.randn(2, 3, 16, 16, generator=make_generator(1))
    base = D(x, condition_vector([0.1, 0.2], [1.5, 3.0]))
    dose = D(x, condition_vector([0.4, 0.2], [1.5, 3.0]))
    field = D(x, condition_vector([0.1, 0.2], [3.0, 3.0]))
    assert abs(base[0] - dose[0]) > 1e-6 and abs(base[0] - field[0]) > 1e-6
    test_allclose(base[1], dose[1]); test_allclose(base[1], field[1])


class _Recorder(torch.nn.Module):
    "Wraps the critic and records (images, condition) of every call."
    def __init__(self, D):
        super().__init__()
        self.D, self.calls = D, []

    def forward(self, x, c):
        self.calls.append((x.detach().clone(), c.detach().clone()))
        return self.D(x, c)


@pytest.mark.parametrize("on", ["dose", "all"])
def test_label_noise_goes_on_the_dose_only_by_default(samples, on):
    cfg, G, D, batch = _toy(samples, 0, label_noise=0.05, label_noise_on=on)
    rec = _Recorder(D)
    lowdose_critic_loss(batch, _ctx(G, rec, cfg, 9), cfg)
    exact = condition_vector(batch["dose"], batch["field"])
    real = [c for x, c in rec.calls if torch.equal(x[:, :1], batch["y_LD"])]
    fake = [c for x, c in rec.calls if not torch.equal(x[:, :1], batch["y_LD"]) and not x.requires_grad]
    assert len(real) == 1
    c_real = real[0]
    assert (c_real[:, 0] - exact[:, 0]).abs().min() > 0                      # the dose is smoothed
    if on == "dose": test_allclose(c_real[:, 1], exact[:, 1], rtol=0, atol=0)  # the paper: the field is exact
    else: assert (c_real[:, 1] - exact[:, 1]).abs().min() > 0               # the code: the field is smoothed too
    # the fakes carry the random doses d̂ ~ U[0.05, 0.5] (the first draw of the step's generator) and the exact field
    d_hat = 0.05 + 0.45 * torch.rand(4, generator=make_generator(9))
    c_fake = fake[0]
    test_allclose(c_fake[:, 0], d_hat)
    test_allclose(c_fake[:, 1], exact[:, 1], rtol=0, atol=0)
    assert LowDoseConfig().label_noise_on == "dose"


def test_smoothed_condition_values():
    c = condition_vector([0.1, 0.33], [1.5, 3.0])
    n = torch.randn(c.shape, generator=make_generator(3))
    test_allclose(smoothed_condition(c, 0.05, "all", make_generator(3)), c + 0.05 * n)
    test_allclose(smoothed_condition(c, 0.05, "dose", make_generator(3)), c + 0.05 * n * torch.tensor([1.0, 0.0]))
    with pytest.raises(ValueError, match="on: expected one of"): smoothed_condition(c, 0.05, "field")


class _MetaGenerator(MetaDeviceModel):
    "A stand-in generator whose parameters live on the 'meta' device; records the devices of its inputs."
    levels, dims = 2, 2

    def forward(self, x, cond):
        self.seen.append((x.device.type, cond.device.type))
        return [torch.zeros(x.shape[0], 1, *x.shape[2:], device=x.device)]


def test_inputs_move_to_the_models_device(samples, monkeypatch):
    "generate/synthesize/synthesize_volume feed the model on its own device (caught without a GPU: 'meta')."
    import medsynth_nb.lowdose as L
    monkeypatch.setattr(L, "slices_to_volume", lambda s, axis=2: s)   # its finiteness check cannot read meta tensors
    G = _MetaGenerator()
    x = torch.rand(2, 1, 12, 10)
    generate(G, x, x, condition_vector(0.2, 3.0, batch=2), make_generator(0))
    out = synthesize(G, x, x, 0.2, 3.0, make_generator(0))
    assert out.device.type == "meta" and out.shape == (2, 1, 12, 10)
    s = samples[0]
    slab = dict(s, native=s["native"][:, :, 40:43], standard=s["standard"][:, :, 40:43])
    assert synthesize_volume(G, slab, 0.2, make_generator(0)).device.type == "meta"
    assert G.seen and all(d == ("meta", "meta") for d in G.seen)


def test_paper_preset_is_the_papers_loss():
    cfg = get_experiment("lowdose-gan").config("paper")
    assert (cfg.content_loss, cfg.content_reduction, cfg.patch_size, cfg.label_noise_on, cfg.adv_weight) == \
           ("np", "sum", 4, "dose", 1.0)
    assert (cfg.dose_min, cfg.dose_max, cfg.label_noise) == (0.05, 0.5, 0.05)


def test_content_pass_uses_the_real_condition(samples):
    "Pass 1 of the generator step: ℓ_C of g(z, c) at the REAL dose and field against y_LD (z: the step's first draw)."
    cfg, G, D, batch = _toy(samples, 0, content_weight=1.0, content_reduction="code")
    _, logs = lowdose_generator_loss(batch, _ctx(G, D, cfg, 11), cfg)
    c = condition_vector(batch["dose"], batch["field"])
    ref = content_loss(generate(G, batch["x_NA"], batch["x_SD"], c, make_generator(11)), batch["y_LD"], "l1", reduction="code")
    test_allclose(logs["content"], ref.detach())
    c_other = c.clone(); c_other[:, 0] = 0.45
    other = content_loss(generate(G, batch["x_NA"], batch["x_SD"], c_other, make_generator(11)), batch["y_LD"], "l1",
                         reduction="code")
    assert abs(other.item() - ref.item()) > 1e-6                    # … and the dose does change it


# --- Table 1, right half: the standard-dose predictor (VCM) ----------------------------------------------------------
def test_sd_predictor_learns_and_is_seeded(samples):
    from medsynth_nb.lowdose import only_dose, predict_standard, sd_prediction_metrics, train_sd_predictor, with_synthetic_low
    z = int((samples[1]["standard"] - samples[1]["native"]).clamp_min(0).sum((0, 1)).argmax())
    cut = lambda v: v[:, :, z - 6:z + 6]
    slabs = [dict(s, native=cut(s["native"]), standard=cut(s["standard"]), low={d: cut(v) for d, v in s["low"].items()})
             for s in samples]
    real = only_dose(slabs)
    assert all(list(s["low"]) == [0.33] for s in real)
    a, la = train_sd_predictor(real, steps=30, batch=4, crop=16, levels=2)
    b, lb = train_sd_predictor(real, steps=30, batch=4, crop=16, levels=2)
    assert la == lb and np.mean(la[-8:]) < 0.8 * np.mean(la[:8])
    x = predict_standard(a, slabs[0])
    assert x.shape == slabs[0]["standard"].shape and (x[slabs[0]["native"] == 0] == 0).all()
    m = sd_prediction_metrics(a, slabs)
    assert set(m) == {"psnr", "ssim"} and all(math.isfinite(v) for v in m.values())
    with seeded(0): G, _ = build_networks(small_cfg())
    syn = with_synthetic_low(G, slabs[:1])
    assert list(syn[0]["low"]) == [0.33] and syn[0]["low"][0.33].shape == slabs[0]["native"].shape
    test_allclose(syn[0]["low"][0.33], with_synthetic_low(G, slabs[:1])[0]["low"][0.33])   # seeded synthesis


def test_held_out_subjects_are_colin27():
    "Held-out subjects are built on another anatomy (Colin27) than the ICBM152 the training subjects warp."
    from medsynth_nb.lowdose import held_out_series
    from medsynth_nb.phantom import random_subject
    h = held_out_series(seeds=(9000,), doses=(0.33,))
    ref = random_subject(9000, field=1.5, doses=(0.0, 0.33, 1.0), anatomy="colin27", snr=25.0)
    icbm = random_subject(9000, field=1.5, doses=(0.0, 0.33, 1.0), snr=25.0)
    assert torch.equal(h[0]["labels"], ref["labels"]) and not torch.equal(h[0]["labels"], icbm["labels"])


# --- one validation vocabulary: every refusal at the boundary ----------------------------------------------------------
def _tiny():
    with seeded(0): return build_networks(small_cfg())[0]


_G = _tiny()
_x = torch.rand(2, 1, 16, 16, generator=make_generator(0))
_c = condition_vector(0.2, 3.0, batch=2)
_v = torch.rand(8, 8, 4, generator=make_generator(1)) + 0.5
_s = dict(native=_v, standard=1.5 * _v, low={0.2: 1.1 * _v}, field=3.0)
_row = dict(psnr=1.0, ssim=1.0, mae_ce=0.0, mae_sigma=0.0, mae_sigma_residual=0.0, mae_sigma_noise=0.0)
BAD = [  # (call, exception, message fragment)
    (lambda: condition_vector(True, 3.0), TypeError, "dose: expected real numbers, got a bool True"),
    (lambda: condition_vector(0.2, torch.tensor([True])), TypeError, "field: expected real numbers, got a bool"),
    (lambda: condition_vector(0.2, 3.0, batch=2.0), TypeError, "batch: expected an int, got 2.0 (float)"),
    (lambda: condition_vector(0.2, 3.0, batch=0), ValueError, "batch: expected an int >= 1, got 0"),
    (lambda: condition_vector(0.2, 3.0, batch=True), TypeError, "batch: expected an int, got True (bool)"),
    (lambda: condition_vector(float("inf"), 3.0), ValueError, "dose: expected dose fractions in [0, 1]"),
    (lambda: L.simulate_dose_series([1.5]), TypeError, "seeds[0]: expected an int, got 1.5 (float)"),
    (lambda: L.simulate_dose_series([True]), TypeError, "seeds[0]: expected an int, got True (bool)"),
    (lambda: L.simulate_dose_series([1], fields=[2.0]), ValueError, "fields[0]: expected one of (1.5, 3.0), got 2.0"),
    (lambda: L.simulate_dose_series([1, 2], fields=[1.5]), ValueError, "fields: expected 2 values (one per seed), got 1"),
    (lambda: L.simulate_dose_series([1], doses=(0.1, 1.0)), ValueError, "doses[1]: expected a number in (0, 1), got 1"),
    (lambda: L.simulate_dose_series([1], doses=(0.1, 0.1)), ValueError, "doses: expected distinct low doses"),
    (lambda: L.simulate_dose_series([1], doses=()), ValueError, "doses: expected distinct low doses, got ()"),
    (lambda: DoseCropStream([_s], crop=16.0), TypeError, "crop: expected an int, got 16.0 (float)"),
    (lambda: DoseCropStream([_s], crop=0), ValueError, "crop: expected an int >= 1, got 0"),
    (lambda: DoseCropStream([_s], slice_axis=3), ValueError, "slice_axis: expected an int in [0, 2], got 3"),
    (lambda: DoseCropStream([_s], ce_fraction=float("nan")), ValueError, "ce_fraction: expected a finite number"),
    (lambda: DoseCropStream([_s], dims=True), ValueError, "dims: expected one of (2, 3), got True"),
    (lambda: DoseCropStream([]), ValueError, "series: expected at least one dose series"),
    (lambda: DoseCropStream([dict(_s, native=0 * _v)]), ValueError, "series: expected a native image with some non-zero voxels"),
    (lambda: DoseCropStream([{k: v for k, v in _s.items() if k != "low"}]), ValueError, "series[0]: expected a normalised series"),
    (lambda: DoseCropStream([_s], crop=4)(2.0), TypeError, "n: expected an int, got 2.0 (float)"),
    (lambda: DoseCropStream([_s], crop=4)(0), ValueError, "n: expected an int >= 1, got 0"),
    (lambda: generate(_G, _x, _x, _c[:1]), ValueError, "x_NA and cond: expected the same batch size"),
    (lambda: generate(_G, _x, _x, _c[:, :1]), ValueError, "cond: expected a (B, 2) condition"),
    (lambda: synthesize(_G, _x, _x * float("nan"), 0.2, 3.0), ValueError, "x_SD: expected finite values"),
    (lambda: synthesize(_G, _x * float("nan"), _x, 0.2, 3.0), ValueError, "x_NA: expected finite values"),
    (lambda: synthesize(_G, _x, _x, torch.tensor([0.1, 0.2, 0.3]), 3.0), ValueError, "expected scalars or 2 values"),
    (lambda: synthesize(_G, _x, _x, 0.2, 3.0, mask=1), ValueError, "mask: expected one of (True, False), got 1"),
    (lambda: synthesize(torch.nn.Identity(), _x, _x, 0.2, 3.0), ValueError, "G: expected a network with parameters"),
    (lambda: generate(None, _x, _x, _c), ValueError, "G: expected an nn.Module, got 'NoneType'"),
    (lambda: synthesize_volume(_G, _s, 0.2, chunk=0), ValueError, "chunk: expected an int >= 1, got 0"),
    (lambda: synthesize_volume(_G, _s, 0.2, slice_axis=2.0), TypeError, "slice_axis: expected an int, got 2.0"),
    (lambda: synthesize_volume(_G, {"native": _v}, 0.2), ValueError, "series: expected native, standard, low and field"),
    (lambda: L.downsampled_targets(_x, 0), ValueError, "scales: expected an int >= 1, got 0"),
    (lambda: content_loss(_x, _x, "np", patch_size=4.0), TypeError, "patch_size: expected an int, got 4.0 (float)"),
    (lambda: content_loss(_x, _x, "np", patch_size=True), TypeError, "patch_size: expected an int, got True (bool)"),
    (lambda: content_loss(_x, _x, "l1+np", l1_weight=-1.0), ValueError, "l1_weight: expected a number >= 0, got -1"),
    (lambda: content_loss(_x, _x, "l1+np", np_weight=float("nan")), ValueError, "np_weight: expected a finite number"),
    (lambda: content_loss([], _x, "l1"), ValueError, "preds: expected at least one output scale"),
    (lambda: VGG16Features()(torch.zeros(1, 2, 8, 8)), ValueError, "x: expected (B, 1|3, H, W) or (B, 1, D, H, W)"),
    (lambda: L.smoothed_condition(_c, -0.1), ValueError, "sigma: expected a number >= 0, got -0.1"),
    (lambda: L.smoothed_condition(_c[:, 0], 0.1), ValueError, "cond: expected a (B, 2) condition"),
    (lambda: lowdose_metrics(_v, _v, _v, _v[:4]), ValueError, "target and standard: expected the same shape"),
    (lambda: lowdose_metrics(_v * float("nan"), _v, _v, _v), ValueError, "pred: expected finite values"),
    (lambda: lowdose_metrics(_v[0], _v[0], _v[0], _v[0]), ValueError, "target: expected 3 dimensions"),
    (lambda: evaluate_lowdose(_G, [_s], doses=(0.33,)), ValueError, "doses: expected doses of series[0] [0.2], got 0.33"),
    (lambda: evaluate_lowdose(_G, [_s], seed=0.5), TypeError, "seed: expected an int, got 0.5 (float)"),
    (lambda: evaluate_lowdose(_G, []), ValueError, "series: expected at least one held-out series"),
    (lambda: L.summarize([]), ValueError, "rows: expected at least one row"),
    (lambda: L.summarize([dict(psnr=1.0)]), ValueError, "rows[0]: expected the metrics"),
    (lambda: enhancement_curve(_G, _s, []), ValueError, "doses: expected at least one dose"),
    (lambda: enhancement_curve(_G, _s, [1.5]), ValueError, "doses[0]: expected a number in [0, 1], got 1.5"),
    (lambda: enhancement_curve(_G, dict(_s, standard=_v), [0.2]), ValueError, "s: expected contrast-enhanced voxels"),
    (lambda: L.dose_slider(_G, _s, index=4), ValueError, "index: expected an int in [0, 3], got 4"),
    (lambda: L.with_synthetic_low(_G, [_s], dose=1.5), ValueError, "dose: expected a number in [0, 1], got 1.5"),
    (lambda: L.with_synthetic_low(_G, [_s], seed=True), TypeError, "seed: expected an int, got True (bool)"),
    (lambda: L.only_dose([_s], 0.33), ValueError, "dose: expected a dose of series[0] [0.2], got 0.33"),
    (lambda: L.train_sd_predictor([_s], steps=1.0), TypeError, "steps: expected an int, got 1.0 (float)"),
    (lambda: L.train_sd_predictor([_s], batch=True), TypeError, "batch: expected an int, got True (bool)"),
    (lambda: L.train_sd_predictor([_s], crop=20), ValueError, "crop: expected a multiple of 2^levels = 8, got 20"),
    (lambda: L.train_sd_predictor([_s], lr=0.0), ValueError, "lr: expected a number > 0, got 0"),
    (lambda: L.predict_standard(_G, _s, 0.33), ValueError, "dose: expected a dose of s['low'] [0.2], got 0.33"),
    (lambda: L.sd_prediction_metrics(_G, []), ValueError, "series: expected at least one series"),
    (lambda: small_cfg(crop=16.0), TypeError, "crop"),
    (lambda: build_networks(dict(dims=2)), ValueError, "cfg: expected a LowDoseConfig, got 'dict'"),
    (lambda: L.training_series(None), ValueError, "cfg: expected a LowDoseConfig, got 'NoneType'"),
    (lambda: small_cfg(n_critic=0), ValueError, "n_critic: expected an int >= 1, got 0"),
    (lambda: small_cfg(patch_size=0), ValueError, "patch_size: expected an int >= 1, got 0"),
    (lambda: small_cfg(betas=(0.5, 1.0)), ValueError, "betas[1]: expected a number in [0, 1), got 1"),
    (lambda: small_cfg(critic_lr=0.0), ValueError, "critic_lr: expected a number > 0, got 0"),
    (lambda: small_cfg(gp_weight=float("nan")), ValueError, "gp_weight: expected a finite number, got nan"),
    (lambda: small_cfg(label_noise=-0.1), ValueError, "label_noise: expected a number >= 0, got -0.1"),
    (lambda: small_cfg(dose_max=1.5), ValueError, "dose_max: expected a number in [0, 1], got 1.5"),
    (lambda: small_cfg(train_subjects=-1), ValueError, "train_subjects: expected an int >= 0, got -1"),
    (lambda: small_cfg(subject_seed=-1), ValueError, "subject_seed: expected an int >= 0, got -1"),
]


test_bad_input_matrix = refusal_test(BAD)


def test_vgg_file_errors_name_the_path(tmp_path):
    (tmp_path / "junk.pth").write_bytes(b"not a torch file")
    with pytest.raises(ValueError, match="junk.pth"): load_vgg16_features(tmp_path / "junk.pth")
    torch.save([1, 2], tmp_path / "list.pth")
    with pytest.raises(ValueError, match="list.pth is not a VGG-16 state dict: it holds a list"):
        load_vgg16_features(tmp_path / "list.pth")
    sd = {f"features.{k}": torch.zeros(1) for k in VGG16Features().state_dict()}
    torch.save(sd, tmp_path / "shapes.pth")
    with pytest.raises(ValueError, match="shapes.pth is not a VGG-16 state dict"): load_vgg16_features(tmp_path / "shapes.pth")


def test_simulate_dose_series_equals_the_old_cache():
    "simulate_dose_series through phantom.subject_volumes is bit-identical to its old hand-made cache (frozen hashes)."
    from medsynth_nb.data import array_sha256
    old = {
        "lowdose_native": "208d2e832a138522fbf6a6a90418b12b47e9ba6c4afcb0b0cf8cd6652dd0527c",
        "lowdose_standard": "fa4624960540b05358ff79b8fdaf0b64afeee6879a3a576f98205eaf64ac5871",
        "lowdose_low": "a8eea1b8f97708c91e6e6bd72532d497eacedb8f2ad63fd3dee5a51a3cd524ed",
        "lowdose_labels": "b121e1e5cba15c1e1579832bf17894241e7ccad49abc09f87cc345e79342ea8b",
    }
    s = L.simulate_dose_series([4], fields=[3.0], doses=(0.2,), n_lesions=(1, 1))[0]
    got = dict(lowdose_native=s["native"], lowdose_standard=s["standard"], lowdose_low=s["low"][0.2], lowdose_labels=s["labels"])
    assert {k: array_sha256(v.numpy()) for k, v in got.items()} == old
    s["native"].zero_()   # a caller's in-place change does not reach the next call
    assert array_sha256(L.simulate_dose_series([4], fields=[3.0], doses=(0.2,), n_lesions=(1, 1))[0]["native"].numpy()) == old["lowdose_native"]


# --- cached runs and evaluations (issue 19) ---------------------------------------------------------------------------
def _slab(s, z=56, n=12):
    cut = lambda v: v[:, :, z:z + n]
    return dict(s, native=cut(s["native"]), standard=cut(s["standard"]), low={d: cut(v) for d, v in s["low"].items()})


def test_series_digest_sees_every_image_dose_and_field(samples):
    sl = [_slab(s) for s in samples]
    d0 = L.series_digest(sl)
    assert L.series_digest([dict(s) for s in sl]) == d0
    for change in ("native", "standard", "low", "field", "dose"):
        s = dict(sl[0], low=dict(sl[0]["low"]))
        if change == "field": s["field"] = 4.5 - s["field"]
        elif change == "dose": s["low"] = {d + 0.01: v for d, v in s["low"].items()}
        elif change == "low": s["low"][0.2] = s["low"][0.2].clone(); s["low"][0.2][10, 10, 2] += 1e-4
        else: s[change] = s[change].clone(); s[change][10, 10, 2] += 1e-4
        assert L.series_digest([s, sl[1]]) != d0, change
    with pytest.raises(ValueError, match="series: expected at least one series"): L.series_digest([])


def test_cached_evaluation_reads_back_only_its_own_key(smoke_runs, samples, tmp_path, monkeypatch):
    G, sl, p = smoke_runs["np"].models["generator"], [_slab(samples[0])], tmp_path / "t1.json"
    rows, cached = L.cached_evaluation(G, sl, (0.2,), 0, p)
    assert not cached and rows == evaluate_lowdose(G, sl, (0.2,), 0) and p.is_file()
    calls = []
    monkeypatch.setattr(L, "evaluate_lowdose", lambda *a: calls.append(a) or [dict(psnr=0.0)])
    assert L.cached_evaluation(G, sl, (0.2,), 0, p) == (rows, True) and not calls        # the same key: read back
    for args in [((0.33,), 0), ((0.2,), 1)]:                                                # other doses, other seed
        assert L.cached_evaluation(G, sl, *args, p) == ([dict(psnr=0.0)], False)
    G2 = smoke_runs["l1"].models["generator"]                                               # other weights
    assert L.cached_evaluation(G2, sl, (0.2,), 1, p)[1] is False and len(calls) == 3


def test_lowdose_table1_reuses_a_finished_run_and_refuses_other_settings(samples, tmp_path):
    sl, out = [_slab(samples[1])], tmp_path / "ld"
    a = L.lowdose_table1("smoke", out=out, held_out=sl, kinds=("l1",), doses=(0.33,), progress=False)
    log = (tmp_path / "ld-l1" / "log.jsonl").read_text()
    b = L.lowdose_table1("smoke", out=out, held_out=sl, kinds=("l1",), doses=(0.33,), progress=False)
    assert (tmp_path / "ld-l1" / "log.jsonl").read_text() == log                 # nothing trained again
    assert not a["l1"]["cached"] and b["l1"]["cached"] and b["l1"]["rows"] == a["l1"]["rows"]
    assert b["l1"]["origin"]["resumed_from"] is None and b["l1"]["train_s"] == a["l1"]["train_s"] > 0
    cfg = json.loads((tmp_path / "ld-l1" / "config.json").read_text())
    assert cfg["resumed_from"] == 3                                              # config.json now says 'resumed' …
    assert json.loads((tmp_path / "ld-l1" / "origin.json").read_text())["resumed_from"] is None   # … origin does not
    with pytest.raises(ValueError, match="different config"):
        L.lowdose_table1("smoke", out=out, held_out=sl, kinds=("l1",), doses=(0.33,), progress=False, lr=0.5)


def test_lowdose_table1_keeps_the_origin_of_a_run_trained_elsewhere(samples, tmp_path):
    train("lowdose-gan", "smoke", out=tmp_path / "ld-np", content_loss="np", progress=False)   # e.g. the command line
    assert not (tmp_path / "ld-np" / "origin.json").exists()
    r = L.lowdose_table1("smoke", out=tmp_path / "ld", held_out=[_slab(samples[1])], kinds=("np",), doses=(0.33,),
                         progress=False)["np"]
    assert r["origin"]["resumed_from"] is None                       # read before the resume rewrote config.json
    assert json.loads((tmp_path / "ld-np" / "config.json").read_text())["resumed_from"] == 3
