"""Inference time per slice of Lei's plain G, unrolled G and 30-iteration CS-wavelet, beside Lei's Table III,
and an inference-only fast path for the unrolled G (`fast_generator`) timed against the library path in the same run.

Usage: python benchmarks/recon.py [--shape 320 256] [--coils 8] [--features 64] [--slices 4] [--repeats 3]
                                  [--threads N] [--device cpu] [--cs sigpy|fista|both] [--batch 1] [--ablation]
Re-measure (one thread, as reported): OMP_NUM_THREADS=1 python benchmarks/recon.py --threads 1 --ablation
Lei et al. (TITAN Xp, 320 x 256, 8 coils): plain G 0.022 s, unrolled G 0.025 s, 30-iteration BART CS 0.4 s per slice.
Networks are timed with random weights (and randomised BatchNorm statistics) in eval mode: the weights do not change
the cost. Every method is timed round-robin (one call of each per round, median over rounds), so load drifts on a
shared machine hit all alike; the ratios are what this run measured.

The fast path computes what `UnrolledGenerator` / `PlainGenerator` compute in eval mode (checked in
tests/test_recon_speed.py to float tolerance), with:
- `torch.inference_mode()`;
- each eval BatchNorm folded into the conv before it (conv -> BN: scaled weights plus a bias), and the BN after a
  post-activation block's sum folded into that block's second conv plus one fused multiply-add on the skip;
- channels-last activations (oneDNN's native layout: no reorder around every conv) with a circular pad written by
  slice copies (F.pad's circular mode is 10x slower on channels-last tensors);
- convs with few outputs (the 64 -> 2 conv of each prox net, oneDNN's slowest case) as one matmul to 9 x 2
  outputs plus nine circular shifts;
- data consistency fused on the checkerboard path: with C = (-1)^(m+n) and the sign sigma of `kspace.fft2c`,
  A^H A x = sum_i conj(s_i) C F^-1(M F(C s_i x)) (the inner sigma C . sigma C = 1 cancels), so one FFT pair per DC
  step on precomputed C s_i, and x0 = A^H y, hard DC reuse sigma C y computed once;
- slices in chunks of `--batch` (1 by default: larger chunks make every activation exceed glibc's 32 MiB mmap
  threshold, and each allocation then pays fresh page faults).

Profile, once (torch.profiler / cProfile, one thread, 320 x 256, 8 coils, 2026-12-04, shared 2-core machine):
- library path, unrolled G: oneDNN convolutions 77 % (12 of the 18 are 64 -> 64: 4.8 GFLOP each; the three 64 -> 2
  convs take 7 % although they are 0.8 % of the FLOPs), circular-pad copies 6 %, ReLU 6 %, BatchNorm 5 %, the
  elementwise DC products 2 %, FFTs 1 %;
- fast path: convolutions 63 %, pad copies 17 %, ReLU 4 %, FFTs 4 %, addcmul 3 %, the 64 -> 2 matmuls 1 %;
- CS-wavelet, FISTA-Haar (torch): elementwise products (coil maps, checkerboard, mask, step) 44 %, FFTs 22 %,
  copies 8 %, norms 6 %: 121 FFT calls (30 power iterations for the step size, 30 FISTA iterations);
- CS-wavelet, sigpy (numpy): FFTs 46 %, coil-map products 15 %, fftshift rolls 11 %, db4 wavelets 11 %: 242 FFTs
  (30 power iterations, 30 iterations).
The malloc tax is on every method: with glibc's trim threshold raised (mallopt) the fast path, the library path and
FISTA each ran 10-15 % faster in one trial, leaving the ratios as they were; the benchmark does not tune malloc.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from medsynth_nb.kspace import gradient_dc, hard_dc, zero_filled
from medsynth_nb.recon import _conv as _conv_module
from medsynth_nb.recon import (CS_LAM, PlainGenerator, PostActBlock, ProxResNet, UnrolledGenerator, cs_wavelet_recon,
                               measure, recon_setup, reconstruct, to_channels, to_complex)

PAPER = {"plain G": 0.022, "unrolled G": 0.025, "CS-wavelet (30 it, sigpy)": 0.4, "CS-wavelet (30 it, FISTA-Haar)": 0.4}
# Lesson 31's Table II (`demo`: 64 x 64, 4 birdcage coils, 10x, 400 G steps, 16 held-out Colin27 slices, Lei's crop),
# copied from nbs/31_unrolled_recon.ipynb's measured table: SNR in dB. No trained model is timed here.
TABLE2_DEMO_SNR = {"CS-wavelet (CS_LAM)": 19.61, "unpaired WGAN": 18.52, "l1-net": 20.67, "WGAN + l1": 20.44}
FEW_OUT = 16  # convs with fewer output channels run as matmul + shifts (oneDNN blocks channels by 16)


# ---------------------------------------------------------------------------------------------------------------
# the fast path
def circular_pad(h: Tensor) -> Tensor:
    "Circular 1-pixel pad of (B, C, H, W), channels-last out: equal to F.pad(h, (1, 1, 1, 1), mode='circular')."
    B, C, H, W = h.shape
    out = torch.empty((B, C, H + 2, W + 2), dtype=h.dtype, device=h.device, memory_format=torch.channels_last)
    out[:, :, 1:-1, 1:-1] = h
    out[:, :, 0, 1:-1] = h[:, :, -1]
    out[:, :, -1, 1:-1] = h[:, :, 0]
    out[:, :, :, 0] = out[:, :, :, -2]
    out[:, :, :, -1] = out[:, :, :, 1]
    return out


def fold_bn(w: Tensor, bn: nn.BatchNorm2d) -> tuple[Tensor, Tensor]:
    "Eval BN(conv_w(h)) = conv_{w s}(h) + t with s = gamma / sqrt(var + eps), t = beta - mean s: (w s, t)."
    s = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    return w * s[:, None, None, None], bn.bias - bn.running_mean * s


class _Conv:
    "A circular 3x3 conv with an optional bias and ReLU; few outputs: matmul to 9 taps x outputs, then 9 shifts."
    def __init__(self, w: Tensor, b: Tensor | None, relu: bool,
                 channels_last: bool = True, # False: NCHW weights and F.pad (the library's layout)
                 few_out: bool = True, # False: every conv through oneDNN
                ):
        self.out, self.relu, self.b, self.cl = w.shape[0], relu, b, channels_last
        self.few = few_out and self.out < FEW_OUT
        if self.few:  # (C_in, 9 * C_out): column k * C_out + o holds w[o, :, kh, kw], k = 3 kh + kw
            self.w = w.permute(1, 2, 3, 0).reshape(w.shape[1], 9 * self.out).contiguous()
        else: self.w = w.contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)

    def __call__(self, h: Tensor) -> Tensor:
        if not self.few:
            hp = circular_pad(h) if self.cl else F.pad(h, (1, 1, 1, 1), mode="circular")
            out = F.conv2d(hp, self.w, self.b)
        else:  # out[o, i, j] = sum_k z[(i + kh - 1) % H, (j + kw - 1) % W, k, o], z = h^T w (per pixel)
            z = (h.permute(0, 2, 3, 1) @ self.w).unflatten(-1, (9, self.out))      # (B, H, W, 9, C_out)
            out = sum(torch.roll(z[..., 3 * kh + kw, :], (1 - kh, 1 - kw), (1, 2))
                      for kh in range(3) for kw in range(3)).permute(0, 3, 1, 2)
            if self.b is not None: out = out + self.b[:, None, None]
        return out.relu_() if self.relu else out


class _Block:
    "PostActBlock ReLU(BN(h + conv_b(ReLU(BN(conv_a(h)))))) = ReLU(conv_{b s}(r) + t + s h), r = ReLU(conv_a'(h))."
    def __init__(self, blk: PostActBlock, **kw):
        conv_a, bn_a, _, conv_b = blk.body
        bn = blk.post[0]
        self.a = _Conv(*fold_bn(conv_a.weight, bn_a), relu=True, **kw)
        wb, t = fold_bn(conv_b.weight, bn)
        self.b = _Conv(wb, t, relu=False, **kw)
        self.s = (bn.weight / torch.sqrt(bn.running_var + bn.eps)).view(1, -1, 1, 1)

    def __call__(self, h: Tensor) -> Tensor:
        return self.b(self.a(h)).addcmul_(h, self.s).relu_()


def fuse_prox(net: ProxResNet, **kw) -> list:
    "The layers of a post-activation `ProxResNet` as fused ops (`_Conv` with folded BN and ReLU, `_Block`); kw: `_Conv`'s."
    if not isinstance(net, ProxResNet): raise TypeError(f"net: expected a ProxResNet, got {type(net).__name__}")
    mods, ops, i = list(net.net), [], 0
    while i < len(mods):
        m = mods[i]
        if isinstance(m, PostActBlock): ops.append(_Block(m, **kw)); i += 1; continue
        if not isinstance(m, nn.Conv2d) or m.padding_mode != "circular" or m.kernel_size != (3, 3) or m.bias is not None:
            raise ValueError(f"net: expected post-activation layers (circular 3x3 conv, BN, ReLU, PostActBlock), "
                             f"got {type(m).__name__} at layer {i} (block='preact' has no fast path here)")
        w, b, i = m.weight, None, i + 1
        if i < len(mods) and isinstance(mods[i], nn.BatchNorm2d): (w, b), i = fold_bn(w, mods[i]), i + 1
        relu = i < len(mods) and isinstance(mods[i], nn.ReLU)
        ops.append(_Conv(w, b, relu, **kw)); i += relu
    return ops


def run_prox(ops: list, x: Tensor) -> Tensor:
    "x + net(x) with the fused ops, (B, 2, H, W) real."
    h = x
    for op in ops: h = op(h)
    return x + h


class FusedSense:
    ("A = M F S on the checkerboard path (even H, W): C s_i, sigma C M y and x0 = A^H y precomputed, one FFT pair "
     "per normal or hard-DC call.")
    def __init__(self, y: Tensor, mask: Tensor, maps: Tensor | None):
        H, W = y.shape[-2:]
        if H % 2 or W % 2: raise ValueError(f"y: the checkerboard path needs even H and W, got shape {tuple(y.shape)}")
        i = torch.arange(H, device=y.device)[:, None] + torch.arange(W, device=y.device)[None, :]
        c = (1 - 2 * (i % 2)).to(y.dtype)                                   # (-1)^(m+n)
        sigma = -1 if (H // 2 + W // 2) % 2 else 1
        self.m = torch.broadcast_to(mask.to(y.device).bool(), y.shape[-2:])
        self.sc = c if maps is None else maps.to(device=y.device, dtype=y.dtype) * c
        self.scc = self.sc.conj()
        self.yt = sigma * c * (self.m * y)                                    # sigma C M y
        self.x0 = self._back(self.yt)

    def _back(self, k: Tensor) -> Tensor: return (self.scc * torch.fft.ifft2(k, norm="ortho")).sum(1, keepdim=True)
    def _fwd(self, x: Tensor) -> Tensor: return torch.fft.fft2(self.sc * x, norm="ortho")

    def gradient_dc(self, x: Tensor, step: Tensor) -> Tensor:
        "x - mu (A^H A x - x0), as `kspace.gradient_dc`."
        return x - step * (self._back(self.m * self._fwd(x)) - self.x0)

    def hard_dc(self, x: Tensor) -> Tensor:
        "sum_i conj(s_i) F^H(M y_i + (1 - M) F(s_i x)), as `kspace.hard_dc`."
        return self._back(torch.where(self.m, self.yt, self._fwd(x)))


class _SlowSense:
    "The library's DC steps (odd sizes): same interface as `FusedSense`."
    def __init__(self, y, mask, maps):
        self.y, self.mask, self.maps = y, mask, maps
        self.x0 = zero_filled(y, mask, maps, check=False)
    def gradient_dc(self, x, step): return gradient_dc(x, self.y, self.mask, step, self.maps, x_zf=self.x0, check=False)
    def hard_dc(self, x): return hard_dc(x, self.y, self.mask, self.maps, check=False)


def fast_generator(G: nn.Module,
                   channels_last: bool = True, # channels-last activations (False: NCHW, F.pad)
                   few_out: bool = True, # convs with < FEW_OUT outputs as matmul + shifts
                   fused_dc: bool = True, # DC on `FusedSense` (even sizes; False: kspace's gradient_dc / hard_dc)
                  ):
    ("An inference-only function f(y, mask, maps) equal to G(y, mask, maps) in eval mode (float tolerance), for a "
     "post-activation `UnrolledGenerator` (gradient DC, final hard DC) or `PlainGenerator`; weights read now. "
     "The switches exist to measure each change alone (`--ablation`).")
    kw = dict(channels_last=channels_last, few_out=few_out)
    with torch.no_grad():
        if isinstance(G, UnrolledGenerator):
            if G.dc != "gradient": raise ValueError(f"G: the fast path has gradient DC only, got dc={G.dc!r}")
            prox, steps, final = [fuse_prox(p, **kw) for p in G.prox], G.steps.detach().clone(), G.final_dc
        elif isinstance(G, PlainGenerator): prox, steps, final = [fuse_prox(G.net, **kw)], None, True
        else: raise TypeError(f"G: expected an UnrolledGenerator or PlainGenerator, got {type(G).__name__}")

    @torch.inference_mode()
    def f(y: Tensor, mask: Tensor, maps: Tensor | None = None) -> Tensor:
        even = y.shape[-2] % 2 == 0 and y.shape[-1] % 2 == 0
        op = (FusedSense if fused_dc and even else _SlowSense)(y, mask, maps)
        x = op.x0
        for k, ops in enumerate(prox):
            if steps is not None: x = op.gradient_dc(x, steps[k])
            x = to_complex(run_prox(ops, to_channels(x)))
        return op.hard_dc(x) if final else x
    return f


def fast_reconstruct(f, y: Tensor, mask: Tensor, maps: Tensor | None = None, batch_size: int = 1) -> Tensor:
    "`fast_generator`'s f over (B, coils, H, W) k-space in chunks of `batch_size` slices; maps (coils or B, coils, H, W)."
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size: expected an int >= 1, got {batch_size!r}")
    per = maps is not None and maps.ndim == 4
    return torch.cat([f(y[i:i + batch_size], mask, maps[i:i + batch_size] if per else maps)
                      for i in range(0, y.shape[0], batch_size)])


# ---------------------------------------------------------------------------------------------------------------
# measuring
def conv_flops(G: nn.Module, shape: tuple[int, int]) -> int:
    "FLOPs (2 per multiply-add) of G's convolutions per slice of size (H, W)."
    return sum(2 * m.in_channels * m.out_channels * m.kernel_size[0] * m.kernel_size[1] * shape[0] * shape[1]
               for m in G.modules() if isinstance(m, nn.Conv2d))


def randomise_bn(G: nn.Module, seed: int = 0) -> nn.Module:
    "BatchNorm statistics and affine parameters drawn at random (a fresh BN is the identity: folding it tests nothing)."
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in G.modules():
            if isinstance(m, nn.BatchNorm2d):
                for t, lo, hi in ((m.running_mean, -0.5, 0.5), (m.running_var, 0.5, 2.0), (m.weight, 0.5, 1.5),
                                  (m.bias, -0.2, 0.2)):
                    t.copy_(lo + (hi - lo) * torch.rand(t.shape, generator=g))
    return G.eval()


def _sync(device: torch.device):
    if device.type == "cuda": torch.cuda.synchronize(device)


def bench_all(fns: dict, n_slices: int, repeats: int, device: torch.device = torch.device("cpu"),
              stat=statistics.median) -> dict:
    "Wall time per slice (s; `stat` over rounds) of each fn, round-robin (one call of each per round) after a warm-up."
    for f in fns.values(): f()
    times = {k: [] for k in fns}
    for _ in range(repeats):
        for k, f in fns.items():
            _sync(device); t0 = time.perf_counter(); f(); _sync(device); times[k].append(time.perf_counter() - t0)
    return {k: stat(v) / n_slices for k, v in times.items()}


def peak_gflops(device: torch.device = torch.device("cpu"), repeats: int = 5) -> dict:
    ("This device's measured throughput (GFLOP/s): a 2048^3 fp32 matmul, and one 64 -> 64 3x3 conv at 320 x 256 "
     "(channels-last) in fp32 and in bf16.")
    def best(f):
        f(); ts = []
        for _ in range(repeats):
            _sync(device); t0 = time.perf_counter(); f(); _sync(device); ts.append(time.perf_counter() - t0)
        return min(ts)
    a, b = torch.randn(2048, 2048, device=device), torch.randn(2048, 2048, device=device)
    x = torch.randn(1, 64, 322, 258, device=device).contiguous(memory_format=torch.channels_last)
    w = torch.randn(64, 64, 3, 3, device=device).contiguous(memory_format=torch.channels_last)
    xb, wb = x.to(torch.bfloat16), w.to(torch.bfloat16)
    flop = 2 * 64 * 64 * 9 * 320 * 256
    with torch.inference_mode():
        return {"matmul": 2 * 2048 ** 3 / best(lambda: a @ b) / 1e9, "conv": flop / best(lambda: F.conv2d(x, w)) / 1e9,
                "conv bf16": flop / best(lambda: F.conv2d(xb, wb)) / 1e9}


def piece_timings(features: int, shape: tuple[int, int], coils: int, repeats: int = 15) -> dict:
    ("Each change alone on one slice, before and after (ms, fastest of `repeats` round-robin rounds: the least "
     "disturbed by other processes): {change: (before, after)}.")
    torch.manual_seed(0)
    H, W = shape
    h = torch.randn(1, features, H, W).relu()
    hc = h.contiguous(memory_format=torch.channels_last)
    conv, bn = _conv_module(features, features), nn.BatchNorm2d(features)
    randomise_bn(bn)
    seq = nn.Sequential(conv, bn, nn.ReLU()).eval()
    wf, bf = fold_bn(conv.weight.detach(), bn)
    nchw, cl = _Conv(wf, bf, True, channels_last=False), _Conv(wf, bf, True)
    blk = randomise_bn(PostActBlock(features))
    fblk = _Block(blk)
    w2 = torch.randn(2, features, 3, 3) * 0.05
    one, few = _Conv(w2, None, False, few_out=False), _Conv(w2, None, False)
    mask, maps = recon_setup(shape, 10.0, coils)
    y = measure(torch.polar(torch.rand(1, 1, H, W), torch.rand(1, 1, H, W)), mask, maps)
    z, step = torch.randn(1, 1, H, W, dtype=torch.complex64), torch.tensor(2.0)
    def dc(cls):
        op = cls(y, mask, maps)
        for _ in range(3): op.gradient_dc(z, step)
        return op.hard_dc(z)
    pairs = {"conv + BN + ReLU: modules -> BN folded, relu_ (NCHW)": (lambda: seq(h), lambda: nchw(h)),
             "folded conv: NCHW + F.pad -> channels-last + slice-copy pad": (lambda: nchw(h), lambda: cl(hc)),
             "post-act block: module (NCHW) -> folded, addcmul_ (channels-last)": (lambda: blk(h), lambda: fblk(hc)),
             f"{features} -> 2 conv (channels-last): oneDNN -> matmul + 9 shifts": (lambda: one(hc), lambda: few(hc)),
             f"DC of one forward (x0, 3 gradient steps, hard DC), {coils} coils: kspace -> fused":
                 (lambda: dc(_SlowSense), lambda: dc(FusedSense))}
    fns = {(k, i): f for k, fs in pairs.items() for i, f in enumerate(fs)}
    with torch.inference_mode(): t = bench_all(fns, 1, repeats, stat=min)
    return {k: (1e3 * t[(k, 0)], 1e3 * t[(k, 1)]) for k in pairs}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shape", type=int, nargs=2, default=(320, 256))
    p.add_argument("--coils", type=int, default=8)
    p.add_argument("--features", type=int, default=64)
    p.add_argument("--slices", type=int, default=4)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--cs", default="both", choices=("sigpy", "fista", "both"))
    p.add_argument("--batch", type=int, default=1, help="slices per call of the fast path")
    p.add_argument("--ablation", action="store_true",
                   help="also time each change alone, cumulatively (library path -> full fast path), same rounds")
    a = p.parse_args()
    if a.threads: torch.set_num_threads(a.threads)
    dev = torch.device(a.device)
    shape = tuple(a.shape)
    mask, maps = recon_setup(shape, 10.0, a.coils)
    x = torch.polar(torch.rand(a.slices, 1, *shape, generator=torch.Generator().manual_seed(0)), torch.zeros(a.slices, 1, *shape))
    y = measure(x, mask, maps)
    mask, y = mask.to(dev), y.to(dev)
    maps = maps.to(dev) if maps is not None else None
    torch.manual_seed(0)
    nets = {"plain G": randomise_bn(PlainGenerator(a.features)), "unrolled G": randomise_bn(UnrolledGenerator(3, a.features))}
    for G in nets.values(): G.to(dev)
    G = nets["unrolled G"]
    fast = fast_generator(G)
    fns = {k: (lambda G=G: reconstruct(G, y, mask, maps, batch_size=a.slices)) for k, G in nets.items()}
    fns["unrolled G, fast path"] = lambda: fast_reconstruct(fast, y, mask, maps, a.batch)
    if a.ablation:
        def lib_inference():
            with torch.inference_mode(): return reconstruct(G, y, mask, maps, batch_size=1)
        steps = {"library, 1-slice chunks": lambda: reconstruct(G, y, mask, maps, batch_size=1),
                 "+ inference_mode": lib_inference}
        variants = (("+ BN folded, in-place ReLU (NCHW, oneDNN convs, kspace DC)",
                     dict(channels_last=False, few_out=False, fused_dc=False)),
                    ("+ channels-last", dict(few_out=False, fused_dc=False)),
                    ("+ 64 -> 2 conv as matmul + shifts", dict(fused_dc=False)),
                    ("+ fused checkerboard DC (= fast path, 1-slice chunks)", {}))
        for name, kw in variants:
            steps[name] = (lambda f: (lambda: fast_reconstruct(f, y, mask, maps, 1)))(fast_generator(G, **kw))
        steps[f"fast path, {a.slices}-slice chunks"] = lambda: fast_reconstruct(fast, y, mask, maps, a.slices)
        fns.update({f"ablation: {k}": v for k, v in steps.items()})
    backends = ("sigpy", "fista") if a.cs == "both" else (a.cs,)
    for b in backends:
        if b == "sigpy":   # numpy: runs on the CPU whatever the device
            yc, mc, pc = y.cpu(), mask.cpu(), maps.cpu() if maps is not None else None
            fns["CS-wavelet (30 it, sigpy)"] = lambda: cs_wavelet_recon(yc, mc, pc, CS_LAM, 30, "sigpy")
        else: fns["CS-wavelet (30 it, FISTA-Haar)"] = lambda: cs_wavelet_recon(y, mask, maps, CS_LAM, 30, "fista")
    res = bench_all(fns, a.slices, a.repeats, dev)
    with torch.inference_mode():
        ref, out = reconstruct(G, y, mask, maps), fast_reconstruct(fast, y, mask, maps, a.batch)
    err = float((ref - out).abs().max() / ref.abs().max())
    peak = peak_gflops(dev)
    gflop = conv_flops(G, shape) / 1e9

    print(f"device {dev}, threads {torch.get_num_threads()}, {shape[0]} x {shape[1]}, {a.coils} coils, "
          f"{a.features} features, {a.slices} slices, {a.repeats} round-robin rounds (median)")
    print("| method | ours (s/slice) | Lei Table III (s/slice, TITAN Xp) |\n|---|---|---|")
    for k, v in res.items():
        if not k.startswith("ablation"): print(f"| {k} | {v:.4f} | {PAPER.get(k, PAPER['unrolled G'])} |")
    if a.ablation:
        print(f"\nablation (unrolled G, cumulative; each row adds one change to the row above; the library path "
              f"with {a.slices}-slice chunks: {res['unrolled G']:.4f} s/slice)")
        print("| change | s/slice | speed-up over the row above |\n|---|---|---|")
        prev = res["unrolled G"]
        for k, v in res.items():
            if k.startswith("ablation"): print(f"| {k[10:]} | {v:.4f} | {prev / v:.2f}x |"); prev = v
        print(f"\neach change alone on one {shape[0]} x {shape[1]} slice (ms, fastest of 15 round-robin rounds)")
        print("| change | before | after | speed-up |\n|---|---|---|---|")
        for k, (t0, t1) in piece_timings(a.features, shape, a.coils).items():
            print(f"| {k} | {t0:.2f} | {t1:.2f} | {t0 / t1:.2f}x |")
        print()
    u, uf = res["unrolled G"], res["unrolled G, fast path"]
    cs = {k: v for k, v in res.items() if k.startswith("CS")}
    print(f"fast path vs library path: {u / uf:.2f}x faster; max |difference| / max |output| = {err:.1e}")
    print(f"ratios: unrolled/plain {u / res['plain G']:.2f} (Lei 1.14); CS/unrolled, library path: "
          + "; ".join(f"{k} {v / u:.2f}" for k, v in cs.items()) + " (Lei 16)")
    print("ratios CS/unrolled, fast path: " + "; ".join(f"{k} {v / uf:.2f}" for k, v in cs.items()) + " (target 3)")
    print(f"unrolled G convolutions: {gflop:.1f} GFLOP per slice; fast path {gflop / uf:.0f} GFLOP/s overall, "
          f"library path {gflop / u:.0f}; this device alone: fp32 matmul {peak['matmul']:.0f}, 64 -> 64 conv "
          f"{peak['conv']:.0f} GFLOP/s; the same conv in bf16 {peak['conv bf16']:.0f} GFLOP/s ("
          + ("slower: bf16 autocast would not pay here)" if peak["conv bf16"] < peak["conv"]
             else "faster: bf16 autocast might pay; its SNR change is not measured here)"))
    short = {k: v for k, v in cs.items() if v / uf < 3}
    if short:
        floor = gflop / peak["conv"]
        print(f"below 3x because: the fast path runs the convolutions at {100 * gflop / uf / peak['conv']:.0f} % of "
              f"the measured conv throughput, and even at 100 % they take {floor:.2f} s/slice; 3x needs <= "
              + "; ".join(f"{v / 3:.2f} s/slice against {k} ({gflop * 3 / v:.0f} GFLOP/s, "
                          f"{gflop * 3 / v / peak['conv']:.1f}x that throughput)" for k, v in short.items())
              + f". CS has no convolutions: 30 power and 30 solver iterations, each a forward and an adjoint "
                f"{a.coils}-coil FFT, elementwise map and mask products and a wavelet transform (FFT- and "
                "memory-bound; profile in the module docstring).")
    print("SNR (measured in lesson 31, Table II at `demo`: 64 x 64, 4 coils, 10x; no trained model is timed here): "
          + ", ".join(f"{k} {v:.2f} dB" for k, v in TABLE2_DEMO_SNR.items())
          + ". The fast path computes the same G (difference above), so it has G's SNR: the paired-trained G "
            "(l1-net, WGAN + l1) is above CS, the unpaired G 1.1 dB below.")


if __name__ == "__main__":
    main()
