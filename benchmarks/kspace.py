"""k-space speed: centred FFT + IFFT and hard DC per 8-coil 320 x 256 slice, shift formula vs checkerboard fast path.

Usage: python benchmarks/kspace.py [--repeats 30] [--threads N] [--device cpu|cuda] [--dtype complex64|complex128]
Prints medians and the ratios measured in this run (DESIGN.md section 6: the shifts are ~70 % of the FFT cost).
"""
import argparse
import statistics
import time

import torch

from medsynth_nb.kspace import SenseOperator, birdcage_maps, fft2c, hard_dc, ifft2c, lei_fft2, lei_ifft2, poisson_disc_mask


def bench_all(fns: dict, repeats: int, device: torch.device) -> dict:
    "Median wall time (ms) of each fn, measured round-robin (one call of each per round) so load drifts hit all alike."
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for f in fns.values():
        for _ in range(2): f()
    sync()
    times = {k: [] for k in fns}
    for _ in range(repeats):
        for k, f in fns.items():
            t0 = time.perf_counter(); f(); sync(); times[k].append(1e3 * (time.perf_counter() - t0))
    return {k: statistics.median(v) for k, v in times.items()}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=30)
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="complex64", choices=["complex64", "complex128"])
    p.add_argument("--coils", type=int, default=8)
    p.add_argument("--size", type=int, nargs=2, default=[320, 256], metavar=("H", "W"))
    a = p.parse_args()
    if a.threads: torch.set_num_threads(a.threads)
    dev, dtype = torch.device(a.device), getattr(torch, a.dtype)
    H, W = a.size
    g = torch.Generator().manual_seed(0)
    k = torch.randn(1, a.coils, H, W, dtype=dtype, generator=g).to(dev)
    x = torch.randn(1, 1, H, W, dtype=dtype, generator=g).to(dev)
    maps = birdcage_maps((H, W), a.coils, dtype=dtype, device=dev)
    mask = poisson_disc_mask((H, W), 5, calib=(20, 20), seed=0).to(dev)
    y = SenseOperator(maps, mask).A(x)
    print(f"device {dev}, threads {torch.get_num_threads()}, {a.dtype}, {a.coils} coils x {H} x {W}, median of {a.repeats} round-robin rounds")

    # the shifts alone (what the checkerboard replaces): two fftshift/ifftshift pairs per FFT + IFFT
    shifts = lambda: torch.fft.fftshift(torch.fft.ifftshift(torch.fft.fftshift(torch.fft.ifftshift(k, dim=(-2, -1)), dim=(-2, -1)), dim=(-2, -1)), dim=(-2, -1))
    bare = lambda: torch.fft.ifft2(torch.fft.fft2(k, norm="ortho"), norm="ortho")
    r = bench_all({
        "FFT+IFFT, no centring (floor)": bare,
        "4 shifts alone": shifts,
        "fft2c+ifft2c, shift": lambda: ifft2c(fft2c(k, "shift"), "shift"),
        "fft2c+ifft2c, checkerboard": lambda: ifft2c(fft2c(k, "checkerboard"), "checkerboard"),
        "Lei fft2+ifft2 (unnormalised)": lambda: lei_ifft2(lei_fft2(k)),
        "hard DC (8-coil), shift": lambda: hard_dc(x, y, mask, maps, method="shift"),
        "hard DC (8-coil), checkerboard": lambda: hard_dc(x, y, mask, maps, method="checkerboard"),
    }, a.repeats, dev)
    # equality of the two paths on this very input
    err = (ifft2c(fft2c(k, "checkerboard"), "checkerboard") - ifft2c(fft2c(k, "shift"), "shift")).abs().max().item()
    err_dc = (hard_dc(x, y, mask, maps, method="checkerboard") - hard_dc(x, y, mask, maps, method="shift")).abs().max().item()
    for name, ms in r.items(): print(f"  {name:34s} {ms:8.2f} ms")
    s, c = r["fft2c+ifft2c, shift"], r["fft2c+ifft2c, checkerboard"]
    print(f"shifts as share of shifted fft2c+ifft2c: {100 * (s - r['FFT+IFFT, no centring (floor)']) / s:.0f} % "
          f"(4 shifts alone: {100 * r['4 shifts alone'] / s:.0f} %)")
    print(f"speed-up checkerboard vs shift: fft2c+ifft2c {s / c:.2f}x, hard DC "
          f"{r['hard DC (8-coil), shift'] / r['hard DC (8-coil), checkerboard']:.2f}x")
    print(f"checkerboard overhead over the bare FFT+IFFT: {c / r['FFT+IFFT, no centring (floor)']:.2f}x")
    print(f"max |checkerboard - shift|: fft2c+ifft2c {err:.1e}, hard DC {err_dc:.1e}")


if __name__ == "__main__":
    main()
