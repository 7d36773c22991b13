"""DDPM benchmark: cost of one step of the ~1.1 M-parameter U-Net on 16×64², and DDIM-50 vs ancestral-1000 sampling
wall time, and DPM-Solver++(2M) with 10 and 20 steps, measured in one run on this machine (CPU unless a GPU is present).

Ancestral-1000 is timed on a subset of its steps (default 25, evenly spread over the chain) and extrapolated to
1000 steps (each step costs the same: one network call + one scheduler step); DDIM-50 is timed in full.
The quality side (a trained harmonization model on a held-out subject, every sampler) is benchmarks/harmonize.py.
Usage: python benchmarks/ddpm.py [--ancestral-steps-timed 25] [--batch 16] [--size 64] [--threads N]"""
import argparse, time

import torch

from medsynth_nb.ddpm import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler, ddim_sample
from medsynth_nb.layers import count_parameters, unet_from_preset
from medsynth_nb.utils import get_device, make_generator


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ancestral-steps-timed", type=int, default=25)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1: fairest on a shared CPU; 0: torch default)")
    a = ap.parse_args()
    if a.threads: torch.set_num_threads(a.threads)
    dev = get_device()
    net = unet_from_preset("demo", 1, 1).to(dev).eval()
    with torch.no_grad():                                  # non-zero output layer so the numbers flow through
        for p in net.out.parameters(): p.normal_(0, 0.01, generator=make_generator(0, "cpu")) if dev.type == "cpu" else p.normal_(0, 0.01)
    shape = (a.batch, 1, a.size, a.size)
    print(f"device {dev}, threads {torch.get_num_threads()}, UNet 'demo' preset: {count_parameters(net):,} parameters, batch {shape}")
    sync = (lambda: torch.cuda.synchronize()) if dev.type == "cuda" else (lambda: None)

    x = torch.randn(shape, generator=make_generator(1, "cpu")).to(dev)
    with torch.no_grad():
        net(x, torch.full((a.batch,), 500, device=dev)); sync()
        t0 = time.perf_counter(); reps = 3
        for _ in range(reps): net(x, torch.full((a.batch,), 500, device=dev))
        sync(); step_s = (time.perf_counter() - t0) / reps
    print(f"UNet forward (one sampling step's network call): {step_s * 1e3:.1f} ms")

    # ancestral: time a subset of the 1000 steps, spread over the chain, and extrapolate
    sched = DDPMScheduler()
    xt = torch.randn(shape, generator=make_generator(2, "cpu")).to(dev)
    g = make_generator(2, dev)                       # the step noise is drawn where the chain runs (no transfer timed)
    idx = torch.linspace(0, 999, a.ancestral_steps_timed).round().long().unique()
    timed = sched.timesteps[idx].tolist()
    sync(); t0 = time.perf_counter()
    with torch.no_grad():
        for t in timed:
            out = net(xt, torch.full((a.batch,), t, device=dev))
            xt = sched.step(out, t, xt, generator=g).prev_sample
    sync(); anc_subset = time.perf_counter() - t0
    anc_full = anc_subset / len(timed) * 1000
    print(f"ancestral: {len(timed)} of 1000 steps in {anc_subset:.2f} s -> 1000 steps ≈ {anc_full:.1f} s (extrapolated)")

    sync(); t0 = time.perf_counter()
    ddim_sample(net, DDIMScheduler(), shape, 50, generator=make_generator(3, dev), progress=False, device=dev)
    sync(); ddim_s = time.perf_counter() - t0
    print(f"DDIM-50: {ddim_s:.2f} s (measured)")
    ratio = anc_full / ddim_s
    print(f"RATIO ancestral-1000 / DDIM-50 wall time: {ratio:.1f}x (target >= 15x; steps ratio 20x)")
    for n in (10, 20):                              # DPM-Solver++(2M), our scheduler, diffusers' linspace spacing
        sync(); t0 = time.perf_counter()
        ddim_sample(net, DPMSolverMultistepScheduler(), shape, n, generator=make_generator(3, dev), progress=False, device=dev)
        sync(); dpm_s = time.perf_counter() - t0
        print(f"DPM-Solver++(2M)-{n}: {dpm_s:.2f} s (measured); RATIO ancestral-1000 / DPM-{n}: {anc_full / dpm_s:.1f}x, "
              f"DDIM-50 / DPM-{n}: {ddim_s / dpm_s:.1f}x (steps ratios {1000 // n}x, {50 / n:g}x)")
    print(f"RATIO per-step overhead of the scheduler vs network: {(anc_subset / len(timed) - step_s) / step_s * 100:+.1f}% of a network call")
    return ratio


if __name__ == "__main__":
    main()
