"benchmarks/recon.py's inference fast path: the same function as the library's generators, piece by piece and whole."
import importlib.util
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from medsynth_nb import recon
from medsynth_nb.kspace import gradient_dc, hard_dc, zero_filled
from medsynth_nb.utils import num_threads, test_allclose

_spec = importlib.util.spec_from_file_location(
    "bench_recon", Path(__file__).resolve().parent.parent / "benchmarks" / "recon.py")
bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench)


def _acq(shape, coils=4, batch=2, seed=0):
    mask, maps = recon.recon_setup(shape, 5.0, coils=coils)
    g = torch.Generator().manual_seed(seed)
    x = torch.polar(torch.rand(batch, 1, *shape, generator=g), 3 * torch.rand(batch, 1, *shape, generator=g))
    return x, recon.measure(x, mask, maps), mask, maps


def _rel(a, b): return float((a - b).abs().max() / b.abs().max())


def test_circular_pad_equals_f_pad():
    h = torch.randn(2, 5, 7, 6)
    out = bench.circular_pad(h)
    test_allclose(out, F.pad(h, (1, 1, 1, 1), mode="circular"), rtol=0, atol=0)
    assert out.is_contiguous(memory_format=torch.channels_last)


def test_fold_bn_equals_conv_then_bn():
    torch.manual_seed(0)
    conv, bn = recon._conv(3, 5), torch.nn.BatchNorm2d(5)
    bench.randomise_bn(bn, seed=1)
    h = torch.randn(2, 3, 8, 8)
    w, b = bench.fold_bn(conv.weight, bn)
    with torch.no_grad():
        test_allclose(F.conv2d(F.pad(h, (1, 1, 1, 1), mode="circular"), w, b), bn(conv(h)), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("c_out", [2, 3, 16])  # < 16: matmul + 9 shifts; 16: oneDNN on a padded input
@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("channels_last, few_out", [(True, True), (False, True), (True, False), (False, False)])
def test_conv_paths_equal_circular_conv(c_out, relu, channels_last, few_out):
    torch.manual_seed(0)
    h = torch.randn(2, 6, 9, 8)                       # H != W: a swapped roll axis or sign fails
    w, b = torch.randn(c_out, 6, 3, 3), torch.randn(c_out)
    ref = F.conv2d(F.pad(h, (1, 1, 1, 1), mode="circular"), w, b)
    op = bench._Conv(w, b, relu, channels_last=channels_last, few_out=few_out)
    assert op.few == (few_out and c_out < bench.FEW_OUT)
    with torch.inference_mode(): test_allclose(op(h), ref.relu() if relu else ref, rtol=1e-5, atol=1e-5)


def test_block_equals_postact_block():
    torch.manual_seed(0)
    blk = bench.randomise_bn(recon.PostActBlock(16))
    h = torch.randn(2, 16, 10, 8).relu()
    with torch.inference_mode(): test_allclose(bench._Block(blk)(h), blk(h), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("maps_batched", [False, True])
def test_fused_sense_equals_library_dc(maps_batched):
    "gradient_dc, hard_dc and x0 = A^H y on the fused checkerboard path equal kspace's, complex128."
    x, y, mask, maps = _acq((12, 10))
    y = y.to(torch.complex128); maps = maps.to(torch.complex128)
    if maps_batched: maps = maps.expand(2, -1, -1, -1) * torch.tensor([1.0, 0.5], dtype=torch.float64).view(2, 1, 1, 1)
    z = torch.randn(2, 1, 12, 10, dtype=torch.complex128)
    op = bench.FusedSense(y, mask, maps)
    step = torch.tensor(1.3, dtype=torch.float64)
    test_allclose(op.x0, zero_filled(y, mask, maps), rtol=0, atol=1e-12)
    test_allclose(op.gradient_dc(z, step), gradient_dc(z, y, mask, step, maps), rtol=0, atol=1e-12)
    test_allclose(op.hard_dc(z), hard_dc(z, y, mask, maps), rtol=0, atol=1e-12)


def test_fused_sense_single_coil_and_sign():
    "One coil, and a size whose checkerboard sign sigma is -1 (H/2 + W/2 odd): 14 x 8."
    x, y, mask, _ = _acq((14, 8), coils=1)
    y = y.to(torch.complex128)
    z = torch.randn(2, 1, 14, 8, dtype=torch.complex128)
    op = bench.FusedSense(y, mask, None)
    test_allclose(op.hard_dc(z), hard_dc(z, y, mask), rtol=0, atol=1e-12)
    test_allclose(op.gradient_dc(z, 0.7), gradient_dc(z, y, mask, 0.7), rtol=0, atol=1e-12)


def _unrolled(features):
    torch.manual_seed(0)
    G = bench.randomise_bn(recon.UnrolledGenerator(3, features))
    with torch.no_grad(): G.steps.copy_(torch.tensor([1.5, 0.4, 2.5]))   # distinct mu_k: a wrong k is seen
    return G


@pytest.mark.parametrize("shape", [(16, 12), (15, 12)])   # even: fused DC; odd H: the library's DC steps
@pytest.mark.parametrize("make", [lambda: _unrolled(16), lambda: bench.randomise_bn(recon.PlainGenerator(16, blocks=2))])
def test_fast_generator_equals_generator(shape, make):
    "The whole fast path = G(y) in eval mode, and it is not trivially so: G's output is far from hard DC of x0."
    x, y, mask, maps = _acq(shape)
    G = make()
    with num_threads(1):
        ref = recon.reconstruct(G, y, mask, maps)
        out = bench.fast_reconstruct(bench.fast_generator(G), y, mask, maps, batch_size=1)
        out2 = bench.fast_reconstruct(bench.fast_generator(G), y, mask, maps, batch_size=2)
    assert _rel(out, ref) < 1e-5 and _rel(out2, ref) < 1e-5
    assert _rel(hard_dc(zero_filled(y, mask, maps), y, mask, maps), ref) > 1e-2


@pytest.mark.parametrize("kw", [dict(channels_last=False, few_out=False, fused_dc=False), dict(few_out=False),
                                dict(fused_dc=False)])
def test_fast_generator_switches_compute_the_same(kw):
    "The ablation's variants (`--ablation`) are the same function too."
    x, y, mask, maps = _acq((16, 12))
    G = _unrolled(16)
    with num_threads(1):
        assert _rel(bench.fast_reconstruct(bench.fast_generator(G, **kw), y, mask, maps), recon.reconstruct(G, y, mask, maps)) < 1e-5


def test_fast_generator_refuses_what_it_does_not_compute():
    with pytest.raises(ValueError, match="preact"): bench.fast_generator(recon.UnrolledGenerator(2, 4, block="preact"))
    with pytest.raises(ValueError, match="dc"): bench.fast_generator(recon.UnrolledGenerator(2, 4, dc="soft"))
    with pytest.raises(TypeError, match="G"): bench.fast_generator(torch.nn.Conv2d(2, 2, 3))
    with pytest.raises(ValueError, match="even"): bench.FusedSense(*_acq((15, 12))[1:])
    f = bench.fast_generator(recon.UnrolledGenerator(1, 4))
    with pytest.raises(ValueError, match="batch_size"): bench.fast_reconstruct(f, *_acq((16, 12))[1:], batch_size=0)


def test_conv_flops_counts_unrolled_g():
    "3 prox nets x (2 -> 64, 4 x 64 -> 64, 64 -> 2) 3x3 convs at 320 x 256: 73.6 GFLOP."
    per_pixel = 3 * 2 * 9 * (2 * 64 + 4 * 64 * 64 + 64 * 2)
    assert bench.conv_flops(recon.UnrolledGenerator(3, 64), (320, 256)) == per_pixel * 320 * 256
