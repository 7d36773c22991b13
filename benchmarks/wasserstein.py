"""Benchmark of the noise-preserving patch loss (medsynth_nb.wasserstein), all ratios measured in one run.

    .venv/bin/python benchmarks/wasserstein.py [--quick]

Compares, on the same float32 tensors, forward and forward+backward:
  exact (numpy sort, the CPU default) | exact (torch.sort) | the paper's IPOT-100 (beta = 10 max C, chunked) |
  a Python loop of ot.emd2 | POT's batched ot.wasserstein_1d (torch backend, differentiable) | plain l1 (the floor)
for 2-D 8x1x256^2 with n = 8 and 3-D 1x1x96^3 with n = 4. IPOT-100 and the ot.emd2 loop are timed on a subset of
the patches and extrapolated linearly in the number of patches (both cost the same per patch). Times are the
minimum over repeats (the machine is shared; the minimum is the least disturbed run). Peak memory is the rise of
the process's peak resident set (VmHWM, reset through /proc/self/clear_refs, glibc's mmap threshold fixed so that
freed buffers leave the resident set) during one forward+backward, inputs excluded; where that is unavailable,
tracemalloc's peak (numpy allocations only) is shown instead. torch runs single-threaded by default (numpy's sort is
single-threaded too, and on a shared CPU multi-threaded torch ops are erratic); --threads N changes that.
"""
from __future__ import annotations

import argparse
import math
import platform
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from medsynth_nb.utils import make_generator  # noqa: E402
from medsynth_nb.wasserstein import extract_patches, ipot_w1, wasserstein_patch_loss  # noqa: E402


def _status() -> dict:
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(("VmHWM", "VmRSS")):
                k, v = line.split(":"); out[k] = int(v.split()[0]) * 1024
    return out


def _glibc():
    "glibc handle with a fixed mmap threshold, so freed large buffers leave the resident set (None elsewhere)."
    try:
        import ctypes
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 256 * 1024)  # M_MMAP_THRESHOLD: fixed, no dynamic growth that would hide peaks
        return libc
    except (OSError, AttributeError):
        return None


LIBC = _glibc()


def _can_reset_hwm() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f: f.write("5")
        return "VmHWM" in _status()
    except OSError:
        return False


HWM = _can_reset_hwm()


def peak_bytes(fn) -> tuple[int, str]:
    "Peak extra memory of one call of fn (bytes) and how it was measured."
    if HWM:
        if LIBC is not None: LIBC.malloc_trim(0)
        with open("/proc/self/clear_refs", "w") as f: f.write("5")
        before = _status()["VmRSS"]
        fn()
        return max(_status()["VmHWM"] - before, 0), "rss"
    tracemalloc.start(); fn(); _, peak = tracemalloc.get_traced_memory(); tracemalloc.stop()
    return peak, "tracemalloc"


def best_time(fn, reps: int) -> float:
    "Minimum wall time of fn over reps calls, after one warm-up call (seconds)."
    fn()
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter(); fn(); ts.append(time.perf_counter() - t0)
    return min(ts)


def fwd_bwd(loss_fn, x, y):
    "Callables for forward only and forward+backward of loss_fn(pred, target)."
    def fwd():
        with torch.no_grad(): loss_fn(x, y)
    def both():
        p = x.detach().requires_grad_()
        loss_fn(p, y).backward()
    return fwd, both


def run_case(name, shape, n, reps, sub_ipot, sub_emd, gen):
    import ot
    x = torch.randn(shape, generator=gen); y = torch.randn(shape, generator=gen) * 1.3 + 0.1
    d, m = len(shape) - 2, n ** (len(shape) - 2)
    P = shape[0] * shape[1] * math.prod(math.ceil(s / n) for s in shape[2:])
    rows = []  # (label, t_fwd, t_fb, peak, note)

    def add(label, loss_fn, reps_, scale=1.0, note=""):
        f, b = fwd_bwd(loss_fn, x, y)
        tf, tb = best_time(f, reps_) * scale, best_time(b, reps_) * scale
        pk, how = peak_bytes(b)
        rows.append((label, tf, tb, pk, note + ("" if how == "rss" else f" [{how}]")))

    add("l1 (floor)", lambda p, t: F.l1_loss(p, t), reps)
    add("exact, numpy sort (default)", lambda p, t: wasserstein_patch_loss(p, t, n, backend="numpy"), reps)
    add("exact, torch.sort", lambda p, t: wasserstein_patch_loss(p, t, n, backend="torch"), max(reps // 2, 2))

    def pot1d(p, t):
        xp, yp = extract_patches(p, n).reshape(-1, m), extract_patches(t, n).reshape(-1, m)
        return ot.wasserstein_1d(xp.T, yp.T, p=1).sum()
    add("POT wasserstein_1d, batched", pot1d, max(reps // 3, 2))

    K = min(sub_ipot, P)
    def ipot_sub(p, t):
        xp, yp = extract_patches(p, n).reshape(-1, m), extract_patches(t, n).reshape(-1, m)
        return ipot_w1(xp[:K], yp[:K], n_iter=100, beta=10.0, chunk=1024).sum()
    add("paper IPOT-100 (chunked)", ipot_sub, 1, P / K, f"timed on {K} of {P} patches (one chunk), time extrapolated; peak is per chunk")

    K2 = min(sub_emd, P)
    u = np.full(m, 1.0 / m)
    def emd_loop(p, t):
        xp, yp = extract_patches(p, n).reshape(-1, m), extract_patches(t, n).reshape(-1, m)
        tot = 0.0
        for a, b in zip(xp[:K2], yp[:K2]):
            tot = tot + ot.emd2(u if not p.requires_grad else torch.from_numpy(u).to(p), u if not p.requires_grad else torch.from_numpy(u).to(p),
                                (a[:, None] - b[None, :]).abs() if p.requires_grad else np.abs(a.numpy()[:, None] - b.numpy()[None, :]))
        return tot if torch.is_tensor(tot) else torch.tensor(tot)
    add("loop of ot.emd2", emd_loop, 1, P / K2, f"timed on {K2} of {P} patches, time extrapolated")

    print(f"\n## {name}: {tuple(shape)}, n = {n}, {P} patches of {m} values, float32")
    ex = dict((r[0], r) for r in rows)["exact, numpy sort (default)"]
    print(f"| method | forward ms | fwd+bwd ms | fwd+bwd time / exact | peak MB (fwd+bwd) | note |")
    print("|---|---:|---:|---:|---:|---|")
    for lab, tf, tb, pk, note in rows:
        print(f"| {lab} | {tf * 1e3:.2f} | {tb * 1e3:.2f} | {tb / ex[2]:.2f} | {pk / 2 ** 20:.1f} | {note} |")
    r = dict((row[0], row) for row in rows)
    ratios = dict(ipot_fwd=r["paper IPOT-100 (chunked)"][1] / ex[1], ipot_fb=r["paper IPOT-100 (chunked)"][2] / ex[2],
                  pot1d_fwd=r["POT wasserstein_1d, batched"][1] / ex[1], pot1d_fb=r["POT wasserstein_1d, batched"][2] / ex[2],
                  emd_fwd=r["loop of ot.emd2"][1] / ex[1], emd_fb=r["loop of ot.emd2"][2] / ex[2],
                  l1_fwd=ex[1] / r["l1 (floor)"][1], l1_fb=ex[2] / r["l1 (floor)"][2],
                  torch_fb=r["exact, torch.sort"][2] / ex[2])
    paper_mem = 6 * P * m * m * 4  # the paper's code holds C_res, Q, K, T and temporaries: ~6 P·m² float32
    print(f"\nratios (exact numpy path = 1): IPOT-100 {ratios['ipot_fwd']:.0f}x fwd / {ratios['ipot_fb']:.0f}x fwd+bwd slower; "
          f"ot.emd2 loop {ratios['emd_fwd']:.0f}x / {ratios['emd_fb']:.0f}x; POT wasserstein_1d {ratios['pot1d_fwd']:.1f}x / "
          f"{ratios['pot1d_fb']:.1f}x; torch.sort path {ratios['torch_fb']:.1f}x fwd+bwd; exact is {ratios['l1_fwd']:.1f}x / "
          f"{ratios['l1_fb']:.1f}x the l1 floor")
    print(f"the paper's unchunked IPOT code would hold ~6·P·m² float32 = {paper_mem / 2 ** 30:.2f} GiB for this input")
    checks = [("exact >= 100x faster than IPOT-100 (fwd+bwd)", ratios["ipot_fb"] >= 100),
              ("exact >= 5x faster than batched POT wasserstein_1d (fwd+bwd)", ratios["pot1d_fb"] >= 5),
              ("exact within 15x of l1 (fwd+bwd)", ratios["l1_fb"] <= 15)]
    for lab, ok in checks: print(f"  target {lab}: {'met' if ok else 'NOT met'}")
    return ratios, checks


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer repeats and smaller subsets")
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1)")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    import ot
    print(f"# medsynth_nb NP-loss benchmark — torch {torch.__version__} ({torch.get_num_threads()} threads), numpy {np.__version__}, "
          f"POT {ot.__version__}, {platform.processor() or platform.machine()}, peak memory by "
          f"{'VmHWM (RSS)' if HWM else 'tracemalloc'}")
    reps, sub_ipot, sub_emd = (3, 512, 32) if a.quick else (10, 1024, 128)
    t0 = time.time()
    gen = make_generator(0)
    all_checks = []
    for name, shape, n in [("2-D", (8, 1, 256, 256), 8), ("3-D", (1, 1, 96, 96, 96), 4)]:
        _, checks = run_case(name, shape, n, reps, sub_ipot, sub_emd, gen)
        all_checks += checks
    print(f"\ntotal benchmark time {time.time() - t0:.0f} s; targets met: {sum(ok for _, ok in all_checks)}/{len(all_checks)}")


if __name__ == "__main__":
    main()
