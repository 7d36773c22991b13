"""Harmonization samplers: cost against quality on a held-out subject, with a trained `harmonize` run.

Issue 21, target 1: harmonize >= 50x faster than Durrer's ancestral-1000 with MSE and AHD within 5 % of the ancestral
result. The run's EMA model translates a slab of sagittal slices of the held-out subject `heldout_pair(SUBJECT)`
(Colin27: not an anatomy the model was trained on) with every sampler below, from the same x_T (seed 0), in this run;
each sampler is timed (ancestral once: it is the long one; the fast ones `--repeats` times, median) and scored with
Durrer's MSE and AHD in the target's brain mask, and Dice per tissue against one k-means segmentation of the target.
Speed-ups are wall-time ratios against the ancestral chain measured in the same run, next to the ratio of network
calls (the network is the cost: the scheduler steps add under 1 %). Each translation is also written to the run's
eval/ folder (`cached_translation`), where lesson 21 reads the table back.

Usage: python benchmarks/harmonize.py [--run runs/harmonize-demo-1.5T-to-3T] [--subject 9000] [--slices 41:49]
                                      [--samplers ancestral-1000,DDIM-50,DDIM-20,DPM-25,DPM-20,DPM-15,DPM-10]
                                      [--ancestral-seeds 0] [--repeats 3] [--threads 1]
Train the run first (about 20 min on 2 CPU cores):
    python -c "import medsynth_nb.harmonize; from medsynth_nb.engine import train; \\
               train('harmonize', 'demo', out='runs/harmonize-demo-1.5T-to-3T', direction='1.5T-to-3T', resume=True)"
"""
import argparse
import re
import statistics
import time

import torch

from medsynth_nb.harmonize import (brain_mask, cached_translation, evaluate_harmonization, heldout_pair,
                                   load_harmonizer, segment_tissues)

TARGET_SPEEDUP, TARGET_TOL = 50.0, 0.05
DEFAULT_SAMPLERS = "ancestral-1000,DDIM-50,DDIM-20,DPM-25,DPM-20,DPM-15,DPM-10"
KINDS = {"ancestral": "ddpm", "DDIM": "ddim", "DPM": "dpm"}


def parse_samplers(spec: str) -> dict:
    "'ancestral-1000,DPM-20' → {name: (sampler, steps)} (ancestral-T: None, every step of the chain)."
    out = {}
    for name in spec.split(","):
        m = re.fullmatch(r"(ancestral|DDIM|DPM)-(\d+)", name.strip())
        if not m: raise SystemExit(f"harmonize.py: error: --samplers: expected names like DPM-20, got {name!r}")
        kind, n = m.group(1), int(m.group(2))
        out[name.strip()] = (KINDS[kind], None if kind == "ancestral" and n == 1000 else n)
    if not any(v[0] == "ddpm" for v in out.values()):
        raise SystemExit("harmonize.py: error: --samplers: the ancestral baseline (e.g. ancestral-1000) is needed")
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", default="runs/harmonize-demo-1.5T-to-3T")
    ap.add_argument("--subject", type=int, default=9000, help="held-out subject seed (harmonize.TEST_SEEDS)")
    ap.add_argument("--slices", default="41:49", help="sagittal slab start:stop of the held-out volume")
    ap.add_argument("--samplers", default=DEFAULT_SAMPLERS)
    ap.add_argument("--ancestral-seeds", default="0", help="seeds of the ancestral chain (more: its own spread)")
    ap.add_argument("--repeats", type=int, default=3, help="timings of each fast sampler (median)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1: fairest on a shared CPU)")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    samplers = parse_samplers(a.samplers)
    lo, hi = map(int, a.slices.split(":"))
    _, _, cfg = load_harmonizer(a.run)
    src_v, tgt_v, _ = heldout_pair(a.subject, cfg.direction)
    src, tgt = src_v[lo:hi].contiguous(), tgt_v[lo:hi].contiguous()
    labels = segment_tissues(tgt, brain_mask(tgt))
    print(f"run {a.run} ({cfg.direction}, {cfg.steps} steps, {cfg.prediction_type}), held-out subject {a.subject}, "
          f"slab {lo}:{hi} {tuple(src.shape)}, threads {torch.get_num_threads()}, torch {torch.__version__}")
    score = lambda pred: evaluate_harmonization(pred, tgt, target_labels=labels)
    rows = {"Original (source)": {"calls": 0, "seconds": float("nan"), **score(src)}}
    for name, (sampler, steps) in samplers.items():
        seeds = [int(s) for s in a.ancestral_seeds.split(",")] if sampler == "ddpm" else [0]
        for seed in seeds:
            label = name if seed == 0 else f"{name} (seed {seed})"
            times, tr = [], None
            for _ in range(1 if sampler == "ddpm" else a.repeats):
                tr = cached_translation(a.run, src, sampler, steps, seed=seed, batch_size=hi - lo, cache=False,
                                        name=f"heldout-{a.subject}-slab{lo}-{hi}-{name}")
                times.append(tr["seconds"])
            rows[label] = {"calls": steps or cfg.num_train_timesteps, "seconds": statistics.median(times),
                           **score(tr["pred"])}
            print(f"  {label}: {rows[label]['seconds']:.1f} s", flush=True)
    base = rows[next(n for n, (s, _) in samplers.items() if s == "ddpm")]
    print("\n| sampler | network calls per slice | seconds (slab) | speed-up (wall) | MSE | AHD | MSE / anc. | "
          "AHD / anc. | Dice CSF / GM / WM |\n|---|---|---|---|---|---|---|---|---|")
    met = []
    for name, r in rows.items():
        sp = base["seconds"] / r["seconds"] if r["calls"] else float("nan")
        rm, ra = r["mse"] / base["mse"], r["ahd"] / base["ahd"]
        print(f"| {name} | {r['calls']} | {r['seconds']:.1f} | {sp:.1f}x | {r['mse']:.4g} | {r['ahd']:.4g} | {rm:.3f} | "
              f"{ra:.3f} | {r['dice_csf']:.3f} / {r['dice_gm']:.3f} / {r['dice_wm']:.3f} |")
        if r["calls"] and r is not base and sp >= TARGET_SPEEDUP and rm <= 1 + TARGET_TOL and ra <= 1 + TARGET_TOL:
            met.append(f"{name} ({sp:.1f}x, MSE {100 * (rm - 1):+.1f} %, AHD {100 * (ra - 1):+.1f} %)")
    print(f"\nTARGET >= {TARGET_SPEEDUP:g}x faster than ancestral-1000 with MSE and AHD at most {100 * TARGET_TOL:g} % "
          f"above its values: " + ("met by " + "; ".join(met) if met else "NOT met by any sampler"))
    return rows


if __name__ == "__main__":
    main()
