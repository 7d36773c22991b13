"Shared network blocks: shapes, parameter counts (Durrer's 11,402,370), embedding cross-check, bad inputs."
import math
import pytest
import torch
from hypothesis import given, settings, strategies as st

from medsynth_nb.layers import CondCritic, CondUNet, DCGANCritic, LocalAttention, SplitHeadUNet, conv_norm_act
from medsynth_nb.layers import (AttentionBlock, ResBlock, UNet, UNET_PRESETS, count_parameters, normalization,
                                timestep_embedding, unet_from_preset)
from medsynth_nb.utils import make_generator, seeded, test_allclose



def test_paper_preset_parameter_count_matches_durrer():
    assert count_parameters(unet_from_preset("paper", 2, 2)) == 11_402_370


def test_bench_and_smoke_counts():
    assert count_parameters(unet_from_preset("demo", 1, 1)) == 1_112_801
    assert count_parameters(unet_from_preset("smoke", 1, 1)) == 176_849


@settings(max_examples=15, deadline=None)
@given(st.integers(1, 64), st.lists(st.integers(0, 999), min_size=1, max_size=5))
def test_timestep_embedding_matches_diffusers(dim, ts):
    from diffusers.models.embeddings import get_timestep_embedding
    t = torch.tensor(ts)
    ours = timestep_embedding(t, dim)
    assert ours.shape == (len(ts), dim)
    if dim > 1:
        ref = get_timestep_embedding(t, dim, flip_sin_to_cos=True, downscale_freq_shift=0)
        test_allclose(ours, ref, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("preset,size", [("smoke", 16), ("smoke", 8), ("demo", 16)])
@pytest.mark.parametrize("learn_sigma", [False, True])
def test_unet_shapes(preset, size, learn_sigma):
    out_ch = 2 if learn_sigma else 1
    net = unet_from_preset(preset, 2, out_ch)
    x = torch.randn(2, 2, size, size, generator=make_generator(0))
    assert net(x, torch.tensor([0, 999])).shape == (2, out_ch, size, size)


def test_unet_init_is_deterministic_and_zero_output():
    a, b = unet_from_preset("smoke", 1, 1, seed=3), unet_from_preset("smoke", 1, 1, seed=3)
    for p, q in zip(a.parameters(), b.parameters()): assert torch.equal(p, q)
    with torch.no_grad(): assert a(torch.randn(1, 1, 16, 16), 5).abs().max() == 0


def test_unet_time_dependence_after_training_step():
    net = unet_from_preset("smoke", 1, 1)
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    x = torch.randn(2, 1, 16, 16, generator=make_generator(1))
    for _ in range(3):
        loss = (net(x, torch.tensor([1, 900])) - x).pow(2).mean(); opt.zero_grad(); loss.backward(); opt.step()
    with torch.no_grad(): assert not torch.allclose(net(x, torch.tensor([1, 1])), net(x, torch.tensor([900, 900])))


def test_resblock_scale_shift_and_skip():
    with seeded(0): rb = ResBlock(16, 8, out_channels=32, use_scale_shift_norm=True, num_groups=8)
    y = rb(torch.randn(3, 16, 4, 4), torch.randn(3, 8))
    assert y.shape == (3, 32, 4, 4)


def test_attention_is_permutation_equivariant():
    with seeded(0): att = AttentionBlock(8, num_heads=2, num_groups=4)
    with torch.no_grad(): att.proj_out.weight.normal_(generator=make_generator(1))
    x = torch.randn(1, 8, 3, 3, generator=make_generator(2))
    perm = torch.randperm(9, generator=make_generator(3))
    xp = x.reshape(1, 8, 9)[..., perm].reshape(1, 8, 3, 3)
    test_allclose(att(xp).reshape(1, 8, 9), att(x).reshape(1, 8, 9)[..., perm], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("call,msg", [
    (lambda n: n(torch.randn(2, 3, 16, 16), torch.tensor([1, 2])), "x: expected 1 channels, got 3"),
    (lambda n: n(torch.randn(2, 1, 15, 16), torch.tensor([1, 2])), "H and W must be divisible by 2"),
    (lambda n: n(torch.randn(2, 1, 16, 16), torch.tensor([1, 2, 3])), "t: expected shape (2,)"),
    (lambda n: n(torch.randn(2, 1, 16, 16).long(), torch.tensor([1, 2])), "x: expected a real floating-point tensor"),
    (lambda n: n(torch.randn(2, 1, 16, 16), 1, torch.zeros(2, 3)), "cond: this UNet has no vector condition"),
])
def test_unet_bad_inputs(call, msg):
    with pytest.raises((ValueError, TypeError), match=None) as e: call(unet_from_preset("smoke", 1, 1))
    assert msg in str(e.value)


def test_unet_forward_does_not_scan_for_nan():
    "forward runs once per sampler step: it checks shapes only; a NaN input gives NaN out (samplers check once)."
    net, x = unet_from_preset("smoke", 1, 1), torch.full((1, 1, 16, 16), float("nan"))
    with torch.no_grad(): assert net(x, 1).isnan().all()


# ---- no host synchronisation in forward (issue 21): every Tensor → Python conversion is a device sync on a GPU -------
SYNC_METHODS = ("item", "__bool__", "__int__", "__float__", "__index__", "tolist", "numpy")


@pytest.fixture
def sync_calls(monkeypatch):
    "Record every call of a Tensor → Python conversion (each one waits for the GPU under CUDA)."
    calls = []
    for name in SYNC_METHODS:
        orig = getattr(torch.Tensor, name)
        def counted(self, *a, _orig=orig, _name=name, **k):
            calls.append(_name)
            return _orig(self, *a, **k)
        monkeypatch.setattr(torch.Tensor, name, counted)
    return calls


def test_sync_counter_sees_a_nan_scan(sync_calls):
    "The counter itself: the finiteness scan the networks no longer do (check_tensor's default) is seen."
    from medsynth_nb.utils import check_tensor
    check_tensor(torch.ones(3), "x")
    assert sync_calls == ["__bool__"]


def _forward_cases():
    g = make_generator(0)
    with seeded(0):
        return {
            "UNet, float t": (unet_from_preset("smoke", 1, 1), (torch.randn(2, 1, 16, 16, generator=g),
                                                               torch.tensor([3.5, 700.0]))),
            "UNet, int t": (unet_from_preset("smoke", 1, 1, num_cond=2), (torch.randn(2, 1, 16, 16, generator=g), 7,
                                                                          torch.randn(2, 2, generator=g))),
            "CondUNet 2-D, attention": (CondUNet(3, 1, 2, dims=2, base_channels=4, channel_mult=(1, 2, 2),
                                                 attention_levels=(1, 2), out_scales=2),
                                        (torch.randn(2, 3, 8, 8, generator=g), torch.randn(2, 2, generator=g))),
            "CondUNet 3-D, attention": (CondUNet(3, 1, 2, dims=3, base_channels=4, channel_mult=(1, 2),
                                                 attention_levels=(1,), out_scales=1),
                                        (torch.randn(1, 3, 4, 4, 4, generator=g), torch.randn(1, 2, generator=g))),
            "CondCritic": (CondCritic(3, 2, dims=2, base_channels=4, channel_mult=(1, 2)),
                           (torch.randn(2, 3, 8, 8, generator=g), torch.randn(2, 2, generator=g))),
            "SplitHeadUNet": (SplitHeadUNet(1, base_channels=4, depth=2), (torch.randn(2, 1, 16, 16, generator=g),)),
            "DCGANCritic": (DCGANCritic(1, base_channels=4, downsamplings=2), (torch.randn(2, 1, 16, 16, generator=g),)),
        }


@pytest.mark.parametrize("case", list(_forward_cases()))
def test_forward_has_no_host_sync(case, sync_calls):
    "No NaN scan, .item() or tensor → int in any network's forward (they run every step and every sampler step)."
    net, args = _forward_cases()[case]
    sync_calls.clear()
    with torch.no_grad(): out = net(*args)
    assert sync_calls == [], f"{case}: forward converted tensors to Python values: {sync_calls}"
    assert all(o.isfinite().all() for o in (out if isinstance(out, (list, tuple)) else [out]))


def test_timestep_embedding_passes_nan_through():
    "No scan per call: a NaN timestep gives a NaN row, the others are exact (samplers validate at their entry)."
    e = timestep_embedding(torch.tensor([1.0, float("nan"), 2.0]), 8)
    assert e[1].isnan().all() and e[[0, 2]].isfinite().all()
    test_allclose(e[[0, 2]], timestep_embedding(torch.tensor([1.0, 2.0]), 8), rtol=0, atol=0)


def test_local_attention_offsets_raster_order():
    "The plain-int offsets equal the meshgrid raster order they replaced (last axis fastest)."
    for dims, window in ((2, 3), (3, 3), (2, 5)):
        la = LocalAttention(8, 2, window=window, dims=dims)
        r = window // 2
        grids = torch.meshgrid(*[torch.arange(-r, r + 1)] * dims, indexing="ij")
        ref = [tuple(int(gr.reshape(-1)[i]) for gr in grids) for i in range(window ** dims)]
        assert la.offsets() == ref


def test_bad_construction():
    with pytest.raises(ValueError, match="divisible by the number of groups"): normalization(24, 32)
    with pytest.raises(ValueError, match="heads must divide"): AttentionBlock(16, num_heads=3, num_groups=8)
    with pytest.raises(ValueError, match="preset: expected one of"): unet_from_preset("tiny")
    with pytest.raises(ValueError, match="dim: expected an int >= 1, got 0"): timestep_embedding(torch.tensor([1]), 0)


# ---- plain U-Net with split heads and DCGAN critic (Angermann et al.) ------------------------------------------------


def test_angermann_paper_sizes():
    assert count_parameters(SplitHeadUNet(1, (1, 1), ("tanh", "softplus"), 16, 5)) == 8_669_570   # paper: about 8.7 M
    assert count_parameters(DCGANCritic(1, 32, 5)) == 2_787_041                                    # paper: about 2.8 M


def test_split_heads_share_the_trunk_only():
    with seeded(0): net = SplitHeadUNet(2, (1, 3), ("tanh", "none"), base_channels=4, depth=2)
    a, b = net(torch.randn(2, 2, 8, 8))
    assert a.shape == (2, 1, 8, 8) and b.shape == (2, 3, 8, 8) and a.abs().max() < 1
    b.sum().backward()
    assert all(p.grad is None for p in net.branches[0].parameters()) and net.down[0][0][0].weight.grad is not None
    with seeded(0): net2 = SplitHeadUNet(2, (1, 3), ("tanh", "none"), base_channels=4, depth=2)
    test_allclose(net2(torch.ones(1, 2, 8, 8))[0], net(torch.ones(1, 2, 8, 8))[0])   # seeded init is reproducible


def test_dcgan_critic_is_per_sample_and_unnormalised():
    with seeded(0): D = DCGANCritic(1, 4, 3)
    x = torch.randn(4, 1, 32, 32)
    y = x.clone(); y[2] = 0
    test_allclose(D(x)[[0, 1, 3]], D(y)[[0, 1, 3]])
    assert not any(isinstance(m, (torch.nn.modules.batchnorm._BatchNorm, torch.nn.InstanceNorm2d, torch.nn.GroupNorm)) for m in D.modules())
    assert D.features(x).shape == (4, 16, 4, 4)


@pytest.mark.parametrize("call,msg", [
    (lambda: SplitHeadUNet(depth=0), "depth: expected an int >= 1"),
    (lambda: SplitHeadUNet(head_activations=("tanh", "relu")), "head_activations: expected one of"),
    (lambda: conv_norm_act(1, 2, norm="batch"), "norm: expected one of"),
    (lambda: DCGANCritic(downsamplings=0), "downsamplings: expected an int >= 1"),
    (lambda: SplitHeadUNet(1, depth=2)(torch.randn(1, 1, 10, 10)), "divisible by 2\\^depth = 4"),
    (lambda: DCGANCritic(1, 4, 2)(torch.randn(1, 1, 10, 10)), "divisible by 2\\^downsamplings = 4"),
    (lambda: DCGANCritic(1, 4, 2)(torch.randn(1, 1, 8)), "x: expected 4 dimensions"),
])
def test_plain_blocks_bad_inputs(call, msg):
    with pytest.raises(ValueError, match=msg): call()


# ---- one validation vocabulary (issue 18): every constructor refuses bool/float ints, sizes < 1, unknown choices -----
from medsynth_nb.layers import (CondCritic, CondResBlock, CondUNet, Downsample, LocalAttention, Upsample, activation,
                                condition_mlp, conv_nd, norm_nd)

BAD_LAYER_INPUTS = [
    (lambda: timestep_embedding(torch.tensor([1]), True), TypeError, "dim: expected an int, got True (bool)"),
    (lambda: timestep_embedding(torch.tensor([1]), 8.0), TypeError, "dim: expected an int, got 8.0 (float)"),
    (lambda: timestep_embedding(torch.tensor([1]), 8, max_period=0), ValueError,
     "max_period: expected a number > 0, got 0"),
    (lambda: normalization(16, 0), ValueError, "groups: expected an int >= 1, got 0"),
    (lambda: Downsample(0), ValueError, "channels: expected an int >= 1, got 0"),
    (lambda: Upsample(4.0), TypeError, "channels: expected an int, got 4.0 (float)"),
    (lambda: ResBlock(16, 8, dropout=1.0, num_groups=8), ValueError, "dropout: expected a number in [0, 1), got 1"),
    (lambda: ResBlock(16, 8, out_channels=0, num_groups=8), ValueError, "out_channels: expected an int >= 1, got 0"),
    (lambda: AttentionBlock(16, num_heads=0, num_groups=8), ValueError, "num_heads: expected an int >= 1, got 0"),
    (lambda: UNet(in_channels=True), TypeError, "in_channels: expected an int, got True (bool)"),
    (lambda: UNet(num_res_blocks=-1), ValueError, "num_res_blocks: expected an int >= 0, got -1"),
    (lambda: UNet(channel_mult=()), ValueError, "channel_mult: expected a non-empty tuple of ints"),
    (lambda: UNet(channel_mult=(1, 2.5)), TypeError, "channel_mult[1]: expected an int, got 2.5 (float)"),
    (lambda: UNet(num_cond=1.0), TypeError, "num_cond: expected an int, got 1.0 (float)"),
    (lambda: unet_from_preset("smoke", seed=1.5), TypeError, "seed: expected an int, got 1.5 (float)"),
    (lambda: unet_from_preset("smoke", num_cond=2)(torch.randn(2, 1, 16, 16), 1, torch.zeros(1, 2)), ValueError,
     "cond: expected shape (2, 2), got (1, 2)"),
    (lambda: conv_nd(True, 1, 1, 3), TypeError, "dims: expected an int, got True (bool)"),
    (lambda: conv_nd(2.0, 1, 1, 3), TypeError, "dims: expected an int, got 2.0 (float)"),
    (lambda: conv_nd(4, 1, 1, 3), ValueError, "dims: expected an int in [2, 3], got 4"),
    (lambda: norm_nd("layer", 2, 8), ValueError, "norm: expected one of ('batch', 'group', 'none'), got 'layer'"),
    (lambda: norm_nd("batch", 2, 0), ValueError, "channels: expected an int >= 1, got 0"),
    (lambda: activation("gelu"), ValueError, "act: expected one of ('relu', 'lrelu', 'silu'), got 'gelu'"),
    (lambda: condition_mlp(True), TypeError, "cond_dim: expected an int, got True (bool)"),
    (lambda: condition_mlp(2, depth=True), TypeError, "depth: expected an int, got True (bool)"),
    (lambda: condition_mlp(2, depth=2.0), TypeError, "depth: expected an int, got 2.0 (float)"),
    (lambda: condition_mlp(2, emb_dim=0), ValueError, "emb_dim: expected an int >= 1, got 0"),
    (lambda: CondResBlock(4, 4, padding_mode="mirror"), ValueError, "padding_mode: expected one of"),
    (lambda: CondResBlock(4, 4, emb_dim=-1), ValueError, "emb_dim: expected an int >= 0, got -1"),
    (lambda: LocalAttention(8, 2, window=True), TypeError, "window: expected an int, got True (bool)"),
    (lambda: LocalAttention(8, 2, window=3.0), TypeError, "window: expected an int, got 3.0 (float)"),
    (lambda: LocalAttention(8, 2, window=4), ValueError, "window: expected an odd int >= 1, got 4"),
    (lambda: CondUNet(cond_dim=True), TypeError, "cond_dim: expected an int, got True (bool)"),
    (lambda: CondUNet(out_scales=4), ValueError, "out_scales: expected an int in [1, 3], got 4"),
    (lambda: CondUNet(out_scales=2.0), TypeError, "out_scales: expected an int, got 2.0 (float)"),
    (lambda: CondUNet(window=2), ValueError, "window: expected an odd int >= 1, got 2"),
    (lambda: CondCritic(base_channels=0), ValueError, "base_channels: expected an int >= 1, got 0"),
    (lambda: CondCritic(dims=2, base_channels=4)(torch.randn(2, 3, 16, 16), torch.zeros(1, 2)), ValueError,
     "cond: expected shape (2, 2), got (1, 2)"),
    (lambda: conv_norm_act(1, 2, slope=-0.1), ValueError, "slope: expected a number >= 0, got -0.1"),
    (lambda: conv_norm_act(1, 2, kernel_size=3.0), TypeError, "kernel_size: expected an int, got 3.0 (float)"),
    (lambda: SplitHeadUNet(depth=True), TypeError, "depth: expected an int, got True (bool)"),
    (lambda: SplitHeadUNet(depth=2.0), TypeError, "depth: expected an int, got 2.0 (float)"),
    (lambda: SplitHeadUNet(head_channels=(1, 0)), ValueError, "head_channels[1]: expected an int >= 1, got 0"),
    (lambda: SplitHeadUNet(downsample="stride"), ValueError,
     "downsample: expected one of ('pool', 'conv'), got 'stride'"),
    (lambda: SplitHeadUNet(decoder_slope=float("nan")), ValueError, "decoder_slope: expected a finite number"),
    (lambda: DCGANCritic(downsamplings=True), TypeError, "downsamplings: expected an int, got True (bool)"),
    (lambda: DCGANCritic(downsamplings=3.0), TypeError, "downsamplings: expected an int, got 3.0 (float)"),
    (lambda: DCGANCritic(max_mult=0), ValueError, "max_mult: expected an int >= 1, got 0"),
]


@pytest.mark.parametrize("call,exc,msg", BAD_LAYER_INPUTS)
def test_layers_refuse_bad_input(call, exc, msg):
    with pytest.raises(exc) as e: call()
    assert msg in str(e.value), str(e.value)


def _sums(outs):
    "(sum, sum |·|) of each output, in float64."
    return [v for o in (outs if isinstance(outs, list) else [outs]) for v in (o.double().sum().item(), o.double().abs().sum().item())]


def test_forward_pinned():
    """The three U-Nets' forward passes (methods added with @patch in the lesson) on fixed seeds and inputs, pinned to
    the values of the version before the split (the UNet's parameters redrawn: its zero-initialised convolutions would
    hide every path but the skip connections)."""
    g = lambda *s, seed=0: torch.randn(*s, generator=make_generator(seed))
    with seeded(0):
        u = UNet(2, 16, 2, num_res_blocks=1, channel_mult=(1, 2), attention_resolutions=(2,), num_groups=8, num_cond=2)
    with seeded(1), torch.no_grad():
        for p in u.parameters(): p.normal_(0, 0.2)
    with seeded(0): c = CondUNet(dims=2, base_channels=4, channel_mult=(1, 2, 2), attention_levels=(1,), out_scales=2)
    with seeded(0): s = SplitHeadUNet(1, (1, 1), ("tanh", "softplus"), base_channels=4, depth=3)
    with torch.no_grad():
        got = {"UNet": _sums(u(g(2, 2, 8, 8), torch.tensor([3, 700]), g(2, 2, seed=1))),
               "CondUNet": _sums(c(g(2, 3, 8, 12), g(2, 2, seed=1))), "SplitHeadUNet": _sums(s(g(2, 1, 16, 16)))}
    want = {"UNet": [38.302211, 55.866027], "CondUNet": [18.095567, 75.196591, -6.609906, 11.758271],
            "SplitHeadUNet": [-254.058381, 291.553690, 552.747180, 552.747180]}
    for k in want: assert got[k] == pytest.approx(want[k], rel=1e-4, abs=1e-4), k


def test_cond_unet_scales_finest_first():
    with seeded(0): net = CondUNet(dims=2, base_channels=4, channel_mult=(1, 2, 2), attention_levels=(1,), out_scales=2)
    outs = net(torch.randn(3, 3, 8, 12, generator=make_generator(0)), torch.zeros(3, 2))
    assert [tuple(o.shape) for o in outs] == [(3, 1, 8, 12), (3, 1, 4, 6)]


@pytest.mark.parametrize("net,x,msg", [
    (lambda: SplitHeadUNet(1, (1, 1), ("tanh", "softplus"), 4, 2), torch.zeros(1, 2, 8, 8), "x: expected 1 channels, got 2"),
    (lambda: SplitHeadUNet(1, (1, 1), ("tanh", "softplus"), 4, 2), torch.zeros(1, 1, 8, 6), "divisible by 2^depth = 4, got (8, 6)"),
    (lambda: DCGANCritic(1, 4, 2), torch.zeros(1, 3, 8, 8), "x: expected 1 channels, got 3"),
    (lambda: DCGANCritic(1, 4, 2), torch.zeros(1, 1, 6, 8), "divisible by 2^downsamplings = 4, got (6, 8)"),
    (lambda: DCGANCritic(1, 4, 2), torch.zeros(1, 8, 8), "x: expected 4 dimensions"),
])
def test_angermann_networks_refuse_bad_shapes(net, x, msg):
    with pytest.raises(ValueError) as e: net()(x)
    assert msg in str(e.value), str(e.value)
