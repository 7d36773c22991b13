"""Inference time per slice of Lei's plain G, unrolled G and 30-iteration CS-wavelet, beside Lei's Table III.

Usage: python benchmarks/recon.py [--shape 320 256] [--coils 8] [--features 64] [--slices 4] [--repeats 3]
                                  [--threads N] [--device cpu|cuda] [--cs sigpy|fista|both]
Lei et al. (TITAN Xp, 320 x 256, 8 coils): plain G 0.022 s, unrolled G 0.025 s, 30-iteration BART CS 0.4 s per slice.
Networks are timed with random weights in eval mode (the weights do not change the cost); ratios are measured in this run.
"""
import argparse
import time

import torch

from medsynth_nb.recon import CS_LAM, PlainGenerator, UnrolledGenerator, cs_wavelet_recon, measure, recon_setup, reconstruct, time_per_slice

PAPER = {"plain G": 0.022, "unrolled G": 0.025, "CS-wavelet (30 it, sigpy)": 0.4, "CS-wavelet (30 it, FISTA-Haar)": 0.4}


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
    nets = {"plain G": PlainGenerator(a.features), "unrolled G": UnrolledGenerator(3, a.features)}
    res = {}
    for name, G in nets.items():
        G.to(dev)
        res[name] = time_per_slice(lambda: reconstruct(G, y, mask, maps, batch_size=a.slices), a.slices, a.repeats)
    backends = ("sigpy", "fista") if a.cs == "both" else (a.cs,)
    for b in backends:
        yy, mm, mp = (y.cpu(), mask.cpu(), maps.cpu() if maps is not None else None) if b == "sigpy" else (y, mask, maps)
        res[f"CS-wavelet (30 it, {'sigpy' if b == 'sigpy' else 'FISTA-Haar'})"] = time_per_slice(
            lambda: cs_wavelet_recon(yy, mm, mp, CS_LAM, 30, b), a.slices, max(1, a.repeats - 1))
    print(f"device {dev}, threads {torch.get_num_threads()}, {shape[0]} x {shape[1]}, {a.coils} coils, {a.features} features, {a.slices} slices")
    print(f"| method | ours (s/slice) | Lei Table III (s/slice, TITAN Xp) |\n|---|---|---|")
    for k, v in res.items(): print(f"| {k} | {v:.4f} | {PAPER[k]} |")
    u = res["unrolled G"]
    print(f"ratios: unrolled/plain {u / res['plain G']:.2f} (Lei 1.14); " +
          "; ".join(f"{k}/unrolled {v / u:.1f}" for k, v in res.items() if k.startswith("CS")) + " (Lei 16)")


if __name__ == "__main__":
    main()
