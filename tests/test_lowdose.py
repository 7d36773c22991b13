"Pinetz low-dose GAN: condition handling, network shapes, content losses, VGG loading, smoke training, evaluation, bad inputs."
import math
import tempfile
from pathlib import Path

import pytest
import torch

from medsynth_nb.data import DoseSeriesDataset
from medsynth_nb.lowdose import (DoseCropStream, LowDoseConfig, VGG16Features, build_networks, condition_vector,
                                 content_loss, enhancement_curve, evaluate_lowdose, generate, load_vgg16_features,
                                 lowdose_metrics, normalized_series, synthesize, synthesize_volume)
from medsynth_nb.train import get_experiment, load_models, train
from medsynth_nb.utils import make_generator, seeded, test_allclose
from medsynth_nb.wasserstein import gaussian_downsample, wasserstein_patch_loss

torch.set_num_threads(1)


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
    test_allclose(content_loss(p, y, "l1"), (p[0] - y).abs().mean() + (p[1] - gaussian_downsample(y)).abs().mean())
    g1, g2 = make_generator(3), make_generator(3)
    ref = sum(wasserstein_patch_loss(a, t, 4, offset="random", reduction="mean", generator=g2) for a, t in zip(p, [y, gaussian_downsample(y)]))
    test_allclose(content_loss(p, y, "np", generator=g1), ref)
    test_allclose(content_loss(torch.zeros_like(y), y, "np"), content_loss(torch.zeros_like(y), y, "l1"))
    with pytest.raises(ValueError, match="kind: expected one of"): content_loss(p, y, "l2")
    with pytest.raises(ValueError, match="needs a VGG16Features"): content_loss(p, y, "vgg")
    with pytest.raises(ValueError, match="preds and target"): content_loss(torch.zeros(2, 1, 8, 8), y, "l1")


def test_np_prefers_noise_to_smoothness():
    y = 0.1 * torch.randn(4, 1, 32, 32, generator=make_generator(0))
    noise = 0.1 * torch.randn(4, 1, 32, 32, generator=make_generator(1))
    zero = torch.zeros_like(y)
    assert content_loss(zero, y, "l1") < content_loss(noise, y, "l1")
    assert content_loss(noise, y, "np") < 0.6 * content_loss(zero, y, "np")


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
                                     (dict(out_scales=4), "out_scales")])
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
