"Harmonization (Durrer et al.): shapes, stacking, condition handling, channels, smoke training, evaluation vs references, bad inputs."
import re
import numpy as np
import pytest
import torch

from medsynth_nb.data import slices_to_volume, volume_to_slices
from medsynth_nb.harmonize import (DIRECTIONS, HARMONIZE_PRESETS, HarmonizeConfig, brain_mask, check_harmonizer,
                                   evaluate_harmonization, from_model_range, harmonization_scheduler, harmonization_unet,
                                   load_harmonizer, masked_mse, normalize_direction, parse_direction, segment_tissues, slice_discontinuity,
                                   tissue_volumes, to_model_range, translate_slices, translate_volume)
from medsynth_nb.layers import unet_from_preset
from medsynth_nb.utils import make_generator, test_allclose
from meta_device import MetaDeviceModel



class Oracle(torch.nn.Module):
    "ε̂ that makes x̂_0 equal the condition channel; records the condition it sees."
    def __init__(self, sched, learned=True, corrupt=None):
        super().__init__()
        self.ab, self.learned, self.corrupt, self.seen = sched.alphas_cumprod.float(), learned, corrupt, []
        self.in_channels, self.out_channels = 2, 2 if learned else 1

    def forward(self, inp, t):
        self.seen.append(inp[:, :1].clone())
        c, x = inp[:, :1], inp[:, 1:]
        if self.corrupt is not None: c = self.corrupt(c, x)
        ab = self.ab[t].reshape(-1, 1, 1, 1)
        eps = (x - ab.sqrt() * c) / (1 - ab).sqrt()
        return torch.cat([eps, torch.zeros_like(eps)], 1) if self.learned else eps


def _src(n=3, h=12, w=10, seed=0):
    x = torch.rand(n, 1, h, w, generator=make_generator(seed))
    x[:, :, :2] = 0
    return x


@pytest.mark.parametrize("sampler,steps", [("ddim", 7), ("ddpm", 11), ("ddpm", None), ("dpm", 9), ("dpm", 20)])
def test_condition_is_clean_source_every_step(sampler, steps):
    sched = harmonization_scheduler()
    src = _src(2, 8, 8)
    m = Oracle(sched)
    y = translate_slices(m, sched, src, sampler=sampler, num_inference_steps=steps, generator=make_generator(1))
    test_allclose(y, src, atol=3e-5, rtol=0)
    assert len(m.seen) == (steps or 1000)
    assert all(torch.equal(c, to_model_range(src)) for c in m.seen)


def test_oracle_fails_if_condition_noised_or_dropped():
    "The oracle check is sensitive: a denoiser that sees a noised (x_t) or zero condition does not return the source."
    sched = harmonization_scheduler()
    src = _src(2, 8, 8)
    for corrupt in (lambda c, x: x, lambda c, x: torch.zeros_like(c)):
        for sampler in ("ddim", "dpm"):
            y = translate_slices(Oracle(sched, corrupt=corrupt), sched, src, sampler=sampler, num_inference_steps=5,
                                 generator=make_generator(1))
            assert (y - src).abs().max() > 0.1


def test_fixed_variance_and_no_state_leak():
    sched = harmonization_scheduler(learn_sigma=False)
    src = _src(1, 8, 8)
    y = translate_slices(Oracle(sched, learned=False), sched, src, sampler="ddpm", num_inference_steps=5, generator=make_generator(0))
    test_allclose(y, src, atol=3e-5, rtol=0)
    assert sched.num_inference_steps is None and len(sched.timesteps) == 1000   # the caller's scheduler is untouched


def test_translate_volume_shapes_padding_and_empty_slices():
    sched = harmonization_scheduler()
    net = harmonization_unet("smoke", sched, seed=0)                      # 2 levels: H, W must be even -> padded
    vol = torch.rand(4, 7, 9, generator=make_generator(0)); vol[0] = 0
    for axis in (0, 1, 2):
        y = translate_volume(net, sched, vol, axis=axis, num_inference_steps=2, generator=make_generator(0), batch_size=3)
        assert y.shape == vol.shape and 0 <= y.min() and y.max() <= 1
    y = translate_volume(net, sched, vol, axis=0, num_inference_steps=2, generator=make_generator(0))
    assert (y[0] == 0).all() and (y[1:] != 0).any()
    y2 = translate_volume(net, sched, vol, axis=0, num_inference_steps=2, generator=make_generator(0))
    assert torch.equal(y, y2)                                             # same generator seed, same volume


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_stacking_round_trip(axis):
    vol = torch.rand(5, 6, 7, generator=make_generator(axis))
    assert torch.equal(slices_to_volume(volume_to_slices(vol, axis), axis), vol)
    sched = harmonization_scheduler()
    y = translate_volume(Oracle(sched), sched, vol, axis=axis, num_inference_steps=3, generator=make_generator(0))
    test_allclose(y, vol, atol=3e-5, rtol=0)                               # oracle: identity through slicing and stacking


def test_channels_follow_scheduler():
    for learn, cout in ((True, 2), (False, 1)):
        s = harmonization_scheduler(learn_sigma=learn)
        net = harmonization_unet("smoke", s)
        assert (net.in_channels, net.out_channels) == (2, cout)
        check_harmonizer(net, s)
    with pytest.raises(ValueError, match="has 1 output channels but a DDPMScheduler with variance_type='learned_range' needs 2"):
        check_harmonizer(harmonization_unet("smoke", harmonization_scheduler(learn_sigma=False)), harmonization_scheduler(learn_sigma=True))
    with pytest.raises(ValueError, match="expected 2 input channels"):
        translate_slices(unet_from_preset("smoke", in_channels=1, out_channels=2), harmonization_scheduler(), _src())


def test_bad_inputs():
    sched = harmonization_scheduler(); m = Oracle(sched); src = _src()
    cases = [(lambda: translate_slices(m, sched, src * 3), ValueError, "expected intensities in [0, 1]"),
             (lambda: translate_slices(m, sched, src.repeat(1, 2, 1, 1)), ValueError, "single-channel"),
             (lambda: translate_slices(m, sched, src[0]), ValueError, "expected 4 dimensions"),
             (lambda: translate_slices(m, sched, src, sampler="pndm"), ValueError, "sampler: expected one of"),
             (lambda: translate_slices(m, sched, src, batch_size=0), ValueError, "batch_size"),
             (lambda: translate_slices(m, sched, src, num_inference_steps=1001), ValueError, "num_inference_steps: expected an int in [1, 1000], got 1001"),
             (lambda: translate_slices(m, "ddpm", src), TypeError, "scheduler: expected the training DDPMScheduler"),
             (lambda: translate_volume(m, sched, src), ValueError, "expected 3 dimensions"),
             (lambda: parse_direction("3T->7T"), ValueError, "direction: expected one of"),
             (lambda: brain_mask(torch.rand(4, 4), threshold=1.5), ValueError, "threshold"),
             (lambda: masked_mse(torch.rand(3, 3), torch.rand(3, 3), torch.ones(3, 3)), TypeError, "mask: expected a bool"),
             (lambda: masked_mse(torch.rand(3, 3), torch.rand(3, 3), torch.zeros(3, 3, dtype=torch.bool)), ValueError, "empty"),
             (lambda: segment_tissues(torch.rand(3, 3, 3), torch.zeros(3, 3, 3, dtype=torch.bool)), ValueError, "at least 3 voxels"),
             (lambda: evaluate_harmonization(torch.rand(4, 4, 4), torch.rand(4, 4, 4) * 2), ValueError, "target: expected intensities"),
             (lambda: evaluate_harmonization(torch.ones(4, 4, 4), torch.rand(4, 4, 4)), ValueError, "constant"),
             (lambda: slice_discontinuity(torch.rand(3, 3, 3), axis=5), ValueError, "axis")]
    for fn, exc, msg in cases:
        with pytest.raises(exc, match=None) as e: fn()
        assert msg in str(e.value), (msg, str(e.value))


def test_config_validation():
    assert set(HARMONIZE_PRESETS) == {"smoke", "demo", "paper"}
    p = HarmonizeConfig(**HARMONIZE_PRESETS["paper"])
    assert (p.lr, p.ema, p.batch_size, p.weight_decay, p.unet, p.num_train_timesteps, p.lambda_vb) == (1e-4, 0.9999, 4, 0.0, "paper", 1000, 1e-3)
    for bad, msg in ((dict(direction="x"), "direction"), (dict(unet="huge"), "unet"), (dict(sampler="euler"), "sampler"),
                     (dict(sample_steps=2000), "sample_steps"), (dict(crop=(4, 4)), "crop"), (dict(n_subjects=0), "n_subjects"),
                     (dict(prediction_type="x0"), "prediction_type")):
        with pytest.raises(ValueError, match=msg): HarmonizeConfig(**bad)
    assert (p.prediction_type, p.crop) == ("epsilon", (120, 96))                     # Durrer: ε, whole slices
    d = HarmonizeConfig(**HARMONIZE_PRESETS["demo"])
    assert (d.prediction_type, d.crop, d.batch_size) == ("v_prediction", (120, 96), 4)
    assert d.scheduler().prediction_type == "v_prediction" and p.scheduler().prediction_type == "epsilon"
    assert HarmonizeConfig.from_dict({k: v for k, v in p.to_dict().items() if k != "prediction_type"}).prediction_type == "epsilon"
    assert HarmonizeConfig.from_dict(HarmonizeConfig(crop=(64, 48)).to_dict()).crop == (64, 48)


def test_brain_mask_and_mse_references():
    from skimage.segmentation import flood_fill
    g = make_generator(0)
    v = torch.zeros(10, 12, 11); v[2:8, 3:9, 2:9] = torch.rand(6, 6, 7, generator=g) * 0.9 + 0.1
    v[4:6, 5:7, 4:6] = 0                                                  # an enclosed dark hole (ventricle)
    m = brain_mask(v)
    bg = flood_fill(np.pad((v > 0.01 * v.max()).numpy().astype(np.uint8), 1), (0, 0, 0), 2, connectivity=1)[1:-1, 1:-1, 1:-1] == 2
    assert torch.equal(m, torch.from_numpy(~bg)) and m[4:6, 5:7, 4:6].all() and int(m.sum()) == 6 * 6 * 7
    a, b = torch.rand(10, 12, 11, generator=g), torch.rand(10, 12, 11, generator=g)
    ref = np.mean((a.numpy().astype(np.float64) - b.numpy())[m.numpy()] ** 2)
    test_allclose(masked_mse(a, b, m), torch.tensor(ref, dtype=torch.float32))


def test_segmentation_reference():
    from scipy.cluster.vq import kmeans2
    g = np.random.default_rng(0)
    vals = np.concatenate([g.normal(0.2, 0.03, 400), g.normal(0.5, 0.03, 700), g.normal(0.8, 0.03, 900)])
    vol = torch.from_numpy(g.permutation(vals).reshape(20, 10, 10))
    mask = torch.ones(20, 10, 10, dtype=torch.bool)
    seg = segment_tissues(vol, mask)
    init = np.quantile(vals, [1 / 6, 1 / 2, 5 / 6])[:, None]
    cent, lab = kmeans2(vol.numpy().reshape(-1, 1), init, iter=100, minit="matrix")
    assert np.array_equal(np.argsort(np.argsort(cent[:, 0]))[lab] + 1, seg.reshape(-1).numpy())
    vols = tissue_volumes(seg, 8.0)
    assert vols == {"csf": 400 * 8.0, "gm": 700 * 8.0, "wm": 900 * 8.0}


def test_gmm_matches_scikit_learn_and_recovers_a_known_mixture():
    from sklearn.mixture import GaussianMixture
    from medsynth_nb.harmonize import gmm_1d
    g = np.random.default_rng(1)
    truth = dict(w=np.array([0.2, 0.35, 0.45]), mu=np.array([0.2, 0.5, 0.8]), sd=np.array([0.05, 0.04, 0.03]))
    k = g.choice(3, 6000, p=truth["w"])
    vals = g.normal(truth["mu"][k], truth["sd"][k])
    vol = torch.from_numpy(vals.reshape(20, 20, 15)); mask = torch.ones_like(vol, dtype=torch.bool)
    km = segment_tissues(vol, mask)[mask] - 1
    fit = gmm_1d(vol[mask].double(), km)
    nk = np.bincount(km.numpy(), minlength=3)
    mu0 = np.array([vals[km.numpy() == j].mean() for j in range(3)])
    prec0 = 1 / np.array([vals[km.numpy() == j].var() for j in range(3)])
    sk = GaussianMixture(3, tol=1e-12, max_iter=2000, reg_covar=0.0, weights_init=nk / nk.sum(), means_init=mu0[:, None],
                         precisions_init=prec0[:, None, None]).fit(vals[:, None])
    o = np.argsort(sk.means_[:, 0])
    np.testing.assert_allclose(fit["means"].numpy(), sk.means_[o, 0], rtol=1e-6)
    np.testing.assert_allclose(fit["variances"].numpy(), sk.covariances_[o, 0, 0], rtol=1e-5)
    np.testing.assert_allclose(fit["weights"].numpy(), sk.weights_[o], rtol=1e-5)
    assert np.array_equal(np.argsort(o)[sk.predict(vals[:, None])], fit["labels"].numpy())
    np.testing.assert_allclose(fit["means"].numpy(), truth["mu"], atol=0.01)             # the truth, up to sampling error
    np.testing.assert_allclose(fit["variances"].numpy() ** 0.5, truth["sd"], rtol=0.1)
    assert (np.diff(fit["loglik"]) > -1e-12).all()                                          # EM never decreases it
    seg = segment_tissues(vol, mask, method="gmm")
    assert torch.equal(seg[mask] - 1, fit["labels"])
    with pytest.raises(ValueError, match=r"method: expected one of \('kmeans', 'gmm'\), got 'fast'"):
        segment_tissues(vol, mask, method="fast")


def test_evaluation_original_vs_perfect_and_ahd_reference():
    g = make_generator(0)
    t = torch.zeros(12, 14, 13); t[2:10, 2:12, 2:11] = torch.rand(8, 10, 9, generator=g) * 0.9 + 0.1
    t = t / t.max()                                                       # a preprocessed target spans [0, 1]
    perfect = evaluate_harmonization(t, t)
    assert perfect["mse"] == 0 and perfect["ahd"] == 0 and perfect["dvol_gm"] == 0 and perfect["hd_csf"] == 0
    assert abs(perfect["dice_wm"] - 1) < 1e-12
    p = (t * 0.5 + 0.3) * (t > 0)                                          # a contrast change
    r = evaluate_harmonization(p, t, tissues=False)
    m = brain_mask(t)
    pr = ((p - p.min()) / (p.max() - p.min()))
    ref_ahd = np.abs(np.histogram(pr[m].numpy(), 255, (0, 1))[0] - np.histogram(t[m].numpy(), 255, (0, 1))[0]).sum()
    assert abs(r["ahd"] - ref_ahd) <= 2 and r["mse"] > 0
    # rescaling makes a global affine change of a [0,1] image invisible
    assert evaluate_harmonization(t * 0.5, t, tissues=False)["mse"] < 1e-12


def test_stripe_index_detects_per_slice_offsets():
    g = make_generator(0)
    x = torch.linspace(0, 1, 20)
    vol = (x[None, :, None] + x[None, None, :]).expand(16, 20, 20).clone() * 0.5
    striped = vol + 0.2 * torch.rand(16, 1, 1, generator=g)
    assert slice_discontinuity(vol, 0) < 1e-6 and slice_discontinuity(striped, 0) > 1.0


def test_smoke_training_through_engine(tmp_path):
    from medsynth_nb.config import get_experiment
    from medsynth_nb.run_state import read_log
    from medsynth_nb.engine import train
    exp = get_experiment("harmonize")
    assert exp.config_class is HarmonizeConfig
    res = train("harmonize", "smoke", out=tmp_path / "run", progress=False, steps=4, crop=(16, 16), batch_size=2)
    rows = read_log(tmp_path / "run")
    assert len(rows) == 4 and all(np.isfinite(r["train/loss"]) and r["train/vb"] > 0 for r in rows)
    model, sched, cfg = load_harmonizer(tmp_path / "run")
    assert cfg.crop == (16, 16) and sched.variance_type == "learned_range" and model.out_channels == 2
    sd = res.ema["model"].state_dict()
    assert all(torch.equal(sd[k], v) for k, v in model.state_dict().items())   # EMA weights loaded
    y = translate_slices(model, sched, _src(2, 16, 16), num_inference_steps=2, generator=make_generator(0))
    assert y.shape == (2, 1, 16, 16) and torch.isfinite(y).all()
    # resuming to more steps continues the same run
    train("harmonize", "smoke", out=tmp_path / "run", progress=False, steps=6, crop=(16, 16), batch_size=2, resume=True)
    assert len(read_log(tmp_path / "run")) == 6
    with pytest.raises(ValueError, match="expected a 'harmonize' checkpoint"):
        train("toy-regression", "smoke", out=tmp_path / "toy", progress=False, steps=2)
        load_harmonizer(tmp_path / "toy")


def test_prediction_type_round_trip(tmp_path):
    "A v-prediction run stores its target; the reloaded scheduler reads the network's output the same way."
    from medsynth_nb.engine import train
    train("harmonize", "smoke", out=tmp_path / "v", progress=False, steps=2, crop=(16, 16), batch_size=2,
          prediction_type="v_prediction")
    model, sched, cfg = load_harmonizer(tmp_path / "v")
    assert cfg.prediction_type == sched.prediction_type == "v_prediction" and sched.variance_type == "learned_range"
    y = translate_slices(model, sched, _src(2, 16, 16), num_inference_steps=2, generator=make_generator(0))
    eps = translate_slices(model, harmonization_scheduler(prediction_type="epsilon"), _src(2, 16, 16), num_inference_steps=2,
                           generator=make_generator(0))
    assert torch.isfinite(y).all() and not torch.equal(y, eps)        # the target type changes how the output is read


def test_directions_and_ranges():
    assert set(DIRECTIONS) == {"1.5T-to-3T", "3T-to-1.5T"}
    assert parse_direction("1.5T-to-3T") == (1.5, 3.0) and parse_direction("3T-to-1.5T") == (3.0, 1.5)
    assert parse_direction("1.5T->3T") == (1.5, 3.0) and parse_direction("3T->1.5T") == (3.0, 1.5)   # old aliases
    assert normalize_direction("3T->1.5T") == "3T-to-1.5T" and normalize_direction("1.5T-to-3T") == "1.5T-to-3T"
    with pytest.raises(TypeError, match="direction: expected a str, got int"): normalize_direction(3)
    x = torch.linspace(0, 1, 5)
    assert torch.equal(to_model_range(x), torch.tensor([-1.0, -0.5, 0.0, 0.5, 1.0]))
    test_allclose(from_model_range(torch.tensor([-2.0, 0.0, 2.0])), torch.tensor([0.0, 0.5, 1.0]))


def test_config_normalises_old_direction_names(tmp_path):
    "A config (or a stored run) with the old '->' name is read under the new name; runs are named without '>'."
    for old, new in (("1.5T->3T", "1.5T-to-3T"), ("3T->1.5T", "3T-to-1.5T")):
        assert HarmonizeConfig(direction=old).direction == new
        assert HarmonizeConfig.from_dict({**HarmonizeConfig().to_dict(), "direction": old}).direction == new
        assert HarmonizeConfig().replace(direction=old).direction == new
    assert all(">" not in d for d in DIRECTIONS)
    with pytest.raises(ValueError, match="direction: expected one of"): HarmonizeConfig(direction="3T-to-7T")
    # an old run: a checkpoint whose stored config says '3T->1.5T' still loads
    from medsynth_nb.engine import train
    train("harmonize", "smoke", out=tmp_path / "run", progress=False, steps=1, crop=(16, 16), batch_size=2,
          direction="3T-to-1.5T")
    ck = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)
    assert ck["config"]["direction"] == "3T-to-1.5T"
    ck["config"]["direction"] = "3T->1.5T"
    torch.save(ck, tmp_path / "run" / "checkpoint.pt")
    assert load_harmonizer(tmp_path / "run")[2].direction == "3T-to-1.5T"


def test_cli_accepts_direction_without_shell_redirection(tmp_path):
    "Through a real shell, '--set direction=1.5T-to-3T' arrives whole; the old '1.5T->3T' is cut by a redirection."
    import subprocess, sys
    from medsynth_nb.cli import build_parser, parse_set
    echo = f"{sys.executable} -c 'import sys; print(sys.argv[-1])'"
    new = subprocess.run(["bash", "-c", f"{echo} --set direction=1.5T-to-3T"], cwd=tmp_path, capture_output=True, text=True)
    assert new.stdout.strip() == "direction=1.5T-to-3T" and not (tmp_path / "3T").exists()
    old = subprocess.run(["bash", "-c", f"{echo} --set direction=1.5T->3T"], cwd=tmp_path, capture_output=True, text=True)
    assert old.stdout.strip() == "" and (tmp_path / "3T").exists()          # the bug this rename fixes
    args = build_parser().parse_args(["train", "harmonize", "--out", str(tmp_path / "r"), "--set", "direction=1.5T-to-3T"])
    key, value = parse_set(args.set[0])
    assert (key, value) == ("direction", "1.5T-to-3T")
    from medsynth_nb.config import get_experiment
    assert get_experiment("harmonize").config("paper", **{key: value}).direction == "1.5T-to-3T"


class _MetaHarmonizer(MetaDeviceModel):
    "A [source, x_t] → [ε, v] model on the meta device: records where its inputs arrive, then stops the loop."
    in_channels, out_channels = 2, 2

    def forward(self, inp, t):
        self.seen.append((inp.device.type, t.device.type, tuple(inp.shape)))
        raise StopIteration


@pytest.mark.parametrize("sampler", ["ddim", "ddpm", "dpm"])
def test_translate_and_compare_move_inputs_to_the_model_device(sampler):
    "No GPU needed: CPU source slices and a CPU generator reach a meta-device model as meta tensors."
    from medsynth_nb.harmonize import compare_samplers
    sched = harmonization_scheduler()
    m = _MetaHarmonizer()
    with pytest.raises(StopIteration):
        translate_slices(m, sched, _src(2, 8, 8), sampler=sampler, num_inference_steps=3, generator=make_generator(0))
    assert m.seen == [("meta", "meta", (2, 2, 8, 8))]
    m.seen.clear()
    vol = torch.rand(2, 8, 8, generator=make_generator(1))
    with pytest.raises(StopIteration):
        compare_samplers(m, sched, vol, vol, samplers={"x": (sampler, 3)})
    assert m.seen == [("meta", "meta", (2, 2, 8, 8))]


@pytest.mark.parametrize("n", [5, 20, 50, 333, 1000])
def test_translation_chain_ends_noise_free_at_t0(n):
    "The harmonization sampler's respaced chain ends at t = 0, so the last ancestral step adds no noise (not 'trailing')."
    s = harmonization_scheduler()
    assert s.timestep_spacing == "leading"
    s.set_timesteps(n)
    assert int(s.timesteps[-1]) == 0 and len(s.timesteps) == n
    x, out = torch.randn(1, 1, 4, 4, generator=make_generator(0)), torch.zeros(1, 2, 4, 4)
    a = s.step(out, 0, x, generator=make_generator(1)).prev_sample
    assert torch.equal(a, s.step(out, 0, x, generator=make_generator(2)).prev_sample)   # no draw from the generator


def test_paired_subject_from_the_heldout_anatomy():
    "anatomy='colin27' gives another person's brain (GM/WM Dice < 0.75 to a training subject of the same seed)."
    from medsynth_nb.harmonize import paired_subject
    from medsynth_nb.phantom import anatomy_dice
    a, b = paired_subject(5, anatomy="colin27"), paired_subject(5)
    assert max(anatomy_dice(a["labels"], b["labels"]).values()) < 0.75
    assert a[1.5].shape == b[1.5].shape and not torch.equal(a[3.0], b[3.0])


def test_heldout_pair_is_colin27_and_unseen():
    "The lesson's test pair: Colin27, Dice < 0.75 to every demo training subject, seeds disjoint, same scans both ways."
    from medsynth_nb.harmonize import HARMONIZE_PRESETS, TEST_ANATOMY, TEST_SEEDS, HarmonizeConfig, heldout_pair, paired_subject
    from medsynth_nb.data import durrer_preprocess
    from medsynth_nb.phantom import anatomy_dice
    assert TEST_ANATOMY == "colin27"
    cfg = HarmonizeConfig(**HARMONIZE_PRESETS["demo"])
    train_seeds = range(cfg.subject_seed, cfg.subject_seed + cfg.n_subjects)
    assert not set(TEST_SEEDS) & set(train_seeds)
    src, tgt, lab = heldout_pair(TEST_SEEDS[0], "1.5T-to-3T")
    subj = paired_subject(TEST_SEEDS[0], anatomy="colin27")
    assert torch.equal(src, durrer_preprocess(subj[1.5])) and torch.equal(tgt, durrer_preprocess(subj[3.0]))
    assert torch.equal(lab, subj["labels"])
    s2, t2, _ = heldout_pair(TEST_SEEDS[0], "3T-to-1.5T")
    assert torch.equal(s2, tgt) and torch.equal(t2, src)
    worst = max(max(anatomy_dice(lab, paired_subject(s)["labels"]).values()) for s in train_seeds)
    assert worst < 0.75, worst


@pytest.mark.parametrize("call, exc, msg", [
    (lambda h: h.paired_subject(True), TypeError, "seed: expected an int, got True (bool)"),
    (lambda h: h.paired_subject(1.0), TypeError, "seed: expected an int, got 1.0 (float)"),
    (lambda h: h.paired_subject(1, deform_voxels=-1), ValueError, "deform_voxels: expected a number >= 0"),
    (lambda h: h.paired_subject(1, t1_jitter=1.0), ValueError, "t1_jitter: expected a number in [0, 1)"),
    (lambda h: h.paired_subject(1, fields=(1.5, 7.0)), ValueError, "fields: expected one of (1.5, 3.0), got 7.0"),
    (lambda h: h.paired_volumes(0), ValueError, "n: expected an int >= 1, got 0"),
    (lambda h: h.heldout_pair(9000.0), TypeError, "seed: expected an int, got 9000.0 (float)"),
    (lambda h: h.brain_mask(torch.rand(4, 4, 4), threshold=1.0), ValueError, "threshold: expected a number in [0, 1), got 1"),
    (lambda h: h.brain_mask(torch.full((4, 4, 4), float("nan"))), ValueError, "volume: expected finite values"),
    (lambda h: h.masked_mse(torch.rand(3), torch.rand(3), torch.zeros(3, dtype=torch.bool)), ValueError, "mask: expected at least one voxel"),
    (lambda h: h.segment_tissues(torch.rand(4, 4, 4), torch.ones(4, 4, 4, dtype=torch.bool), n_iter=0), ValueError, "n_iter: expected an int >= 1"),
    (lambda h: h.segment_tissues(torch.rand(4, 4, 4), torch.ones(4, 4, 4, dtype=torch.bool), method="fast"), ValueError, "method: expected one of ('kmeans', 'gmm')"),
    (lambda h: h.gmm_1d(torch.rand(6, dtype=torch.float64), torch.tensor([0, 0, 2, 2, 2, 2])), ValueError, "init: expected labels 0..K-1 with every class present"),
    (lambda h: h.gmm_1d(torch.rand(6, dtype=torch.float64), torch.zeros(5, dtype=torch.int64)), ValueError, "init: expected an int64 tensor of v's shape (6,)"),
    (lambda h: h.tissue_volumes(torch.zeros(2, 2, 2), voxel_volume=0), ValueError, "voxel_volume: expected a number > 0, got 0"),
    (lambda h: h.evaluate_harmonization(torch.rand(4, 8, 8), torch.rand(4, 8, 8), spacing=-2), ValueError, "spacing: expected a number > 0"),
    (lambda h: h.evaluate_harmonization(torch.rand(4, 8, 8), torch.rand(4, 8, 8), mask=torch.full((4, 8, 8), 0.5)), ValueError, "mask: expected a binary mask"),
    (lambda h: h.evaluate_harmonization(torch.rand(4, 8, 8), torch.rand(4, 8, 8), segmentation="fsl"), ValueError, "segmentation: expected one of"),
    (lambda h: h.harmonization_table({}), ValueError, "rows: expected at least one method"),
    (lambda h: h.harmonization_table({"DM": {"mse": 1.0, "ahd": 2.0}}), ValueError, "rows['DM']: expected the keys"),
    (lambda h: h.slice_discontinuity(torch.rand(4, 4, 4), axis=3), ValueError, "axis: expected one of (0, 1, 2), got 3"),
    (lambda h: h.slice_discontinuity(torch.rand(4, 4, 4), mask=torch.ones(4, 4, 5, dtype=torch.bool)), ValueError, "mask and volume: expected the same shape"),
])
def test_bad_input_is_refused_at_the_boundary(call, exc, msg):
    "Each public function names the argument, what it expected and what came (issue 18's validation vocabulary)."
    from medsynth_nb import harmonize as h
    with pytest.raises(exc, match=re.escape(msg)): call(h)


@pytest.mark.parametrize("kw, exc, msg", [
    (dict(batch_size=True), TypeError, "batch_size: expected an int, got True (bool)"),
    (dict(batch_size=2.0), TypeError, "batch_size: expected an int, got 2.0 (float)"),
    (dict(sampler="DDIM"), ValueError, "sampler: expected one of ('ddpm', 'ddim', 'dpm'), got 'DDIM'"),
    (dict(sampler="dpm", eta=0.5), ValueError, "takes no eta (a deterministic solver)"),
    (dict(num_inference_steps=0), ValueError, "num_inference_steps: expected an int in [1, 1000], got 0"),
    (dict(num_inference_steps=1001), ValueError, "num_inference_steps: expected an int in [1, 1000], got 1001"),
    (dict(eta=-0.1), ValueError, "eta: expected a number >= 0"),
])
def test_translate_slices_refuses_bad_settings(kw, exc, msg):
    from medsynth_nb.harmonize import harmonization_scheduler, harmonization_unet, translate_slices
    s = harmonization_scheduler()
    with pytest.raises(exc, match=re.escape(msg)):
        translate_slices(harmonization_unet("smoke", s), s, torch.rand(1, 1, 16, 16), **kw)


def test_old_unet_preset_name_loads_as_demo():
    "Runs written before the U-Net presets took the experiments' names store unet='bench': they load and resume as 'demo'."
    from medsynth_nb.layers import UNET_PRESETS
    from medsynth_nb.run_state import check_compatible
    assert set(UNET_PRESETS) == {"smoke", "demo", "paper"} and HARMONIZE_PRESETS["demo"]["unet"] == "demo"
    assert HarmonizeConfig(unet="bench").unet == "demo"
    new = HarmonizeConfig(**HARMONIZE_PRESETS["demo"])
    old = {**new.to_dict(), "unet": "bench"}
    check_compatible({"experiment": "harmonize", "config_class": "HarmonizeConfig", "config": old}, "harmonize", new)
    with pytest.raises(ValueError, match="unet: expected one of"): HarmonizeConfig(unet="large")


def test_paired_subject_cached_equals_the_old_simulation():
    "paired_subject through phantom.subject_cache is bit-identical to the uncached version (frozen hashes) and copied out."
    from medsynth_nb.data import array_sha256
    from medsynth_nb.harmonize import paired_subject
    old = {
        "harm_15": "190c8c4fa9abe8f000b8d6a3e4bf170f5de03193a44ef2e970511cc9ba8e7ca3",
        "harm_3": "97e2423516d2407b6e4d6cbb343dcf4b9f9a7266b291dcc2a683c1701c69d0bd",
        "harm_labels": "ac224051ad93f79615d2f5d3d6d0a7a288e0cf6b3ba2711f41955a8cf2693acb",
    }
    p = paired_subject(6, deform_voxels=1.0)
    got = dict(harm_15=p[1.5], harm_3=p[3.0], harm_labels=p["labels"])
    assert {k: array_sha256(v.numpy()) for k, v in got.items()} == old
    p[1.5].zero_()
    assert array_sha256(paired_subject(6, deform_voxels=1.0)[1.5].numpy()) == old["harm_15"]
    # the SNR dict is part of the key: another SNR, another noise level
    q = paired_subject(6, deform_voxels=1.0, snr={1.5: 5.0, 3.0: 40.0})
    assert array_sha256(q[3.0].numpy()) == old["harm_3"] and array_sha256(q[1.5].numpy()) != old["harm_15"]


def test_cached_translation_is_keyed_by_what_produced_it(tmp_path):
    "A translation is stored once and read back bit for bit; another seed, sampler, source or checkpoint is recomputed."
    from medsynth_nb.engine import train
    from medsynth_nb.harmonize import cached_translation
    run = tmp_path / "run"
    train("harmonize", "smoke", out=run, progress=False, steps=2, crop=(16, 16), batch_size=2)
    vol = _src(3, 16, 16)[:, 0]
    a = cached_translation(run, vol, "ddim", 2, batch_size=2)
    b = cached_translation(run, vol, "ddim", 2, batch_size=2)
    assert not a["cached"] and b["cached"] and a["path"] == b["path"] and torch.equal(a["pred"], b["pred"])
    model, sched, _ = load_harmonizer(run)
    direct = translate_volume(model, sched, vol, num_inference_steps=2, generator=make_generator(0), batch_size=2)
    assert torch.equal(a["pred"], direct)
    for kw in (dict(seed=1), dict(sampler="ddpm"), dict(batch_size=1)):
        args = {"sampler": "ddim", "batch_size": 2, **kw}
        c = cached_translation(run, vol, args.pop("sampler"), 2, **args)
        assert not c["cached"] and c["path"] != a["path"]
    assert not cached_translation(run, vol.flip(0), "ddim", 2, batch_size=2)["cached"]      # another source
    assert not cached_translation(run, vol, "ddim", 2, batch_size=2, cache=False)["cached"]
    # a file whose stored key differs (same name) is not trusted
    z = dict(np.load(a["path"]))
    meta = __import__("json").loads(str(z["meta"])); meta["key"]["seed"] = 99
    np.savez_compressed(a["path"], pred=z["pred"] * 0, meta=np.array(__import__("json").dumps(meta)))
    again = cached_translation(run, vol, "ddim", 2, batch_size=2)
    assert not again["cached"] and torch.equal(again["pred"], direct)
    # retraining the run changes the checkpoint: the old translation is not reused
    train("harmonize", "smoke", out=run, progress=False, steps=3, crop=(16, 16), batch_size=2, resume=True)
    assert not cached_translation(run, vol, "ddim", 2, batch_size=2)["cached"]
    with pytest.raises(ValueError, match="checkpoint.pt"):
        cached_translation(tmp_path / "nothing", vol, "ddim", 2)


def test_durrer_tables_match_the_paper_and_our_table_layout():
    from medsynth_nb.harmonize import DURRER_TABLES, harmonization_table
    t = DURRER_TABLES
    assert t["1.5T-to-3T"]["Original"] == t["3T-to-1.5T"]["Original"]          # the paper's two Original rows agree
    assert (t["1.5T-to-3T"]["DM"]["mse"], t["3T-to-1.5T"]["DM"]["mse"]) == (0.76e-3, 1.61e-3)   # Table 1
    assert (t["1.5T-to-3T"]["DM"]["dvol_gm"], t["3T-to-1.5T"]["DM"]["hd_wm"]) == (3.91e4, 7.67)   # Tables 2, 3
    line = harmonization_table({"DM": t["1.5T-to-3T"]["DM"]}).splitlines()[-1]
    assert line == "| DM | 0.00076 | 1.48e+05 | 1.79e+04 | 3.91e+04 | 1.49e+04 | 0.810 | 0.880 | 0.920 | 8.65 | 7.01 | 9.30 |"


def test_oracle_denoiser_returns_its_condition():
    from medsynth_nb.harmonize import OracleDenoiser
    sched = harmonization_scheduler()
    x = _src(2, 12, 10)
    for sampler, steps in (("ddim", 3), ("ddpm", 5), ("dpm", 4)):
        o = OracleDenoiser(sched)
        test_allclose(translate_slices(o, sched, x, sampler=sampler, num_inference_steps=steps,
                                       generator=make_generator(0)), x, atol=2e-5, rtol=0)
        assert len(o.seen) == steps


@pytest.mark.parametrize("prediction_type", ["v_prediction", "epsilon"])
def test_dpm_translation_equals_a_diffusers_loop(prediction_type):
    """sampler='dpm' is diffusers' DPMSolverMultistepScheduler (linspace spacing, the run's prediction type) driven
    by a plain loop with the clean condition first and the learned-variance channel dropped: a real (random) U-Net."""
    diffusers = pytest.importorskip("diffusers")
    from medsynth_nb.data import center_crop_or_pad
    sched = harmonization_scheduler(prediction_type=prediction_type)
    net = harmonization_unet("smoke", sched, seed=0).eval()
    with torch.no_grad():                                   # the zero-initialised output layer: give it weights
        for p_ in net.out.parameters(): p_.copy_(torch.randn(p_.shape, generator=make_generator(3)) * 0.05)
    src = _src(2, 14, 10, seed=2)
    ours = translate_slices(net, sched, src, sampler="dpm", num_inference_steps=7, generator=make_generator(5))
    ref = diffusers.DPMSolverMultistepScheduler(num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02,
                                                beta_schedule="linear", prediction_type=prediction_type,
                                                timestep_spacing="linspace")
    ref.set_timesteps(7)
    cond = to_model_range(center_crop_or_pad(src, (14, 10)))
    x = torch.randn((2, 1, 14, 10), generator=make_generator(5))
    with torch.no_grad():
        for t in ref.timesteps:
            out = net(torch.cat([cond, x], 1), torch.full((2,), int(t)))[:, :1]
            x = ref.step(out, t, x).prev_sample
    test_allclose(ours, from_model_range(x), atol=2e-5, rtol=0)
    assert (ours - src).abs().max() > 0.05                  # a real network: not the oracle's identity


def test_compare_samplers_counts_calls_and_scores_tissues():
    "Each row carries the network calls per slice its sampler made, and Dice against one target segmentation."
    from medsynth_nb.harmonize import compare_samplers
    sched = harmonization_scheduler()
    calls = []
    class Counting(Oracle):
        def forward(self, inp, t): calls.append(1); return super().forward(inp, t)
    vol = torch.rand(2, 16, 16, generator=make_generator(4)) * 0.8 + 0.1
    vol[0, 0, :2] = torch.tensor([0.0, 1.0])                 # range [0, 1]: Durrer's min-max rescale is the identity
    res = compare_samplers(Counting(sched), sched, vol, vol, device=torch.device("cpu"), tissues=True,
                           samplers={"a": ("ddpm", None), "a-6": ("ddpm", 6), "d-3": ("ddim", 3), "p-2": ("dpm", 2)})
    assert len(calls) == 1011 and {k: v["calls"] for k, v in res.items()} == {"a": 1000, "a-6": 6, "d-3": 3, "p-2": 2}
    for r in res.values():                                   # the oracle returns the source = the target: perfect
        assert r["mse"] < 1e-8 and r["dice_gm"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match=re.escape("samplers['z'] steps: expected an int in [1, 1000], got 0")):
        compare_samplers(Counting(sched), sched, vol, vol, samplers={"z": ("dpm", 0)})
